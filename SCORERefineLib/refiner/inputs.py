"""Network input: windowed CT, the initial mask and an edge prior, stacked ``(C, z, y, x)``.

Channels (:data:`CHANNELS`, order fixed; a checkpoint records the ones it was trained with):

``ct``
    The CT clipped to the window ``[-300, 1700]`` HU and mapped linearly to ``[0, 1]``
    (fat/air -> 0, cortical bone ~1 ).
``initial``
    The initial (foundation model) mask, 0/1.
``edge``
    An edge-prior probability in ``[0, 1]``: the gradient magnitude ``g`` (HU/mm) of the windowed
    CT after Gaussian smoothing with ``sigma = 1 mm`` (per-axis sigma in voxels =
    1 mm / spacing, derivatives divided by the spacing so ``g`` is in HU/mm on any grid), mapped by
    ``g / (g + 100 HU/mm)``. A fixed constant (not a per-image percentile) keeps training and
    inference on one scale: a bone/muscle edge (~1000 HU over ~2 mm) gives ~0.8, soft-tissue
    texture (~20 HU/mm) ~0.15, flat regions 0.

All numbers are in :data:`NORMALISATION`, which is stored in every checkpoint's metadata.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..imageio import Volume, check_same_grid

CHANNELS = ("ct", "initial", "edge")

NORMALISATION = {
    "ct": {"window_hu": [-300.0, 1700.0], "maps_to": [0.0, 1.0], "clip": True},
    "initial": {"values": [0.0, 1.0]},
    "edge": {"sigma_mm": 1.0, "scale_hu_per_mm": 100.0,
             "formula": "g/(g+scale), g = |grad gaussian(clip(CT, window), sigma_mm)| in HU/mm"},
}


def _norm(normalisation: Optional[dict]) -> dict:
    return NORMALISATION if normalisation is None else normalisation


def window_ct(hu: np.ndarray, normalisation: Optional[dict] = None) -> np.ndarray:
    """CT (HU) -> ``[0, 1]`` float32 by the window of ``normalisation["ct"]``."""
    lo, hi = _norm(normalisation)["ct"]["window_hu"]
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def gradient_magnitude_mm(hu: np.ndarray, spacing_zyx: Sequence[float], sigma_mm: float) -> np.ndarray:
    """|grad| (units per mm) of the Gaussian-smoothed array; sigma given in mm, any spacing."""
    arr = np.asarray(hu, dtype=np.float32)
    sigma_vox = [float(sigma_mm) / float(s) for s in spacing_zyx]
    total = np.zeros_like(arr)
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 1
        d = ndimage.gaussian_filter(arr, sigma=sigma_vox, order=order, mode="nearest")
        d /= np.float32(spacing_zyx[axis])
        total += d * d
    return np.sqrt(total, out=total)


def edge_prior(hu: np.ndarray, spacing_zyx: Sequence[float],
               normalisation: Optional[dict] = None) -> np.ndarray:
    """Edge probability in ``[0, 1]`` float32 (see module docstring)."""
    norm = _norm(normalisation)
    lo, hi = norm["ct"]["window_hu"]
    clipped = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    g = gradient_magnitude_mm(clipped, spacing_zyx, norm["edge"]["sigma_mm"])
    scale = np.float32(norm["edge"]["scale_hu_per_mm"])
    return (g / (g + scale)).astype(np.float32)


def make_input(image: Volume, initial: np.ndarray | Volume,
               channels: Sequence[str] = CHANNELS,
               normalisation: Optional[dict] = None) -> np.ndarray:
    """Stack the requested channels into a ``(C, z, y, x)`` float32 array.

    ``image``: CT in HU. ``initial``: the binary initial mask (array on the image grid, or a Volume
    whose grid is checked). ``channels``: a subset/ordering of :data:`CHANNELS`, e.g.
    ``("ct", "initial")`` for the no-edge ablation.
    """
    if isinstance(initial, Volume):
        check_same_grid(image.geometry, initial.geometry, "image", "initial mask")
        initial = initial.array
    initial = np.asarray(initial)
    if initial.shape != image.array.shape:
        raise InputError(f"initial mask shape {initial.shape} differs from image shape "
                         f"{image.array.shape} (z, y, x); resample the mask onto the image grid.")
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or len(set(channels)) != len(channels) or not channels:
        raise InputError(f"channels {list(channels)} invalid: choose distinct names from {list(CHANNELS)}.")
    out = np.empty((len(channels),) + image.array.shape, dtype=np.float32)
    for i, name in enumerate(channels):
        if name == "ct":
            out[i] = window_ct(image.array, normalisation)
        elif name == "initial":
            out[i] = (initial != 0)
        else:
            out[i] = edge_prior(image.array, image.geometry.spacing_zyx, normalisation)
    return out
