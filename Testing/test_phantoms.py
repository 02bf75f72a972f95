"""Synthetic humerus phantoms: determinism, anatomy, HU, error model, cohort contract."""

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SCORERefineLib.case import list_cases
from SCORERefineLib.errors import InputError
from SCORERefineLib.phantoms import (COHORT_FILE, ERROR_TYPES, PRESETS, PhantomConfig, case_seed,
                                     dice, load_cohort, make_cohort, make_phantom)

TINY = PRESETS["tiny"]
OFF = {k: 0.0 for k in ERROR_TYPES}


def only(name, strength=0.8, config=TINY):
    return replace(config, force_errors={**OFF, name: strength})


@pytest.fixture(scope="module")
def default_cases():
    return [make_phantom(s, PRESETS["default"]) for s in range(3)]


def test_deterministic_and_seed_dependent():
    a, b, c = make_phantom(3, TINY), make_phantom(3, TINY), make_phantom(4, TINY)
    for name in ("image", "reference", "initial"):
        np.testing.assert_array_equal(getattr(a, name).array, getattr(b, name).array)
    assert a.errors == b.errors and a.params == b.params
    assert not np.array_equal(a.image.array, c.image.array)
    assert not np.array_equal(a.reference.array, c.reference.array)


def test_tiny_is_small_and_fast():
    t = time.perf_counter()
    ph = make_phantom(0, TINY)
    assert time.perf_counter() - t < 2.0
    assert ph.image.array.shape == TINY.shape
    assert ph.image.array.dtype == np.int16
    assert ph.reference.array.dtype == np.uint8 and ph.initial.array.dtype == np.uint8
    np.testing.assert_array_equal(make_phantom(0, "tiny").initial.array, ph.initial.array)


def test_default_geometry_anisotropic(default_cases):
    for ph in default_cases:
        g = ph.image.geometry
        assert g.shape == (96, 64, 64)
        sz, sy, sx = g.spacing_zyx
        assert 1.5 <= sz <= 2.5 and 1.0 <= sy <= 1.35 and 1.0 <= sx <= 1.35 and sz > sx
        assert ph.reference.geometry == g == ph.initial.geometry
    assert default_cases[0].image.geometry.spacing != default_cases[1].image.geometry.spacing


def test_hu_plausible(default_cases):
    for ph in default_cases:
        img, lab = ph.image.array, ph.labels
        assert np.median(img[lab["cortex"]]) > 900
        assert np.percentile(img[ph.reference.array > 0], 99) > 1000
        assert np.median(img[lab["marrow"]]) < 400
        assert np.median(img[lab["fat"]]) < 0
        assert 20 < np.median(img[lab["muscle"]]) < 80
        assert abs(np.median(img[lab["air"]]) + 1000) < 30
        assert np.median(img[lab["glenoid"]]) > 300          # a neighbouring bone near the head
        assert img.min() >= -1024


