"""ScribbleMode and HybridMode (registered modes): a tiny hand-written loop over the PatchSampler,
and training through ``trainer.train`` and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SCORERefineLib import phantoms
from SCORERefineLib.case import list_cases, write_case
from SCORERefineLib.errors import TrainingError
from SCORERefineLib.imageio import write_volume
from SCORERefineLib.errors import InputError
from SCORERefineLib.refiner.checkpoint import load_checkpoint
from SCORERefineLib.refiner.modes import HybridConfig, HybridMode, ScribbleConfig, ScribbleMode
from SCORERefineLib.refiner.trainer import TrainConfig, train
from SCORERefineLib.refiner.network import build_network, network_config
from SCORERefineLib.refiner.sampling import PatchSampler
from SCORERefineLib.scribbles import misplace_strokes, simulate_scribbles

PATCH = (16, 16, 16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four tiny phantom cases, all with a reference; cases 1-3 with simulated scribbles,
    case 3's strokes all with the wrong label."""
    root = tmp_path_factory.mktemp("scribble_ds")
    for i in range(4):
        p = phantoms.make_phantom(i, phantoms.PRESETS["tiny"])
        scr = None
        if i > 0:
            lab, _ = simulate_scribbles(p.initial.array, p.reference.array,
                                        p.image.geometry.spacing_zyx, n_slices=6, seed=i)
            if i == 3:
                lab, _ = misplace_strokes(lab, 1.0, seed=i)
            scr = p.image.with_array(lab)
        write_case(root, f"case_{i:03d}", p.image, p.initial, reference=p.reference, scribbles=scr)
    return root


def _train(mode, targets, steps, seed=0):
    torch.manual_seed(seed)
    model = build_network(network_config("tiny"))
    sampler = PatchSampler(targets, mode, PATCH, seed=seed, augment=False)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    mode.attach(model)
    logs = []
    for _ in range(steps):
        batch = sampler.sample(4)
        opt.zero_grad()
        loss, terms = mode.loss(model(batch.image), batch)
        assert math.isfinite(float(loss.detach()))
        loss.backward()
        opt.step()
        mode.after_step(model, len(logs) + 1)
        logs.append(terms)
    return model, logs


def test_scribble_mode_trains(dataset):
    mode = ScribbleMode()
    cases = mode.select(list_cases(dataset))
    assert [c.case_id for c in cases] == ["case_001", "case_002", "case_003"]
    targets = [mode.prepare_case(c) for c in cases]
    assert targets[0].info["n_strokes"] > 0 and targets[0].maps["scribbles"].dtype == np.uint8
    idx, w = mode.sampling_weights(targets[0])
    n_stroke_vox = int((targets[0].maps["scribbles"] > 0).sum())
    assert np.isclose(w[n_stroke_vox:].sum() / w.sum(), 0.25)     # boundary share on the band
    mode.weights.ramp_steps = 2
    _, logs = _train(mode, targets, steps=4)
    assert all("pce" in t and "pseudo" in t and "anchor" in t for t in logs)   # the sampler carries the map
    keep = targets[0].maps["stroke_anchor"]
    assert keep.dtype == np.float32 and 0 < keep.mean() < 1 and keep[targets[0].maps["scribbles"] > 0].max() == 0
    assert logs[-1]["ramp"] == 1.0 and logs[0]["ramp"] < 0.01
    assert mode.teacher is not None and mode.teacher.updates == 4


def test_scribble_mode_refuses_bad_scribbles(dataset, tmp_path):
    p = phantoms.make_phantom(0, phantoms.PRESETS["tiny"])
    case = write_case(tmp_path, "bad", p.image, p.initial)
    write_volume(p.image.with_array(np.zeros(p.image.array.shape, np.uint8)), case.scribbles_path)
    with pytest.raises(TrainingError, match="case bad: .*empty"):
        ScribbleMode().prepare_case(case)


