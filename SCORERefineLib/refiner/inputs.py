"""Network input: windowed CT, the initial mask, an edge prior and the per-image appearance
evidence, stacked ``(C, z, y, x)``.

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
``appearance`` (opt-in, not in the default :data:`CHANNELS`)
    How much each voxel's intensity looks like the structure rather than its surroundings *in this
    image*: the log-likelihood ratio of :func:`appearance_evidence` (intensity histograms of the
    initial mask's near-surface inside and outside, learned per case or per refined component),
    divided by its clip so it lies in ``[-1, 1]`` (positive: structure-like). Unlike the raw CT it
    means the same for a rib, a lung or a liver, so what the network learns from it carries over
    to structures it was not trained on.

All numbers are in :data:`NORMALISATION`, which is stored in every checkpoint's metadata.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..imageio import Volume, check_same_grid

#: the default input (new checkpoints record the channels they were trained with)
CHANNELS = ("ct", "initial", "edge")
#: every channel :func:`make_input` can build; ``appearance`` is opt-in (mode config
#: ``channels``): measured on the real-CT preset it was unstable across seeds (docs/score-loss.md)
KNOWN_CHANNELS = CHANNELS + ("appearance",)

NORMALISATION = {
    "ct": {"window_hu": [-300.0, 1700.0], "maps_to": [0.0, 1.0], "clip": True},
    "initial": {"values": [0.0, 1.0]},
    "edge": {"sigma_mm": 1.0, "scale_hu_per_mm": 100.0,
             "formula": "g/(g+scale), g = |grad gaussian(clip(CT, window), sigma_mm)| in HU/mm"},
    "appearance": {"ring_mm": 6.0, "bins": 64, "clip": 3.0, "sigma_mm": 0.75,
                   "formula": "appearance_evidence(CT, initial) / clip, in [-1, 1]"},
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


def signed_depth(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Signed distance (mm) to the mask surface, positive inside, float32."""
    m = mask.astype(bool)
    inside = ndimage.distance_transform_edt(m, sampling=spacing_zyx)
    outside = ndimage.distance_transform_edt(~m, sampling=spacing_zyx)
    return (inside - outside).astype(np.float32)


def appearance_evidence(image: np.ndarray, mask: np.ndarray, spacing_zyx, ring_mm: float = 6.0,
                        bins: int = 64, clip: float = 3.0, sigma_mm: float = 0.75,
                        depth: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel log-likelihood ratio that a voxel's intensity belongs inside the structure.

    The intensity distributions are learned from the case itself: voxels of ``mask`` within
    ``ring_mm`` of its surface (inside) against voxels outside it within ``ring_mm`` (outside),
    on the CT smoothed by a Gaussian of ``sigma_mm``; histograms of ``bins`` bins between the
    0.5 and 99.5 percentiles, smoothed and floored so that empty bins stay finite. The initial
    mask is mostly right (that is why it is refined, not redrawn), so its near-surface statistics
    are a fair model of "structure" and "surroundings" in this very image, whatever its texture.

    Args:
        image: CT (z, y, x), any intensity unit.
        mask: the initial mask (z, y, x), non-zero inside.
        spacing_zyx: voxel spacing in mm.
        depth: ``signed_depth(mask, spacing_zyx)`` when the caller has it already (saves the two
            distance transforms).

    Returns:
        float32 (z, y, x): ``log p_in(I) - log p_out(I)``, clipped to ``[-clip, clip]`` (positive:
        looks like the structure). Zeros when either side is empty or the image is constant.
    """
    m = np.asarray(mask) != 0
    out = np.zeros(m.shape, np.float32)
    if not m.any() or m.all():
        return out
    sp = [float(s) for s in spacing_zyx]
    img = ndimage.gaussian_filter(np.asarray(image, np.float32),
                                  sigma=[sigma_mm / s for s in sp]) if sigma_mm > 0 else \
        np.asarray(image, np.float32)
    if depth is None:
        depth = signed_depth(m, sp)
    inner, outer = m & (depth <= ring_mm), ~m & (depth >= -ring_mm)
    if not inner.any() or not outer.any():
        return out
    lo, hi = np.percentile(img[inner | outer], [0.5, 99.5])
    if not hi > lo:
        return out
    edges = np.linspace(lo, hi, int(bins) + 1)
    counts = []
    for sel in (inner, outer):
        h = np.histogram(np.clip(img[sel], lo, hi), edges)[0].astype(np.float64)
        h = ndimage.gaussian_filter1d(h, 1.5) + 1e-3 * h.sum() / bins + 1.0
        counts.append(np.log(h / h.sum()))
    ratio = counts[0] - counts[1]
    idx = np.clip(np.digitize(img, edges) - 1, 0, int(bins) - 1)
    return np.clip(ratio[idx], -clip, clip).astype(np.float32)


def appearance_llr(hu: np.ndarray, initial: np.ndarray, spacing_zyx: Sequence[float],
                   normalisation: Optional[dict] = None,
                   depth: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`appearance_evidence` with the ``appearance`` settings of ``normalisation`` (default
    :data:`NORMALISATION`); ``depth`` as there."""
    p = _norm(normalisation).get("appearance", NORMALISATION["appearance"])
    return appearance_evidence(hu, initial, spacing_zyx, ring_mm=p["ring_mm"], bins=p["bins"],
                               clip=p["clip"], sigma_mm=p["sigma_mm"], depth=depth)


def appearance_channel(hu: np.ndarray, initial: np.ndarray, spacing_zyx: Sequence[float],
                       normalisation: Optional[dict] = None) -> np.ndarray:
    """The ``appearance`` channel: :func:`appearance_llr` / clip, float32 in ``[-1, 1]``."""
    p = _norm(normalisation).get("appearance", NORMALISATION["appearance"])
    return appearance_llr(hu, initial, spacing_zyx, normalisation) / np.float32(p["clip"])


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
    unknown = [c for c in channels if c not in KNOWN_CHANNELS]
    if unknown or len(set(channels)) != len(channels) or not channels:
        raise InputError(f"channels {list(channels)} invalid: choose distinct names from "
                         f"{list(KNOWN_CHANNELS)}.")
    out = np.empty((len(channels),) + image.array.shape, dtype=np.float32)
    for i, name in enumerate(channels):
        if name == "ct":
            out[i] = window_ct(image.array, normalisation)
        elif name == "initial":
            out[i] = (initial != 0)
        elif name == "edge":
            out[i] = edge_prior(image.array, image.geometry.spacing_zyx, normalisation)
        else:
            out[i] = appearance_channel(image.array, initial, image.geometry.spacing_zyx,
                                        normalisation)
    return out
