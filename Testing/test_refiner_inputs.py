"""Network input: CT window, initial mask channel, edge prior in mm units."""

from __future__ import annotations

import numpy as np
import pytest

from SCORERefineLib.errors import InputError
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.refiner.inputs import (CHANNELS, KNOWN_CHANNELS, NORMALISATION, edge_prior,
                                           make_input, window_ct)


def _step_volume(shape=(16, 20, 24), spacing=(1.0, 1.0, 1.0), axis=2):
    hu = np.full(shape, 40.0, np.float32)           # muscle
    idx = [slice(None)] * 3
    idx[axis] = slice(shape[axis] // 2, None)
    hu[tuple(idx)] = 1200.0                         # bone
    return Volume(hu, Geometry.isotropic(shape, spacing))


def test_channels_shape_dtype_and_ranges():
    img = _step_volume()
    init = np.zeros(img.array.shape, np.uint8)
    init[4:10, 5:15, 6:18] = 1
    x = make_input(img, init, channels=KNOWN_CHANNELS)
    assert CHANNELS == ("ct", "initial", "edge") and KNOWN_CHANNELS == CHANNELS + ("appearance",)
    np.testing.assert_array_equal(make_input(img, init), x[:3])
    assert x.shape == (4,) + img.array.shape and x.dtype == np.float32
    assert x[:3].min() >= 0.0 and x[:3].max() <= 1.0
    assert x[3].min() >= -1.0 and x[3].max() <= 1.0
    np.testing.assert_array_equal(x[1], init)
    two = make_input(img, init, channels=("ct", "initial"))
    assert two.shape[0] == 2
    np.testing.assert_array_equal(two, x[:2])


def test_appearance_channel_says_which_side_an_intensity_belongs_to():
    """A bright structure whose initial mask misses a slab of it and leaks into a dark slab: the
    channel is positive on the missed bright voxels and negative on the leaked dark ones, whatever
    the two intensities are (it is learned from the image, not fixed)."""
    for inside_hu, outside_hu in ((1200.0, 40.0), (-850.0, 30.0)):   # bone in muscle, lung in tissue
        hu = np.full((20, 24, 24), outside_hu, np.float32)
        hu[4:16, 6:18, 6:18] = inside_hu
        init = np.zeros(hu.shape, np.uint8)
        init[4:16, 6:15, 6:18] = 1          # misses y 15..17 (under)
        init[4:16, 6:18, 18:22] = 1         # leaks into x 18..21 (over)
        app = make_input(Volume(hu, Geometry.isotropic(hu.shape, (1.0, 1.0, 1.0))), init,
                         channels=("appearance",))[0]
        assert app[4:16, 15:18, 6:18].mean() > 0.5
        assert app[4:16, 6:18, 19:22].mean() < -0.3    # x 18 is blurred with the edge


def test_appearance_channel_on_a_crop_equals_the_whole_image():
    """Inference builds the input on a crop around the component with context: the channel there
    equals the whole image's wherever the crop holds the whole near-surface ring."""
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 30.0, (30, 40, 40)).astype(np.float32)
    hu[8:20, 10:26, 12:28] += 800.0
    init = np.zeros(hu.shape, np.uint8)
    init[9:20, 10:25, 12:28] = 1
    geom = Geometry.isotropic(hu.shape, (1.0, 1.0, 1.0))
    full = make_input(Volume(hu, geom), init, channels=("appearance",))[0]
    crop = (slice(1, 28), slice(2, 34), slice(4, 36))     # the ring (6 mm) and blur fit inside
    sub = np.ascontiguousarray(hu[crop])
    part = make_input(Volume(sub, Geometry.isotropic(sub.shape, (1.0, 1.0, 1.0))), init[crop],
                      channels=("appearance",))[0]
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(part[inner], full[crop][inner], atol=1e-5)


def test_ct_window():
    lo, hi = NORMALISATION["ct"]["window_hu"]
    out = window_ct(np.array([lo - 500, lo, (lo + hi) / 2, hi, hi + 900], np.float32))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)


def test_edge_prior_peaks_on_the_edge_and_is_flat_elsewhere():
    img = _step_volume()
    e = edge_prior(img.array, img.geometry.spacing_zyx)
    profile = e[8, 10, :]
    assert int(np.argmax(profile)) in (11, 12)
    assert profile.max() > 0.7
    assert profile[:5].max() < 0.05 and profile[-4:].max() < 0.05


def test_edge_prior_is_in_mm_units():
    """The same physical edge on a grid with twice the spacing gives about the same edge value."""
    fine = _step_volume(shape=(8, 8, 64), spacing=(1.0, 1.0, 0.5))
    coarse = _step_volume(shape=(8, 8, 32), spacing=(1.0, 1.0, 1.0))
    ef = edge_prior(fine.array, fine.geometry.spacing_zyx).max()
    ec = edge_prior(coarse.array, coarse.geometry.spacing_zyx).max()
    assert ef == pytest.approx(ec, rel=0.15)


def test_bad_inputs_refused():
    img = _step_volume()
    with pytest.raises(InputError, match="shape"):
        make_input(img, np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(InputError, match="channels"):
        make_input(img, np.zeros(img.array.shape, np.uint8), channels=("ct", "bogus"))
    other = Volume(np.zeros(img.array.shape, np.uint8), Geometry.isotropic(img.array.shape, (2, 2, 2)))
    with pytest.raises(InputError):
        make_input(img, other)
