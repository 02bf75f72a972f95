"""Synthetic errors in the network's *input* mask where the ratings say the mask is right.

A region rated 5 is in effect a dense label of a correct boundary on real texture. The pin loss
(:func:`.losses.pin_loss`) already keeps the refined mask on it; but there the input mask is
already right, so the network only learns to leave a correct boundary alone. Here the input's
``initial`` channel of a training patch is corrupted inside such regions (the boundary pushed out
or pulled in over a ball, as a shift, a bump or a dent), while every loss keeps the true initial
mask ``M0``. The network then sees a wrong input mask next to the CT and is told, by the
``restore`` term, where the boundary really is: the same kind of signal full supervision gives,
taken only from what a clinician marked as correct.

Shapes: one patch, ``(z, y, x)`` arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CorruptionSettings:
    """How a patch's input mask is corrupted (all distances in mm)."""

    max_count: int = 3                        # 1..max_count balls per corrupted patch
    radius_mm: tuple = (4.0, 10.0)            # ball radius
    shift_mm: tuple = (1.0, 3.0)              # how far the boundary moves inside the ball


def corrupt_mask(mask: np.ndarray, allowed: np.ndarray, spacing_zyx: Sequence[float],
                 rng: np.random.Generator,
                 settings: CorruptionSettings = CorruptionSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Move the boundary of ``mask`` in or out inside random balls, only on ``allowed`` voxels.

    Each ball is centred on a boundary voxel (inside or just outside the mask) of ``allowed``;
    inside it the mask is replaced by its dilation or erosion by ``shift_mm`` (whole voxels, at
    least one).

    Args:
        mask: (z, y, x) 0/1 (any dtype) input mask of one patch.
        allowed: (z, y, x) bool, where a change may be made (a trusted region's voxels).
        spacing_zyx: voxel size in mm.
        rng: random stream (the sampler's).
        settings: counts and sizes.

    Returns:
        ``(corrupted, changed)``: the corrupted mask (``mask``'s dtype) and the (z, y, x) bool
        voxels whose value changed (all False when ``allowed`` holds no boundary voxel).
    """
    m = np.asarray(mask) > 0.5
    allowed = np.asarray(allowed, bool)
    sp = np.asarray(spacing_zyx, float)
    inner = m & ~ndimage.binary_erosion(m, border_value=1)
    outer = ndimage.binary_dilation(m) & ~m
    cand = np.flatnonzero((inner | outer) & allowed)
    out = m.copy()
    if len(cand) == 0:
        return np.asarray(mask).copy(), np.zeros(m.shape, bool)
    for _ in range(int(rng.integers(1, settings.max_count + 1))):
        centre = np.array(np.unravel_index(int(cand[rng.integers(len(cand))]), m.shape))
        radius = float(rng.uniform(*settings.radius_mm))
        steps = max(1, int(round(float(rng.uniform(*settings.shift_mm)) / float(sp.min()))))
        half = np.ceil(radius / sp).astype(int) + steps + 1
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, m.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = out[box]
        if rng.random() < 0.5:
            moved = ndimage.binary_dilation(sub, iterations=steps)
        else:
            moved = ndimage.binary_erosion(sub, iterations=steps, border_value=1)
        grid = np.ogrid[tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, centre))]
        ball = sum((g * s / radius) ** 2 for g, s in zip(grid, sp)) <= 1.0
        where = ball & allowed[box]
        sub[where] = moved[where]
    return out.astype(np.asarray(mask).dtype), out != m
