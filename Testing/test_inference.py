"""Refiner inference: geometry, ROI paste-back, borders, small volumes, errors, dataset runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from SCORERefineLib.case import get_case, write_case
from SCORERefineLib.errors import (Cancelled, CheckpointError, GridMismatchError, InputError,
                                   SCORERefineError)
from SCORERefineLib.imageio import Geometry, Volume, read_image, read_mask, write_volume
from SCORERefineLib.progress import CancelToken
from SCORERefineLib.predictions import iter_predict_dataset, predict_file
from SCORERefineLib.refiner.inference import (context_slices, count_windows, refine_volume,
                                              resolve_device, roi_slices)
from SCORERefineLib.refiners import ModelRefiner, make_refiner
from conftest import ellipsoid
from toy_models import CTThresholdModel, IdentityModel

CHANNELS = ["ct", "initial", "edge"]
META = {"channels": CHANNELS, "patch_size": [16, 16, 16], "normalisation": None}

# A rotated and flipped direction (rows: LPS axes of i, j, k), anisotropic spacing, odd origin.
ROTATED = (0.0, -1.0, 0.0,
           0.8, 0.0, 0.6,
           -0.6, 0.0, 0.8)


class ConstantModel(nn.Module):
    """Logits = ``value`` everywhere ("everything foreground" for a large positive value)."""

    def __init__(self, value: float = 50.0, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 1, 1)
        self.value = value

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value)


def _case(shape=(20, 30, 26), spacing_xyz=(0.8, 1.3, 2.5), origin=(-40.5, 12.25, 301.0),
          direction=ROTATED, centre=None, radii=(3, 5, 4)):
    geom = Geometry(size=tuple(reversed(shape)), spacing=spacing_xyz, origin=origin,
                    direction=direction)
    mask = ellipsoid(shape, radii, centre)
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 30, shape).astype(np.float32) + 1000.0 * mask
    return Volume(hu, geom), Volume(mask, geom)


def test_geometry_roundtrip_and_roi_paste_with_everything_foreground(tmp_path):
    image, initial = _case()
    write_volume(image, tmp_path / "ct.nii.gz", dtype=np.float32)
    write_volume(initial, tmp_path / "mask.nii.gz", dtype=np.uint8)
    image, initial = read_image(tmp_path / "ct.nii.gz"), read_mask(tmp_path / "mask.nii.gz")

    refined = refine_volume(ConstantModel(50.0), META, image, initial, margin_mm=3.0,
                            band_only=False)   # the whole bounding-box ROI may change
    assert refined.geometry == image.geometry            # the very same grid values
    assert refined.array.dtype == np.uint8 and refined.array.shape == image.array.shape

    roi = roi_slices(initial.array, image.geometry.spacing_zyx, 3.0)
    # margin 3 mm -> ceil(3/2.5)=2 slices in z, ceil(3/1.3)=3 rows in y, ceil(3/0.8)=4 cols in x
    nz = np.nonzero(initial.array)
    assert [s.start for s in roi] == [int(nz[0].min()) - 2, int(nz[1].min()) - 3,
                                      int(nz[2].min()) - 4]
    inside = np.zeros(image.array.shape, bool)
    inside[roi] = True
    assert refined.array[inside].all()                    # the model's "everything" inside
    np.testing.assert_array_equal(refined.array[~inside], initial.array[~inside])
    assert (~inside).sum() > 1000                         # outside is not trivially empty

    out = write_volume(refined, tmp_path / "refined.nii.gz", dtype=np.uint8)
    back = read_mask(out, allow_empty=True)
    assert back.geometry.matches(image.geometry, tol=1e-6)
    np.testing.assert_allclose(back.geometry.direction, ROTATED, atol=1e-6)
    np.testing.assert_allclose(back.geometry.origin, image.geometry.origin, atol=1e-4)
    np.testing.assert_array_equal(back.array, refined.array)


def test_identity_model_returns_the_initial_mask_exactly():
    image, initial = _case()
    refined, prob = refine_volume(IdentityModel(), META, image, initial, margin_mm=5.0,
                                  overlap=0.5, return_probability=True)
    np.testing.assert_array_equal(refined.array, initial.array)
    assert prob.array.dtype == np.float32 and prob.geometry == image.geometry
    assert prob.array.min() >= 0.0 and prob.array.max() <= 1.0
    # the same with the initial channel elsewhere in the channel order
    meta = dict(META, channels=["initial", "ct", "edge"])
    again = refine_volume(IdentityModel(0), meta, image, initial, margin_mm=5.0)
    np.testing.assert_array_equal(again.array, initial.array)


def test_image_crop_is_aligned_with_the_mask():
    image, initial = _case(shape=(20, 40, 36))
    hu = image.array.copy()
    hu[:] = 0.0
    hu[6:14, 12:30, 10:20] = 1500.0                       # a bright box overlapping the mask
    image = image.with_array(hu)
    refined = refine_volume(CTThresholdModel(), META, image, initial, margin_mm=4.0,
                            band_only=False)
    roi = roi_slices(initial.array, image.geometry.spacing_zyx, 4.0)
    expected = initial.array.copy()
    expected[roi] = (hu[roi] >= 700.0)
    np.testing.assert_array_equal(refined.array, expected)


class EdgeModel(nn.Module):
    """Logits = 40 * (edge prior - 0.5) (checks that the crop gives the edge prior enough context)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 1, 1)

    def forward(self, x):
        return 40.0 * (x[:, 2:3] - 0.5)


