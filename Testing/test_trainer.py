"""Training: score/full modes, case checks, NaN, cancel and resume (in-process and via the CLI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SCORERefineLib.case import Case, list_cases
from SCORERefineLib.errors import Cancelled, InputError, TrainingError
from SCORERefineLib.imageio import Geometry, Volume, write_volume
from SCORERefineLib.progress import CancelToken
from SCORERefineLib.refiner import modes as modes_mod
from SCORERefineLib.refiner.checkpoint import load_checkpoint, load_refiner
from SCORERefineLib.refiner.modes import FullMode, ScoreConfig, ScoreMode, get_mode
from SCORERefineLib.refiner.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def make_tiny_dataset(root: Path, n: int = 2, seed: int = 3) -> Path:
    """Tiny phantoms + regions + simulated ratings (40x32x32 voxels)."""
    from SCORERefineLib.feedback import save_feedback
    from SCORERefineLib.phantoms import make_cohort
    from SCORERefineLib.rater import simulate_feedback
    from SCORERefineLib.regions import RegionParams, make_regions

    make_cohort(root, n, seed, preset="tiny")
    for i, case in enumerate(list_cases(root)):
        image = case.load_image()
        initial = case.load_initial(like=image)
        regions = make_regions(initial, RegionParams(n_regions=6))
        write_volume(regions, case.regions_path, dtype=np.int16)
        fb = simulate_feedback(case.case_id, initial.array, case.load_reference(like=image).array,
                               regions.array, seed=i)
        save_feedback(fb, case.feedback_path)
    return root


@pytest.fixture(scope="module")
def tiny_master(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds")


@pytest.fixture
def tiny(tiny_master, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(tiny_master, dst)
    return dst


def cfg(**kw) -> TrainConfig:
    base = dict(steps=6, patch_size=(16, 16, 16), batch_size=1, network="tiny", device="cpu",
                checkpoint_every=0, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_score_training_never_reads_references(tiny, tmp_path, monkeypatch):
    for case in list_cases(tiny):
        case.reference_path.unlink()

    def forbidden(*a, **k):
        raise AssertionError("ScoreMode opened a reference")
    monkeypatch.setattr(Case, "load_reference", forbidden)
    out = train(tiny, tmp_path / "m.pt", cfg(), progress="none")
    model, meta = load_refiner(out)
    assert meta["mode"] == "score" and meta["step"] == 6 and meta["complete"]
    assert meta["n_rated_regions"] > 0 and meta["n_cases"] == 2
    assert meta["channels"] == ["ct", "initial", "edge"]
    assert meta["training"]["steps"] == 6


def test_training_changes_weights_and_ablation_channels(tiny, tmp_path):
    out = train(tiny, tmp_path / "m.pt", cfg(mode_config=ScoreConfig(no_edge=True, no_direction=True)),
                progress="none")
    model, meta = load_refiner(out)
    assert meta["channels"] == ["ct", "initial"] and meta["task"] == "refiner"
    assert meta["training"]["mode_config"]["no_direction"] is True
    assert float(model.head.weight.detach().abs().sum()) > 0  # the zero-initialised head has learnt


def test_full_mode_and_missing_references(tiny, tmp_path):
    out = train(tiny, tmp_path / "f.pt", cfg(mode="full"), progress="none")
    assert load_refiner(out)[1]["mode"] == "full"
    for case in list_cases(tiny):
        case.reference_path.unlink()
    with pytest.raises(TrainingError, match="reference"):
        train(tiny, tmp_path / "f2.pt", cfg(mode="full"), progress="none")


def test_no_rated_region_names_the_fix(tiny, tmp_path):
    for case in list_cases(tiny):
        case.feedback_path.unlink()
    with pytest.raises(TrainingError, match="scorerefine rate"):
        train(tiny, tmp_path / "m.pt", cfg(), progress="none")


def test_regions_on_another_grid(tiny, tmp_path):
    case = list_cases(tiny)[0]
    reg = case.load_regions()
    g = reg.geometry
    moved = Volume(reg.array, Geometry(g.size, tuple(s * 2 for s in g.spacing), g.origin, g.direction))
    write_volume(moved, case.regions_path, dtype=np.int16)
    with pytest.raises(TrainingError, match="regions"):
        train(tiny, tmp_path / "m.pt", cfg(), progress="none")


def test_rated_region_missing_from_regions(tiny, tmp_path):
    case = list_cases(tiny)[0]
    reg = case.load_regions()
    arr = reg.array.copy()
    arr[arr == 2] = 0
    write_volume(reg.with_array(arr), case.regions_path, dtype=np.int16)
    with pytest.raises(TrainingError, match=r"not in regions.nii.gz"):
        train(tiny, tmp_path / "m.pt", cfg(), progress="none")


def test_band_no_longer_surrounds_initial(tiny, tmp_path):
    case = list_cases(tiny)[0]
    init = case.load_initial()
    shifted = np.roll(init.array, 9, axis=2)   # the initial mask was changed after rating
    write_volume(init.with_array(shifted), case.initial_path, dtype=np.uint8)
    with pytest.raises(TrainingError, match="no longer surrounds"):
        train(tiny, tmp_path / "m.pt", cfg(), progress="none")


def test_patch_must_fit_network(tiny, tmp_path):
    with pytest.raises(InputError, match="multiples of 4"):
        train(tiny, tmp_path / "m.pt", cfg(patch_size=(18, 16, 16)), progress="none")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = modes_mod.ScoreMode.loss

    def nan_after_seven(self, logits, batch):
        calls["n"] += 1
        total, terms = real(self, logits, batch)
        if calls["n"] > 7:
            total = total * float("nan")
        return total, terms
    monkeypatch.setattr(modes_mod.ScoreMode, "loss", nan_after_seven)
    out = tmp_path / "m.pt"
    with pytest.raises(TrainingError, match=r"NaN.*step 5"):
        train(tiny, out, cfg(steps=20, checkpoint_every=5), progress="none")
    payload = load_checkpoint(out)
    assert payload["metadata"]["step"] == 5 and not payload["metadata"]["complete"]
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values() if v.is_floating_point())


def test_cancel_in_process_then_resume(tiny, tmp_path, monkeypatch):
    token = CancelToken()
    calls = {"n": 0}
    real = modes_mod.ScoreMode.loss

    def cancel_at_four(self, logits, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            token.cancel("test")
        return real(self, logits, batch)
    monkeypatch.setattr(modes_mod.ScoreMode, "loss", cancel_at_four)
    out = tmp_path / "m.pt"
    with pytest.raises(Cancelled):
        train(tiny, out, cfg(steps=10), progress="none", cancel=token)
    meta = load_checkpoint(out)["metadata"]
    assert meta["step"] == 4 and not meta["complete"]
    assert load_checkpoint(out)["optimizer"] is not None
    train(tiny, out, cfg(steps=10, resume=True), progress="none")
    meta = load_checkpoint(out)["metadata"]
    assert meta["step"] == 10 and meta["complete"]
    assert calls["n"] == 10   # 4 before the cancel + 6 after resuming


def test_resume_refuses_other_mode(tiny, tmp_path):
    out = train(tiny, tmp_path / "m.pt", cfg(steps=2), progress="none")
    with pytest.raises(TrainingError, match="mode"):
        train(tiny, out, cfg(steps=4, mode="full", resume=True), progress="none")


@pytest.mark.slow
def test_cli_sigint_saves_checkpoint_and_resume_finishes(tiny, tmp_path):
    out = tmp_path / "m.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "SCORERefineLib.cli", "train", str(tiny), "--out", str(out),
           "--network", "tiny", "--patch", "16", "16", "16", "--batch", "1", "--device", "cpu",
           "--progress", "json", "--threads", "1", "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd + ["--steps", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    lines = []
    try:
        for line in proc.stdout:
            rec = json.loads(line)
            lines.append(rec)
            if rec.get("event") == "progress" and rec["step"] >= 3:
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err
    assert {"stage", "step", "total", "loss", "eta"} <= set(lines[-1])
    meta = load_checkpoint(out)["metadata"]
    saved = meta["step"]
    assert 3 <= saved < 100000 and not meta["complete"]
    total = saved + 4
    res = subprocess.run(cmd + ["--steps", str(total), "--resume"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    meta = load_checkpoint(out)["metadata"]
    assert meta["step"] == total and meta["complete"]
    steps = [json.loads(l)["step"] for l in res.stdout.splitlines() if '"progress"' in l]
    assert steps[0] == saved + 1 and steps[-1] == total


def test_ablation_switches_map_onto_the_loss():
    base = ScoreMode()
    assert base.weights.pseudo > 0 and base.weights.use_error_type is True
    nd = ScoreMode(ScoreConfig(no_direction=True)).weights
    assert nd.direction == 0 and nd.direction_voxel == 0
    assert nd.use_error_type is False and nd.pseudo > 0
    na = ScoreMode(ScoreConfig(no_amount=True)).weights
    assert na.pseudo == 0 and na.amount == 0 and na.volume == 0
    assert na.direction > 0
    assert ScoreMode(ScoreConfig(no_edge=True)).channels == ("ct", "initial")
    cfg_ = ScoreConfig(no_direction=True)
    ScoreMode(cfg_)
    assert cfg_.weights.direction > 0            # the switch does not rewrite the stored weights
    assert ScoreConfig().weights is not ScoreConfig().weights  # no shared mutable default
    assert ScoreConfig.from_dict(cfg_.to_dict()) == cfg_       # round trip through metadata
    with pytest.raises(InputError, match="ScoreConfig"):
        get_mode("score", FullMode.Config())


def test_cli_flags_build_the_config():
    import argparse
    from SCORERefineLib.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(["ds", "--out", "m.pt", "--mode", "score", "--steps", "7", "--patch", "32", "32",
                         "16", "--batch", "3", "--lr", "0.01", "--network", "tiny", "--no-edge",
                         "--no-direction", "--loss-weights", "pin=2,edge=0", "--checkpoint-every",
                         "3", "--seed", "5", "--device", "cpu"])
    c = cmd.config_from_args(args)
    assert (c.mode, c.steps, c.patch_size, c.batch_size, c.lr, c.network, c.seed) == \
        ("score", 7, (32, 32, 16), 3, 0.01, "tiny", 5)
    mode = c.make_mode()
    assert mode.channels == ("ct", "initial") and mode.weights.pin == 2 and mode.weights.edge == 0
    assert mode.weights.use_error_type is False and c.checkpoint_every == 3
    full = cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", "--mode", "full", "--no-edge"]))
    assert full.make_mode().channels == ("ct", "initial")
    with pytest.raises(InputError, match="--no-direction"):
        cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", "--mode", "full", "--no-direction"]))
    broad = cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", "--loss-weights",
                                               "broad,pin=1"])).make_mode().weights
    assert (broad.pseudo_flip_weight, broad.pseudo_remove_max_score, broad.pin) == (3.0, 4, 1.0)
    bad = p.parse_args(["ds", "--out", "m.pt", "--loss-weights", "nonsense=1"])
    with pytest.raises(InputError, match="loss-weights"):
        cmd.config_from_args(bad)


def test_cli_validation_appearance_and_prefetch_flags():
    import argparse
    from SCORERefineLib.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    c = cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", "--val-fraction", "0.3",
                                           "--val-every", "25", "--val-patience", "2",
                                           "--val-batches", "7",
                                           "--appearance-mm", "0", "--prefetch", "0"]))
    assert (c.val_fraction, c.val_every, c.val_patience, c.prefetch) == (0.3, 25, 2, 0)
    assert c.val_batches == 7
    assert c.val_min_cases == 20
    assert c.make_mode().config.appearance_mm == 0.0
    default = cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt"]))
    assert default.val_fraction is None and default.make_mode().config.appearance_mm == 1.0
    assert default.prefetch is None                       # auto: 2 on CUDA, 0 on the CPU
    assert default.val_batches == TrainConfig().val_batches
    for bad in (["--val-fraction", "1.0"], ["--val-every", "0"], ["--val-batches", "0"],
                ["--appearance-mm", "-1"]):
        with pytest.raises(InputError):
            cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", *bad]))
    with pytest.raises(InputError, match="--appearance-mm"):
        cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", "--mode", "full",
                                           "--appearance-mm", "2"]))
