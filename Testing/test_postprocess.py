"""Classical post-processing baseline: holes, gaps, spurious components, anisotropic closing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SCORERefineLib.case import write_case
from SCORERefineLib.imageio import Geometry, Volume, read_mask
from SCORERefineLib.predictions import change_summary, iter_predict_dataset, read_prediction_info
from SCORERefineLib.refiner.postprocess import ball_structure, classical_postprocess
from SCORERefineLib.refiners import ClassicalRefiner, make_refiner
from conftest import ellipsoid

ISO = (1.0, 1.0, 1.0)


def test_ball_structure_is_anisotropic_in_voxels():
    ball = ball_structure(2.0, (3.0, 1.0, 0.5))
    assert ball.shape == (1, 5, 9)           # 2 mm: 0 voxels in z, 2 in y, 4 in x
    assert ball[0, 2, 8] and ball[0, 0, 4] and not ball[0, 0, 0]
    assert ball_structure(0.5, ISO).shape == (1, 1, 1)


def test_fills_an_internal_hole():
    mask = ellipsoid((20, 24, 24), (7, 8, 8))
    holed = mask.copy()
    holed[8:12, 10:14, 10:14] = 0
    out = classical_postprocess(holed, ISO, closing_mm=0.0, keep_largest=False)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)


def test_fills_a_canal_open_at_the_ends_per_slice():
    mask = np.zeros((16, 20, 20), np.uint8)
    mask[:, 4:16, 4:16] = 1
    mask[:, 8:12, 8:12] = 0                  # a tube: open at both ends, no 3D hole
    out = classical_postprocess(mask, ISO, closing_mm=0.0, keep_largest=False)
    assert out[:, 8:12, 8:12].all()
    no2d = classical_postprocess(mask, ISO, closing_mm=0.0, keep_largest=False, fill_holes_2d=False)
    assert not no2d[:, 8:12, 8:12].any()


def test_closes_a_gap():
    mask = np.zeros((12, 20, 30), np.uint8)
    mask[3:9, 5:15, 3:14] = 1
    mask[3:9, 5:15, 17:28] = 1               # 3-voxel gap at x = 14, 15, 16
    out = classical_postprocess(mask, ISO, closing_mm=2.0, keep_largest=False, fill_holes=False)
    assert out[5:7, 7:13, 14:17].all()     # away from the faces (ball fits)
    assert (out >= mask).all()
    # the same gap with a 1 mm ball stays open
    small = classical_postprocess(mask, ISO, closing_mm=1.0, keep_largest=False, fill_holes=False)
    assert not small[:, :, 15].any()


def test_removes_a_small_spurious_component():
    mask = ellipsoid((20, 24, 24), (6, 7, 7))
    mask[1:3, 1:3, 1:3] = 1                  # far from the object
    out = classical_postprocess(mask, ISO, closing_mm=1.0)
    assert not out[1:3, 1:3, 1:3].any()
    assert out[10, 12, 12] == 1
    # size threshold: both kept when the small one is above it, removed when below
    both = classical_postprocess(mask, ISO, closing_mm=0.0, keep_largest=False, min_component_mm3=5)
    assert both[1:3, 1:3, 1:3].all()
    one = classical_postprocess(mask, ISO, closing_mm=0.0, keep_largest=False, min_component_mm3=9)
    assert not one[1:3, 1:3, 1:3].any()


def test_closing_radius_is_in_mm_on_anisotropic_grids():
    # gap of 2 voxels along x (0.5 mm spacing = 1 mm) and along z (3 mm spacing = 6 mm)
    mask = np.zeros((14, 16, 40), np.uint8)
    mask[2:12, 4:12, 4:18] = 1
    mask[2:12, 4:12, 20:36] = 1              # x gap of 2 voxels = 1 mm
    out = classical_postprocess(mask, (3.0, 1.0, 0.5), closing_mm=2.0, keep_largest=False,
                                fill_holes=False)
    assert out[4:10, 6:10, 18:20].all()      # 1 mm gap closed by a 2 mm ball
    zmask = np.zeros((14, 16, 16), np.uint8)
    zmask[1:6, 4:12, 4:12] = 1
    zmask[8:13, 4:12, 4:12] = 1              # z gap of 2 slices = 6 mm
    zout = classical_postprocess(zmask, (3.0, 1.0, 1.0), closing_mm=2.0, keep_largest=False,
                                 fill_holes=False)
    assert not zout[6:8].any()               # a 2 mm ball does not bridge 6 mm
    # with isotropic 1 mm spacing the same voxel gap (2 mm) is bridged
    ziso = classical_postprocess(zmask, ISO, closing_mm=2.0, keep_largest=False, fill_holes=False)
    assert ziso[6:8, 6:10, 6:10].all()


def test_mask_touching_the_border_is_not_eroded():
    mask = np.zeros((10, 12, 12), np.uint8)
    mask[0:6, 0:8, 0:8] = 1
    out = classical_postprocess(mask, ISO, closing_mm=3.0)
    np.testing.assert_array_equal(out, mask)


def test_empty_mask_stays_empty():
    out = classical_postprocess(np.zeros((4, 5, 6)), ISO)
    assert out.dtype == np.uint8 and not out.any()


def test_change_summary_counts():
    a = np.zeros((2, 2, 2), np.uint8)
    b = a.copy()
    a[0, 0, 0] = 1
    b[1, 1, 1] = b[1, 1, 0] = 1
    s = change_summary(a, b, 2000.0)
    assert (s["voxels_added"], s["voxels_removed"]) == (2, 1)
    assert s["volume_before_ml"] == pytest.approx(2.0) and s["volume_after_ml"] == pytest.approx(4.0)


def test_postprocess_dataset_writes_predictions(tmp_path):
    geom = Geometry(size=(20, 18, 12), spacing=(0.8, 0.9, 2.0), origin=(-5.0, 3.0, 7.0))
    mask = ellipsoid((12, 18, 20), (4, 6, 7))
    holed = mask.copy()
    holed[5:7, 8:10, 9:11] = 0
    image = Volume(np.full(geom.shape, -100, np.float32), geom)
    for cid in ("a", "b"):
        write_case(tmp_path, cid, image, Volume(holed, geom))
    refiner = make_refiner("classical")
    assert isinstance(refiner, ClassicalRefiner) and refiner.settings["closing_mm"] == 2.0
    paths = [p for _, p, _, _ in iter_predict_dataset(tmp_path, "classical", refiner,
                                                      progress="none")]
    assert [p.parent.parent.name for p in paths] == ["a", "b"]
    out = read_mask(paths[0], like=geom)
    assert out.geometry == geom or out.geometry.matches(geom)
    assert out.array[5:7, 8:10, 9:11].all()
    info = json.loads(paths[0].with_name("classical.json").read_text())
    assert info["voxels_added"] == 8 and info["seconds"] >= 0
    from SCORERefineLib.case import get_case
    assert read_prediction_info(get_case(tmp_path, "b"), "classical")["case_id"] == "b"
