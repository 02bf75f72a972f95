"""End to end on tiny data: the benchmark's every row and report, and the demo command.

The numbers of these tiny runs mean nothing; what is tested is that each row is trained and
evaluated on the held-out split, and that the report states the command, machine, date and targets.
"""

import json

import numpy as np
import pytest

from SCORERefineLib.benchmark import (ROW_LABELS, evaluate_targets, render_markdown, run_benchmark,
                                      write_report)
from SCORERefineLib.case import list_cases
from SCORERefineLib.cli import main
from SCORERefineLib.refiners import make_refiner

pytestmark = pytest.mark.slow


def test_smoke_benchmark_runs_every_row_and_writes_report(tmp_path):
    report = run_benchmark("smoke", tmp_path / "work", device="cpu", progress="none",
                           log=lambda *_: None)
    names = [r["method"] for r in report["rows"]]
    assert names == ["initial", "classical", "score", "score_noisy", "full", "score_no_direction",
                     "score_no_amount", "score_no_edge"]
    # test cases are distinct from training cases and every row saw all of them
    train_ids = {c.case_id for c in list_cases(tmp_path / "work" / "train")}
    assert all(len(report["per_case"][n]) == 2 for n in names)
    for n in names[2:]:
        assert (tmp_path / "work" / "models" / f"{n}.pt").exists()
        for c in list_cases(tmp_path / "work" / "test"):
            assert c.prediction_path(n).exists()
    # the noisy rater wrote its own feedback; the clean set was not touched by it
    noisy = list_cases(tmp_path / "work" / "train_noisy")
    assert [c.case_id for c in noisy] == sorted(train_ids)
    assert "simulated_noisy" in noisy[0].feedback_path.read_text()
    assert "simulated_noisy" not in list_cases(tmp_path / "work" / "train")[0].feedback_path.read_text()
    initial = next(r for r in report["rows"] if r["method"] == "initial")
    assert initial["dice_gain"] == 0.0 and initial["improved"] == 0.0
    assert report["n_ratings"] > 0
    md, js = write_report(report, tmp_path / "docs" / "benchmark.md", "scorerefine benchmark --preset smoke")
    text = md.read_text()
    assert text.startswith("# SCORERefine benchmark")
    assert "scorerefine benchmark --preset smoke" in text and report["date"] in text
    for label in (ROW_LABELS[n] for n in names):
        assert label in text
    assert json.loads(js.read_text())["rows"][0]["method"] == "initial"


def _report(targets, **more) -> dict:
    """A report as run_benchmark returns it, with no rows: enough for render_markdown."""
    return {"machine": {"processor": "p", "cpu_count": 2, "device": "cpu", "platform": "x",
                        "python": "3", "torch": "t", "scorerefine": "0"},
            "config": {"n_train": 1, "n_test": 1, "phantom_preset": "tiny", "seed": 0,
                       "region_method": "patches", "n_regions": 12, "band_mm": 3.0,
                       "network": "tiny", "steps": 1, "patch": [16, 16, 16], "batch": 1,
                       "noise": 0.2},
            "date": "d", "preset": "smoke", "rows": [], "targets": targets, **more}


def test_targets_report_misses_honestly():
    by = {"initial": {"dice_mean": 0.80}, "score": {"dice_mean": 0.82, "improved": 0.75},
          "full": {"dice_mean": 0.90}}
    t = evaluate_targets(by)
    assert [x["met"] for x in t] == [False, False, False]
    assert t[2]["value"] == pytest.approx(0.2)
    by["score"].update(dice_mean=0.85, improved=0.95)
    assert [x["met"] for x in evaluate_targets(by)] == [True, True, False]
    by["score"]["dice_mean"] = 0.89
    assert all(x["met"] for x in evaluate_targets(by))
    report = _report(evaluate_targets({"initial": {"dice_mean": 0.8},
                                       "score": {"dice_mean": 0.81, "improved": 0.5}}))
    assert "**no (missed)**" in render_markdown(report, "cmd")


