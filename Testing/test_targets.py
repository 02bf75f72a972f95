"""The promise from ratings to training targets (refiner/targets.py, ScoreMode, the sampler).

Value-by-value tables from a known feedback.json, sampling by score, and short tiny-network
trainings in which regions rated "under" must grow, "over" must shrink and 5 must not move.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SCORERefineLib.calibration import AGREEMENT
from SCORERefineLib.case import get_case, write_case
from SCORERefineLib.feedback import CaseFeedback, load_feedback, save_feedback
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.refiner.modes import ScoreConfig, ScoreMode
from SCORERefineLib.refiner.sampling import PatchSampler
from SCORERefineLib.refiner.targets import (NONE, OVER, UNDER, Batch, RegionTables,
                                            feedback_tables, region_tables, target_volume_ratio)
from conftest import ellipsoid

RATED_AT = "2026-11-22T19:00:00Z"


def _feedback_json() -> dict:
    """Two raters; region 4 unrated; region 2 a split vote; region 5 a fractional mean."""
    def r(region, score, error):
        return {"region": region, "score": score, "error": error, "rated_at": RATED_AT, "seconds": 5.0}
    return {
        "format": "scorerefine-feedback", "version": 1, "case_id": "c0",
        "scale": {"min": 1, "max": 5},
        "regions": {"labels": [1, 2, 3, 4, 5], "method": "patches", "n_regions": 5, "band_mm": 3.0},
        "raters": {
            "a": [r(1, 2, "under"), r(2, 3, "over"), r(3, 5, "none"), r(5, 1, "over")],
            "b": [r(1, 2, "under"), r(2, 1, "under"), r(3, 5, "none"), r(5, 2, "over")],
        },
    }


def test_tables_from_a_known_feedback_json(tmp_path):
    path = tmp_path / "feedback.json"
    path.write_text(json.dumps(_feedback_json()))
    regions = np.zeros((4, 4, 6), np.int16)
    for label in range(1, 6):
        regions[..., label] = label
    t = feedback_tables(load_feedback(path), regions)
    assert isinstance(t, RegionTables) and len(t) == 6
    # region:            0      1      2      3      4      5
    np.testing.assert_array_equal(t.rated, [False, True, True, True, False, True])
    np.testing.assert_allclose(t.score, [0, 2, 2, 5, 0, 1.5])
    # region 2: one "over" (score 3), one "under" (score 1): the tie goes to the lower score's type
    np.testing.assert_array_equal(t.error, [NONE, UNDER, UNDER, NONE, NONE, OVER])
    assert (NONE, OVER, UNDER) == (0, 1, 2)
    np.testing.assert_allclose(t.agreement, [0, AGREEMENT[2], AGREEMENT[2], AGREEMENT[5], 0,
                                             (AGREEMENT[1] + AGREEMENT[2]) / 2], rtol=1e-6)
    np.testing.assert_allclose(t.agreement[[1, 3]], [0.60, 1.0], rtol=1e-6)
    np.testing.assert_allclose(t.weight, [0, 16, 16, 1, 0, 4.5 ** 2])
    assert t.n_rated == 4


def test_region_tables_refuse_labels_outside_the_map():
    with pytest.raises(ValueError, match="outside"):
        region_tables({7: (3.0, "over")}, 5)
    fb = CaseFeedback("c0", [1, 2, 3])
    fb.rate("a", 3, 4, "over", rated_at=RATED_AT)
    with pytest.raises(ValueError, match=r"rates regions \[3\]"):
        feedback_tables(fb, np.array([[[0, 1, 2]]], np.int16))


def test_volume_ratio_has_the_direction_of_the_error():
    c = np.array([0.6, 0.6, 0.6, 1.0], np.float32)
    e = np.array([OVER, UNDER, NONE, UNDER])
    rho = target_volume_ratio(c, e)
    assert rho[0] < 1.0 < rho[1] and rho[2] == 1.0 and rho[3] == pytest.approx(1.0)
    np.testing.assert_allclose(target_volume_ratio(torch.as_tensor(c), torch.as_tensor(e)).numpy(), rho)


# ---------------------------------------------------------------------------- a tiny sphere case
N = 24
TRUE_RADIUS = 6.5


def _sphere_case(root, initial_radius: float, score: int, error: str, n_regions: int = 4):
    """Bright sphere of radius TRUE_RADIUS in a 24^3 CT; initial mask a concentric sphere; every
    region rated (score, error) by one rater."""
    from SCORERefineLib.regions import RegionParams, make_regions

    geom = Geometry.isotropic((N, N, N), (1.0, 1.0, 1.0))
    truth = ellipsoid((N, N, N), (TRUE_RADIUS,) * 3)
    rng = np.random.default_rng(0)
    ct = np.where(truth > 0, 900.0, -50.0) + rng.normal(0, 10, truth.shape)
    image = Volume(ct.astype(np.float32), geom)
    initial = Volume(ellipsoid((N, N, N), (initial_radius,) * 3), geom)
    regions = make_regions(initial, RegionParams(n_regions=n_regions, band_mm=3.0))
    case = write_case(root, "c0", image, initial, regions=regions, reference=Volume(truth, geom))
    labels = [int(v) for v in np.unique(regions.array) if v > 0]
    fb = CaseFeedback("c0", labels)
    for label in labels:
        fb.rate("r", label, score, error, rated_at=RATED_AT)
    save_feedback(fb, case.feedback_path)
    return get_case(root, "c0")


def _train_and_refine(root, tmp_path, steps: int = 40):
    from SCORERefineLib.refiner.trainer import TrainConfig, train
    from SCORERefineLib.refiners import make_refiner

    torch.set_num_threads(1)
    out = train(root, tmp_path / "m.pt",
                TrainConfig(steps=steps, patch_size=(16, 16, 16), batch_size=2, network="tiny",
                            device="cpu", checkpoint_every=0, num_threads=1, augment=False),
                progress="none")
    case = get_case(root, "c0")
    image = case.load_image()
    initial = case.load_initial(like=image)
    # what training learnt, without the appearance veto: on this toy the partial-volume voxels
    # just outside the sphere look like it, so the veto takes most of a 2 mm shrink back
    # (118 of 165 voxels after 40 steps; Testing/test_veto.py tests the veto)
    refined = make_refiner(out, device="cpu", veto=False)(image, initial)
    band = case.load_regions(like=image).array > 0
    return int(initial.array[band].sum()), int(refined.array[band].sum()), initial.array, refined.array


def test_regions_rated_under_grow(tmp_path):
    root = tmp_path / "ds"
    _sphere_case(root, TRUE_RADIUS - 2.0, 2, "under")
    before, after, _, _ = _train_and_refine(root, tmp_path)
    assert after > before * 1.05, (before, after)


def test_regions_rated_over_shrink(tmp_path):
    root = tmp_path / "ds"
    _sphere_case(root, TRUE_RADIUS + 2.0, 2, "over")
    before, after, _, _ = _train_and_refine(root, tmp_path)
    assert after < before * 0.95, (before, after)


def test_regions_rated_5_do_not_move(tmp_path):
    root = tmp_path / "ds"
    _sphere_case(root, TRUE_RADIUS, 5, "none")
    _, _, initial, refined = _train_and_refine(root, tmp_path)
    changed = int((initial != refined).sum())
    assert changed <= 0.01 * int(initial.sum()), changed


# ---------------------------------------------------------------------------- sampling
def test_patches_are_drawn_by_score(tmp_path):
    """Two equal halves of the band rated 1 and 5: the 1 gets 25x the 5's sampling weight."""
    root = tmp_path / "ds"
    case = _sphere_case(root, TRUE_RADIUS, 5, "none", n_regions=2)
    fb = load_feedback(case.feedback_path)
    fb.rate("r", 1, 1, "over", rated_at=RATED_AT)
    fb.rate("r", 2, 5, "none", rated_at=RATED_AT)
    save_feedback(fb, case.feedback_path)
    mode = ScoreMode(ScoreConfig(boundary_fraction=0.0))
    targets = mode.prepare_case(case)
    np.testing.assert_allclose(targets.tables.weight, [0, 25, 1])
    idx, w = mode.sampling_weights(targets)
    labels = targets.maps["regions"].reshape(-1)[idx]
    assert w[labels == 1].sum() / w[labels == 2].sum() == pytest.approx(25.0)
    # the sampler follows those weights (no jitter/augmentation influence on the centre's region)
    sampler = PatchSampler([targets], mode, (16, 16, 16), seed=0, augment=False)
    cand_idx, cand_w = sampler.cands[0]
    draws = sampler.rng.choice(len(cand_idx), size=4000, p=cand_w)
    drawn = labels[draws]
    assert (drawn == 1).mean() > 0.9
    batch = sampler.sample(2)
    assert isinstance(batch, Batch) and batch.regions.dtype == torch.long
    assert batch.agreement.shape == (2, 3) and batch.rated.dtype == torch.bool
    assert batch.error[0].tolist() == [NONE, OVER, NONE]