def test_edge_prior_in_the_roi_equals_the_whole_image_one():
    from SCORERefineLib.refiner.inputs import NORMALISATION, edge_prior

    image, initial = _case(shape=(24, 48, 44), spacing_xyz=(0.7, 0.7, 1.5))
    meta = dict(META, normalisation=NORMALISATION)
    _, prob = refine_volume(EdgeModel(), meta, image, initial, margin_mm=1.0,
                            return_probability=True, band_only=False)
    roi = roi_slices(initial.array, image.geometry.spacing_zyx, 1.0)
    assert all(s.start > 3 and s.stop < n - 3 for s, n in zip(roi, image.array.shape))
    full = edge_prior(image.array, image.geometry.spacing_zyx, NORMALISATION)
    expected = torch.sigmoid(40.0 * (torch.from_numpy(full[roi]) - 0.5)).numpy()
    np.testing.assert_allclose(prob.array[roi], expected, atol=1e-5)


def test_mask_touching_the_volume_border():
    shape = (12, 20, 22)
    image, initial = _case(shape=shape, centre=(1, 2, 20), radii=(4, 6, 6),
                           direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert initial.array[0].any() and initial.array[:, :, -1].any()
    roi = roi_slices(initial.array, image.geometry.spacing_zyx, 10.0)
    assert roi[0].start == 0 and roi[2].stop == shape[2]
    refined = refine_volume(ConstantModel(50.0), META, image, initial, margin_mm=10.0,
                            band_only=False)
    inside = np.zeros(shape, bool)
    inside[roi] = True
    assert refined.array[inside].all()
    np.testing.assert_array_equal(refined.array[~inside], initial.array[~inside])
    same = refine_volume(IdentityModel(), META, image, initial, margin_mm=10.0)
    np.testing.assert_array_equal(same.array, initial.array)


def test_volume_smaller_than_the_patch():
    image, initial = _case(shape=(6, 10, 9), radii=(2, 3, 3))
    meta = dict(META, patch_size=[32, 32, 32])
    same = refine_volume(IdentityModel(), meta, image, initial, margin_mm=1.0)
    np.testing.assert_array_equal(same.array, initial.array)
    full = refine_volume(ConstantModel(50.0), meta, image, initial, margin_mm=100.0)
    assert full.array.all()
    empty = refine_volume(ConstantModel(-50.0), meta, image, initial, margin_mm=100.0)
    assert not empty.array.any()


def test_untrained_refiner_net_reproduces_the_initial_mask():
    from SCORERefineLib.refiner.network import build_network, network_config

    torch.manual_seed(0)
    net = build_network(network_config("tiny"))
    image, initial = _case(shape=(14, 26, 23))
    meta = dict(META, patch_size=[12, 16, 16])           # crops larger and smaller than the patch
    refined = refine_volume(net, meta, image, initial, margin_mm=4.0, overlap=0.25)
    np.testing.assert_array_equal(refined.array, initial.array)


def test_grid_mismatch_names_both_grids():
    image, initial = _case()
    other = Geometry(size=initial.geometry.size, spacing=(1.0, 1.0, 1.0),
                     origin=initial.geometry.origin, direction=initial.geometry.direction)
    with pytest.raises(GridMismatchError) as err:
        refine_volume(IdentityModel(), META, image, Volume(initial.array, other))
    text = str(err.value)
    assert "image has size 26x30x20, spacing 0.8x1.3x2.5 mm" in text
    assert "initial mask has size 26x30x20, spacing 1x1x1 mm" in text


def test_grid_mismatch_from_files(tmp_path):
    image, initial = _case()
    write_volume(image, tmp_path / "ct.nii.gz", dtype=np.float32)
    shifted = Geometry(size=initial.geometry.size, spacing=initial.geometry.spacing,
                       origin=(0.0, 0.0, 0.0), direction=initial.geometry.direction)
    write_volume(Volume(initial.array, shifted), tmp_path / "mask.nii.gz", dtype=np.uint8)
    with pytest.raises(GridMismatchError, match="origin"):
        predict_file(make_refiner(_tiny_checkpoint(tmp_path), device="cpu"), tmp_path / "mask.nii.gz",
                     tmp_path / "out.nii.gz", image_path=tmp_path / "ct.nii.gz")


def test_errors_are_clear():
    image, initial = _case()
    with pytest.raises(InputError, match="empty"):
        refine_volume(IdentityModel(), META, image, initial.with_array(np.zeros_like(initial.array)))
    with pytest.raises(CheckpointError, match="2 input channels"):
        refine_volume(ConstantModel(in_channels=2), META, image, initial)
    with pytest.raises(CheckpointError, match="patch_size"):
        refine_volume(IdentityModel(), {"channels": CHANNELS}, image, initial)

    class OOM(IdentityModel):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(SCORERefineError, match="--device cpu"):
        refine_volume(OOM(), META, image, initial)

    token = CancelToken()
    token.cancel("test")
    with pytest.raises(Cancelled):
        refine_volume(IdentityModel(), META, image, initial, cancel=token)


def test_devices_and_progress():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu9")

    image, initial = _case(shape=(20, 40, 36))
    calls = []
    refine_volume(IdentityModel(), META, image, initial, margin_mm=10.0, overlap=0.5,
                  sw_batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1] and calls[-1][1] > 2
    assert count_windows((16, 16, 16), (16, 16, 16), 0.25) == 1
    assert count_windows((8, 40, 16), (16, 16, 16), 0.5) == 4


def test_context_crop_grows_to_the_patch_inside_the_volume():
    ctx = context_slices((slice(5, 8), slice(0, 4), slice(10, 30)), (20, 20, 30), (1, 1, 1),
                         min_size=(16, 16, 16), context_mm=0.0)
    assert ctx == (slice(0, 16), slice(0, 16), slice(10, 30))
    ctx = context_slices((slice(5, 8),) * 3, (10, 10, 10), (2.0, 1.0, 1.0), min_size=(16, 4, 4),
                         context_mm=2.0)
    assert ctx == (slice(0, 10), slice(3, 10), slice(3, 10))


def _tiny_checkpoint(folder) -> str:
    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config

    cfg = network_config("tiny")
    torch.manual_seed(0)
    net = build_network(cfg)
    meta = {"channels": CHANNELS, "network": cfg.to_dict(), "normalisation": NORMALISATION,
            "patch_size": [16, 16, 16]}
    return str(save_checkpoint(folder / "tiny.pt", net, meta))


def test_refine_file_and_dataset(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    image, initial = _case(shape=(12, 22, 20))
    labels = initial.array.astype(np.int16) * 69
    labels[0, 0, 0] = 5
    write_volume(image, tmp_path / "ct.nii.gz", dtype=np.float32)
    write_volume(initial.with_array(labels), tmp_path / "seg.nii.gz", dtype=np.int16)
    refiner = make_refiner(ckpt, device="auto")
    assert isinstance(refiner, ModelRefiner) and refiner.settings["model"] == ckpt
    info = predict_file(refiner, tmp_path / "seg.nii.gz", tmp_path / "out" / "refined.nii.gz",
                        image_path=tmp_path / "ct.nii.gz", label=69)
    out = read_mask(info["out"], like=image.geometry)
    np.testing.assert_array_equal(out.array, initial.array)   # untrained residual net = identity
    assert info["voxels_added"] == info["voxels_removed"] == 0 and info["seconds"] > 0

    for cid in ("c1", "c2"):
        write_case(tmp_path / "ds", cid, image, initial)
    refiner = make_refiner(ckpt, device="cpu")
    paths = [p for _, p, _, _ in iter_predict_dataset(tmp_path / "ds", "refined", refiner,
                                                      progress="none")]
    assert [p.parent.parent.name for p in paths] == ["c1", "c2"]
    assert all(p.name == "refined.nii.gz" for p in paths)
    sidecar = json.loads(paths[1].with_name("refined.json").read_text())
    assert sidecar["case_id"] == "c2" and sidecar["seconds"] > 0
    assert sidecar["method"] == "refiner" and sidecar["model"] == ckpt and sidecar["device"] == "cpu"
    only = [p for _, p, _, _ in iter_predict_dataset(tmp_path / "ds", "r2", refiner, ["c2"],
                                                     progress="none")]
    assert only == [get_case(tmp_path / "ds", "c2").prediction_path("r2")]
    with pytest.raises(InputError, match="model file not found"):
        make_refiner(tmp_path / "missing.pt")