def test_report_states_another_presets_targets_from_its_json(tmp_path, monkeypatch):
    """``--with-report``: the phantom report states the real-CT preset's targets, read from the
    JSON twin that preset's own run wrote; a file that is not such a report fails before any
    training, naming the file and the fix."""
    from SCORERefineLib import benchmark as B
    from SCORERefineLib.errors import InputError

    other = {"initial": {"dice_mean": 0.85}, "score": {"dice_mean": 0.8634, "improved": 5 / 6},
             "full": {"dice_mean": 0.89}}
    real_md = tmp_path / "benchmark-real.md"
    real_report = {"preset": "real", "date": "2026-12-01T15:03:29+00:00",
                   "command": "scorerefine benchmark --preset real --rows score full",
                   "targets": evaluate_targets(other), "rows": []}
    real_md.with_suffix(".json").write_text(json.dumps(real_report))
    summary = B.other_report_summary(real_md.with_suffix(".json"))
    assert summary["report"] == str(real_md) and summary["preset"] == "real"
    report = _report(evaluate_targets({"initial": {"dice_mean": 0.8},
                                       "score": {"dice_mean": 0.85, "improved": 1.0},
                                       "full": {"dice_mean": 0.86}}), other_reports=[summary])
    md = render_markdown(report, "cmd")
    own, theirs = md.split("### The same targets on preset `real`")
    assert "SCORE mean Dice gain >= 0.03 | +0.0500 | yes" in own
    assert real_report["command"] in theirs and real_report["date"] in theirs
    assert "SCORE mean Dice gain >= 0.03 | +0.0134 | **no (missed)**" in theirs
    assert "SCORE improves >= 90% of test cases | 83.3% | **no (missed)**" in theirs

    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for bad, words in ((tmp_path / "missing.json", "no such file"),
                       (tmp_path / "broken.json", "not a readable JSON file"),
                       (tmp_path / "other.json", "not a benchmark report (no preset, date, command, targets)")):
        with pytest.raises(InputError, match="--with-report") as exc:
            B.other_report_summary(bad)
        assert words in str(exc.value) and "scorerefine benchmark --preset real" in str(exc.value)
    ran = []
    monkeypatch.setattr(B, "run_benchmark", lambda *a, **k: ran.append(a))
    assert main(["benchmark", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                 "--with-report", str(tmp_path / "missing.json"),
                 "--out", str(tmp_path / "b.md")]) != 0
    assert ran == []
    own_report = {k: v for k, v in report.items() if k != "other_reports"}
    monkeypatch.setattr(B, "run_benchmark", lambda *a, **k: dict(own_report))
    out = tmp_path / "docs" / "benchmark.md"
    assert main(["benchmark", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                 "--with-report", str(real_md.with_suffix(".json")), "--out", str(out)]) == 0
    written = out.read_text()
    assert "### The same targets on preset `real`" in written
    assert f"--with-report {real_md.with_suffix('.json')}" in written
    assert json.loads(out.with_suffix(".json").read_text())["other_reports"][0]["preset"] == "real"


def test_demo_command_tiny(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--n-train", "2", "--n-test", "1",
                 "--preset", "tiny", "--steps", "2", "--network", "tiny", "--patch", "16", "16", "16",
                 "--device", "cpu", "--progress", "none"])
    assert code == 0
    out = capsys.readouterr().out
    assert "before/after" in out and "refined" in out and "score" in out
    png = tmp_path / "demo" / "overlay.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reuse_models_skips_training_only_for_the_same_settings(tmp_path):
    from dataclasses import replace

    from SCORERefineLib.benchmark import PRESETS, reusable_model, row_config

    work = tmp_path / "work"
    first = run_benchmark("smoke", work, device="cpu", progress="none", rows=["score"],
                          log=lambda *_: None)
    model = work / "models" / "score.pt"
    stamp = model.stat().st_mtime_ns
    lines = []
    again = run_benchmark("smoke", work, device="cpu", progress="none", rows=["score"],
                          log=lines.append, reuse_models=True)
    assert again["reused_models"] == ["score"] and model.stat().st_mtime_ns == stamp
    assert any("reusing 'score'" in line for line in lines)
    by = {r["method"]: r for r in again["rows"]}
    assert by["score"]["dice_mean"] == next(r for r in first["rows"] if r["method"] == "score")["dice_mean"]
    assert "were reused" in render_markdown(again, "cmd")
    cfg = PRESETS["smoke"]
    assert reusable_model(model, row_config("score", cfg, "cpu")) is not None
    assert reusable_model(model, row_config("score", replace(cfg, steps=3), "cpu")) is None
    assert reusable_model(model, row_config("score_no_edge", cfg, "cpu")) is None
    assert reusable_model(work / "models" / "missing.pt", row_config("score", cfg, "cpu")) is None
    # the validation share as it ran: None (the mode's default, 0) and an explicit 0 are one
    # setting; smoke's 3 cases make no split, so a share asked for there would not either,
    # but a model trained with no share asked is not one trained with a split
    def with_share(share):
        return replace(row_config("score", cfg, "cpu"), val_fraction=share)
    assert reusable_model(model, with_share(0.0)) is not None
    assert reusable_model(model, with_share(0.2)) is None
    # ... and only on the same training data: the benchmark records it beside the model
    from SCORERefineLib.benchmark import training_data_fingerprint
    data = training_data_fingerprint(work / "train")
    assert reusable_model(model, row_config("score", cfg, "cpu"), data) is not None
    assert reusable_model(model, row_config("score", cfg, "cpu"), "0" * 64) is None
    case = list_cases(work / "train")[0]
    fb = json.loads(case.feedback_path.read_text())
    rater = next(iter(fb["raters"]))
    fb["raters"][rater][0]["rated_at"] = "2001-01-01T00:00:00Z"        # timing is not data
    case.feedback_path.write_text(json.dumps(fb))
    assert training_data_fingerprint(work / "train") == data
    fb["raters"][rater][0]["score"] = 4 if fb["raters"][rater][0]["score"] == 5 else 5  # a score is
    case.feedback_path.write_text(json.dumps(fb))
    assert training_data_fingerprint(work / "train") != data
    (work / "models" / "score.data.json").unlink()   # a model from before the record: retrained
    assert reusable_model(model, row_config("score", cfg, "cpu"), data) is None


