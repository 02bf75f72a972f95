"""The do-no-harm guard in every trained refinement (ModelRefiner, the dataset loop, the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SCORERefineLib.case import get_case, write_case
from SCORERefineLib.imageio import Geometry, Volume
from conftest import ellipsoid

GEOM = Geometry(size=(40, 40, 20), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
SHAPE = GEOM.shape                                  # (z, y, x) = (20, 40, 40)


def _initial():
    return ellipsoid(SHAPE, (5, 5, 5), centre=(10, 12, 12))


def _bad_proposal(model, metadata, image, initial, *a, **k):
    """A network gone wrong: the initial mask plus a far blob and a detached nearby component."""
    out = initial.array.copy()
    out[8:12, 32:36, 32:36] = 1                       # far away (> margin from the surface)
    out[10:12, 12:14, 20:22] = 1                      # detached: 2 voxels gap from x=17
    return initial.with_array(out)


@pytest.fixture
def checkpoint(tmp_path):
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import CHANNELS, NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config

    cfg = network_config("tiny")
    meta = {"channels": list(CHANNELS), "network": cfg.to_dict(), "normalisation": NORMALISATION,
            "patch_size": [16, 16, 16]}
    return save_checkpoint(tmp_path / "model.pt", build_network(cfg), meta)


@pytest.fixture
def bad_network(monkeypatch):
    from SCORERefineLib.refiner import inference
    monkeypatch.setattr(inference, "refine_volume", _bad_proposal)


def test_model_refiner_guards_by_default(checkpoint, bad_network):
    from SCORERefineLib.refiners import make_refiner

    init = _initial()
    image = Volume(np.where(init > 0, 900.0, 0.0).astype(np.float32), GEOM)
    initial = Volume(init, GEOM)
    refiner = make_refiner(checkpoint, device="cpu")
    assert refiner.settings["guard"] and refiner.settings["guard_margin_mm"] == 10.0
    out = refiner(image, initial)
    np.testing.assert_array_equal(out.array, init)    # both bad changes clipped
    rep = refiner.last_info["guard"]
    assert rep["clipped"]["outside_zone"] == 64 and rep["clipped"]["unconnected"] == 8
    assert rep["components_removed"] == 1 and rep["margin_source"] == "inference margin_mm"
    raw = make_refiner(checkpoint, device="cpu", guard=False)(image, initial)
    assert raw.array.sum() == init.sum() + 64 + 8     # ablation: the proposal as is


def test_margin_follows_the_training_band(checkpoint, bad_network):
    from SCORERefineLib.refiners import make_refiner

    refiner = make_refiner(checkpoint, device="cpu")
    refiner.metadata = {**refiner.metadata, "training": {"regions": {"band_mm": 3.0}}}
    limits, source = refiner.guard_limits()
    assert limits.margin_mm == 5.0 and source == "metadata.training.regions"


def test_refine_dataset_writes_the_guard_report(tmp_path, checkpoint, bad_network, capsys):
    import argparse

    from SCORERefineLib.commands import refine as refine_cmd

    init = _initial()
    image = Volume(np.where(init > 0, 900.0, 0.0).astype(np.float32), GEOM)
    write_case(tmp_path / "ds", "c1", image, Volume(init, GEOM))
    parser = argparse.ArgumentParser()
    refine_cmd.add_arguments(parser)
    args = parser.parse_args(["--model", str(checkpoint), "--dataset", str(tmp_path / "ds"),
                              "--device", "cpu", "--progress", "none"])
    assert refine_cmd.run(args) == 0
    assert "guard clipped 72 voxel(s), 1 detached component(s)" in capsys.readouterr().out
    case = get_case(tmp_path / "ds", "c1")
    info = json.loads(case.prediction_path("refined").with_name("refined.json").read_text())
    assert info["guard"]["clipped_total"] == 72 and info["guard"]["components_removed"] == 1
    assert info["guard_margin_mm"] == 10.0 and info["voxels_added"] == 0


def _cutting_proposal(model, metadata, image, initial, *a, **k):
    """A network that cuts a thin neck joining a small lobe to the body (it cannot reach the
    lobe's interior: that lies beyond its zone)."""
    out = initial.array.copy()
    out[10, 12, 18:21] = 0
    return initial.with_array(out)


def test_model_refiner_drops_what_its_cut_left_behind(checkpoint, monkeypatch):
    from SCORERefineLib.refiner import inference
    from SCORERefineLib.refiners import make_refiner

    monkeypatch.setattr(inference, "refine_volume", _cutting_proposal)
    init = _initial()
    init[10, 12, 17:21] = 1                          # a neck ...
    init[9:12, 11:14, 21:24] = 1                     # ... to a small lobe
    image = Volume(np.where(init > 0, 900.0, 0.0).astype(np.float32), GEOM)
    refiner = make_refiner(checkpoint, device="cpu")
    assert refiner.settings["fragment_share"] == 0.2
    out = refiner(image, Volume(init, GEOM))
    assert not out.array[9:12, 11:14, 21:24].any()
    assert refiner.last_info["fragments"]["pieces_dropped"] == 1
    keep = make_refiner(checkpoint, device="cpu", fragment_share=0.0)
    assert keep(image, Volume(init, GEOM)).array[9:12, 11:14, 21:24].all()
    assert "fragments" not in keep.last_info


def test_an_ensemble_thresholds_the_mean_probability(tmp_path, checkpoint):
    """Through the real inference path: model A (foreground where HU >= 700) would add two bright
    voxels beside the structure, model B (the initial mask) would not; the ensemble adds them
    when the mean probability reaches the threshold (A, A, B: 0.65), not when it does not
    (A, B, B: 0.33)."""
    import shutil

    from SCORERefineLib.refiners import make_refiner
    from toy_models import CTThresholdModel, IdentityModel

    init = _initial()
    ct = np.where(init > 0, 900.0, 0.0).astype(np.float32)
    ct[10, 12, 18:20] = 900.0                         # bright, touching the surface at x = 17
    image, initial = Volume(ct, GEOM), Volume(init, GEOM)
    extra = [shutil.copy(checkpoint, tmp_path / f"seed{k}.pt") for k in (1, 2)]

    def added(members):   # the veto off: a two-voxel line is partial volume to the evidence
        refiner = make_refiner(checkpoint, device="cpu", also=extra[:len(members) - 1],
                               veto=False)
        if len(members) == 1:
            refiner.model = members[0]
        else:
            for k, m in enumerate(members):
                refiner.model.members[k] = m
        out = refiner(image, initial).array
        return sorted(map(tuple, np.argwhere(out > init)))

    bright = [(10, 12, 18), (10, 12, 19)]
    assert added([CTThresholdModel()]) == bright
    assert added([CTThresholdModel(), CTThresholdModel(), IdentityModel()]) == bright
    assert added([CTThresholdModel(), IdentityModel(), IdentityModel()]) == []
    ens = make_refiner(checkpoint, device="cpu", also=extra)
    assert ens.settings["ensemble"] == [str(checkpoint)] + [str(p) for p in extra]


def test_an_ensemble_refuses_checkpoints_of_another_setting(tmp_path, checkpoint):
    from SCORERefineLib.errors import CheckpointError
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import CHANNELS, NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config
    from SCORERefineLib.refiners import make_refiner

    cfg = network_config("tiny")
    other = save_checkpoint(tmp_path / "other.pt", build_network(cfg),
                            {"channels": list(CHANNELS), "network": cfg.to_dict(),
                             "normalisation": NORMALISATION, "patch_size": [32, 32, 32]})
    with pytest.raises(CheckpointError, match="'patch_size' differs"):
        make_refiner(checkpoint, device="cpu", also=[other])


def test_cli_refuses_an_ensemble_with_a_built_in(tmp_path, checkpoint, capsys):
    from SCORERefineLib.cli import main

    code = main(["refine", "--model", "classical", "--also-model", str(checkpoint),
                 "--dataset", str(tmp_path)])
    assert code == 2
    assert "--also-model averages trained checkpoints" in capsys.readouterr().err


def test_the_slicer_in_process_refiner_is_guarded_too(checkpoint, bad_network):
    """``mrml.model_refiner`` (the module logic's ``refine``, run in Slicer's own process) goes
    through the same guard as the CLI: it once called the network alone."""
    from SCORERefineLib.mrml.refine import model_refiner

    init = _initial()
    image = Volume(np.where(init > 0, 900.0, 0.0).astype(np.float32), GEOM)
    out = model_refiner(checkpoint, "cpu")(image, Volume(init, GEOM))
    np.testing.assert_array_equal(out.array, init)
    assert model_refiner(checkpoint, "cpu").settings["tta"] is True     # test-time views, as
    assert model_refiner(checkpoint, "cpu", tta=False).settings["tta"] is False  # the CLI


def _dark_shell_proposal(model, metadata, image, initial, *a, **k):
    """A network that grows the structure by one voxel of dark surroundings all round."""
    from scipy import ndimage
    return initial.with_array(ndimage.binary_dilation(initial.array > 0).astype(np.uint8))


def test_model_refiner_takes_back_what_the_image_contradicts(tmp_path, checkpoint, monkeypatch):
    """The appearance veto runs by default (after the guard) and is reported; ``--no-veto``
    keeps the proposal."""
    import argparse

    from SCORERefineLib.commands import refine as refine_cmd
    from SCORERefineLib.refiner import inference
    from SCORERefineLib.refiners import make_refiner

    monkeypatch.setattr(inference, "refine_volume", _dark_shell_proposal)
    init = _initial()
    image = Volume(np.where(init > 0, 900.0, 0.0).astype(np.float32), GEOM)
    refiner = make_refiner(checkpoint, device="cpu")
    assert refiner.settings["veto"] is True
    out = refiner(image, Volume(init, GEOM))
    shell = int(_dark_shell_proposal(None, None, None, Volume(init, GEOM)).array.sum() - init.sum())
    kept = int(out.array.sum() - init.sum())
    assert (out.array >= init).all() and 0 <= kept < 0.2 * shell   # dark: taken back (a few
    rep = refiner.last_info["veto"]                                 # partial-volume voxels stay)
    assert rep["proposed_added"] == shell and rep["vetoed_added"] >= shell - kept - rep.get(
        "guard_after", 0)
    write_case(tmp_path / "ds", "c1", image, Volume(init, GEOM))
    parser = argparse.ArgumentParser()
    refine_cmd.add_arguments(parser)
    args = parser.parse_args(["--model", str(checkpoint), "--dataset", str(tmp_path / "ds"),
                              "--device", "cpu", "--progress", "none", "--no-veto"])
    assert refine_cmd.run(args) == 0
    info = json.loads(get_case(tmp_path / "ds", "c1").prediction_path("refined")
                      .with_name("refined.json").read_text())
    assert info["veto"] is False and "veto" not in info.get("guard", {})
    assert info["voxels_added"] == shell


def _thick_peel(model, metadata, image, initial, *a, **k):
    """A network that peels the lower half of the structure three voxels deep."""
    from scipy import ndimage
    m = initial.array > 0
    peel = m & ~ndimage.binary_erosion(m, iterations=3) & (np.indices(m.shape)[0] < 10)
    return initial.with_array((m & ~peel).astype(np.uint8))


def test_the_thick_layer_veto_is_a_refiner_and_cli_setting(tmp_path, checkpoint, monkeypatch):
    """``veto_thick_llr`` (``--veto-thick-llr``, by default 0.8) reaches the veto: a
    structure-like peel three voxels deep, which the veto without the rule lets go, comes back;
    the setting is in the sidecar, ``off`` switches it off, and a threshold that is not a number
    is refused by name."""
    import argparse

    from SCORERefineLib.commands import refine as refine_cmd
    from SCORERefineLib.errors import InputError
    from SCORERefineLib.refiner import inference
    from SCORERefineLib.refiners import make_refiner

    monkeypatch.setattr(inference, "refine_volume", _thick_peel)
    init = ellipsoid(SHAPE, (7, 12, 12), centre=(10, 20, 20))
    rng = np.random.default_rng(0)
    image = Volume((np.where(init > 0, 300.0, 0.0) + rng.normal(0, 10, SHAPE)).astype(np.float32),
                   GEOM)
    peeled = int(init.sum() - _thick_peel(None, None, None, Volume(init, GEOM)).array.sum())
    off = make_refiner(checkpoint, device="cpu", veto_thick_llr=None)
    assert off.settings["veto_thick_llr"] is None
    lost_off = int(init.sum() - off(image, Volume(init, GEOM)).array.sum())
    assert lost_off > 0.9 * peeled and off.last_info["veto"]["vetoed_removed_thick"] == 0
    default = make_refiner(checkpoint, device="cpu")
    assert default.settings["veto_thick_llr"] == 0.8
    lost_default = int(init.sum() - default(image, Volume(init, GEOM)).array.sum())
    assert lost_default < 0.2 * peeled and default.last_info["veto"]["vetoed_removed_thick"] > 0
    thick = make_refiner(checkpoint, device="cpu", veto_thick_llr=1.0)
    lost_thick = int(init.sum() - thick(image, Volume(init, GEOM)).array.sum())
    rep = thick.last_info["veto"]
    assert lost_thick < 0.2 * peeled and rep["vetoed_removed_thick"] > 0.8 * peeled
    assert rep["limits"]["thick_layer_llr"] == 1.0
    with pytest.raises(InputError, match="thick-layer veto needs a finite"):
        make_refiner(checkpoint, device="cpu", veto_thick_llr="high")
    write_case(tmp_path / "ds", "c1", image, Volume(init, GEOM))
    parser = argparse.ArgumentParser()
    refine_cmd.add_arguments(parser)
    args = parser.parse_args(["--model", str(checkpoint), "--dataset", str(tmp_path / "ds"),
                              "--device", "cpu", "--progress", "none", "--veto-thick-llr", "1"])
    assert refine_cmd.run(args) == 0
    info = json.loads(get_case(tmp_path / "ds", "c1").prediction_path("refined")
                      .with_name("refined.json").read_text())
    assert info["veto_thick_llr"] == 1.0 and info["veto"]["vetoed_removed_thick"] > 0.8 * peeled
    assert info["voxels_removed"] == lost_thick
    args = parser.parse_args(["--model", str(checkpoint), "--dataset", str(tmp_path / "ds"),
                              "--device", "cpu", "--progress", "none", "--veto-thick-llr", "off"])
    assert refine_cmd.run(args) == 0
    info = json.loads(get_case(tmp_path / "ds", "c1").prediction_path("refined")
                      .with_name("refined.json").read_text())
    assert info["veto_thick_llr"] is None and info["voxels_removed"] == lost_off
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m.pt", "--veto-thick-llr", "high"])
