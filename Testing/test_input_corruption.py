"""Synthetic input-mask errors inside regions rated 5 (refiner/input_corruption.py, ScoreMode's
``restore_prob``) and the ``restore`` loss term that undoes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SCORERefineLib.case import get_case
from SCORERefineLib.feedback import load_feedback, save_feedback
from SCORERefineLib.refiner.input_corruption import CorruptionSettings, corrupt_mask
from SCORERefineLib.refiner.losses import ScoreLossWeights, restore_loss, score_loss
from SCORERefineLib.refiner.modes import ScoreConfig, ScoreMode
from SCORERefineLib.refiner.sampling import PatchSampler
from conftest import ellipsoid
from test_targets import RATED_AT, TRUE_RADIUS, _sphere_case


def _ball(n=32, r=9.0):
    return ellipsoid((n, n, n), (r, r, r)).astype(np.float32)


def test_corruption_changes_only_allowed_voxels_and_moves_the_boundary_both_ways():
    m = _ball()
    allowed = np.zeros(m.shape, bool)
    allowed[:, :16] = True
    rng = np.random.default_rng(0)
    grew = shrank = 0
    for _ in range(20):
        out, changed = corrupt_mask(m, allowed, (1.0, 1.0, 1.0), rng)
        assert out.dtype == m.dtype
        np.testing.assert_array_equal(changed, out != m)
        assert changed.any() and not (changed & ~allowed).any()
        grew += int((out > m).sum())
        shrank += int((out < m).sum())
        # changes stay near the boundary: within radius + shift of a boundary voxel
        dist_in = np.linalg.norm(np.argwhere(changed) - 15.5, axis=1)
        assert dist_in.max() < 9.0 + 3.0 + 2.0 and dist_in.min() > 9.0 - 3.0 - 2.0
    assert grew > 0 and shrank > 0


def test_corruption_without_a_boundary_to_move_changes_nothing():
    m = _ball()
    allowed = np.zeros(m.shape, bool)
    allowed[:3] = True          # far from the ball: no boundary voxel there
    out, changed = corrupt_mask(m, allowed, (1.0, 1.0, 1.0), np.random.default_rng(1))
    assert not changed.any()
    np.testing.assert_array_equal(out, m)


def test_corruption_is_seeded_and_sized_in_mm():
    m = _ball()
    allowed = np.ones(m.shape, bool)
    a, _ = corrupt_mask(m, allowed, (1.0, 1.0, 1.0), np.random.default_rng(3))
    b, _ = corrupt_mask(m, allowed, (1.0, 1.0, 1.0), np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    small = CorruptionSettings(max_count=1, radius_mm=(2.0, 2.0), shift_mm=(1.0, 1.0))
    big = CorruptionSettings(max_count=1, radius_mm=(8.0, 8.0), shift_mm=(3.0, 3.0))
    n_small = np.mean([corrupt_mask(m, allowed, (1.0,) * 3, np.random.default_rng(s), small)[1].sum()
                       for s in range(10)])
    n_big = np.mean([corrupt_mask(m, allowed, (1.0,) * 3, np.random.default_rng(s), big)[1].sum()
                     for s in range(10)])
    assert n_big > 5 * n_small > 0


def test_restore_loss_counts_only_the_corrupted_voxels():
    initial = torch.zeros(1, 1, 4, 4, 4)
    initial[..., :2, :, :] = 1.0
    restore = torch.zeros_like(initial)
    restore[..., 1:3, 0, 0] = 1.0              # one voxel inside M0, one outside
    follows = 4.0 * (2 * initial - 1)          # logits on M0's side by more than the margin
    assert float(restore_loss(follows, initial, restore)) == 0.0
    wrong_elsewhere = follows.clone()
    wrong_elsewhere[..., 3, 3, 3] = 10.0       # wrong, but not a corrupted voxel
    assert float(restore_loss(wrong_elsewhere, initial, restore)) == 0.0
    wrong_here = follows.clone()
    wrong_here[..., 1, 0, 0] = -2.0            # a corrupted voxel left as the corrupted input says
    assert float(restore_loss(wrong_here, initial, restore)) == pytest.approx((2 + 2) ** 2 / 2)
    assert float(restore_loss(wrong_here, initial, restore, valid=torch.zeros_like(initial))) == 0.0


def _half_rated_case(tmp_path):
    """Sphere case: region 1 rated 5 (trusted), region 2 rated 2 under."""
    case = _sphere_case(tmp_path / "ds", TRUE_RADIUS, 5, "none", n_regions=2)
    fb = load_feedback(case.feedback_path)
    fb.rate("r", 2, 2, "under", rated_at=RATED_AT)
    save_feedback(fb, case.feedback_path)
    return get_case(tmp_path / "ds", "c0")


def test_training_patches_are_corrupted_only_in_regions_rated_5(tmp_path):
    case = _half_rated_case(tmp_path)
    mode = ScoreMode(ScoreConfig(restore_prob=1.0))
    targets = mode.prepare_case(case)
    sampler = PatchSampler([targets], mode, (16, 16, 16), seed=0, augment=True)
    seen = 0
    for _ in range(6):
        b = sampler.sample(2)
        channel = b.image[:, mode.channels.index("initial"):][:, :1]
        changed = channel != b.initial
        restore = b.extra["restore"] > 0
        assert torch.equal(changed, restore)                 # the map marks exactly the changes
        assert not (restore & (b.regions != 1)).any()       # only in the region rated 5
        seen += int(restore.sum())
        _, terms = score_loss(torch.zeros_like(b.initial), b, mode.weights)
        assert ("restore" in terms) == bool(restore.any())
    assert seen > 0
    # validation patches (augment=False) and the default config are never corrupted
    for sampler in (PatchSampler([targets], mode, (16, 16, 16), seed=0, augment=False),
                    PatchSampler([ScoreMode().prepare_case(case)], ScoreMode(), (16, 16, 16), seed=0)):
        b = sampler.sample(2)
        assert "restore" not in b.extra
        assert torch.equal(b.image[:, 1:2], b.initial)


def test_a_refiner_trained_to_restore_undoes_an_input_error(tmp_path):
    """Every region rated 5 and the initial mask right: without ``restore`` the network only
    learns to copy its input; with it, it learns from the CT where the boundary is, so a dented
    input mask comes back (behaviour, not the loss value)."""
    from SCORERefineLib.imageio import Volume
    from SCORERefineLib.refiner.trainer import TrainConfig, train
    from SCORERefineLib.refiners import make_refiner

    case = _sphere_case(tmp_path / "ds", TRUE_RADIUS, 5, "none")
    image = case.load_image()
    truth = case.load_initial(like=image).array
    dented = ellipsoid(truth.shape, (TRUE_RADIUS - 1.5,) * 3).astype(truth.dtype)
    torch.set_num_threads(1)
    restored = {}
    for name, prob in (("copy", 0.0), ("restore", 1.0)):
        cfg = TrainConfig(steps=60, patch_size=(16, 16, 16), batch_size=2, network="tiny",
                          device="cpu", checkpoint_every=0, num_threads=1, augment=True,
                          mode_config=ScoreConfig(restore_prob=prob))
        model = train(tmp_path / "ds", tmp_path / f"{name}.pt", cfg, progress="none")
        out = make_refiner(model, device="cpu", guard=False)(image, Volume(dented, image.geometry))
        restored[name] = int((out.array.astype(bool) & truth.astype(bool) & ~dented.astype(bool)).sum())
    missing = int((truth.astype(bool) & ~dented.astype(bool)).sum())
    # measured: copy 0, restore 108 of 536 after 60 steps
    assert restored["restore"] > max(2 * restored["copy"], 0.1 * missing), (restored, missing)
