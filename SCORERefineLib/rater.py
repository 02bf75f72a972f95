"""The simulated rater: rates each region from a reference mask as a careful clinician would.

Per region, the Dice between the initial and the reference mask restricted to that region
(both empty there -> 1.0) gives the score through :func:`calibration.dice_to_score`. The error
type is the one that dominates in the region: ``over`` = initial & ~reference voxels (the mask
is too big), ``under`` = reference & ~initial (too small); a tie goes to ``over``; score 5 ->
``none``.

Noise ``P`` models an imperfect rater: with probability ``P`` a score moves one step up or
down (reflected at 1 and 5, so it always changes), and independently with probability ``P``
the error type flips between over and under. Ratings stay valid: a score that becomes 5 gets
``none``; a 5 moved down gets the region's dominant error type (a coin toss when the region has
no error voxel at all). Everything is reproducible from ``seed``.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from .calibration import dice_to_score
from .errors import GridMismatchError, InputError
from .feedback import CaseFeedback, utc_now
from .imageio import Volume

#: seconds a simulated rating is recorded to take (a quick glance and two clicks)
SECONDS_PER_RATING = 5.0

ArrayOrVolume = Union[np.ndarray, Volume]


def _arrays(initial: ArrayOrVolume, reference: ArrayOrVolume, regions: ArrayOrVolume
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vols = {"initial": initial, "reference": reference, "regions": regions}
    geoms = {k: v.geometry for k, v in vols.items() if isinstance(v, Volume)}
    names = list(geoms)
    for other in names[1:]:
        if not geoms[names[0]].matches(geoms[other]):
            raise GridMismatchError(f"{names[0]} and {other} are on different voxel grids "
                                    f"({geoms[names[0]].describe()} vs {geoms[other].describe()}); "
                                    f"resample {other} onto the {names[0]} grid first.")
    arrs = {k: np.asarray(v.array if isinstance(v, Volume) else v) for k, v in vols.items()}
    shapes = {k: a.shape for k, a in arrs.items()}
    if len(set(shapes.values())) != 1:
        raise GridMismatchError(f"initial, reference and regions must have one shape; got {shapes}.")
    return arrs["initial"] != 0, arrs["reference"] != 0, arrs["regions"]


def region_agreement(initial: ArrayOrVolume, reference: ArrayOrVolume, regions: ArrayOrVolume
                     ) -> dict[int, dict]:
    """Agreement of ``initial`` with ``reference`` inside each region.

    Args:
        initial, reference: masks ``(z, y, x)`` (non-zero = inside), or Volumes on one grid.
        regions: int label map ``(z, y, x)``, 0 = no region.

    Returns:
        ``{label: {"dice": float, "over": int, "under": int, "initial": int, "reference": int,
        "voxels": int}}`` for each label > 0 present; counts are voxels in that region
        (``over`` = initial & ~reference, ``under`` = reference & ~initial). Dice is 1.0 where
        both masks are empty in the region.
    """
    ini, ref, reg = _arrays(initial, reference, regions)
    inside = reg > 0
    lab = reg[inside].astype(np.int64)
    if lab.size and lab.min() < 0:
        raise InputError("region labels must be >= 0.")
    i, r = ini[inside], ref[inside]
    n = int(lab.max()) + 1 if lab.size else 1

    def count(sel: np.ndarray) -> np.ndarray:
        return np.bincount(lab[sel], minlength=n)

    voxels, n_ini, n_ref, both = count(np.ones_like(i)), count(i), count(r), count(i & r)
    over, under = count(i & ~r), count(r & ~i)
    out: dict[int, dict] = {}
    for label in np.nonzero(voxels)[0]:
        denom = n_ini[label] + n_ref[label]
        out[int(label)] = {"dice": 1.0 if denom == 0 else float(2.0 * both[label] / denom),
                           "over": int(over[label]), "under": int(under[label]),
                           "initial": int(n_ini[label]), "reference": int(n_ref[label]),
                           "voxels": int(voxels[label])}
    return out


def _dominant(over: int, under: int) -> str:
    return "over" if over >= under else "under"


def simulate_feedback(case_id: str, initial: ArrayOrVolume, reference: ArrayOrVolume,
                      regions: ArrayOrVolume, noise: float = 0.0, seed: int = 0,
                      rater: str = "simulated", seconds_per_rating: float = SECONDS_PER_RATING,
                      region_info: Optional[dict] = None, rated_at: Optional[str] = None
                      ) -> CaseFeedback:
    """Rate every region of ``regions`` (see the module docstring).

    Args:
        case_id: the case's id.
        initial, reference: masks ``(z, y, x)`` or Volumes on one grid.
        regions: int label map ``(z, y, x)``; every label > 0 is rated.
        noise: probability P (0..1) of a score step and, independently, of an error-type flip.
        seed: makes the noise reproducible.
        rater: the rater name the ratings are stored under.
        seconds_per_rating: the time recorded for each rating.
        region_info: how the regions were made (stored in feedback.json).
        rated_at: timestamp for all ratings (default: now, UTC).

    Returns:
        a :class:`CaseFeedback` with one rating per region from ``rater``.
    """
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise InputError(f"noise must be a probability in [0, 1], got {noise!r}.")
    agreement = region_agreement(initial, reference, regions)
    labels = sorted(agreement)
    fb = CaseFeedback(case_id, labels, dict(region_info or {}))
    rng = np.random.default_rng(seed)
    n = len(labels)
    # draw everything up front so the stream does not depend on which branch a region takes
    step = rng.random(n) < noise
    up = rng.random(n) < 0.5
    flip = rng.random(n) < noise
    coin = rng.random(n) < 0.5
    rated_at = rated_at or utc_now()
    for j, label in enumerate(labels):
        a = agreement[label]
        score = dice_to_score(min(a["dice"], 1.0))
        error = "none" if score == 5 else _dominant(a["over"], a["under"])
        if step[j]:
            new = score + (1 if up[j] else -1)
            score = new if 1 <= new <= 5 else score - (1 if up[j] else -1)
        if score == 5:
            error = "none"
        elif error == "none":
            if a["over"] == a["under"]:
                error = "over" if coin[j] else "under"
            else:
                error = _dominant(a["over"], a["under"])
        if flip[j] and error != "none":
            error = "under" if error == "over" else "over"
        fb.rate(rater, label, score, error, seconds=seconds_per_rating, rated_at=rated_at)
    return fb
