"""``scorerefine quality train|predict`` and ``scorerefine rate --order uncertainty`` (issue 11)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from SCORERefineLib import cli
from SCORERefineLib.feedback import load_feedback
from SCORERefineLib.quality.predict import predict_case
from SCORERefineLib.quality.train import load_quality_model

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def only_these_commands(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"phantoms": "phantoms", "regions": "regions",
                                          "rate": "rate", "quality": "quality"})


def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset (2 phantoms, 6 regions, a person's ratings on case_000) and a quality model
    trained on it through the CLI (synthetic stage, then fine-tuning on the ratings)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "COMMANDS", {"phantoms": "phantoms", "regions": "regions", "rate": "rate",
                                 "quality": "quality"})
    ds = tmp_path_factory.mktemp("qds")
    assert main("phantoms", ds, "--n", "2", "--preset", "tiny") == 0
    assert main("regions", ds, "--n-regions", "6") == 0
    assert main("rate", ds, "--simulate", "--rater", "dr_a", "--case", "case_000") == 0
    model = ds / "quality.pt"
    assert main("quality", "train", ds, "--out", model, "--network", "tiny", "--steps", "12",
                "--finetune-steps", "4", "--corruptions", "1", "--n-regions", "6",
                "--threads", "1", "--progress", "none") == 0
    mp.undo()
    return ds, model


def test_train_writes_a_quality_checkpoint_fine_tuned_on_ratings(trained):
    ds, model = trained
    payload = torch.load(model, weights_only=True)
    meta = payload["metadata"]
    assert meta["task"] == "quality" and meta["stage"] == "fine-tuned on ratings"
    assert meta["n_rated"] == 6 and meta["n_synthetic"] > 0
    assert meta["training"]["init"] is not None


def test_predict_writes_suggestions_and_keeps_the_persons_ratings(trained, capsys):
    ds, model = trained
    fb_path = ds / "cases" / "case_000" / "feedback.json"
    before = json.loads(fb_path.read_text())
    capsys.readouterr()
    assert main("quality", "predict", ds, "--model", model) == 0
    out = capsys.readouterr().out
    assert "case_000: 6 regions suggested" in out and "confidently good" in out
    after = json.loads(fb_path.read_text())
    assert after["raters"]["dr_a"] == before["raters"]["dr_a"]
    assert after["model_raters"] == ["suggested"] and len(after["raters"]["suggested"]) == 6
    fb = load_feedback(fb_path)
    assert fb.human_raters() == ["dr_a"]
    assert fb.consensus() == load_feedback(fb_path).consensus(include_models=False)
    # a case without feedback gets a file holding only the suggestions
    fb1 = load_feedback(ds / "cases" / "case_001" / "feedback.json")
    assert fb1.human_raters() == [] and len(fb1.raters["suggested"]) == 6
    # a person's name as the model rater: refused before anything is written
    snapshot = {c: (ds / "cases" / c / "feedback.json").read_bytes() for c in ("case_000", "case_001")}
    assert main("quality", "predict", ds, "--model", model, "--rater", "dr_a") == 2
    assert "holds a person's ratings in case(s) case_000" in capsys.readouterr().err
    assert all((ds / "cases" / c / "feedback.json").read_bytes() == b for c, b in snapshot.items())
    # predicting again replaces the suggestions, the person's ratings stay
    assert main("quality", "predict", ds, "--model", model, "--case", "case_000") == 0
    assert json.loads(fb_path.read_text())["raters"]["dr_a"] == before["raters"]["dr_a"]


def test_rate_order_uncertainty_follows_entropy(trained, capsys):
    ds, model = trained
    capsys.readouterr()
    # p-min above 1: nothing counts as confidently good, so the order is the pure entropy order
    assert main("rate", ds, "--order", "uncertainty", "--model", model, "--case", "case_001",
                "--p-min", "1.0") == 0
    out = capsys.readouterr().out
    listed = [int(m) for m in re.findall(r"region\s+(\d+)", out)]
    ents = [float(m) for m in re.findall(r"entropy ([0-9.]+)", out)]
    qmodel, meta = load_quality_model(model)
    from SCORERefineLib.case import get_case
    case = get_case(ds, "case_001")
    image = case.load_image()
    preds = predict_case(qmodel, meta, image, case.load_initial(like=image),
                         case.load_regions(like=image))
    expected = sorted(preds, key=lambda r: (-preds[r].entropy, preds[r].expected_score, r))
    assert listed == expected and ents == sorted(ents, reverse=True)
    assert "confidently good" not in out.split("\n", 1)[1]
    # confidently-good regions go last and are flagged
    assert main("rate", ds, "--order", "uncertainty", "--model", model, "--case", "case_001",
                "--p-min", "0.0") == 0
    out = capsys.readouterr().out
    assert out.count("[confidently good]") == len(preds)
    # regions a person rated are not listed again; nothing is written
    fb_before = (ds / "cases" / "case_000" / "feedback.json").read_bytes()
    assert main("rate", ds, "--order", "uncertainty", "--model", model, "--case", "case_000") == 0
    out = capsys.readouterr().out
    assert "rate 0 region(s)" in out and "already rated by people" in out
    assert (ds / "cases" / "case_000" / "feedback.json").read_bytes() == fb_before


def test_wrong_or_missing_model_is_one_clear_line(trained, tmp_path, capsys):
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.network import build_network, network_config

    ds, _ = trained
    cfg = network_config("tiny")
    refiner = save_checkpoint(tmp_path / "refiner.pt", build_network(cfg),
                              {"channels": list(cfg.in_channels), "network": cfg.to_dict(),
                               "normalisation": {}, "mode": "score"})
    capsys.readouterr()
    for argv in (("quality", "predict", ds, "--model", refiner),
                 ("rate", ds, "--order", "uncertainty", "--model", refiner),
                 ("quality", "predict", ds, "--model", tmp_path / "nope.pt")):
        assert main(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error:" in err
    assert main("quality", "predict", ds, "--model", refiner) == 2
    assert "not a quality-predictor" in capsys.readouterr().err
    assert main("rate", ds, "--order", "uncertainty") == 2


def test_missing_reference_or_regions_is_one_clear_line(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert main("phantoms", ds, "--n", "1", "--preset", "tiny") == 0
    capsys.readouterr()
    # no regions yet
    assert main("quality", "predict", ds, "--model", tmp_path / "q.pt") == 2
    assert "regions.nii.gz" in capsys.readouterr().err
    # no reference and no ratings: nothing to train on
    (ds / "cases" / "case_000" / "reference.nii.gz").unlink()
    assert main("quality", "train", ds, "--out", tmp_path / "q.pt", "--network", "tiny",
                "--steps", "2", "--progress", "none") == 2
    assert "reference.nii.gz" in capsys.readouterr().err


def test_refine_refuses_a_quality_model_naming_the_task(trained, monkeypatch, capsys):
    ds, model = trained
    monkeypatch.setattr(cli, "COMMANDS", {"refine": "refine"})
    capsys.readouterr()
    assert main("refine", "--model", model, "--dataset", ds, "--case", "case_001") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'quality' model" in err and "newer" not in err


def test_train_on_realistic_corruptions_and_the_cases_own_initial_masks(trained, tmp_path):
    ds, _ = trained
    counts = {}
    for extra in ((), ("--with-initial",)):
        out = tmp_path / f"q{len(extra)}.pt"
        assert main("quality", "train", ds, "--out", out, "--network", "tiny", "--steps", "1",
                    "--finetune-steps", "0", "--corruptions", "1", "--n-regions", "6",
                    "--corruption", "realistic", "--threads", "1", "--progress", "none", *extra) == 0
        counts[extra] = torch.load(out, weights_only=True)["metadata"]["n_synthetic"]
    # the same realistic corruptions (same seed), plus one sample per region of each initial mask
    assert counts[("--with-initial",)] > counts[()] > 0
