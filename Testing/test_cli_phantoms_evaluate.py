"""`scorerefine phantoms` and `scorerefine evaluate` end to end (tiny preset, tmp folders)."""

import csv
import json

import numpy as np

from SCORERefineLib.case import list_cases
from SCORERefineLib.cli import main
from SCORERefineLib.imageio import write_volume
from SCORERefineLib.phantoms import COHORT_FILE


def test_phantoms_then_evaluate(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert main(["phantoms", str(ds), "--n", "2", "--seed", "5", "--preset", "tiny",
                 "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 phantom case(s)" in out and "initial Dice vs reference: mean" in out
    assert [c.case_id for c in list_cases(ds)] == ["case_000", "case_001"]
    cohort = json.loads((ds / COHORT_FILE).read_text())
    assert cohort["preset"] == "tiny" and cohort["seed"] == 5

    # the same cases again are refused without --force
    assert main(["phantoms", str(ds), "--n", "1", "--preset", "tiny", "--progress", "none"]) == 2
    assert "already holds" in capsys.readouterr().err

    assert main(["evaluate", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "case_000" in out and "mean" in out and "hd95" in out
    with open(ds / "evaluation_initial.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["case_000", "case_001"]
    data = json.loads((ds / "evaluation_initial.json").read_text())
    assert data["prediction"] == "initial" and len(data["rows"]) == 2
    expected = np.mean([c["initial_dice"] for c in cohort["cases"]])
    assert abs(data["summary"]["dice"]["mean"] - expected) < 1e-6

    # a named prediction present in one case only; custom output
    case = list_cases(ds)[1]
    write_volume(case.load_reference(), case.prediction_path("refined"))
    assert main(["evaluate", str(ds), "--prediction", "refined", "--out",
                 str(tmp_path / "res" / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "skipped case_000" in out
    data = json.loads((tmp_path / "res" / "eval.json").read_text())
    assert (tmp_path / "res" / "eval.csv").exists()
    assert data["rows"][0]["case_id"] == "case_001" and data["rows"][0]["dice"] == 1.0

    assert main(["evaluate", str(ds), "--prediction", "nothing"]) == 2
    assert "could be evaluated" in capsys.readouterr().err


def test_evaluate_not_a_dataset(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none")]) == 2
    assert "scorerefine phantoms" in capsys.readouterr().err
