"""Appearance evidence in the SCORE pseudo-labels' ranking, and the pseudo-label check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SCORERefineLib.case import list_cases
from SCORERefineLib.refiner.losses import pseudo_labels
from SCORERefineLib.refiner.inputs import appearance_evidence, signed_depth
from SCORERefineLib.refiner.pseudo_check import dataset_pseudo_label_check, summarise_check
from SCORERefineLib.refiner.targets import OVER, UNDER

from test_trainer import make_tiny_dataset


def _shifted_cube(shift: int = 3):
    """A bright cube (the truth) and a mask shifted along x: it misses a bright strip on one
    side and covers a dark strip on the other."""
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 30.0, (24, 24, 40)).astype(np.float32)
    truth = np.zeros(img.shape, bool)
    truth[6:18, 6:18, 10:30] = True
    img[truth] += 900.0
    mask = np.roll(truth, shift, axis=2)
    return img, truth, mask


def test_evidence_is_positive_where_the_image_looks_like_the_structure():
    img, truth, mask = _shifted_cube()
    ev = appearance_evidence(img, mask, (1.0, 1.0, 1.0))
    missed = truth & ~mask          # bright, outside the mask
    leaked = mask & ~truth          # dark, inside the mask
    assert ev[missed].mean() > 1.0
    assert ev[leaked].mean() < -1.0
    assert np.all(np.abs(ev) <= 3.0)
    assert not appearance_evidence(img, np.zeros_like(mask), (1, 1, 1)).any()


def _pseudo(key, mask, error):
    regions = np.zeros(mask.shape, np.int64)
    near = np.abs(signed_depth(mask, (1, 1, 1))) <= 4.0
    regions[near] = 1
    t = torch.from_numpy
    target, weight = pseudo_labels(
        t(2.0 * (2.0 * mask.astype(np.float32) - 1.0))[None, None],
        t(mask.astype(np.float32))[None, None], t(regions)[None, None],
        torch.tensor([[1.0, 0.95]]), torch.tensor([[False, True]]), torch.tensor([[0, error]]),
        t(key.astype(np.float32))[None, None], fraction=0.6)
    return target[0, 0].numpy() > 0.5


@pytest.mark.parametrize("error", [UNDER, OVER])
def test_appearance_puts_pseudo_label_flips_where_the_mask_is_wrong(error):
    img, truth, mask = _shifted_cube()
    depth = signed_depth(mask, (1, 1, 1))
    ev = appearance_evidence(img, mask, (1.0, 1.0, 1.0))
    wrong = truth & ~mask if error == UNDER else mask & ~truth
    precision = {}
    for name, key in (("depth", depth), ("appearance", depth + 1.0 * ev)):
        tgt = _pseudo(key, mask, error)
        flips = tgt != mask
        assert flips.any()
        precision[name] = float(wrong[flips].mean())
    assert precision["appearance"] > 0.9
    assert precision["appearance"] > precision["depth"] + 0.3


def test_pseudo_label_check_reports_before_figures_on_rated_cases(tmp_path):
    ds = make_tiny_dataset(tmp_path / "ds", n=2, seed=5)
    rows = dataset_pseudo_label_check(list_cases(ds))
    assert len(rows) == 2
    for r in rows:
        assert 0.0 <= r["initial_dice"] <= 1.0 and 0.0 <= r["pseudo_dice_before"] <= 1.0
        assert r["rated_voxels"] > 0 and r["changed_before"] >= 0
    summary = summarise_check(rows)
    assert summary["n_cases"] == 2 and "precision_before" in summary
    # each side's flips and their precision add up to the pooled figures
    for r in rows:
        assert r["removed_before"] + r["added_before"] == r["changed_before"]
    assert summary["removed_before"] + summary["added_before"] == summary["changed_before"]
    right = sum(summary[f"{s}_before"] * summary[f"{s}_precision_before"]
                for s in ("removed", "added") if summary[f"{s}_before"])
    assert right == pytest.approx(summary["changed_before"] * summary["precision_before"])


def test_opt_in_appearance_channel_gives_the_ranking_the_same_evidence(tmp_path):
    """With the ``appearance`` input channel the SCORE mode ranks pseudo-labels by that channel's
    numbers (times its clip) instead of computing the evidence again: the ranking key is the same
    as without the channel, and the channel is in the network input."""
    from SCORERefineLib.refiner.inputs import KNOWN_CHANNELS
    from SCORERefineLib.refiner.modes.score import ScoreConfig, ScoreMode

    case = list_cases(make_tiny_dataset(tmp_path / "ds", n=1, seed=3))[0]
    plain = ScoreMode().prepare_case(case)
    opted = ScoreMode(ScoreConfig(channels=KNOWN_CHANNELS)).prepare_case(case)
    assert plain.image.shape[0] == 3 and opted.image.shape[0] == 4
    assert np.abs(opted.image[3]).max() > 0.1
    np.testing.assert_allclose(opted.maps["depth"], plain.maps["depth"], atol=1e-4)


def test_target_ceiling_separates_the_count_from_the_ranking(tmp_path):
    from SCORERefineLib.feedback import load_feedback
    from SCORERefineLib.refiner.pseudo_check import target_ceiling
    from SCORERefineLib.refiner.targets import feedback_tables

    ds = make_tiny_dataset(tmp_path / "ds", n=2, seed=5)
    for case in list_cases(ds):
        out = target_ceiling(case)
        # every right flip raises Dice and every wrong one lowers it, so flipping exactly the
        # rated side's wrong voxels bounds the other variants, and the reference in every region
        # bounds that
        for name in ("targets", "true_count", "oracle_ranking"):
            assert out[name] <= out["oracle_both"] + 1e-9
        assert out["oracle_both"] <= out["regions_exact"] + 1e-9
        # oracle_both is exactly: the rated side's wrong voxels fixed, nothing else
        image = case.load_image()
        m0 = case.load_initial(like=image).array != 0
        ref = case.load_reference(like=image).array != 0
        regions = case.load_regions(like=image).array
        tab = feedback_tables(load_feedback(case.feedback_path), regions)
        fixed = m0.copy()
        for r in np.flatnonzero(tab.rated):
            sel = regions == r
            if tab.error[r] == OVER:
                fixed[sel & m0 & ~ref] = False
            elif tab.error[r] == UNDER:
                fixed[sel & ~m0 & ref] = True
        dice = lambda a: 2.0 * (a & ref).sum() / (a.sum() + ref.sum())  # noqa: E731
        assert out["oracle_both"] == pytest.approx(dice(fixed) - dice(m0), abs=1e-9)
        assert out["oracle_both"] > 0.0
        assert out["initial_dice"] == pytest.approx(dice(m0))


def test_score_mode_prepares_the_thin_map_only_when_asked(tmp_path):
    """``pseudo_thin_mm`` > 0: the prepared case holds a ``thin`` label map painted per region
    (each region wholly thin or not; the defaults ask for it at 8 mm since stop 34); at 0 none is
    prepared (the batches are as before the setting existed)."""
    from SCORERefineLib.refiner.losses import ScoreLossWeights
    from SCORERefineLib.refiner.modes.score import ScoreConfig, ScoreMode

    case = list_cases(make_tiny_dataset(tmp_path / "ds", n=1, seed=3))[0]
    assert "thin" not in ScoreMode(ScoreConfig(weights=ScoreLossWeights(pseudo_thin_mm=0.0))
                                   ).prepare_case(case).maps
    assert "thin" in ScoreMode().prepare_case(case).maps
    big = ScoreMode(ScoreConfig(weights=ScoreLossWeights(pseudo_thin_mm=100.0))).prepare_case(case)
    small = ScoreMode(ScoreConfig(weights=ScoreLossWeights(pseudo_thin_mm=0.5))).prepare_case(case)
    regions = big.maps["regions"]
    assert "thin" in ScoreMode.label_maps
    assert bool((big.maps["thin"][regions > 0] == 1).all()) and not big.maps["thin"][regions == 0].any()
    assert not small.maps["thin"].any()
    mid = ScoreMode(ScoreConfig(weights=ScoreLossWeights(pseudo_thin_mm=2.0))).prepare_case(case)
    for r in np.unique(regions[regions > 0]):
        assert len(np.unique(mid.maps["thin"][regions == r])) == 1


def test_pseudo_label_check_lifts_the_flip_limits_on_thin_regions(tmp_path):
    """The check labels as training does: limits at score 1 on both sides take flips away; with
    every region counted thin (``pseudo_thin_mm`` above any depth) the limits are lifted and the
    figures are those without limits."""
    from SCORERefineLib.refiner.losses import ScoreLossWeights
    from SCORERefineLib.refiner.pseudo_check import pseudo_label_check

    case = list_cases(make_tiny_dataset(tmp_path / "ds", n=1, seed=5))[0]
    free = pseudo_label_check(case, weights=ScoreLossWeights.parse("broad"))   # no limits
    lim = dict(pseudo_remove_max_score=1, pseudo_add_max_score=1)
    limited = pseudo_label_check(case, weights=ScoreLossWeights(**lim, pseudo_thin_mm=0.0))
    lifted = pseudo_label_check(case, weights=ScoreLossWeights(**lim, pseudo_thin_mm=100.0))
    assert limited["changed_before"] < free["changed_before"]
    for k in ("changed_before", "removed_before", "added_before", "pseudo_dice_before"):
        assert lifted[k] == free[k]


def test_benchmark_pseudo_label_table_labels_with_the_loss_the_model_was_trained_with(tmp_path):
    """The benchmark's pseudo-label table uses the ``--loss-weights`` of its SCORE rows, not the
    defaults: with flip limits the table counts the flips those limits leave (stop 36 found a
    report trained with one loss and checked with another)."""
    from SCORERefineLib.benchmark import pseudo_label_report
    from SCORERefineLib.refiner.losses import ScoreLossWeights

    ds = make_tiny_dataset(tmp_path / "ds", n=2, seed=5)
    limits = "pseudo_remove_max_score=1,pseudo_add_max_score=1,pseudo_thin_mm=0"
    limited = pseudo_label_report(ds, None, "cpu", score_loss=limits)["summary"]
    free = pseudo_label_report(ds, None, "cpu", score_loss="broad")["summary"]
    assert limited["changed_before"] < free["changed_before"]
    direct = summarise_check(dataset_pseudo_label_check(
        list_cases(ds), weights=ScoreLossWeights.parse(limits)))
    assert limited["changed_before"] == direct["changed_before"]
    defaults = summarise_check(dataset_pseudo_label_check(list_cases(ds)))
    assert pseudo_label_report(ds, None, "cpu")["summary"]["changed_before"] == defaults["changed_before"]