def test_seeds_train_each_row_per_seed_and_report_their_ensemble(tmp_path):
    """``seeds=2``: the second seed's model is trained with seed + 1 (its checkpoint records it),
    the ensemble row refines with both models' mean probability (the same predictions as
    `refine --model ... --also-model ...`), gets its own targets, and the seeds table lists each
    model alone; a rerun with reuse trains nothing."""
    from SCORERefineLib.refiner.checkpoint import load_checkpoint

    work = tmp_path / "work"
    report = run_benchmark("smoke", work, device="cpu", progress="none", rows=["score", "full"],
                           log=lambda *_: None, seeds=2)
    first, second = work / "models" / "score.pt", work / "models" / "score_seed1.pt"
    seeds = [load_checkpoint(p, map_location="cpu")["metadata"]["training"]["seed"]
             for p in (first, second)]
    assert seeds == [0, 1]
    by = {r["method"]: r for r in report["rows"]}
    assert "score_x2" in by and by["score_x2"]["label"].endswith("mean of 2 seeds")
    assert by["score_x2"]["train_seconds"] >= by["score"]["train_seconds"]
    # the ensemble's predictions are those of the product's ensemble refiner
    refiner = make_refiner(first, "cpu", also=[second])
    case = list_cases(work / "test")[0]
    expected = refiner(case.load_image(), case.load_initial()).array
    got = case.load_prediction("score_x2").array
    assert np.array_equal(expected != 0, got != 0)
    names = [t["target"] for t in report["targets"]]
    assert any(n.startswith("SCORE (mean of 2 seeds) mean Dice gain") for n in names)
    assert any(n.startswith("score_x2: no test case loses") for n in names)
    assert any(n.startswith("full_x2: no test case loses") for n in names)
    # the SCORE targets once per SCORE row, never for a full supervision row
    assert sum("mean Dice gain" in n for n in names) == 2
    assert any(n.startswith("SCORE (mean of 2 seeds) recovers") and n.endswith("(its mean of seeds)")
               for n in names)
    runs = report["seeds"]["rows"]["score"]
    assert [r["seed"] for r in runs] == [0, 1, "ensemble"]
    assert runs[0]["dice_gain"] == pytest.approx(by["score"]["dice_gain"])
    assert runs[2]["dice_gain"] == pytest.approx(by["score_x2"]["dice_gain"])
    md = render_markdown(report, "cmd")
    assert "## Seeds" in md and "mean of 2 seeds" in md
    again = run_benchmark("smoke", work, device="cpu", progress="none", rows=["score", "full"],
                          log=lambda *_: None, seeds=2, reuse_models=True)
    assert sorted(again["reused_models"]) == ["full", "full_seed1", "score", "score_seed1"]
    with pytest.raises(ValueError, match="--seeds"):
        run_benchmark("smoke", work, device="cpu", progress="none", rows=["score"], seeds=0)


