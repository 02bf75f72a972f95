"""The add threshold: how a refiner's foreground probability becomes the refined mask.

A trained refiner predicts the foreground probability of every voxel it may change. The refined
mask is decided **relative to the initial mask**: a voxel of the initial mask is kept where the
probability is at least ``threshold`` (0.5 by default), and a voxel outside it is added where the
probability is at least ``add_threshold``. With both at 0.5 this is the plain ``prob >= 0.5``.

Why additions have their own threshold: a network trained on weak targets that keep most of the
initial mask (the SCORE loss flips only the voxels its pseudo-labels rank first, about 70% of
them right) learns the initial mask as its prior, and the probabilities of its right additions
fall short of 0.5. On the development presets adding from 0.4 gained more for the SCORE models
at both seeds with no case made worse (docs/score-loss.md, stop 39); the additions it makes still
pass the confidence rule (a piece needs a sure core or a sure base), the appearance veto (every
added voxel needs evidence for the structure) and the guard. Removals keep the plain threshold:
keeping only from 0.6 as well gained more on the organs, but the veto's layer rules judge a
removed piece by its shape and evidence, and on the real-CT lumbar column the larger removed
piece merged a peel with right removals and passed them (-0.054 Dice at seed 0). The defaults by
training mode are :data:`SCORERefineLib.catalog.ADD_THRESHOLDS`. Pure numpy.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError

__all__ = ["check_threshold", "decide_change"]


def check_threshold(value: float, name: str = "threshold") -> float:
    """``value`` as a float if it is a usable probability threshold, in (0, 1).

    Raises:
        InputError: anything else (named, with the fix).
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 < t < 1.0:
        raise InputError(f"the {name} must be a probability in (0, 1), got {value!r}; 0.5 is the "
                         f"plain threshold.")
    return t


def decide_change(prob: np.ndarray, initial: np.ndarray, threshold: float = 0.5,
                  add_threshold: Optional[float] = None) -> np.ndarray:
    """The refined mask from the foreground probability, relative to the initial mask.

    Args:
        prob: foreground probability (z, y, x).
        initial: the initial mask on the same grid, non-zero inside.
        threshold: inside the initial mask a voxel is kept where ``prob >= threshold``.
        add_threshold: outside it a voxel is added where ``prob >= add_threshold``; None: the
            same as ``threshold`` (then the result is ``prob >= threshold``).

    Returns:
        uint8 (z, y, x), 1 inside the refined mask.

    Raises:
        InputError: a threshold outside (0, 1). ValueError: arrays of different shapes.
    """
    keep_t = check_threshold(threshold)
    add_t = keep_t if add_threshold is None else check_threshold(add_threshold, "add threshold")
    prob = np.asarray(prob)
    init = np.asarray(initial) != 0
    if prob.shape != init.shape:
        raise ValueError(f"probability {prob.shape} and initial mask {init.shape} must share "
                         f"one grid")
    return np.where(init, prob >= keep_t, prob >= add_t).astype(np.uint8)
