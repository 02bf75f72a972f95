"""The real-CT development cohort: grid, error model, split by structure, determinism."""

import json

import numpy as np
import pytest

from SCORERefineLib.case import list_cases
from SCORERefineLib.realct import (MANIFEST, RealConfig, load_manifest, make_real_case,
                                   make_real_cohort, plan_real_cohort)

SUBSET = ["vertebrae_cervical", "rib_left_1", "rib_right_1"]   # small and quick


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    train, test = make_real_cohort(out, seed=3, structures=SUBSET)
    return out, train, test


def test_plan_splits_by_structure():
    plan = plan_real_cohort()
    names = [s["name"] for s in plan]
    assert len(names) == len(set(names))                     # one case per structure
    train = {s["name"] for s in plan if s["split"] == "train"}
    test = {s["name"] for s in plan if s["split"] == "test"}
    assert train and test and not (train & test)
    assert {"lung_left", "vertebrae_lumbar"} <= test and "lung_right" in train
    assert any(n.startswith("rib_left") for n in test) and any(n.startswith("rib_right") for n in train)
    assert all(s["split"] == "train" for s in plan if s["group"] == "humerus")
    assert not any(s["source"] == "totalseg-abdomen" for s in plan)   # opt-in
    with_abdomen = plan_real_cohort(RealConfig(include_abdomen=True))
    abdomen = {s["name"]: s["split"] for s in with_abdomen if s["source"] == "totalseg-abdomen"}
    if abdomen:   # with ../shared/data: one solid organ and one vessel held out
        assert abdomen["spleen"] == abdomen["aorta"] == "test"
        assert abdomen["liver"] == abdomen["inferior_vena_cava"] == "train"
        assert len(with_abdomen) == len(plan) + len(abdomen)
    # without the shared data the slicerio part still works
    plan = plan_real_cohort(shared_dir="/nonexistent")
    assert plan and all(s["source"] == "slicerio-chest" for s in plan)


def test_cohort_cases_keep_one_grid_and_differ_by_the_error_model(cohort):
    out, train, test = cohort
    assert {c.case_id for c in train} == {"vertebrae_cervical", "rib_right_1"}
    assert {c.case_id for c in test} == {"rib_left_1"}
    manifest = load_manifest(out)
    assert manifest["seed"] == 3 and len(manifest["cases"]) == 3
    by_id = {c["case_id"]: c for c in manifest["cases"]}
    for case in list_cases(out):
        image = case.load_image()
        ref = case.load_reference(like=image).array.astype(bool)
        ini = case.load_initial(like=image).array.astype(bool)
        assert max(image.array.shape) <= RealConfig().max_size
        sp = image.geometry.spacing_zyx
        assert np.allclose(sp, sp[0])                        # isotropic
        assert ref.sum() > 500 and ini.any()
        entry = by_id[case.case_id]
        errors = entry["errors"]
        assert sum(1 for k, v in errors.items() if isinstance(v, dict) and v["voxels"]) >= 1
        assert (ini != ref).sum() > 0
        d = 2 * (ini & ref).sum() / (ini.sum() + ref.sum())
        assert d == pytest.approx(entry["initial_dice"]) and 0.5 < d < 0.999
        assert entry["split"] in ("train", "test") and entry["source"] == "slicerio-chest"
        assert entry["reference_kind"].startswith("manual")
        # the reference is real anatomy: bone is bright in the CT
        if entry["group"] in ("vertebrae", "rib"):
            assert np.median(image.array[ref]) > 100
    json.loads((out / MANIFEST).read_text())


def test_deterministic_under_seed():
    s = next(p for p in plan_real_cohort() if p["name"] == "rib_right_1")
    a, b = make_real_case(s, 5), make_real_case(s, 5)
    np.testing.assert_array_equal(a.initial.array, b.initial.array)
    np.testing.assert_array_equal(a.reference.array, b.reference.array)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    c = make_real_case(s, 6)
    np.testing.assert_array_equal(a.reference.array, c.reference.array)   # same anatomy
    assert not np.array_equal(a.initial.array, c.initial.array)           # other errors


