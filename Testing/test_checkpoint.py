"""Checkpoints are data: round trip, and refusal of wrong versions, layouts, garbage and code."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from SCORERefineLib.errors import CheckpointError
from SCORERefineLib.refiner.checkpoint import (FORMAT_VERSION, load_checkpoint, load_refiner,
                                               save_checkpoint)
from SCORERefineLib.refiner.inputs import CHANNELS, NORMALISATION
from SCORERefineLib.refiner.network import build_network, network_config


def _model(channels=CHANNELS, seed=0):
    torch.manual_seed(seed)
    model = build_network(network_config("tiny", in_channels=channels))
    with torch.no_grad():  # make the head non-zero so outputs depend on the weights
        model.head.weight.normal_()
    return model


def _meta(model, channels=CHANNELS):
    return {"channels": list(channels), "normalisation": NORMALISATION, "patch_size": [16, 16, 16],
            "network": model.config.to_dict(), "mode": "score", "n_rated_regions": 7, "n_cases": 2,
            "training": {"steps": 5, "lr": 0.001}}


def test_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(1, 3, 16, 16, 16)
    model(x).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "m.pt", model, _meta(model), optimizer=opt, step=5)
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary left behind
    loaded, meta = load_refiner(path)
    assert not loaded.training
    assert meta["step"] == 5 and meta["format_version"] == FORMAT_VERSION
    assert meta["channels"] == list(CHANNELS) and meta["n_rated_regions"] == 7
    assert meta["patch_size"] == [16, 16, 16] and "date" in meta and "package_version" in meta
    json.dumps(meta)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    payload = load_checkpoint(path)
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(payload["optimizer"])


def test_wrong_format_version(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, _meta(model))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_refiner(path)


def test_wrong_channels(tmp_path):
    model = _model(channels=("ct", "initial"))
    path = save_checkpoint(tmp_path / "m.pt", model, _meta(model, ("ct", "initial")))
    with pytest.raises(CheckpointError, match="channels"):
        load_refiner(path, expect_channels=CHANNELS)
    load_refiner(path, expect_channels=("ct", "initial"))


def test_garbage_and_truncated_and_foreign(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_refiner(garbage)
    model = _model()
    good = save_checkpoint(tmp_path / "m.pt", model, _meta(model))
    data = good.read_bytes()
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_refiner(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)  # a bare state_dict: loads, but is no checkpoint
    with pytest.raises(CheckpointError, match="not a SCORERefine checkpoint"):
        load_refiner(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_refiner(tmp_path / "missing.pt")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "scorerefine-checkpoint", "format_version": FORMAT_VERSION,
                "metadata": {"x": _Evil(str(marker))}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_refiner(path)
    assert not marker.exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    model = _model()
    good = save_checkpoint(tmp_path / "m.pt", model, _meta(model), step=1)
    before = good.read_bytes()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(good, model, _meta(model), step=2)
    assert good.read_bytes() == before
