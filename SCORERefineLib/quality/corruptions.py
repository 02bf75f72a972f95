"""Synthetic corruptions of a reference mask, one region at a time, with a chosen region Dice.

Each region of a reference mask gets a target Dice (drawn so that all five score bins of
:mod:`~SCORERefineLib.calibration` are covered) and a corruption kind:

``dilate`` / ``erode``
    add the background voxels of the region nearest the reference surface / remove the
    foreground voxels nearest the background (a uniform boundary shift out / in);
``leak``
    add background voxels of the region nearest a random seed point on its outer side (a blob
    leaking into a neighbour);
``hole``
    remove foreground voxels of the region nearest a random seed inside (a missing piece);
``shift``
    both: a share of added and of removed voxels (the boundary moved sideways); the side with
    more voxels decides the error type.

Voxels are flipped in priority order until the region Dice reaches the target. With ``o``
voxels added and ``u`` removed in a region holding ``R`` reference voxels,
``Dice = 2 (R - u) / (2R - u + o)``. Adding voxels alone cannot go below about 0.6 in a
symmetric band (there are only about ``R`` background voxels), so targets below
:data:`MIN_OVER_DICE` use ``erode`` or ``hole``. The truth (Dice, score, error type) is then
measured on the corrupted mask with :func:`~SCORERefineLib.rater.region_agreement`, exactly as the
simulated rater measures it, so neighbouring regions that share corrupted voxels stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..calibration import DICE_LOWER_BOUND, dice_to_score
from ..rater import region_agreement

KINDS = ("dilate", "erode", "shift", "leak", "hole")
OVER_KINDS = ("dilate", "leak")
UNDER_KINDS = ("erode", "hole")
#: below this target Dice only under-segmenting kinds are used
MIN_OVER_DICE = 0.65

#: Dice interval sampled for each score (score 5 includes the clean region, Dice 1.0)
SCORE_DICE_RANGE = {5: (0.96, 1.0), 4: (0.86, 0.94), 3: (0.71, 0.84), 2: (0.51, 0.69), 1: (0.15, 0.48)}


@dataclass(frozen=True)
class RegionTruth:
    """What the corruption made of one region: the kind, the target, and the measured truth."""

    region: int
    kind: str
    target_dice: float
    dice: float
    score: int
    error: str          # "over" | "under" | "none"


def _dice(R: int, o: int, u: int) -> float:
    denom = 2 * R - u + o
    return 1.0 if denom == 0 else 2.0 * (R - u) / denom


def _order_by_distance(cand: np.ndarray, dist: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(cand)
    return idx[np.argsort(dist.ravel()[idx], kind="stable")]


def _seed_distance(sel: np.ndarray, rng: np.random.Generator, spacing) -> np.ndarray:
    pts = np.argwhere(sel)
    seed = pts[rng.integers(len(pts))]
    grid = np.indices(sel.shape, dtype=np.float32)
    d2 = sum(((grid[a] - seed[a]) * float(spacing[a])) ** 2 for a in range(3))
    return d2


def corrupt_region(mask: np.ndarray, reference: np.ndarray, regions: np.ndarray, label: int,
                   target_dice: float, kind: str, spacing_zyx: Sequence[float],
                   rng: np.random.Generator, over_share: Optional[float] = None) -> np.ndarray:
    """Flip voxels of region ``label`` in ``mask`` (a copy is returned) towards ``target_dice``
    against ``reference``. ``kind``: one of :data:`KINDS`. Arrays ``(z, y, x)``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = np.asarray(mask, dtype=bool).copy()
    ref = np.asarray(reference, dtype=bool)
    reg = np.asarray(regions) == label
    R = int((ref & reg).sum())
    bg, fg = reg & ~ref, reg & ref
    order_over = order_under = np.zeros(0, dtype=np.int64)
    if kind in ("dilate", "shift") and bg.any():
        order_over = _order_by_distance(bg, ndi.distance_transform_edt(~ref, sampling=spacing_zyx))
    if kind in ("erode", "shift") and fg.any():
        order_under = _order_by_distance(fg, ndi.distance_transform_edt(ref, sampling=spacing_zyx))
    if kind == "leak" and bg.any():
        order_over = _order_by_distance(bg, _seed_distance(bg, rng, spacing_zyx))
    if kind == "hole" and fg.any():
        order_under = _order_by_distance(fg, _seed_distance(fg, rng, spacing_zyx))
    if kind == "shift":
        share = float(rng.uniform(0.25, 0.75)) if over_share is None else float(over_share)
    else:
        share = 1.0 if len(order_over) else 0.0
    # flip n voxels in all, round(share * n) added and the rest removed; Dice falls with n
    def counts(n: int) -> tuple[int, int]:
        o = min(int(round(share * n)), len(order_over))
        return o, min(n - o, len(order_under))
    lo, hi = 0, len(order_over) + len(order_under)
    while lo < hi:   # smallest n whose Dice is <= target
        mid = (lo + hi) // 2
        if _dice(R, *counts(mid)) <= target_dice:
            hi = mid
        else:
            lo = mid + 1
    o, u = counts(lo)
    flat = out.ravel()
    flat[order_over[:o]] = True
    flat[order_under[:u]] = False
    return out


