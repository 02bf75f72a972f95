"""The benchmark's scribble and hybrid rows and the annotation-efficiency comparison, on tiny data
(``smoke`` and ``real_smoke`` presets: the numbers mean nothing; the wiring, the cost model, the
weight logs, the report and the plot are what is tested)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SCORERefineLib import efficiency as eff
from SCORERefineLib.benchmark import (ROW_LABELS, ROW_TRAINING, SECONDS_PER_DENSE_CORRECTION,
                                      SECONDS_PER_RATING, render_markdown, row_config, run_benchmark,
                                      write_report, PRESETS)
from SCORERefineLib.case import list_cases
from SCORERefineLib.catalog import TRAINING_MODES
from SCORERefineLib.cli import main
from SCORERefineLib.feedback import load_feedback
from SCORERefineLib.scribbles import stroke_summary

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ROWS = ("scribble", "scribble_noisy", "hybrid", "hybrid_fixed_noisy")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("eff") / "work"
    report = run_benchmark("smoke", work, device="cpu", progress="none", rows=ROWS,
                           log=lambda *_: None, efficiency=(1.0,), steps=4)
    return work, report


def test_new_rows_are_registered_with_labels_and_catalog_modes():
    for row in ROWS + ("hybrid_fixed", "hybrid_noisy"):
        assert row in ROW_LABELS and ROW_TRAINING[row].mode in TRAINING_MODES
    cfg = row_config("hybrid_fixed", PRESETS["quick"], "cpu")
    mc = cfg.mode_config
    assert (mc.indicator, mc.dense_count, mc.indicator_start) == ("fixed", 2, 30)   # 8 cases, 300 steps
    assert row_config("hybrid", PRESETS["smoke"], "cpu").batch_size == 2   # a dense and a weak patch
    assert row_config("score", PRESETS["smoke"], "cpu").batch_size == 1
    assert row_config("hybrid", PRESETS["quick"], "cpu", n_train=3).mode_config.dense_count == 1
    assert eff.hybrid_dense_count(1) == 1 and eff.hybrid_dense_count(12) == 3
    assert eff.hybrid_dense_count(4, requested=9) == 3          # one weak case is always left


def test_rows_train_on_simulated_and_misplaced_scribbles_and_log_hybrid_weights(smoke):
    work, report = smoke
    names = [r["method"] for r in report["rows"]]
    assert names == ["initial", "classical", *ROWS]
    train = list_cases(work / "train")
    assert all(c.has_scribbles for c in train)
    noisy = list_cases(work / "train_scribbles_noisy")
    changed = [np.any(a.load_scribbles().array != b.load_scribbles().array) for a, b in zip(train, noisy)]
    assert any(changed)                                     # 20% of the strokes misplaced
    by = {r["method"]: r for r in report["rows"]}
    sums = [stroke_summary(c.load_scribbles().array) for c in train]
    assert by["scribble"]["feedback_seconds"] == pytest.approx(sum(s["seconds"] for s in sums))
    assert f"{sum(s['n_strokes'] for s in sums)} strokes" in by["scribble"]["feedback"]
    for row in ("hybrid", "hybrid_fixed_noisy"):
        h = by[row]["hybrid"]
        assert sorted(h["roles"].values()) == ["dense", "weak", "weak"]
        assert h["history"] and set(h["history"][-1]["weights"]) == {c for c, r in h["roles"].items() if r == "weak"}
        # cost: one dense case at the dense price + the ratings of the two weak ones
        weak = [c for c in train if h["roles"][c.case_id] == "weak"]
        n_r = sum(len(load_feedback(c.feedback_path).ratings()) for c in weak)
        assert by[row]["feedback_seconds"] == pytest.approx(SECONDS_PER_DENSE_CORRECTION + n_r * SECONDS_PER_RATING)
    fixed = by["hybrid_fixed_noisy"]["hybrid"]
    assert fixed["fixed"] and all(w == 1.0 for w in fixed["weights"].values())
    assert "would_be" in fixed["history"][-1]
    assert not by["hybrid"]["hybrid"]["fixed"] and "would_be" not in by["hybrid"]["hybrid"]["history"][-1]
    shares = fixed["noisy_share"]
    assert set(shares) == {c.case_id for c in train} and any(v > 0 for v in shares.values())


def test_efficiency_points_cost_model_report_and_plot(smoke, tmp_path):
    work, report = smoke
    e = report["efficiency"]
    got = {(p["method"], p["n_cases"]) for p in e["points"]}
    assert got == {(m, 3) for m in eff.METHODS}
    initial = next(r for r in report["rows"] if r["method"] == "initial")["dice_mean"]
    assert e["initial_dice"] == initial
    for p in e["points"]:
        if p["method"] == "dense":
            assert p["minutes"] == pytest.approx(p["n_cases"] * SECONDS_PER_DENSE_CORRECTION / 60)
        assert p["dice_gain"] == pytest.approx(p["dice_mean"] - initial)
        assert np.isfinite(p["dice_mean"]) and p["minutes"] > 0
    # the full budget reused the rows already run (same Dice), the others were trained
    scr = next(p for p in e["points"] if p["method"] == "scribbles")
    assert scr["dice_mean"] == next(r for r in report["rows"] if r["method"] == "scribble")["dice_mean"]
    assert (work / "models" / "score_budget3.pt").exists() and (work / "models" / "full_budget3.pt").exists()
    assert not (work / "models" / "scribble_budget3.pt").exists()
    hyb = next(p for p in e["points"] if p["method"] == "hybrid")
    assert hyb["minutes"] * 60 == pytest.approx(next(r for r in report["rows"]
                                                     if r["method"] == "hybrid")["feedback_seconds"])
    md, js = write_report(report, tmp_path / "docs" / "efficiency.md", "scorerefine benchmark --efficiency")
    png = tmp_path / "docs" / "efficiency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "## Annotation efficiency" in text and "![test Dice against expert minutes](efficiency.png)" in text
    assert "## Hybrid: instance-indicator weights" in text and "would be" in text
    for label in (ROW_LABELS[r] for r in ROWS):
        assert label in text
    assert text.count("| ratings (`score`) |") == 1 and "| dense (`full`) | 100% | 3 |" in text
    assert json.loads(js.read_text())["efficiency"]["plot"] == "efficiency.png"


def test_budget_subsets_are_nested_and_cost_less(smoke, tmp_path):
    work, _ = smoke
    one, ids1 = eff.budget_subset(work / "train", tmp_path / "b1", 1, seed=0)
    two, ids2 = eff.budget_subset(work / "train", tmp_path / "b2", 2, seed=0)
    assert len(ids1) == 1 and len(ids2) == 2 and set(ids1) < set(ids2)
    assert [c.case_id for c in list_cases(two)] == ids2 and all(c.has_scribbles for c in list_cases(two))
    for method in ("ratings", "scribbles", "dense"):
        a, b, full = (eff.annotation_cost(d, method)["seconds"] for d in (one, two, work / "train"))
        assert 0 < a < b < full
    assert eff.annotation_cost(two, "dense")["seconds"] == 2 * SECONDS_PER_DENSE_CORRECTION
    with pytest.raises(ValueError, match="unknown feedback kind"):
        eff.annotation_cost(two, "voice")


def test_efficiency_refuses_bad_budgets(tmp_path):
    from SCORERefineLib.errors import InputError
    from SCORERefineLib.pipeline import Split
    with pytest.raises(InputError, match=r"shares of the training cases in \(0, 1\]"):
        eff.run_budgets(Split(tmp_path, tmp_path), PRESETS["smoke"], (0.0, 1.5))


def test_cli_efficiency_on_the_real_ct_preset(tmp_path, capsys):
    out = tmp_path / "docs" / "efficiency-real.md"
    code = main(["benchmark", "--preset", "real_smoke", "--efficiency", "1", "--steps", "1",
                 "--rows", "scribble", "hybrid", "--workdir", str(tmp_path / "w"), "--out", str(out),
                 "--device", "cpu", "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["steps"] == 1 and report["config"]["cohort"] == "real"
    assert "--steps 1" in report["command"] and "--efficiency 1" in report["command"]
    assert {p["method"] for p in report["efficiency"]["points"]} == set(eff.METHODS)
    assert out.with_suffix(".png").exists()
    assert "## Per structure" in out.read_text()
    # bad input: one clear line, exit status 2
    assert main(["benchmark", "--preset", "smoke", "--efficiency", "0", "--workdir", str(tmp_path / "x")]) == 2
    assert "--efficiency takes shares" in capsys.readouterr().err
    assert main(["benchmark", "--preset", "smoke", "--steps", "0", "--workdir", str(tmp_path / "x")]) == 2