def test_hybrid_mode_trains_and_weighs(dataset):
    mode = HybridMode(HybridConfig(dense_count=1, weak="scribble", indicator_every=2, indicator_start=2))
    roles = mode.assign_roles(list_cases(dataset))
    assert roles == {"case_000": "dense", "case_001": "weak", "case_002": "weak", "case_003": "weak"}
    cases = [c for c in list_cases(dataset) if mode.usable(c)]
    targets = [mode.prepare_case(c) for c in cases]
    assert [t.info["role"] for t in targets] == ["dense", "weak", "weak", "weak"]
    shares = [mode.sampling_weights(t)[1].sum() for t in targets]
    assert shares == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    _, logs = _train(mode, targets, steps=6)
    assert "weak" not in logs[0] and "weak" not in logs[1]      # dense warm-up
    assert any("weak" in t for t in logs[2:])
    hist = mode.weighter.history
    assert hist and all(h["step"] >= 2 for h in hist)
    assert set(hist[-1]["weights"]) == {"case_001", "case_002", "case_003"}


def test_hybrid_mode_with_ratings(tmp_path):
    from SCORERefineLib.feedback import save_feedback
    from SCORERefineLib.rater import simulate_feedback
    from SCORERefineLib.regions import RegionParams, make_regions

    for i in range(3):
        p = phantoms.make_phantom(i, phantoms.PRESETS["tiny"])
        regions = make_regions(p.initial, RegionParams(n_regions=4))
        case = write_case(tmp_path, f"r{i}", p.image, p.initial, regions=regions,
                          reference=p.reference)
        if i > 0:
            save_feedback(simulate_feedback(case.case_id, p.initial, p.reference, regions, seed=i),
                          case.feedback_path)
    mode = HybridMode(HybridConfig(dense_ids=["r0"], weak="score", indicator_every=1))
    assert mode.assign_roles(list_cases(tmp_path)) == {"r0": "dense", "r1": "weak", "r2": "weak"}
    targets = [mode.prepare_case(c) for c in list_cases(tmp_path) if mode.usable(c)]
    assert targets[0].tables is None and targets[1].tables is not None   # the sampler pads
    _, logs = _train(mode, targets, steps=3)
    assert any("weak" in t and "dense" in t for t in logs)
    assert mode.weighter.history


def test_hybrid_mode_roles_errors(dataset):
    with pytest.raises(InputError, match="--dense"):
        HybridMode().assign_roles(list_cases(dataset))
    with pytest.raises(TrainingError, match="no reference"):
        HybridMode(HybridConfig(dense_ids=["nope"])).assign_roles(list_cases(dataset))
    with pytest.raises(TrainingError, match="choose 1..4"):
        HybridMode(HybridConfig(dense_count=9)).assign_roles(list_cases(dataset))
    with pytest.raises(TrainingError, match="assign_roles"):
        HybridMode(HybridConfig(dense_count=1)).usable(list_cases(dataset)[0])
    with pytest.raises(InputError, match="--weak"):
        HybridConfig(weak="x")


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=3, patch_size=(16, 16, 16), batch_size=2, network="tiny", device="cpu",
                checkpoint_every=0, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_scribble_mode_through_trainer_and_resume(dataset, tmp_path):
    cfg = _cfg(mode="scribble", mode_config=ScribbleConfig(ema_decay=0.9))
    out = train(dataset, tmp_path / "s.pt", cfg, progress="none")
    payload = load_checkpoint(out, map_location="cpu")
    meta = payload["metadata"]
    assert meta["mode"] == "scribble" and meta["complete"] and meta["n_cases"] == 3
    assert meta["training"]["mode_config"]["ema_decay"] == 0.9
    state = payload["extra"]["mode_state"]
    assert state["step"] == 3 and state["teacher"]["updates"] == 3
    cfg2 = _cfg(mode="scribble", mode_config=ScribbleConfig(ema_decay=0.9), steps=5, resume=True)
    train(dataset, out, cfg2, progress="none")
    state = load_checkpoint(out, map_location="cpu")["extra"]["mode_state"]
    assert state["step"] == 5 and state["teacher"]["updates"] == 5   # the teacher carried over


def test_hybrid_mode_through_trainer(dataset, tmp_path):
    cfg = _cfg(mode="hybrid", steps=4, mode_config=HybridConfig(
        dense_count=1, weak="scribble", indicator_every=1, indicator_start=1))
    out = train(dataset, tmp_path / "h.pt", cfg, progress="none")
    meta = load_checkpoint(out, map_location="cpu")["metadata"]
    assert meta["mode"] == "hybrid" and meta["n_cases"] == 4
    assert meta["mode_state"]["roles"]["case_000"] == "dense"
    assert set(meta["mode_state"]["weighter"]["weights"]) == {"case_001", "case_002", "case_003"}
    assert meta["training"]["mode_config"]["dense_count"] == 1


