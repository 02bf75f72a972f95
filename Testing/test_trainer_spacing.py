"""Training spacing (issue 12): cases resampled to the median spacing, ``spacing_mm`` in the
checkpoint, inference at that spacing; steps/s reported by the trainer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SCORERefineLib.case import list_cases
from SCORERefineLib.refiner import trainer as trainer_mod
from SCORERefineLib.refiner.checkpoint import load_refiner
from SCORERefineLib.refiner.inference import refine_volume
from SCORERefineLib.refiner.trainer import TrainConfig, train

from test_trainer import make_tiny_dataset


@pytest.fixture(scope="module")
def aniso_master(tmp_path_factory):
    """Three tiny cases; the last one re-labelled to a coarser z and finer y/x spacing."""
    root = make_tiny_dataset(tmp_path_factory.mktemp("aniso") / "ds", n=3)
    case = list_cases(root)[-1]
    for path in case.folder.glob("*.nii.gz"):
        img = sitk.ReadImage(str(path))
        sx, sy, sz = img.GetSpacing()
        img.SetSpacing((sx * 0.8, sy * 0.8, sz * 1.4))
        sitk.WriteImage(img, str(path))
    return root


@pytest.fixture
def aniso(aniso_master, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(aniso_master, dst)
    return dst


def cfg(**kw) -> TrainConfig:
    base = dict(steps=4, patch_size=(16, 16, 16), batch_size=1, network="tiny", device="cpu",
                checkpoint_every=0, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_median_spacing_recorded_and_odd_case_resampled(aniso, tmp_path, monkeypatch, capsys):
    seen = []
    real = trainer_mod._prepare
    monkeypatch.setattr(trainer_mod, "_prepare", lambda m, c: seen.append(real(m, c)) or seen[-1])
    out = train(aniso, tmp_path / "m.pt", cfg(), progress="json")
    model, meta = load_refiner(out)
    assert meta["spacing_mm"] == pytest.approx([2.5, 1.5, 1.5])
    assert len(seen) == 3
    for t in seen:   # every case is prepared on the common spacing
        assert t.spacing_zyx == pytest.approx((2.5, 1.5, 1.5), rel=1e-6)
        assert t.image.shape[1:] == t.initial.shape
        assert all(m.shape == t.initial.shape for m in t.maps.values())
    odd = seen[-1]
    assert odd.initial.shape == (56, 26, 26)   # 40*3.5/2.5, 32*1.2/1.5 (rounded)
    assert odd.initial.any() and odd.info["n_rated_regions"] > 0
    # steps/s: in every JSON progress line and in the checkpoint's training block
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if '"progress"' in l]
    assert lines and all(rec["steps_per_s"] > 0 for rec in lines)
    assert meta["training"]["seconds"] > 0 and meta["training"]["steps_per_second"] > 0

    # inference on the odd case: resampled to the training spacing, answer on the input grid
    case = list_cases(aniso)[-1]
    image = case.load_image()
    initial = case.load_initial(like=image)
    tm: dict = {}
    refined = refine_volume(model, meta, image, initial, margin_mm=4.0, num_threads=1, timings=tm)
    assert tm["resampled_to"] == pytest.approx([2.5, 1.5, 1.5])
    assert refined.geometry == image.geometry and refined.array.shape == image.array.shape
    assert set(np.unique(refined.array)) <= {0, 1}


def test_resample_off_trains_on_native_grids(aniso, tmp_path):
    out = train(aniso, tmp_path / "n.pt", cfg(resample=False, steps=2), progress="none")
    meta = load_refiner(out)[1]
    assert "spacing_mm" not in meta and meta["training"]["resample"] is False


def test_resampled_case_falls_back_to_its_grid_when_the_mode_refuses(aniso, monkeypatch):
    mode = TrainConfig().make_mode()
    case = list_cases(aniso)[-1]
    wrapped = trainer_mod._ResampledCase(case, (2.5, 1.5, 1.5))
    calls = []

    def prepare(c):
        calls.append(type(c).__name__)
        if isinstance(c, trainer_mod._ResampledCase):
            raise trainer_mod.TrainingError("rated region lost")
        return "native"
    monkeypatch.setattr(mode, "prepare_case", prepare)
    assert trainer_mod._prepare(mode, wrapped) == "native" and calls == ["_ResampledCase", "Case"]


def test_cli_native_spacing_flag():
    import argparse
    from SCORERefineLib.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    assert cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt"])).resample is True
    assert cmd.config_from_args(p.parse_args(["ds", "--out", "m.pt", "--native-spacing"])).resample is False
