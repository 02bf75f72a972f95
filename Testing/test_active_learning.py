"""Simulated active learning (issue 11): the arms, the report, the curve; tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SCORERefineLib.quality.active_learning import (ALL, PRESETS, ratings_fraction_to_reach,
                                                    region_order, run_active_learning,
                                                    savings_sentence, write_report)
from SCORERefineLib.quality.ranking import _prediction


def test_fraction_to_reach_interpolates_between_measured_points():
    curve = [(0.0, 0.0), (0.25, 0.01), (0.5, 0.03), (1.0, 0.02)]
    assert ratings_fraction_to_reach(curve, 0.02) == pytest.approx(0.375)
    assert ratings_fraction_to_reach(curve, 0.0) == 0.0
    assert ratings_fraction_to_reach(curve, 0.05) is None


def test_uncertainty_order_rates_the_most_doubtful_regions_first():
    preds = {1: _prediction(1, np.array([0, 0, 0, 0, 1.0]), np.array([0, 0, 1.0])),
             2: _prediction(2, np.full(5, 0.2), np.array([0.5, 0.5, 0])),
             3: _prediction(3, np.array([0, 0.5, 0.5, 0, 0]), np.array([1.0, 0, 0]))}
    assert region_order("uncertainty", preds, [1, 2, 3, 4], np.random.default_rng(0)) == [2, 3, 1, 4]
    assert sorted(region_order("random", preds, [1, 2, 3, 4], np.random.default_rng(0))) == [1, 2, 3, 4]


def test_smoke_run_writes_every_arm_the_accuracy_and_the_curve(tmp_path, one_torch_thread):
    report = run_active_learning("smoke", tmp_path / "work", log=lambda _l: None)
    cfg = PRESETS["smoke"]
    orders = {p["order"] for p in report["points"]}
    assert orders == {"random", "uncertainty", "uncertainty+fill"}
    assert len(report["points"]) == 3 * len(cfg.ks)
    by = {(p["order"], p["k"]): p for p in report["points"]}
    # no ratings and no fill-in: the initial mask, nothing trained
    assert by[("random", 0)]["ratings"] == 0 and not by[("random", 0)]["trained"]
    assert by[("random", 0)]["gain"] == 0.0
    assert by[("uncertainty+fill", 0)]["trained"]            # trained on filled-in ratings only
    # k ratings per case, and every order rates everything at k = all (one training)
    assert by[("uncertainty", 2)]["ratings"] == 2 * report["n_train"]
    alls = [by[(o, ALL)] for o in orders]
    assert len({(a["ratings"], a["gain"]) for a in alls}) == 1
    assert alls[0]["ratings"] == round(report["mean_regions_per_case"] * report["n_train"])
    acc = report["predictor_accuracy"]
    assert acc["n"] > 0 and {"score_mae", "spearman_dice", "over_under_accuracy", "ece"} <= set(acc)
    md, js, png = write_report(report, tmp_path / "docs" / "al.md", "scorerefine quality benchmark --preset smoke")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text())["cohort"] == "phantoms"
    text = md.read_text()
    assert "| uncertainty+fill | all |" in text and savings_sentence(report) in text
    fills = [p for p in report["points"] if p["order"] == "uncertainty+fill"]
    assert all("filled_in" in p and p["filled_in"] >= 0 for p in fills)
    assert all(0.25 <= p["filled_in_mean_trust"] <= 1.0 for p in fills if p["filled_in"])
