"""The one "bounding box grown by a pad" of the package (numpy only, no torch, no Qt).

Used wherever work is cropped to a mask's neighbourhood: the guard and the appearance veto
(``refiner/guard.py``, ``refiner/veto.py``), the classical baseline (``refiner/postprocess.py``),
the region split (``regions.py``) and inference's region of interest (``refiner/inference.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError

__all__ = ["padded_bbox"]


def padded_bbox(mask: np.ndarray, pad: Sequence[int]) -> tuple[slice, ...]:
    """The bounding box of ``mask``'s non-zero voxels, grown by ``pad[axis]`` voxels on both sides
    and clipped to the array: one slice per axis (``mask[box]`` is the crop).

    Raises :class:`~SCORERefineLib.errors.InputError` for a mask without a non-zero voxel (it has
    no box; callers that allow that check first).
    """
    fg = np.asarray(mask) != 0
    if len(pad) != fg.ndim:
        raise ValueError(f"pad has {len(pad)} values for a {fg.ndim}-D mask")
    out = []
    for axis, (n, p) in enumerate(zip(fg.shape, pad)):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        idx = np.nonzero(fg.any(axis=other))[0]
        if idx.size == 0:
            raise InputError("the mask is empty (no foreground voxel), so it has no bounding box. "
                             "Check that the segmentation ran and the right label was chosen.")
        out.append(slice(max(int(idx[0]) - int(p), 0), min(int(idx[-1]) + 1 + int(p), n)))
    return tuple(out)
