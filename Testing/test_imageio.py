"""Image IO: geometry carried through reads and writes; bad input gives clear errors."""

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from SCORERefineLib.errors import GridMismatchError, InputError
from SCORERefineLib.imageio import (Geometry, Volume, check_same_grid, read_image, read_labels,
                                    read_mask, resample_mask_to, write_volume)

ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _geom(shape=(6, 7, 8)):
    return Geometry(size=tuple(reversed(shape)), spacing=(0.7, 0.9, 2.5),
                    origin=(-12.5, 30.0, 101.25), direction=ROTATED)


def test_write_read_keeps_geometry_and_values(tmp_path):
    g = _geom()
    arr = np.arange(np.prod(g.shape), dtype=np.int16).reshape(g.shape) - 100
    path = write_volume(Volume(arr, g), tmp_path / "ct.nii.gz")
    back = read_image(path)
    assert back.geometry.matches(g)
    np.testing.assert_allclose(back.geometry.spacing, g.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.geometry.direction, g.direction, atol=1e-6)
    np.testing.assert_array_equal(back.array, arr.astype(np.float32))
    assert back.array.dtype == np.float32


def test_nrrd_accepted(tmp_path):
    g = _geom()
    arr = np.zeros(g.shape, np.uint8)
    arr[2:4, 2:5, 3:6] = 1
    write_volume(Volume(arr, g), tmp_path / "m.nrrd")
    back = read_mask(tmp_path / "m.nrrd")
    np.testing.assert_array_equal(back.array, arr)
    assert back.geometry.matches(g)


def test_spacing_zyx_and_shape_follow_array_order():
    g = Geometry.isotropic((5, 6, 7), spacing_zyx=(3.0, 2.0, 1.0))
    assert g.shape == (5, 6, 7)
    assert g.size == (7, 6, 5)
    assert g.spacing == (1.0, 2.0, 3.0)
    assert g.spacing_zyx == (3.0, 2.0, 1.0)
    assert g.voxel_volume_mm3 == pytest.approx(6.0)


def test_index_to_physical_agrees_with_simpleitk():
    g = _geom()
    img = g.apply_to(sitk.Image(list(g.size), sitk.sitkUInt8))
    expected = img.TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 1.0))  # (x, y, z)
    np.testing.assert_allclose(g.index_to_physical((1.0, 2.0, 3.0)), expected, atol=1e-9)


def test_grid_mismatch_names_both_grids(tmp_path):
    a = _geom()
    b = Geometry(size=a.size, spacing=(1.0, 1.0, 1.0), origin=a.origin, direction=a.direction)
    with pytest.raises(GridMismatchError) as err:
        check_same_grid(a, b, "image", "mask")
    msg = str(err.value)
    assert "0.7x0.9x2.5" in msg and "1x1x1" in msg and "Resample" in msg


def test_read_mask_with_like_refuses_other_grid(tmp_path):
    g = _geom()
    m = np.ones(g.shape, np.uint8)
    write_volume(Volume(m, g), tmp_path / "m.nii.gz")
    other = Geometry.isotropic(g.shape)
    with pytest.raises(GridMismatchError):
        read_mask(tmp_path / "m.nii.gz", like=other)
    assert read_mask(tmp_path / "m.nii.gz", like=g).array.sum() == m.sum()


def test_empty_mask_refused_unless_allowed(tmp_path):
    g = _geom()
    write_volume(Volume(np.zeros(g.shape, np.uint8), g), tmp_path / "e.nii.gz")
    with pytest.raises(InputError, match="empty"):
        read_mask(tmp_path / "e.nii.gz")
    assert read_mask(tmp_path / "e.nii.gz", allow_empty=True).array.sum() == 0


def test_multilabel_mask_asks_for_label(tmp_path):
    g = _geom()
    arr = np.zeros(g.shape, np.uint8)
    arr[1:3] = 69
    arr[4:5] = 70
    write_volume(Volume(arr, g), tmp_path / "ts.nii.gz")
    with pytest.raises(InputError, match=r"multi-label.*69, 70.*--label"):
        read_mask(tmp_path / "ts.nii.gz")
    m = read_mask(tmp_path / "ts.nii.gz", label=70)
    assert m.array.dtype == np.uint8 and m.array.sum() == (arr == 70).sum()
    with pytest.raises(InputError, match="label 5 is not in mask"):
        read_mask(tmp_path / "ts.nii.gz", label=5)


def test_nan_image_refused(tmp_path):
    g = _geom()
    arr = np.zeros(g.shape, np.float32)
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    write_volume(Volume(arr, g), tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match="2 NaN or infinite"):
        read_image(tmp_path / "nan.nrrd")


def test_2d_image_refused(tmp_path):
    img = sitk.Image(16, 16, sitk.sitkInt16)
    sitk.WriteImage(img, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="3D volume"):
        read_image(tmp_path / "flat.nii.gz")
    single = sitk.Image(16, 16, 1, sitk.sitkInt16)
    sitk.WriteImage(single, str(tmp_path / "one.nii.gz"))
    with pytest.raises(InputError, match="at least 2 slices"):
        read_image(tmp_path / "one.nii.gz")


def test_truncated_and_missing_files(tmp_path):
    g = _geom((20, 20, 20))
    rng = np.random.default_rng(0)
    write_volume(Volume(rng.integers(-1000, 1000, g.shape).astype(np.int16), g), tmp_path / "ok.nii.gz")
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable or truncated"):
        read_image(tmp_path / "cut.nii.gz")
    write_volume(Volume(np.ones(g.shape, np.int16), g), tmp_path / "ok.nii")
    raw = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[:-100])
    with pytest.raises(InputError, match="truncated"):
        read_image(tmp_path / "cut.nii")
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"this is not an image"))
    with pytest.raises(InputError):
        read_image(tmp_path / "junk.nii.gz")


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    g = _geom()
    target = tmp_path / "m.nii.gz"
    write_volume(Volume(np.ones(g.shape, np.uint8), g), target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        write_volume(Volume(np.zeros(g.shape, np.uint8), g), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii.gz"]


def test_read_labels_keeps_values(tmp_path):
    g = _geom()
    arr = np.zeros(g.shape, np.int16)
    arr[0, 0, :3] = [1, 2, 12]
    write_volume(Volume(arr, g), tmp_path / "r.nii.gz")
    back = read_labels(tmp_path / "r.nii.gz", like=g)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, arr)


def test_resample_mask_to_other_grid_nearest():
    src_g = Geometry.isotropic((10, 10, 10), spacing_zyx=(2.0, 2.0, 2.0))
    arr = np.zeros(src_g.shape, np.uint8)
    arr[2:6, 2:6, 2:6] = 1
    fine = Geometry.isotropic((20, 20, 20), spacing_zyx=(1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5))
    out = resample_mask_to(Volume(arr, src_g), fine)
    assert out.array.shape == (20, 20, 20)
    assert set(np.unique(out.array)) == {0, 1}
    # a 4-voxel cube at 2 mm covers 8 mm: 8 fine voxels per side
    assert out.array.sum() == 8 ** 3