def test_the_thick_layer_veto_is_a_benchmark_setting(tmp_path, capsys):
    """``--veto-thick-llr`` reaches every trained row's refiner (the prediction sidecars record
    it), the report and its command state it, a rerun without it refines with the default (0.9),
    ``off`` switches the rule off, and a bad threshold is refused by name before any work."""
    from SCORERefineLib.predictions import read_prediction_info

    work, out = tmp_path / "work", tmp_path / "docs" / "b.md"
    args = ["benchmark", "--preset", "smoke", "--rows", "score", "--workdir", str(work),
            "--out", str(out), "--device", "cpu", "--progress", "none"]
    # (the confidence rule, stop 38, and the add threshold, stop 39, ride along: off and given
    # here, on and by mode below)
    assert main(args + ["--veto-thick-llr", "1.0", "--no-confidence", "--add-threshold", "0.45"]
                ) == 0, \
        capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["veto_thick_llr"] == 1.0 and "--veto-thick-llr 1" in report["command"]
    assert "thick-layer rule at evidence 1" in out.read_text()
    assert report["confidence"] is None and "--no-confidence" in report["command"]
    assert "without the confidence rule (`--no-confidence`)" in out.read_text()
    tests = list_cases(work / "test")
    infos = [read_prediction_info(c, "score") for c in tests]
    assert all(i["veto_thick_llr"] == 1.0 and "vetoed_removed_thick" in i["veto"] for i in infos)
    assert all(i["confidence"] is None for i in infos)
    assert report["add_threshold"]["given"] == 0.45 and "--add-threshold 0.45" in report["command"]
    assert "added from a probability of 0.45 in every mode (`--add-threshold 0.45`)" in \
        out.read_text()
    assert all((i["add_threshold"], i["add_threshold_source"]) == (0.45, "given") for i in infos)
    assert main(args + ["--reuse-models"]) == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["veto_thick_llr"] == 0.8 and "--veto-thick-llr" not in report["command"]
    assert "thick-layer rule at evidence 0.8 (the default" in out.read_text()
    assert "its add rule at evidence 0.25" in out.read_text() and report["veto_add_min_llr"] == 0.25
    assert all(read_prediction_info(c, "score")["veto_thick_llr"] == 0.8 for c in tests)
    limits = {"add_peak": 0.9, "add_support": 0.85, "support_voxels": 2}
    assert report["confidence"] == limits and "--no-confidence" not in report["command"]
    assert "the confidence rule: an added piece" in out.read_text()
    infos = [read_prediction_info(c, "score") for c in tests]     # the sidecar: the report
    assert all(i["confidence"]["limits"] == limits and i["confidence"]["taken_back_voxels"] >= 0
               for i in infos)
    assert report["add_threshold"] == {"given": None, "by_mode": {"score": 0.4}}
    assert "--add-threshold" not in report["command"]
    assert "added from a probability of 0.4 for score models, 0.5 for the others" in \
        out.read_text()
    assert all((i["add_threshold"], i["add_threshold_source"]) == (0.4, "mode score")
               for i in infos)
    # a report of stops 34-35 (no add rule recorded) ran at that time's default, 0.9, and
    # without the confidence rule (none recorded: it did not exist)
    older = {k: v for k, v in report.items()
             if k not in ("veto_add_min_llr", "confidence", "add_threshold")}
    (tmp_path / "older.json").write_text(json.dumps(dict(older, veto_thick_llr=0.9)))
    assert main(["benchmark", "--render", str(tmp_path / "older.json")]) == 0
    text = (tmp_path / "older.md").read_text()
    assert "thick-layer rule at evidence 0.9 (the default" in text and "add rule" not in text
    assert "without the confidence rule (this report predates it" in text
    assert "added from a probability of 0.5 in every mode (before stop 39)" in text
    assert main(args + ["--reuse-models", "--veto-thick-llr", "off"]) == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["veto_thick_llr"] is None and "--veto-thick-llr off" in report["command"]
    assert "thick-layer rule off: `--veto-thick-llr off`" in out.read_text()
    assert all(read_prediction_info(c, "score")["veto_thick_llr"] is None for c in tests)
    assert main(["benchmark", "--preset", "smoke", "--workdir", str(tmp_path / "x"),
                 "--veto-thick-llr", "nan"]) == 2
    assert "thick-layer veto needs a finite evidence threshold" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_score_loss_weights_and_train_only_are_benchmark_settings(tmp_path, capsys):
    """``--loss-weights`` trains the score rows (not the full row) with those SCORE loss weights
    and the report states them; ``--train-only`` trains every model and writes no report, and a
    later ``--reuse-models`` run reports on exactly those models; a bad spec is refused by name
    before any work."""
    from SCORERefineLib.refiner.checkpoint import load_checkpoint

    work, out = tmp_path / "work", tmp_path / "docs" / "b.md"
    args = ["benchmark", "--preset", "smoke", "--rows", "score", "full", "--workdir", str(work),
            "--out", str(out), "--device", "cpu", "--progress", "none",
            "--loss-weights", "organs,pseudo_thin_mm=0"]
    assert main(args + ["--train-only"]) == 0, capsys.readouterr().err
    assert "trained only" in capsys.readouterr().out
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not any((c.folder / "predictions").exists() for c in list_cases(work / "test"))
    weights = load_checkpoint(work / "models" / "score.pt", map_location="cpu")["metadata"][
        "training"]["mode_config"]["weights"]
    assert (weights["pseudo_remove_max_score"], weights["pseudo_add_max_score"],
            weights["pseudo_flip_weight"], weights["pseudo_thin_mm"]) == (2, 3, 12.0, 0.0)
    full_cfg = load_checkpoint(work / "models" / "full.pt", map_location="cpu")["metadata"][
        "training"]["mode_config"]
    assert "weights" not in full_cfg or full_cfg["weights"].get("pseudo_flip_weight") != 12.0
    stamp = (work / "models" / "score.pt").stat().st_mtime_ns

    assert main(args + ["--reuse-models"]) == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert sorted(report["reused_models"]) == ["full", "score"]
    assert all((c.folder / "predictions").exists() for c in list_cases(work / "test"))
    assert (work / "models" / "score.pt").stat().st_mtime_ns == stamp
    assert report["config"]["score_loss"] == "organs,pseudo_thin_mm=0"
    assert "--loss-weights organs,pseudo_thin_mm=0" in report["command"]
    assert "SCORE loss weights `organs,pseudo_thin_mm=0`" in out.read_text()
    # --render rewrites the markdown from the JSON twin alone (nothing re-measured)
    again = tmp_path / "rendered.md"
    assert main(["benchmark", "--render", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()
    assert main(["benchmark", "--render", str(tmp_path / "none.json")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err
    # another preset's report states what it ran with; one from before stop 34 says so
    from SCORERefineLib.benchmark import other_report_summary
    assert "SCORE loss: `organs,pseudo_thin_mm=0`; thick-layer rule: 0.8" in other_report_summary(
        out.with_suffix(".json"))["settings"]
    old = dict(report, config={k: v for k, v in report["config"].items() if k != "score_loss"})
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert "before stop 34" in other_report_summary(tmp_path / "old.json")["settings"]
    # --render with --with-report re-reads the other report's targets (here: the old one, whose
    # target values are changed to be told apart) into this report; its own figures stay
    old["targets"] = [dict(t, value=t["value"] + 123.0) for t in old["targets"]]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["benchmark", "--render", str(out.with_suffix(".json")), "--with-report",
                 str(tmp_path / "old.json")]) == 0
    reread = json.loads(out.with_suffix(".json").read_text())
    assert json.dumps([reread["rows"], reread["targets"]]) == json.dumps(
        [report["rows"], report["targets"]])
    assert json.dumps([t["value"] for t in reread["other_reports"][0]["targets"]]) == json.dumps(
        [t["value"] for t in old["targets"]])   # (smoke values include NaN)
    md = out.read_text()
    assert "before stop 34" in md and "re-read from their reports on" in md
    from SCORERefineLib.benchmark import _targets_table
    assert old["targets"] and all(line in md for line in _targets_table(old["targets"])[2:])
    assert main(["benchmark", "--render", str(out.with_suffix(".json")), "--with-report",
                 str(tmp_path / "none.json")]) == 2
    assert "--with-report" in capsys.readouterr().err
    # a refusal loses nothing
    assert json.dumps(json.loads(out.with_suffix(".json").read_text())) == json.dumps(reread)
    # the defaults are a different training: nothing to reuse, and the report says nothing
    assert main(args[:-2] + ["--reuse-models", "--train-only"]) == 0, capsys.readouterr().err
    assert "score: " in capsys.readouterr().out and (work / "models" / "score.pt").stat(
        ).st_mtime_ns != stamp

    assert main(["benchmark", "--preset", "smoke", "--workdir", str(tmp_path / "x"),
                 "--loss-weights", "organz"]) == 2
    err = capsys.readouterr().err
    assert "--loss-weights" in err and "organs" in err
    assert not (tmp_path / "x").exists()
