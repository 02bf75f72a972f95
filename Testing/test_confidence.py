"""The confidence rule (refiner/confidence.py): unsure added pieces are taken back, in the
function, in refine_volume with a network whose probability is known, in the refiner, its
sidecar, the CLI and the benchmark report."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from SCORERefineLib.case import get_case, write_case
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.refiner.confidence import ConfidenceLimits, take_back_unsure_additions
from toy_models import ProbabilityModel, hu_of

SHAPE = (12, 24, 36)


def _scene():
    """An initial box in two halves (the left one the network is sure of, p = 1; the right one it
    doubts, p = 0.6) and three added pieces on its top face: A over the sure half with peak 0.7,
    B over the doubted half with peak 0.7, C over the doubted half with peak 0.95."""
    m0 = np.zeros(SHAPE, np.uint8)
    m0[4:8, 6:18, 4:32] = 1
    prob = np.zeros(SHAPE, np.float32)
    prob[4:8, 6:18, 4:18] = 1.0
    prob[4:8, 6:18, 18:32] = 0.6
    a, b, c = (np.s_[8:10, 8:12, 6:10], np.s_[8:10, 8:12, 24:28], np.s_[8:10, 14:17, 20:23])
    prob[a], prob[b], prob[c] = 0.7, 0.7, 0.7
    prob[9, 15, 21] = 0.95                          # C's sure core
    removed = np.s_[4:5, 6:8, 28:32]                # a removal the rule must not touch
    prob[removed] = 0.3
    return m0, prob, a, b, c, removed


def test_unsure_pieces_grown_from_doubted_mask_are_taken_back():
    m0, prob, a, b, c, removed = _scene()
    proposal = (prob >= 0.5).astype(np.uint8)
    out, rep = take_back_unsure_additions(m0, proposal, prob)
    assert out[a].all(), "A grows from the sure half: its support keeps it"
    assert not out[b].any(), "B peaks at 0.7 and grows from the doubted half: taken back"
    assert out[c].all(), "C has a core of 0.95: its peak keeps it"
    assert not out[removed].any(), "removals are not the rule's business"
    assert ((out >= m0) | (proposal < m0)).all() and (out <= np.maximum(m0, proposal)).all()
    assert rep["added_pieces"] == 3 and rep["taken_back_pieces"] == 1
    assert rep["taken_back_voxels"] == int(proposal[b].sum()) == 32
    assert rep["limits"] == {"add_peak": 0.9, "add_support": 0.85, "support_voxels": 2}


def test_the_limits_decide_and_bad_limits_are_refused():
    m0, prob, a, b, c, _ = _scene()
    proposal = (prob >= 0.5).astype(np.uint8)
    strict, rep = take_back_unsure_additions(m0, proposal, prob,
                                             ConfidenceLimits(add_peak=0.99, add_support=0.99))
    assert rep["taken_back_pieces"] == 2 and strict[a].all() and not strict[c].any()
    lax, rep = take_back_unsure_additions(m0, proposal, prob,
                                          ConfidenceLimits(add_peak=0.5, add_support=0.5))
    assert rep["taken_back_pieces"] == 0 and (lax == proposal).all()
    with pytest.raises(ValueError, match="add_peak must be a probability in"):
        ConfidenceLimits(add_peak=1.5)
    with pytest.raises(ValueError, match="add_support must be a probability in"):
        ConfidenceLimits(add_support="high")
    with pytest.raises(ValueError, match="support_voxels must be an integer"):
        ConfidenceLimits(support_voxels=0)
    with pytest.raises(ValueError, match="must share one grid"):
        take_back_unsure_additions(m0, proposal[:-1], prob)


GEOM = Geometry(size=(SHAPE[2], SHAPE[1], SHAPE[0]), spacing=(1.0, 1.0, 1.0),
                origin=(0.0, 0.0, 0.0), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


@pytest.fixture
def checkpoint(tmp_path):
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import CHANNELS, NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config

    meta = {"channels": list(CHANNELS), "network": network_config("tiny").to_dict(),
            "normalisation": NORMALISATION, "patch_size": [16, 16, 16]}
    return save_checkpoint(tmp_path / "model.pt", build_network(network_config("tiny")), meta)


def test_refine_volume_applies_the_rule_per_roi_and_reports_it():
    from SCORERefineLib.refiner.inference import refine_volume

    m0, prob, a, b, c, removed = _scene()
    image, initial = Volume(hu_of(prob), GEOM), Volume(m0, GEOM)
    model = ProbabilityModel()
    meta = {"channels": ["ct", "initial", "edge"], "patch_size": [12, 16, 16]}
    plain = refine_volume(model, meta, image, initial, "cpu", margin_mm=4.0)
    assert plain.array[a].all() and plain.array[b].all() and plain.array[c].all()
    stats: dict = {}
    sure = refine_volume(model, meta, image, initial, "cpu", margin_mm=4.0, timings=stats,
                         confidence=ConfidenceLimits())
    assert sure.array[a].all() and not sure.array[b].any() and sure.array[c].all()
    assert not sure.array[removed].any() and not plain.array[removed].any()
    assert stats["confidence"]["taken_back_pieces"] == 1
    assert stats["confidence"]["taken_back_voxels"] == 32


def test_model_refiner_cli_and_sidecar(tmp_path, checkpoint, monkeypatch):
    """On by default in every model refinement, written to the sidecar; ``--no-confidence``
    keeps the unsure piece and says so."""
    from SCORERefineLib.commands import refine as refine_cmd
    from SCORERefineLib.errors import InputError
    from SCORERefineLib.refiner import inference
    from SCORERefineLib.refiners import make_refiner

    monkeypatch.setattr(inference, "load_model", lambda path, device: (ProbabilityModel(), {
        "channels": ["ct", "initial", "edge"], "patch_size": [12, 16, 16]}))
    m0, prob, a, b, c, _ = _scene()
    image, initial = Volume(hu_of(prob), GEOM), Volume(m0, GEOM)
    refiner = make_refiner(checkpoint, device="cpu", veto=False, margin_mm=4.0)
    assert refiner.settings["confidence"] == {"add_peak": 0.9, "add_support": 0.85,
                                              "support_voxels": 2}
    out = refiner(image, initial)
    assert out.array[a].all() and not out.array[b].any() and out.array[c].all()
    assert refiner.last_info["confidence"]["taken_back_pieces"] == 1
    off = make_refiner(checkpoint, device="cpu", veto=False, margin_mm=4.0, confidence=False)
    assert off.settings["confidence"] is None
    assert off(image, initial).array[b].all() and "confidence" not in off.last_info
    with pytest.raises(InputError, match="confidence rule takes True"):
        make_refiner(checkpoint, device="cpu", confidence="yes")

    write_case(tmp_path / "ds", "c1", image, initial)
    parser = argparse.ArgumentParser()
    refine_cmd.add_arguments(parser)
    sidecar = get_case(tmp_path / "ds", "c1").prediction_path("refined").with_name("refined.json")
    for flags, taken in (([], 1), (["--no-confidence"], None)):
        args = parser.parse_args(["--model", str(checkpoint), "--dataset", str(tmp_path / "ds"),
                                  "--device", "cpu", "--progress", "none", "--no-veto",
                                  "--margin-mm", "4", *flags])
        assert refine_cmd.run(args) == 0
        info = json.loads(sidecar.read_text())
        got = (info.get("confidence") or {}).get("taken_back_pieces")
        assert got == taken, (flags, info.get("confidence"))