def sample_targets(labels: Sequence[int], rng: np.random.Generator,
                   score_probs: Optional[Sequence[float]] = None, p_clean: float = 0.5
                   ) -> dict[int, tuple[float, str]]:
    """Per region ``(target Dice, kind)``: a score drawn from ``score_probs`` (default uniform),
    a Dice uniform in its :data:`SCORE_DICE_RANGE` (score 5: Dice 1.0, untouched, with
    probability ``p_clean``), a kind that can reach it."""
    probs = np.full(5, 0.2) if score_probs is None else np.asarray(score_probs, float) / np.sum(score_probs)
    out = {}
    for label in labels:
        score = int(rng.choice(5, p=probs)) + 1
        lo, hi = SCORE_DICE_RANGE[score]
        target = 1.0 if score == 5 and rng.random() < p_clean else float(rng.uniform(lo, hi))
        pool = UNDER_KINDS if target < MIN_OVER_DICE else KINDS
        out[int(label)] = (target, str(rng.choice(pool)))
    return out


def corrupt_case(reference: np.ndarray, regions: np.ndarray, spacing_zyx: Sequence[float],
                 rng: np.random.Generator, targets: Optional[dict[int, tuple[float, str]]] = None,
                 score_probs: Optional[Sequence[float]] = None
                 ) -> tuple[np.ndarray, dict[int, RegionTruth]]:
    """Corrupt every region of ``regions`` (made from ``reference``) towards its own target.

    Returns ``(mask uint8 (z, y, x), {region: RegionTruth})``; the truth is measured on the
    returned mask with :func:`~SCORERefineLib.rater.region_agreement` and
    :func:`~SCORERefineLib.calibration.dice_to_score`; the error type is the dominant side
    (``none`` for score 5), as the simulated rater says.
    """
    labels = sorted(int(v) for v in np.unique(regions) if v > 0)
    targets = targets if targets is not None else sample_targets(labels, rng, score_probs)
    mask = np.asarray(reference, dtype=bool).copy()
    for label in labels:
        target, kind = targets.get(label, (1.0, "dilate"))
        if target < 1.0:
            mask = corrupt_region(mask, reference, regions, label, target, kind, spacing_zyx, rng)
    agreement = region_agreement(mask, reference, regions)
    truth = {}
    for label in labels:
        a = agreement[label]
        score = dice_to_score(min(a["dice"], 1.0))
        error = "none" if score == 5 else ("over" if a["over"] >= a["under"] else "under")
        target, kind = targets.get(label, (1.0, "dilate"))
        truth[label] = RegionTruth(label, kind if target < 1.0 else "clean", float(target),
                                   float(a["dice"]), score, error)
    return mask.astype(np.uint8), truth


__all__ = ["KINDS", "SCORE_DICE_RANGE", "RegionTruth", "corrupt_region", "corrupt_case",
           "sample_targets", "DICE_LOWER_BOUND"]