def test_hybrid_and_scribble_cli(dataset, tmp_path):
    from SCORERefineLib import cli

    out = tmp_path / "c.pt"
    rc = cli.main(["train", str(dataset), "--out", str(out), "--mode", "hybrid", "--dense-count", "1",
                   "--weak", "scribble", "--indicator", "fixed", "--indicator-every", "1",
                   "--steps", "2", "--patch", "16", "16", "16", "--batch", "2", "--network", "tiny",
                   "--device", "cpu", "--progress", "none"])
    assert rc in (0, None)
    meta = load_checkpoint(out, map_location="cpu")["metadata"]
    assert meta["mode"] == "hybrid" and meta["training"]["mode_config"]["indicator"] == "fixed"


def test_scribble_command_simulates(tmp_path, capsys):
    from SCORERefineLib import cli
    from SCORERefineLib.scribbles import read_scribbles

    for i in range(2):
        p = phantoms.make_phantom(i, phantoms.PRESETS["tiny"])
        write_case(tmp_path, f"c{i}", p.image, p.initial, reference=p.reference)
    assert cli.main(["scribble", str(tmp_path), "--simulate", "--n-slices", "2", "--seed", "1",
                     "--misplace", "0.5"]) == 0
    for case in list_cases(tmp_path):
        lab = read_scribbles(case.scribbles_path).array
        assert (lab == 1).any() and (lab == 2).any()
    case = write_case(tmp_path, "noref", p.image, p.initial)
    assert cli.main(["scribble", str(tmp_path), "--simulate"]) == 2
    assert "noref" in capsys.readouterr().err and not case.has_scribbles


def test_train_flags_go_into_the_mode_config():
    from SCORERefineLib.cli import build_parser
    from SCORERefineLib.commands.train import config_from_args

    def parse(*extra):
        return config_from_args(build_parser().parse_args(["train", "ds", "--out", "m.pt", *extra]))

    c = parse("--mode", "hybrid", "--dense", "a,b", "--weak", "scribble", "--indicator-every", "5")
    assert isinstance(c.mode_config, HybridConfig) and c.mode_config.dense_ids == ["a", "b"]
    assert c.mode_config.weak == "scribble" and c.mode_config.indicator_every == 5
    c = parse("--mode", "scribble", "--ema-decay", "0.9", "--loss-weights", "pseudo=0,ramp_steps=10")
    assert c.mode_config.ema_decay == 0.9 and c.mode_config.weights.pseudo == 0.0
    assert c.mode_config.weights.ramp_steps == 10
    with pytest.raises(InputError, match="--dense-count do"):
        parse("--mode", "score", "--dense-count", "1")
    with pytest.raises(InputError, match="not both"):
        parse("--mode", "hybrid", "--dense", "a", "--dense-count", "1")


def test_hybrid_batch_of_dense_patches_only_samples(dataset, tmp_path):
    """Regression: a hybrid batch whose patches all come from dense cases (no region tables) used
    to crash the sampler (max() of no tables); it now gets zero tables and trains."""
    from SCORERefineLib import pipeline
    from SCORERefineLib.regions import RegionParams

    import shutil

    params = RegionParams(n_regions=4)
    shutil.copytree(dataset, tmp_path / "ds")
    cases = list_cases(tmp_path / "ds")
    pipeline.prepare_regions(cases, params)
    pipeline.rate_cases(cases, params, extend=False)
    mode = HybridMode(HybridConfig(dense_count=1, dense_share=0.99))
    targets = [mode.prepare_case(c) for c in mode.select(cases)]
    sampler = PatchSampler(targets, mode, PATCH, seed=0, augment=False)
    batches = [sampler.sample(2) for _ in range(4)]
    dense_only = [b for b in batches if all(mode.roles[c] == "dense" for c in b.case_ids)]
    assert dense_only and dense_only[0].agreement.shape == (2, 1)
    model = build_network(network_config("tiny"))
    mode.attach(model)
    loss, terms = mode.loss(model(dense_only[0].image), dense_only[0])
    assert math.isfinite(float(loss.detach())) and "dense" in terms and "weak" not in terms
