"""Test-time augmentation: each sliding window's probability is the mean over its 16 flipped
and turned views (``inference.view_mean_probability``), on by default in ``refine_volume``,
``ModelRefiner`` and ``scorerefine refine`` (``--no-tta``)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

from SCORERefineLib.case import get_case, write_case
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.refiner.inference import (VIEWS, refine_volume, tta_allowed,
                                              view_mean_probability)
from conftest import ellipsoid

CHANNELS = ["ct", "initial", "edge"]
META = {"channels": CHANNELS, "patch_size": [16, 16, 16], "normalisation": None}
GEOM = Geometry(size=(24, 24, 20), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


class RampModel(nn.Module):
    """Logits = a ramp along one axis of the window (2: z, 3: y), whatever the input: a
    prediction that depends only on the window's orientation."""

    def __init__(self, axis: int = 2):
        super().__init__()
        self.conv = nn.Conv3d(3, 1, 1)
        self.axis = axis

    def forward(self, x):
        n = x.shape[self.axis]
        shape = [1, 1, 1, 1, 1]
        shape[self.axis] = n
        ramp = torch.linspace(-4.0, 4.0, n).view(*shape)
        return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()


class UpwardGrowthModel(nn.Module):
    """Returns the initial mask plus one layer on its +z faces (logit +2 there, p = 0.88): a
    decision taken in one orientation only. Other voxels: +-20 by the initial mask."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 1, 1)

    def forward(self, x):
        init = x[:, 1:2]
        below = torch.zeros_like(init)
        below[:, :, 1:] = init[:, :, :-1]              # the initial mask one voxel lower in z
        grow = below * (1.0 - init)
        return 20.0 * (2.0 * init - 1.0) + 22.0 * grow


def _case():
    mask = ellipsoid(GEOM.shape, (5, 6, 6), centre=(10, 12, 12))
    hu = np.where(mask > 0, 300.0, 0.0).astype(np.float32)
    return Volume(hu, GEOM), Volume(mask, GEOM)


def test_the_views_are_the_sixteen_distinct_augmentations():
    """A z flip or none times the 8 symmetries of the square in (y, x): 16 different images."""
    assert len(VIEWS) == 16 and ((), 0) in VIEWS
    x = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 1, 3, 4, 4)
    seen = {tuple(torch.rot90(torch.flip(x, d) if d else x, k, (3, 4)).flatten().tolist())
            for d, k in VIEWS}
    assert len(seen) == 16


def test_view_mean_probability_reads_every_view_on_the_input_voxels():
    x = torch.zeros(2, 3, 6, 5, 5)
    plain = view_mean_probability(RampModel(2), x, views=(((), 0),))
    assert torch.allclose(plain[0, 0, :, 0, 0], torch.sigmoid(torch.linspace(-4.0, 4.0, 6)))
    # half the views see each ramp reversed once turned back: sigmoid(r) + sigmoid(-r) = 1
    for axis in (2, 3):
        mean = view_mean_probability(RampModel(axis), x)
        assert mean.shape == (2, 1, 6, 5, 5)
        assert torch.allclose(mean, torch.full_like(mean, 0.5), atol=1e-6)
    # a window with y != x is turned to (x, y) and back: the result lies on the input's voxels
    out = view_mean_probability(nn.Conv3d(3, 1, 3, padding=1), torch.rand(1, 3, 4, 6, 8))
    assert out.shape == (1, 1, 4, 6, 8)


def test_refine_volume_drops_a_change_made_in_one_orientation_only():
    image, initial = _case()
    plain_t, tta_t = {}, {}
    plain = refine_volume(UpwardGrowthModel(), META, image, initial, margin_mm=3.0, tta=False,
                          timings=plain_t).array
    grown = plain > initial.array
    assert grown.any() and (plain >= initial.array).all()
    zs = np.argwhere(grown)[:, 0]
    assert zs.min() > 10                               # the upper faces only
    tta = refine_volume(UpwardGrowthModel(), META, image, initial, margin_mm=3.0,
                        timings=tta_t).array           # default: test-time augmentation
    np.testing.assert_array_equal(tta, initial.array)  # 8 of 16 views: p = 0.44 < 0.5
    assert plain_t["passes_per_window"] == 1 and tta_t["passes_per_window"] == 16


def test_no_views_for_a_checkpoint_trained_without_augmentation():
    image, initial = _case()
    meta = dict(META, training={"augment": False})
    assert not tta_allowed(meta) and tta_allowed(META) and tta_allowed({"training": {}})
    t: dict = {}
    out = refine_volume(UpwardGrowthModel(), meta, image, initial, margin_mm=3.0, timings=t).array
    assert t["passes_per_window"] == 1 and (out > initial.array).any()


def _checkpoint(path, augment=True):
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config

    cfg = network_config("tiny")
    meta = {"channels": CHANNELS, "network": cfg.to_dict(), "normalisation": NORMALISATION,
            "patch_size": [16, 16, 16], "training": {"augment": augment}}
    return save_checkpoint(path, build_network(cfg), meta)


def test_model_refiner_and_cli_run_the_views_by_default(tmp_path):
    from SCORERefineLib.commands import refine as refine_cmd
    from SCORERefineLib.refiners import make_refiner

    ck = _checkpoint(tmp_path / "model.pt")
    image, initial = _case()
    refiner = make_refiner(ck, device="cpu", veto=False)
    assert refiner.settings["tta"] is True
    refiner.model = UpwardGrowthModel()
    np.testing.assert_array_equal(refiner(image, initial).array, initial.array)
    assert make_refiner(ck, device="cpu", tta=False).settings["tta"] is False
    no_flip = _checkpoint(tmp_path / "noflip.pt", augment=False)
    assert make_refiner(no_flip, device="cpu").settings["tta"] is False
    for first, other in ((ck, no_flip), (no_flip, ck)):   # an ensemble: every member must suit
        ens = make_refiner(first, device="cpu", also=[other])
        assert ens.settings["tta"] is False and len(ens.settings["ensemble"]) == 2
    assert make_refiner(ck, device="cpu", also=[ck]).settings["tta"] is True

    write_case(tmp_path / "ds", "c1", image, initial)
    parser = argparse.ArgumentParser()
    refine_cmd.add_arguments(parser)
    for extra, want in (([], True), (["--no-tta"], False)):
        args = parser.parse_args(["--model", str(ck), "--dataset", str(tmp_path / "ds"),
                                  "--device", "cpu", "--progress", "none", *extra])
        assert refine_cmd.run(args) == 0
        info = json.loads(get_case(tmp_path / "ds", "c1").prediction_path("refined")
                          .with_name("refined.json").read_text())
        assert info["tta"] is want


def test_the_background_refine_command_asks_for_one_pass_only_when_told():
    """``jobs.refine_command`` (the Slicer panel's background refine): the views by default,
    ``--no-tta`` when the panel's box is unticked (``tta=False``)."""
    from SCORERefineLib.jobs import refine_command

    on = refine_command("ct.nii", "m.nii", "out.nii", "model.pt")
    off = refine_command("ct.nii", "m.nii", "out.nii", "model.pt", tta=False)
    assert "--no-tta" not in on and off.count("--no-tta") == 1
    assert [a for a in off if a != "--no-tta"] == on
