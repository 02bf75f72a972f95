"""Classical (non-learned) post-processing of an initial mask: row 2 of the benchmark.

Morphological closing with a ball of radius ``closing_mm`` (an ellipsoid in voxels on anisotropic
grids), hole filling (3D, then per axial slice) and removal of small spurious components. Only
scipy; no torch import, so this module stays cheap to load.

:class:`SCORERefineLib.refiners.ClassicalRefiner` wraps :func:`classical_postprocess`; files and case
folders are written by :mod:`SCORERefineLib.predictions`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..bbox import padded_bbox
from ..errors import InputError

__all__ = ["ball_structure", "classical_postprocess"]


def ball_structure(radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """A boolean ball of ``radius_mm`` on a grid with ``spacing_zyx`` (mm): an ellipsoid in voxels.

    Shape ``(2*rz+1, 2*ry+1, 2*rx+1)`` with ``r_i = floor(radius_mm / spacing_i)``; a voxel offset
    ``d`` belongs to the ball when ``sum((d_i * spacing_i / radius_mm)**2) <= 1``. A radius below
    every spacing gives a single voxel (no-op for morphology).
    """
    if radius_mm < 0:
        raise InputError(f"closing radius must be >= 0 mm, got {radius_mm}")
    sp = np.asarray(spacing_zyx, dtype=float)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise InputError(f"spacing must be three positive numbers (z, y, x) mm, got {spacing_zyx}")
    if radius_mm == 0:
        return np.ones((1, 1, 1), dtype=bool)
    r = np.floor(radius_mm / sp + 1e-9).astype(int)
    grids = np.ogrid[tuple(slice(-ri, ri + 1) for ri in r)]
    dist2 = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, sp))
    return dist2 <= 1.0 + 1e-9


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (array axis 0) separately."""
    out = mask.copy()
    for z in range(mask.shape[0]):
        if mask[z].any():
            out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def classical_postprocess(mask: np.ndarray, spacing_zyx: Sequence[float], closing_mm: float = 2.0,
                          keep_largest: bool = True, fill_holes: bool = True,
                          fill_holes_2d: bool = True,
                          min_component_mm3: float | None = None) -> np.ndarray:
    """Close, fill and clean a binary mask ``(z, y, x)``; returns a new uint8 {0, 1} array.

    1. closing (dilation then erosion) with :func:`ball_structure` ``(closing_mm, spacing_zyx)``;
       computed on a zero-padded crop, so a mask touching the volume border is not eroded there;
    2. ``fill_holes``: 3D hole filling, then (``fill_holes_2d``) per axial slice, which also fills
       cavities open at the ends such as a medullary canal;
    3. ``keep_largest``: keep the largest 26-connected component; ``min_component_mm3`` instead
       keeps every component at least that large (mm^3). Both off: keep all.

    An empty mask is returned unchanged (as uint8).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    fg = mask != 0
    if not fg.any():
        return fg.astype(np.uint8)
    ball = ball_structure(closing_mm, spacing_zyx)
    radius = [s // 2 for s in ball.shape]
    # Everything below only changes voxels within `radius` of the foreground: work on a crop.
    roi = padded_bbox(fg, [r + 1 for r in radius])
    work = fg[roi]
    if ball.size > 1:
        padded = np.pad(work, [(r + 1, r + 1) for r in radius])
        closed = ndimage.binary_erosion(ndimage.binary_dilation(padded, ball), ball)
        work = closed[tuple(slice(r + 1, -(r + 1)) for r in radius)] | work
    if fill_holes:
        work = ndimage.binary_fill_holes(work)
        if fill_holes_2d:
            work = _fill_holes_2d(work)
    if keep_largest or min_component_mm3 is not None:
        labels, n = ndimage.label(work, structure=np.ones((3, 3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            if min_component_mm3 is not None:
                voxel_mm3 = float(np.prod(spacing_zyx))
                keep = np.nonzero(sizes * voxel_mm3 >= min_component_mm3)[0] + 1
                if keep.size == 0:  # nothing is large enough: keep the largest rather than nothing
                    keep = np.array([int(np.argmax(sizes)) + 1])
            else:
                keep = np.array([int(np.argmax(sizes)) + 1])
            work = np.isin(labels, keep)
    out = np.zeros(mask.shape, dtype=np.uint8)
    out[roi] = work
    return out
