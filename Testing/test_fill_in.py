"""Ratings the quality predictor fills in (issue 11): SCORE training on predicted ratings of unrated
regions, weighted q^2 for confidence q >= 0.5, through the RegionTables contract (targets.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SCORERefineLib.feedback import load_feedback, save_feedback
from SCORERefineLib.quality.ranking import _prediction
from SCORERefineLib.quality.suggestions import add_suggestions
from SCORERefineLib.refiner.losses import ScoreLossWeights, net_direction_loss, score_loss
from SCORERefineLib.refiner.modes import ScoreConfig, ScoreMode
from SCORERefineLib.refiner.targets import OVER, UNDER, Batch
from test_targets import TRUE_RADIUS, _sphere_case


def _pred(region, probs, err):
    return _prediction(region, np.asarray(probs, float), np.asarray(err, float))


def _case(tmp_path, suggestions):
    """Sphere case, 4 regions; the person rated only region 1 (5, no error); the predictor's
    suggestions (with probabilities) for the others."""
    case = _sphere_case(tmp_path / "ds", TRUE_RADIUS, 5, "none", n_regions=4)
    fb = load_feedback(case.feedback_path)
    for label in (2, 3, 4):
        fb.unrate("r", label)
    add_suggestions(fb, suggestions)
    path = case.feedback_path
    path.unlink()
    save_feedback(fb, path)
    return case


UNDER_2 = [0.05, 0.9, 0.05, 0.0, 0.0]        # score 2, q = 0.9
UNDER_2_LOW = [0.2, 0.4, 0.2, 0.1, 0.1]      # score 2, q = 0.4 < 0.5
U, O = (0.1, 0.8, 0.1), (0.8, 0.1, 0.1)


def _batch(targets) -> Batch:
    def vox(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a))[None, None].to(dtype)

    def tab(name):
        return torch.as_tensor(getattr(targets.tables, name))[None]
    return Batch(image=vox(targets.initial), initial=vox(targets.initial),
                 valid=torch.ones((1, 1) + targets.initial.shape),
                 regions=vox(targets.maps["regions"], torch.long), agreement=tab("agreement"),
                 rated=tab("rated"), error=tab("error"), score=tab("score"), trust=tab("trust"),
                 depth=vox(targets.maps["depth"]), anchor_weight=vox(targets.maps["anchor_weight"]))


def _prepare(case, fill_in=""):
    return ScoreMode(ScoreConfig(fill_in=fill_in)).prepare_case(case)


def test_tables_hold_confident_predictions_at_q_squared_and_people_at_one(tmp_path):
    case = _case(tmp_path, {2: _pred(2, UNDER_2, U), 3: _pred(3, UNDER_2_LOW, U),
                            4: _pred(4, [0, 0, 0, 0.3, 0.7], O), 1: _pred(1, UNDER_2, U)})
    t = _prepare(case, "suggested").tables
    np.testing.assert_array_equal(t.rated, [False, True, True, False, True])
    np.testing.assert_allclose(t.trust, [0, 1.0, 0.81, 0, 0.49], rtol=1e-6)
    assert t.error[2] == UNDER and t.score[2] == 2 and t.score[4] == 5
    assert t.score[1] == 5                      # the person's 5 wins over the suggested 2
    np.testing.assert_allclose(t.weight[2], 16 * 0.81)   # sampling (6-s)^2 x trust
    plain = _prepare(case).tables
    np.testing.assert_array_equal(plain.rated, [False, True, False, False, False])
    np.testing.assert_array_equal(plain.trust, plain.rated.astype(np.float32))


def test_predictions_below_q_one_half_have_no_effect(tmp_path):
    case = _case(tmp_path, {r: _pred(r, UNDER_2_LOW, U) for r in (2, 3, 4)})
    without, with_low = _prepare(case), _prepare(case, "suggested")
    for name in ("agreement", "rated", "error", "score", "weight", "trust"):
        np.testing.assert_array_equal(getattr(without.tables, name), getattr(with_low.tables, name))
    logits = 3.0 * (2.0 * torch.as_tensor(without.initial, dtype=torch.float32)[None, None] - 1.0)
    logits = logits + 0.3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    losses = [score_loss(logits, _batch(t), ScoreLossWeights())[0] for t in (without, with_low)]
    assert float(losses[0]) == float(losses[1])


def _optimise(targets, steps=30):
    batch = _batch(targets)
    logits = (3.0 * (2.0 * batch.initial - 1.0)).clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        loss, _ = score_loss(logits, batch, ScoreLossWeights(edge=0.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    p0 = torch.sigmoid(3.0 * (2.0 * batch.initial - 1.0))[0, 0]
    p = torch.sigmoid(logits.detach())[0, 0]
    reg = batch.regions[0, 0]
    return {r: (float(p0[reg == r].sum()), float(p[reg == r].sum())) for r in (2, 3, 4)}


def test_confident_predictions_move_the_mask_the_way_they_say(tmp_path):
    """Region 2 filled in 'under' and region 3 'over' (q = 0.9) grow and shrink; region 4
    (q = 0.4) and every region without fill-in do not move."""
    torch.manual_seed(0)
    case = _case(tmp_path, {2: _pred(2, UNDER_2, U), 3: _pred(3, UNDER_2, O),
                            4: _pred(4, UNDER_2_LOW, U)})
    filled = _optimise(_prepare(case, "suggested"))
    (b2, a2), (b3, a3), (b4, a4) = filled[2], filled[3], filled[4]
    assert a2 > b2 * 1.05, filled
    assert a3 < b3 * 0.95, filled
    assert a4 == pytest.approx(b4, rel=1e-3), filled
    plain = _optimise(_prepare(case))
    for r in (2, 3):
        assert plain[r][1] == pytest.approx(plain[r][0], rel=1e-3), plain


def test_trust_scales_a_regions_loss_without_renormalising(tmp_path):
    """The same 'under' rating counts q^2 = 0.81 when filled in, 1 when a person gives it."""
    case = _case(tmp_path, {2: _pred(2, UNDER_2, U), 3: _pred(3, UNDER_2, U)})
    t = _prepare(case, "suggested")
    batch = _batch(t)
    prob = torch.full_like(batch.initial, 0.2)
    filled = net_direction_loss(prob, batch.initial, batch.regions, batch.error, batch.valid,
                                batch.trust)
    person = net_direction_loss(prob, batch.initial, batch.regions, batch.error, batch.valid)
    assert float(person) > 0
    assert float(filled) == pytest.approx(0.81 * float(person), rel=1e-5)
    assert int(batch.error[0, 2]) == UNDER and OVER != UNDER


def test_train_flags_set_the_score_mode_fill_in():
    import argparse

    from SCORERefineLib.commands import train as cmd
    from SCORERefineLib.errors import InputError

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    cfg = cmd.config_from_args(parser.parse_args(["ds", "--out", "m.pt", "--fill-in", "suggested",
                                                  "--fill-in-q-min", "0.6"]))
    assert (cfg.mode_config.fill_in, cfg.mode_config.fill_in_q_min) == ("suggested", 0.6)
    assert cmd.config_from_args(parser.parse_args(["ds", "--out", "m.pt"])).mode_config.fill_in == ""
    with pytest.raises(InputError, match="needs --fill-in"):
        cmd.config_from_args(parser.parse_args(["ds", "--out", "m.pt", "--fill-in-q-min", "0.6"]))
    with pytest.raises(InputError, match="--fill-in do\\(es\\) not apply to --mode full"):
        cmd.config_from_args(parser.parse_args(["ds", "--out", "m.pt", "--mode", "full",
                                                "--fill-in", "suggested"]))


def test_fill_in_without_any_suggestions_is_one_clear_error(tmp_path):
    from SCORERefineLib.case import list_cases
    from SCORERefineLib.errors import TrainingError

    _sphere_case(tmp_path / "ds", TRUE_RADIUS, 5, "none", n_regions=4)
    cases = list_cases(tmp_path / "ds")
    assert ScoreMode(ScoreConfig()).select(cases) == cases
    with pytest.raises(TrainingError, match="no case has suggestions from the model rater 'sugested'"):
        ScoreMode(ScoreConfig(fill_in="sugested")).select(cases)
