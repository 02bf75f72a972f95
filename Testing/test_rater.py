"""Simulated rater: calibration, error types, noise model, real anatomy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from conftest import ellipsoid
from SCORERefineLib.calibration import dice_to_score
from SCORERefineLib.errors import GridMismatchError, InputError
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.rater import SECONDS_PER_RATING, region_agreement, simulate_feedback
from SCORERefineLib.regions import METHODS, RegionParams, split_regions

T = "2026-11-22T19:00:00Z"


def scores_and_errors(fb, rater="simulated"):
    return {r.region: (r.score, r.error) for r in fb.ratings(rater)}


def oracle(initial, reference, regions):
    """Per-region (score, error) computed label by label, independently of the rater."""
    out = {}
    for lab in np.unique(regions[regions > 0]):
        sel = regions == lab
        i, r = initial[sel] != 0, reference[sel] != 0
        denom = i.sum() + r.sum()
        dice = 1.0 if denom == 0 else 2 * (i & r).sum() / denom
        over, under = (i & ~r).sum(), (r & ~i).sum()
        score = dice_to_score(dice)
        out[int(lab)] = (score, "none" if score == 5 else ("over" if over >= under else "under"))
    return out


@pytest.fixture
def rod():
    """An elongated object (along x) cut into 4 slabs."""
    ref = ellipsoid((20, 20, 48), (6, 6, 20))
    return ref


@pytest.mark.parametrize("kind", ["over", "under"])
def test_local_error_is_found_where_it_was_put(rod, kind):
    ref = rod
    changed = ndi.binary_dilation(ref, iterations=2) if kind == "over" else ndi.binary_erosion(ref, iterations=2)
    initial = ref.copy()
    initial[:, :, 34:] = changed[:, :, 34:]             # only the +x end is wrong
    regions = split_regions(initial, (1, 1, 1), RegionParams("slabs", 4, 3.0))
    fb = simulate_feedback("c", initial, ref, regions, rated_at=T)
    got = scores_and_errors(fb)
    assert sorted(got) == [1, 2, 3, 4]
    assert got[4][1] == kind and got[4][0] <= 3          # the slab at +x: clear error of that kind
    assert got[1] == (5, "none") and got[2] == (5, "none")
    assert all(e in (kind, "none") for _, e in got.values())
    ag = region_agreement(initial, ref, regions)
    assert ag[1]["over"] == ag[1]["under"] == 0 and ag[1]["dice"] == 1.0
    assert ag[4][kind] > 0 and ag[4]["over" if kind == "under" else "under"] == 0
    r = fb.raters["simulated"][4]
    assert (r.rater, r.seconds, r.rated_at) == ("simulated", SECONDS_PER_RATING, T)


def test_noise_free_rater_is_exactly_the_calibration(rng):
    shape = (24, 24, 24)
    ref = ellipsoid(shape, (7, 8, 9))
    initial = ellipsoid(shape, (7, 9, 8), centre=(12.5, 11, 12))     # mixed over and under
    for method in METHODS:
        regions = split_regions(initial, (1.5, 1, 1), RegionParams(method, 10, 3.0))
        got = scores_and_errors(simulate_feedback("c", initial, ref, regions))
        assert got == oracle(initial, ref, regions)
        assert {e for _, e in got.values()} >= {"over", "under"}
        assert len({s for s, _ in got.values()}) >= 3        # the scores are not trivially equal


def test_both_empty_region_scores_five_and_volumes_are_accepted():
    geom = Geometry.isotropic((6, 6, 6))
    regions = np.zeros((6, 6, 6), np.int16)
    regions[:3] = 1
    regions[3:] = 2
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[4, 2:4, 2:4] = 1                                   # only in region 2
    fb = simulate_feedback("c", Volume(np.zeros_like(ref), geom), Volume(ref, geom),
                           Volume(regions, geom))
    assert scores_and_errors(fb) == {1: (5, "none"), 2: (1, "under")}
    ag = region_agreement(np.zeros_like(ref), ref, regions)
    assert ag[1]["dice"] == 1.0 and ag[2] == {"dice": 0.0, "over": 0, "under": 4, "initial": 0,
                                              "reference": 4, "voxels": 108}


def many_regions(rng, n_side=40, block=2):
    """A random initial/reference pair on a grid cut into (n_side/block)^3 block regions, with
    a spread of region scores. Returns (initial, reference, regions)."""
    shape = (n_side,) * 3
    nb = n_side // block
    regions = (np.arange(nb ** 3).reshape((nb,) * 3) + 1).repeat(block, 0).repeat(block, 1).repeat(block, 2)
    ref = rng.random(shape) < 0.5
    flip = rng.random(shape) < rng.random((nb,) * 3).repeat(block, 0).repeat(block, 1).repeat(block, 2) * 0.6
    initial = ref ^ flip
    return initial, ref, regions.astype(np.int32)


def test_noise_rate_matches_p(rng):
    initial, ref, regions = many_regions(rng)
    clean = scores_and_errors(simulate_feedback("c", initial, ref, regions, rated_at=T))
    p = 0.2
    noisy = scores_and_errors(simulate_feedback("c", initial, ref, regions, noise=p, seed=3, rated_at=T))
    n = len(clean)
    assert n == 8000
    assert len({s for s, _ in clean.values()}) == 5
    moved = np.array([noisy[k][0] != clean[k][0] for k in clean])
    steps = np.array([abs(noisy[k][0] - clean[k][0]) for k in clean])
    assert set(steps.tolist()) == {0, 1}                      # one step at most
    assert abs(moved.mean() - p) < 0.03
    # type flips, over regions whose score stays below 5 and that had an error type
    keep = [k for k in clean if clean[k][1] != "none" and noisy[k][0] < 5]
    flipped = np.mean([noisy[k][1] != clean[k][1] for k in keep])
    assert len(keep) > 3000 and abs(flipped - p) < 0.03
    # validity: 5 <-> none in every rating
    assert all((s == 5) == (e == "none") for s, e in noisy.values())
    # a 5 moved down got a real error type, a 4 moved up got none
    assert any(clean[k] == (5, "none") and noisy[k][0] == 4 for k in clean)
    assert any(clean[k][0] == 4 and noisy[k] == (5, "none") for k in clean)


def test_seeds_are_deterministic(rng):
    initial, ref, regions = many_regions(rng, n_side=20)
    run = lambda seed: scores_and_errors(simulate_feedback("c", initial, ref, regions, noise=0.3,
                                                           seed=seed, rated_at=T))
    assert run(5) == run(5)
    assert run(5) != run(6)
    assert simulate_feedback("c", initial, ref, regions, noise=0.3, seed=5, rated_at=T) == \
        simulate_feedback("c", initial, ref, regions, noise=0.3, seed=5, rated_at=T)


def test_full_noise_flips_every_type_and_moves_every_score(rng):
    initial, ref, regions = many_regions(rng, n_side=16)
    clean = scores_and_errors(simulate_feedback("c", initial, ref, regions))
    noisy = scores_and_errors(simulate_feedback("c", initial, ref, regions, noise=1.0, seed=1))
    assert all(noisy[k][0] != clean[k][0] for k in clean)
    assert all(noisy[k][1] != clean[k][1] for k in clean if clean[k][1] != "none" and noisy[k][0] < 5)


def test_bad_inputs_are_refused():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputError, match="noise must be a probability"):
        simulate_feedback("c", a, a, a + 1, noise=1.5)
    with pytest.raises(GridMismatchError, match="one shape"):
        region_agreement(a, np.zeros((4, 4, 5)), a)
    g1, g2 = Geometry.isotropic((4, 4, 4)), Geometry.isotropic((4, 4, 4), (2, 2, 2))
    with pytest.raises(GridMismatchError, match="different voxel grids"):
        region_agreement(Volume(a, g1), Volume(a, g2), a + 1)


def test_real_chest_ct_vertebral_column_errors_are_found(slicerio_data):
    seg = sitk.ReadImage(str(slicerio_data / "Segmentation.seg.nrrd"))
    ref = sitk.GetArrayFromImage(seg) == 3                     # thoracic vertebral column
    spacing = tuple(reversed(seg.GetSpacing()))                # 10 x 3.05 x 3.05 mm
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    initial = ref.copy()
    initial[11:16] = ndi.binary_dilation(ref, in_plane)[11:16]   # upper vertebrae: too big
    initial[22:28] = ndi.binary_erosion(ref, in_plane)[22:28]    # lower vertebrae: too small
    for method in METHODS:
        regions = split_regions(initial, spacing, RegionParams(method, 8, 3.0))
        got = scores_and_errors(simulate_feedback("c", initial, ref, regions))
        seen = set()
        for lab, (score, err) in got.items():
            z = np.argwhere(regions == lab)[:, 0]
            if z.max() <= 16:                                  # only the dilated part (+1 slice of band)
                assert err == "over" and score < 5, (method, lab, score, err)
                seen.add("over")
            elif z.min() >= 21:                                # only the eroded part
                assert err == "under" and score < 5, (method, lab, score, err)
                seen.add("under")
            elif z.min() >= 17 and z.max() <= 20:              # untouched
                assert (score, err) == (5, "none")
                seen.add("none")
        assert seen >= {"over", "under"}, method
        assert got == oracle(initial, ref, regions)