def test_reference_one_component_inside_fov(default_cases):
    for ph in default_cases + [make_phantom(s, TINY) for s in range(3)]:
        ref = ph.reference.array
        assert ndimage.label(ref)[1] == 1
        for ax in range(3):   # the bone does not touch the volume's faces
            assert not np.take(ref, 0, axis=ax).any() and not np.take(ref, -1, axis=ax).any()
        assert not (ref.astype(bool) & (ph.labels["glenoid"] | ph.labels["acromion"])).any()
        # the head is at the top (superior, high z) and wider than the shaft
        z = np.nonzero(ref.any(axis=(1, 2)))[0]
        area = ref.sum(axis=(1, 2))
        assert area[z[0] + int(0.85 * len(z))] > 1.5 * area[z[0] + len(z) // 2]


def test_initial_dice_in_target_range(default_cases):
    d = [ph.errors["initial_dice"] for ph in default_cases]
    d += [make_phantom(s, PRESETS["default"]).errors["initial_dice"] for s in (3, 4, 5)]
    assert all(0.75 <= v <= 0.97 for v in d), d
    assert 0.82 <= np.mean(d) <= 0.93, d
    for ph in default_cases:
        assert ph.errors["initial_dice"] == pytest.approx(dice(ph.initial.array, ph.reference.array))
        assert set(ERROR_TYPES) <= set(ph.errors)


def test_no_error_means_initial_equals_reference():
    ph = make_phantom(1, replace(TINY, force_errors=OFF))
    np.testing.assert_array_equal(ph.initial.array, ph.reference.array)
    assert all(ph.errors[k]["strength"] == 0 and ph.errors[k]["voxels"] == 0 for k in ERROR_TYPES)


@pytest.mark.parametrize("seed", [0, 5])
def test_head_under_segmentation(seed):
    ph = make_phantom(seed, only("head_under", config=PRESETS["default"]))
    ref, init, img = ph.reference.array > 0, ph.initial.array > 0, ph.image.array
    missed = ref & ~init
    assert not (init & ~ref).any() and missed.sum() == ph.errors["head_under"]["voxels"] > 100
    assert (missed & ph.labels["head"]).sum() == missed.sum()
    assert np.median(img[missed]) > 350          # bright bone left outside the mask


def test_leakage_into_glenoid_on_and_off():
    for seed in (0, 2):
        on = make_phantom(seed, only("leakage", config=PRESETS["default"]))
        ref, init, img = on.reference.array > 0, on.initial.array > 0, on.image.array
        added = init & ~ref
        assert not (ref & ~init).any()
        leaked = added & on.labels["glenoid"]
        assert leaked.sum() > 50 and on.errors["leakage"]["glenoid_voxels"] == leaked.sum()
        assert np.median(img[leaked]) > 300                         # leaked into bone ...
        gap = added & ~on.labels["glenoid"]
        # ... across a dark gap
        assert gap.any() and np.median(img[gap]) < np.median(img[leaked]) - 200
        assert ndimage.label(init)[1] == 1                          # connected through the bridge
        cfg = replace(PRESETS["default"], force_errors={**{k: 0.9 for k in ERROR_TYPES},
                                                        "leakage": 0.0, "blocky": 0.0})
        off = make_phantom(seed, cfg)
        assert not ((off.initial.array > 0) & off.labels["glenoid"]).any()


def test_dilation_covers_soft_tissue_on_one_side():
    ph = make_phantom(3, only("dilation", 1.0, PRESETS["default"]))
    ref, init, img = ph.reference.array > 0, ph.initial.array > 0, ph.image.array
    added = init & ~ref
    assert not (ref & ~init).any() and added.sum() > 300
    assert np.median(img[added]) < 300
    dist = ndimage.distance_transform_edt(~ref, sampling=ph.image.geometry.spacing_zyx)
    assert dist[added].max() <= 2.5 * min(ph.image.geometry.spacing_zyx[1:]) + 1e-6
    # only a part of the surface: most of the 1-voxel shell stays outside the mask
    shell = (dist > 0) & (dist <= min(ph.image.geometry.spacing_zyx[1:]) + 1e-3)
    assert (shell & init).sum() < 0.8 * shell.sum()


def test_holes_are_enclosed_in_marrow():
    ph = make_phantom(2, only("holes", 1.0, PRESETS["default"]))
    ref, init, img = ph.reference.array > 0, ph.initial.array > 0, ph.image.array
    assert not (init & ~ref).any() and (ref & ~init).sum() > 50
    np.testing.assert_array_equal(ndimage.binary_fill_holes(init), ref)
    assert np.median(img[ref & ~init]) < 500


def test_blocky_steps():
    ph = make_phantom(0, only("blocky", 1.0))      # tiny: 1.5 mm in-plane, 3 mm blocks
    init = ph.initial.array
    assert not np.array_equal(init, ph.reference.array)
    np.testing.assert_array_equal(init[:, :, 0::2], init[:, :, 1::2])
    np.testing.assert_array_equal(init[:, 0::2, :], init[:, 1::2, :])
    assert 0.6 < ph.errors["initial_dice"] < 0.99


def test_config_validation():
    with pytest.raises(InputError, match="unknown phantom error"):
        PhantomConfig(force_errors={"nope": 1.0})
    with pytest.raises(InputError, match="strength"):
        PhantomConfig(force_errors={"holes": 2.0})


def test_make_cohort_contract(tmp_path):
    cases = make_cohort(tmp_path, 3, seed=11, preset="tiny")
    assert [c.case_id for c in cases] == ["case_000", "case_001", "case_002"]
    assert [c.case_id for c in list_cases(tmp_path)] == ["case_000", "case_001", "case_002"]
    cohort = load_cohort(tmp_path)
    assert json.loads((tmp_path / COHORT_FILE).read_text()) == cohort
    assert cohort["seed"] == 11 and cohort["preset"] == "tiny" and len(cohort["cases"]) == 3
    for i, (case, rec) in enumerate(zip(cases, cohort["cases"])):
        assert rec["case_id"] == case.case_id and rec["seed"] == case_seed(11, i)
        assert set(rec["errors"]) == set(ERROR_TYPES)
        image = case.load_image()
        ref = case.load_reference(like=image)
        init = case.load_initial(like=image)
        assert not case.has_regions and not case.has_feedback
        assert sitk.ReadImage(str(case.image_path)).GetPixelID() == sitk.sitkInt16
        ph = make_phantom(rec["seed"], TINY)
        assert image.geometry.matches(ph.image.geometry)
        assert image.geometry.spacing == ph.image.geometry.spacing
        np.testing.assert_array_equal(image.array, ph.image.array.astype(np.float32))
        np.testing.assert_array_equal(ref.array, ph.reference.array)
        np.testing.assert_array_equal(init.array, ph.initial.array)
        assert rec["initial_dice"] == pytest.approx(dice(init.array, ref.array))
    with pytest.raises(InputError, match="already holds"):
        make_cohort(tmp_path, 2, seed=1, preset="tiny")
    make_cohort(tmp_path, 1, seed=1, preset="tiny", overwrite=True)
    assert load_cohort(tmp_path)["seed"] == 1
    with pytest.raises(InputError, match="unknown phantom preset"):
        make_cohort(tmp_path / "x", 1, seed=1, preset="huge")


def test_errors_change_only_the_initial_mask():
    base = make_phantom(7, PRESETS["default"])
    s = base.errors["dilation"]["strength"]
    assert s > 0                                   # seed 7 has a dilated side
    alone = make_phantom(7, only("dilation", s, PRESETS["default"]))
    np.testing.assert_array_equal(base.image.array, alone.image.array)
    np.testing.assert_array_equal(base.reference.array, alone.reference.array)
    # the dilated side does not move when the other errors are switched off
    assert base.errors["dilation"]["azimuth_deg"] == alone.errors["dilation"]["azimuth_deg"]
    assert alone.errors["head_under"]["voxels"] == 0 and alone.errors["leakage"]["voxels"] == 0
