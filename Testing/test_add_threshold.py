"""The add threshold (refiner/decision.py): the refined mask is decided relative to the initial
mask, in the function, in refine_volume with a network whose probability is known (on the image
grid and resampled), in the refiner (the training mode's default, or the one given), its
sidecar and the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from SCORERefineLib.case import get_case, write_case
from SCORERefineLib.catalog import ADD_THRESHOLDS, add_threshold_for
from SCORERefineLib.errors import InputError
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.refiner.decision import decide_change
from toy_models import ProbabilityModel, hu_of

SHAPE = (20, 28, 40)


def test_additions_and_removals_have_their_own_thresholds():
    rng = np.random.default_rng(3)
    prob = rng.random(SHAPE).astype(np.float32)
    m0 = (rng.random(SHAPE) < 0.5).astype(np.uint8)
    prob[0, 0, :4] = [0.4, 0.45, 0.45, 0.5]
    m0[0, 0, :4] = [0, 0, 1, 1]
    assert (decide_change(prob, m0) == (prob >= 0.5)).all()
    assert (decide_change(prob, m0, 0.5, 0.5) == (prob >= 0.5)).all()
    assert (decide_change(prob, m0, 0.6) == (prob >= 0.6)).all(), "None: the plain threshold"
    low = decide_change(prob, m0, 0.5, 0.4)
    out, inside = (m0 == 0), (m0 != 0)
    assert (low[out] == (prob[out] >= 0.4)).all(), "outside: added from 0.4"
    assert (low[inside] == (prob[inside] >= 0.5)).all(), "inside: kept from 0.5, as before"
    assert list(low[0, 0, :4]) == [1, 1, 0, 1]
    added = {t: (decide_change(prob, m0, 0.5, t) != 0) & (m0 == 0) for t in (0.3, 0.4, 0.5)}
    assert (added[0.3] >= added[0.4]).all() and (added[0.4] >= added[0.5]).all()
    assert added[0.3].sum() > added[0.4].sum() > added[0.5].sum()
    for bad in (0.0, 1.0, -0.2, float("nan"), "half"):
        with pytest.raises(InputError, match="add threshold must be a probability in"):
            decide_change(prob, m0, 0.5, bad)
        with pytest.raises(InputError, match="the threshold must be a probability in"):
            decide_change(prob, m0, bad)
    with pytest.raises(ValueError, match="must share one grid"):
        decide_change(prob[:-1], m0)


def test_the_training_modes_defaults():
    assert add_threshold_for("score") == ADD_THRESHOLDS["score"] == 0.4
    for mode in ("full", "scribble", "hybrid", None, "unknown"):
        assert add_threshold_for(mode) is None


GEOM = Geometry(size=(SHAPE[2], SHAPE[1], SHAPE[0]), spacing=(1.0, 1.0, 1.0),
                origin=(0.0, 0.0, 0.0), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

CORE = (slice(5, 11), slice(10, 18), slice(9, 11))       # the doubted slab, away from its edges
TOP = (slice(12, 15), slice(10, 18), slice(12, 28))      # the unsure addition, likewise


def _scene():
    """An initial box the network is sure of (p = 1) but for a doubted slab inside it (p = 0.45:
    removed at the plain threshold), with a slab on its top face at p = 0.45 (added from 0.4,
    not at 0.5); p = 0 elsewhere."""
    m0 = np.zeros(SHAPE, np.uint8)
    m0[4:12, 8:20, 8:32] = 1
    prob = np.zeros(SHAPE, np.float32)
    prob[4:12, 8:20, 8:32] = 1.0
    prob[4:12, 8:20, 8:12] = 0.45
    prob[12:16, 8:20, 8:32] = 0.45
    return m0, prob


@pytest.mark.parametrize("spacing_mm", [None, [1.25, 1.25, 1.25]])
def test_refine_volume_adds_from_the_add_threshold(spacing_mm):
    from SCORERefineLib.refiner.inference import refine_volume

    m0, prob = _scene()
    image, initial = Volume(hu_of(prob), GEOM), Volume(m0, GEOM)
    meta = {"channels": ["ct", "initial", "edge"], "patch_size": [12, 16, 16]}
    if spacing_mm:   # trained at another spacing: inferred there, the change resampled back
        meta["spacing_mm"] = spacing_mm
    model = ProbabilityModel()
    plain = refine_volume(model, meta, image, initial, "cpu", margin_mm=4.0).array
    low = refine_volume(model, meta, image, initial, "cpu", margin_mm=4.0, add_threshold=0.4).array
    assert not plain[CORE].any() and not plain[TOP].any(), "at 0.5: 0.45 removed, not added"
    assert not low[CORE].any() and low[TOP].all(), "adding from 0.4: 0.45 added, still removed"
    sure = (slice(5, 11), slice(10, 18), slice(16, 28))
    assert plain[sure].all() and low[sure].all()
    with pytest.raises(InputError, match="add threshold must be a probability"):
        refine_volume(model, meta, image, initial, "cpu", margin_mm=4.0, add_threshold=1.0)


@pytest.fixture
def checkpoint(tmp_path):
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import CHANNELS, NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config

    meta = {"channels": list(CHANNELS), "network": network_config("tiny").to_dict(),
            "normalisation": NORMALISATION, "patch_size": [16, 16, 16]}
    return save_checkpoint(tmp_path / "model.pt", build_network(network_config("tiny")), meta)


def test_model_refiner_takes_the_modes_default_or_the_given_one(tmp_path, checkpoint,
                                                                monkeypatch):
    """The refiner reads the training mode from the checkpoint's metadata; ``--add-threshold``
    on the command line overrides it; the sidecar says which ran and why."""
    from SCORERefineLib.commands import refine as refine_cmd
    from SCORERefineLib.refiner import inference
    from SCORERefineLib.refiners import make_refiner

    mode = {"mode": "score"}
    monkeypatch.setattr(inference, "load_model", lambda path, device: (ProbabilityModel(), {
        "channels": ["ct", "initial", "edge"], "patch_size": [12, 16, 16], **mode}))
    m0, prob = _scene()
    image, initial = Volume(hu_of(prob), GEOM), Volume(m0, GEOM)
    kw = dict(device="cpu", veto=False, confidence=False, margin_mm=4.0)

    def setting(refiner):
        s = refiner.settings
        return s["threshold"], s["add_threshold"], s["add_threshold_source"]

    score = make_refiner(checkpoint, **kw)
    assert setting(score) == (0.5, 0.4, "mode score")
    assert score(image, initial).array[TOP].all()
    given = make_refiner(checkpoint, add_threshold=0.5, **kw)
    assert setting(given) == (0.5, 0.5, "given")
    assert not given(image, initial).array[TOP].any()
    with pytest.raises(InputError, match="add threshold must be a probability"):
        make_refiner(checkpoint, add_threshold=0.0, **kw)
    with pytest.raises(InputError, match="the threshold must be a probability"):
        make_refiner(checkpoint, threshold=1.5, **kw)
    mode["mode"] = "full"
    full = make_refiner(checkpoint, **kw)
    assert setting(full) == (0.5, 0.5, "threshold")
    assert not full(image, initial).array[TOP].any()
    assert setting(make_refiner(checkpoint, threshold=0.4, **kw)) == (0.4, 0.4, "threshold")
    mode.clear()
    assert setting(make_refiner(checkpoint, **kw)) == (0.5, 0.5, "threshold")

    mode["mode"] = "score"
    write_case(tmp_path / "ds", "c1", image, initial)
    parser = argparse.ArgumentParser()
    refine_cmd.add_arguments(parser)
    case = get_case(tmp_path / "ds", "c1")
    sidecar = case.prediction_path("refined").with_name("refined.json")
    for flags, want in (([], (0.4, "mode score")), (["--add-threshold", "0.5"], (0.5, "given"))):
        args = parser.parse_args(["--model", str(checkpoint), "--dataset", str(tmp_path / "ds"),
                                  "--device", "cpu", "--progress", "none", "--no-veto",
                                  "--no-confidence", "--margin-mm", "4", *flags])
        assert refine_cmd.run(args) == 0
        info = json.loads(sidecar.read_text())
        assert (info["add_threshold"], info["add_threshold_source"]) == want, flags
        added = case.load_prediction("refined", like=image).array[TOP]
        assert added.all() == (want[0] == 0.4), flags
