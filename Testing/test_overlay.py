"""PNG overlays: a valid image of the expected size, contours and regions actually drawn."""

import numpy as np
import pytest

from SCORERefineLib.errors import InputError
from SCORERefineLib.overlay import figure_size, save_overlay
from SCORERefineLib.phantoms import PRESETS, make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2, PRESETS["tiny"])


def _read(path):
    import matplotlib.image as mpimg
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_overlay_written_with_expected_size(tmp_path, phantom):
    sp = phantom.image.geometry.spacing_zyx
    contours = {"reference": phantom.reference.array, "initial": phantom.initial.array}
    p = save_overlay(tmp_path / "sub" / "a.png", phantom.image.array, sp, contours, title="case")
    img = _read(p)
    w, h = figure_size(phantom.image.array.shape, sp, n_slices=3, title="case", dpi=100)
    assert img.shape[:2] == (h, w)
    # the image is taller than wide (the long axis z is shown upright)
    assert h > 200 and w > 200


def test_contours_and_regions_change_pixels(tmp_path, phantom):
    sp = phantom.image.geometry.spacing_zyx
    ref = phantom.reference.array
    a = _read(save_overlay(tmp_path / "a.png", phantom.image.array, sp, {}, focus=ref))
    b = _read(save_overlay(tmp_path / "b.png", phantom.image.array, sp, {"reference": ref}))
    assert a.shape == b.shape
    diff = np.abs(a[..., :3] - b[..., :3]).sum(axis=-1) > 0.05
    assert diff.sum() > 100
    # green dominates where the reference contour was drawn
    assert (b[diff][:, 1] > b[diff][:, 0]).mean() > 0.5
    regions = np.zeros(phantom.image.array.shape, np.int16)
    regions[phantom.reference.array > 0] = 1
    regions[: regions.shape[0] // 2][phantom.reference.array[: regions.shape[0] // 2] > 0] = 2
    c = _read(save_overlay(tmp_path / "c.png", phantom.image.array, sp,
                           {"reference": phantom.reference.array}, regions=regions, n_slices=2))
    d = _read(save_overlay(tmp_path / "d.png", phantom.image.array, sp,
                           {"reference": phantom.reference.array}, n_slices=2))
    assert (np.abs(c - d).sum(axis=-1) > 0.05).sum() > 100


def test_overlay_rejects_bad_shapes(tmp_path, phantom):
    with pytest.raises(InputError, match="contour 'x'"):
        save_overlay(tmp_path / "a.png", phantom.image.array, (1, 1, 1),
                     {"x": np.zeros((2, 2, 2))})
    with pytest.raises(InputError, match="3D"):
        save_overlay(tmp_path / "a.png", phantom.image.array[0], (1, 1, 1), {})