def test_each_structure_draws_its_own_errors():
    """Structures that share a name's first bytes (the vertebrae, the ribs of a side, both
    humeri) must not share error draws: a test vertebra with the training vertebrae's error
    types and sizes would be a leak across the split."""
    from SCORERefineLib.realct import _name_key
    plan = plan_real_cohort(RealConfig(include_abdomen=True))
    keys = [_name_key(s["name"]) for s in plan]
    assert len(set(keys)) == len(keys)
    by_name = {s["name"]: s for s in plan}
    records = [make_real_case(by_name[n], 0).errors
               for n in ("vertebrae_cervical", "vertebrae_lumbar")]
    draws = [tuple(sorted((k, round(v.get("amplitude_mm", v.get("radius_mm", 0.0)), 6))
                          for k, v in r.items() if isinstance(v, dict) and v.get("voxels")))
             for r in records]
    assert draws[0] != draws[1]


def test_humerus_uses_the_totalsegmentator_mask_as_reference():
    plan = [s for s in plan_real_cohort() if s["group"] == "humerus"]
    if not plan:
        pytest.skip("../shared/data/totalseg-humerus is absent")
    rc = make_real_case(plan[0], 0)
    assert rc.structure["reference_kind"] == "totalsegmentator-fast"
    assert rc.structure["reference_check"]["ok"]
    assert (rc.initial.array != rc.reference.array).any()


def test_abdominal_organs_use_the_totalsegmentator_labels_as_reference():
    """The organs of the TotalSegmentator test CT: the --fast label is the reference (one
    component), its neighbours are the other labels (a leak runs into a real neighbour)."""
    from SCORERefineLib.realct import ABDOMEN_LABELS
    plan = {s["name"]: s for s in plan_real_cohort(RealConfig(include_abdomen=True))
            if s["source"] == "totalseg-abdomen"}
    if not plan:
        pytest.skip("../shared/data/totalseg-humerus is absent")
    assert set(plan) == set(ABDOMEN_LABELS)
    rc = make_real_case(plan["stomach"], 0)
    ref = rc.reference.array.astype(bool)
    assert rc.structure["reference_kind"] == "totalsegmentator-fast"
    assert rc.structure["reference_check"]["ok"]
    assert max(rc.image.geometry.shape) <= RealConfig().max_size
    assert (rc.initial.array.astype(bool) != ref).any()
    assert rc.errors["leak"]["voxels"] > 0 and rc.errors["leak"].get("into") == "neighbour"
    # soft tissue, not bone or air: the label sits on the organ in the CT
    assert -100 < np.median(rc.image.array[ref]) < 150


def test_unknown_structure_is_refused(tmp_path):
    from SCORERefineLib.errors import InputError
    with pytest.raises(InputError, match="unknown real-CT structure"):
        make_real_cohort(tmp_path, structures=["kidney_left"])


def test_masks_stop_where_the_scan_stops():
    """The crops' margin reaches past the scan (20 slices of the abdominal CT, the humerus crops):
    there the CT is -1024 filler and neither the reference nor the initial mask may reach it
    (cohort version 1 let the error model run into it: 1691 stomach voxels at seed 1, 112
    humerus voxels at seed 0, with cohort version 3's error draws)."""
    plan = {s["name"]: s for s in plan_real_cohort(RealConfig(include_abdomen=True))}
    if "stomach" not in plan:
        pytest.skip("../shared/data/totalseg-humerus is absent")
    for name, seed in (("stomach", 1), ("humerus_left", 0)):
        rc = make_real_case(plan[name], seed)
        scanned = rc.scanned.array.astype(bool)
        assert 0.3 < scanned.mean() < 1.0          # the crop does reach past the scan
        assert (rc.image.array[~scanned] == -1024).all()
        assert not (rc.initial.array.astype(bool) & ~scanned).any()
        assert not (rc.reference.array.astype(bool) & ~scanned).any()
        assert rc.errors["outside_scan_voxels_cut"] > 0   # the errors did run past it, and were cut
