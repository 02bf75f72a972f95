"""The region-quality predictor (issue 11): corruptions, training, predictions, suggestions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SCORERefineLib.calibration import dice_to_score
from SCORERefineLib.errors import CheckpointError, FeedbackError
from SCORERefineLib.feedback import CaseFeedback, load_feedback, save_feedback
from SCORERefineLib.phantoms import PRESETS, make_phantom
from SCORERefineLib.quality.corruptions import SCORE_DICE_RANGE, corrupt_case
from SCORERefineLib.quality.data import region_crops, synthetic_samples
from SCORERefineLib.quality.network import quality_config
from SCORERefineLib.quality.predict import (QualityPrediction, _prediction, confidently_good,
                                            fill_in_ratings, fill_in_weight, order_by_uncertainty,
                                            predict_case)
from SCORERefineLib.quality.suggestions import accept_suggestion, add_suggestions, write_suggestions
from SCORERefineLib.quality.train import load_quality_model, train_quality
from SCORERefineLib.regions import RegionParams, split_regions


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, PRESETS["tiny"])


def _regions(p):
    return split_regions(p.reference.array, p.reference.geometry.spacing_zyx, RegionParams(n_regions=6))


def test_corruptions_hit_their_target_score_bins(phantom):
    regions = _regions(phantom)
    labels = sorted(int(v) for v in np.unique(regions) if v > 0)
    rng = np.random.default_rng(0)
    spacing = phantom.reference.geometry.spacing_zyx
    hits = total = 0
    for score in (1, 2, 3, 4, 5):
        lo, hi = SCORE_DICE_RANGE[score]
        kinds = ("erode", "hole") if score == 1 else ("dilate", "erode", "shift", "leak", "hole")
        for kind in kinds:
            targets = {r: ((lo + hi) / 2, kind) for r in labels}
            _, truth = corrupt_case(phantom.reference.array, regions, spacing, rng, targets=targets)
            for t in truth.values():
                total += 1
                hits += t.score == score
                assert t.score == dice_to_score(min(t.dice, 1.0))
                assert (t.error == "none") == (t.score == 5)
                if kind in ("dilate", "leak") and t.score < 5:
                    assert t.error == "over"
                if kind in ("erode", "hole") and t.score < 5:
                    assert t.error == "under"
    # regions share a boundary, so a neighbour's corruption can move a region by a bin, rarely
    assert hits / total >= 0.9, (hits, total)


def test_crops_have_the_configured_shape_and_channels(phantom):
    regions = _regions(phantom)
    cfg = quality_config("tiny")
    crops = region_crops(phantom.image, phantom.reference.array, regions, cfg)
    assert set(crops) == set(int(v) for v in np.unique(regions) if v > 0)
    for c in crops.values():
        assert c.shape == (3,) + tuple(cfg.crop_size) and c.dtype == np.float32
        assert 0.0 <= c.min() and c.max() <= 1.0 and c[2].max() > 0.5   # region indicator present


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = quality_config("tiny")
    rng = np.random.default_rng(0)
    samples = []
    for seed in (0, 1):
        p = make_phantom(seed, PRESETS["tiny"])
        samples += synthetic_samples(p.image, p.reference.array, cfg, rng, n_corruptions=6,
                                     region_params=RegionParams(n_regions=6),
                                     score_probs=[0.5, 0.0, 0.0, 0.0, 0.5])
    path = tmp_path_factory.mktemp("q") / "quality.pt"
    train_quality(samples, path, steps=120, batch_size=16, lr=3e-3, config=cfg, seed=0,
                  num_threads=1)
    return path


def test_tiny_training_tells_a_clean_region_from_a_badly_corrupted_one(trained, phantom):
    model, meta = load_quality_model(trained)
    regions = _regions(phantom)
    spacing = phantom.reference.geometry.spacing_zyx
    labels = sorted(int(v) for v in np.unique(regions) if v > 0)
    targets = {r: ((0.3, "erode") if r % 2 else (1.0, "dilate")) for r in labels}
    mask, truth = corrupt_case(phantom.reference.array, regions, spacing, np.random.default_rng(5),
                               targets=targets)
    preds = predict_case(model, meta, phantom.image, mask, regions)
    clean = [preds[r].expected_score for r in labels if truth[r].score == 5]
    bad = [preds[r].expected_score for r in labels if truth[r].score == 1]
    assert clean and bad
    assert np.mean(clean) > np.mean(bad) + 1.0, (clean, bad)
    assert min(clean) > max(bad)


def test_checkpoint_round_trip_and_refusals(trained, tmp_path):
    from SCORERefineLib.refiner.checkpoint import load_checkpoint, load_refiner, save_checkpoint
    from SCORERefineLib.refiner.network import build_network, network_config

    payload = torch.load(trained, weights_only=True)          # data only
    assert payload["metadata"]["task"] == "quality"
    model, meta = load_quality_model(trained)
    x = torch.rand(2, 3, *meta["network"]["crop_size"])
    again, _ = load_quality_model(trained)
    for a, b in zip(model(x), again(x)):
        assert torch.equal(a, b)
    # a quality checkpoint is not a refiner
    with pytest.raises(CheckpointError, match="holds a 'quality' model .*region-quality predictor"):
        load_refiner(trained)
    # a refiner checkpoint is not a quality model
    cfg = network_config("tiny")
    ref_path = save_checkpoint(tmp_path / "refiner.pt", build_network(cfg),
                               {"channels": list(cfg.in_channels), "network": cfg.to_dict(),
                                "normalisation": {}, "mode": "score"})
    load_checkpoint(ref_path)
    with pytest.raises(CheckpointError, match="not a quality-predictor"):
        load_quality_model(ref_path)


def _pred(region, probs, err=(0.6, 0.3, 0.1)):
    return _prediction(region, np.asarray(probs, float), np.asarray(err, float))


def test_uncertainty_order_puts_the_highest_entropy_first():
    preds = {1: _pred(1, [0, 0, 0, 0.05, 0.95]), 2: _pred(2, [0.2] * 5),
             3: _pred(3, [0.1, 0.6, 0.2, 0.05, 0.05]), 4: _pred(4, [0, 0, 0.5, 0.5, 0])}
    order = order_by_uncertainty(preds)
    assert order[0] == 2 and order[-1] == 1
    assert [preds[r].entropy for r in order] == sorted((p.entropy for p in preds.values()), reverse=True)
    assert math.isclose(preds[2].entropy, math.log(5))
    assert order_by_uncertainty(preds, exclude=[2])[0] != 2
    assert confidently_good(preds, [1]) and not confidently_good(preds)


def test_fill_in_weights_are_q_squared_above_one_half_else_zero():
    assert fill_in_weight(0.49) == 0.0
    assert fill_in_weight(0.5) == pytest.approx(0.25)
    assert fill_in_weight(0.9) == pytest.approx(0.81)
    preds = {1: _pred(1, [0, 0, 0, 0.1, 0.9]), 2: _pred(2, [0.3, 0.3, 0.2, 0.1, 0.1]),
             3: _pred(3, [0.7, 0.2, 0.1, 0, 0], err=(0.2, 0.7, 0.1)), 4: _pred(4, [0, 0, 0, 0, 1.0])}
    filled = fill_in_ratings(preds, exclude=[4])
    assert filled == {1: (5, "none", pytest.approx(0.81)), 3: (1, "under", pytest.approx(0.49))}


def _feedback():
    fb = CaseFeedback("case_000", [1, 2, 3])
    fb.rate("dr_a", 1, 2, "under")
    return fb


def test_suggestions_never_overwrite_a_humans_ratings_and_stay_out_of_consensus(tmp_path):
    path = tmp_path / "feedback.json"
    save_feedback(_feedback(), path)
    preds = {r: _pred(r, [0, 0, 0, 0.1, 0.9]) for r in (1, 2, 3)}
    write_suggestions(path, preds, "case_000", [1, 2, 3])
    fb = load_feedback(path)
    assert fb.model_raters == {"suggested"} and fb.human_raters() == ["dr_a"]
    assert fb.raters["dr_a"][1].score == 2                        # the person's rating is intact
    assert fb.consensus() == {1: (2.0, "under")}                  # suggestions not in consensus
    assert fb.consensus(include_models=True)[1] == (3.5, "under")
    # accepting a suggestion never replaces the person's own rating
    assert accept_suggestion(fb, 1, "dr_a") is None
    assert accept_suggestion(fb, 2, "dr_a").score == 5
    save_feedback(fb, path)
    assert load_feedback(path).raters["dr_a"][1].score == 2
    # a model cannot write under a person's name, nor a person over the model's
    with pytest.raises(FeedbackError):
        write_suggestions(path, preds, "case_000", [1, 2, 3], rater="dr_a")
    human = CaseFeedback("case_000", [1, 2, 3])
    human.rate("suggested", 3, 4, "over")                         # a person named 'suggested'
    with pytest.raises(FeedbackError):
        save_feedback(human, path)
    assert load_feedback(path).raters["suggested"][3].score == 5


def test_files_without_model_raters_are_written_as_before(tmp_path):
    path = tmp_path / "feedback.json"
    save_feedback(_feedback(), path)
    assert "model_raters" not in path.read_text()
    fb = load_feedback(path)
    add_suggestions(fb, {1: _pred(1, [1, 0, 0, 0, 0])})
    assert fb.to_dict()["model_raters"] == ["suggested"]
    assert CaseFeedback.from_dict(fb.to_dict()).model_raters == {"suggested"}


def test_realistic_corruptions_are_whole_case_errors_rated_as_the_rater_does(phantom):
    from SCORERefineLib.quality.data import realistic_mask, realistic_samples
    cfg = quality_config("tiny")
    rng = np.random.default_rng(0)
    mask = realistic_mask(phantom.image, phantom.reference.array, np.random.default_rng(1), strength=1.0)
    assert mask.shape == phantom.reference.array.shape and (mask != phantom.reference.array).any()
    samples = realistic_samples(phantom.image, phantom.reference.array, cfg, rng, n_copies=2,
                                region_params=RegionParams(n_regions=6))
    assert samples and all(s.score == dice_to_score(min(s.dice, 1.0)) for s in samples)
    assert all((s.error == "none") == (s.score == 5) for s in samples)
    assert min(s.score for s in samples) < 5
    mixed = synthetic_samples(phantom.image, phantom.reference.array, cfg, np.random.default_rng(0),
                              n_corruptions=2, region_params=RegionParams(n_regions=6),
                              corruption="mixed")
    assert len(mixed) >= 6
    with pytest.raises(ValueError, match="corruption must be one of"):
        synthetic_samples(phantom.image, phantom.reference.array, cfg, rng, corruption="blobs")


def test_accuracy_separates_the_suggested_error_from_the_direction():
    from SCORERefineLib.quality.evaluate import _row, accuracy
    says_five_leans_over = _pred(1, [0, 0, 0.1, 0.3, 0.6], err=(0.5, 0.2, 0.3))
    says_two_under = _pred(2, [0.1, 0.6, 0.3, 0, 0], err=(0.2, 0.7, 0.1))
    rows = [_row(3, "over", 0.8, says_five_leans_over), _row(2, "over", 0.6, says_two_under),
            _row(5, "none", 0.99, says_five_leans_over)]
    a = accuracy(rows)
    assert a["n_errors"] == 2
    assert a["over_under_accuracy"] == 0.0          # 'none' (a 5) and 'under' are both wrong
    assert a["direction_accuracy"] == 0.5           # the first one leans the right way
