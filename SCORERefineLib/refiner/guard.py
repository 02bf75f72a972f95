"""Do no harm by design: clip a proposed refinement to the changes the initial mask allows.

A refiner proposes a mask; :func:`apply_guard` returns the part of that proposal that keeps
structural guarantees, and a JSON-able report of what it clipped and why (for the prediction
sidecar). Pure numpy/scipy: it runs after any refiner (every trained mode, the classical
baseline), on the exact input grid.

Rules, applied in this order:

1. **zone** (always): a voxel may change only within ``margin_mm`` of the initial mask's
   surface (Euclidean distance with the voxel spacing, on both sides), or inside a region when
   ``regions`` are given (the band a rater could see). Anything else keeps its initial value.
2. **ratings** (when ``regions`` and ``ratings`` are given; ``ratings`` is
   ``CaseFeedback.consensus()``: ``{region: (mean score, error)}``):

   * a region rated 5 (mean score ``>= pin_score`` or error ``none``) does not change;
   * in a region rated ``over`` only removals are kept, in one rated ``under`` only additions;
   * the amount of change in a region is bounded by what its score allows: a region whose
     initial Dice against the truth is at least ``d`` (the calibration table's lower bound of the
     score, interpolated for a mean score) and which holds ``n`` initial voxels differs from the
     truth by at most ``n * 2(1-d)/(2-d)`` voxels when it is over-segmented and ``n * 2(1-d)/d``
     when it is under-segmented (pure over/under); the guard allows that times
     ``1 + amount_slack`` plus ``min_allowed_voxels``. When a region's proposal changes more, the
     changes nearest the initial surface are kept (changes grow from the boundary), the rest are
     clipped.
3. **connection** (always): every 26-connected component of the result must hold at least one
   voxel of the initial mask; other components are removed: islands far from the structure, and
   also fragments made only of added voxels that a removal next to them cut off from the
   structure (they touch the initial mask's one-voxel neighbourhood but no longer the result's
   body; on real CT these turned one vertebral column into three pieces and raised HD95).
4. **keep components** (always, unless ``keep_initial_components`` is off): an initial
   component that the proposal removed entirely is restored as it was.

What the guarantees are (without a reference no rule can promise a better Dice): the output
differs from the initial mask only near its surface (or inside rated regions), has no component
without a voxel of the initial structure, never deletes an initial component, and with ratings
never contradicts a rating (no change where 5, no change against the direction, no more change
than the score allows). Output equal to the initial mask is always legal, so the guard can only
take away changes, never add any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..bbox import padded_bbox
from ..calibration import DICE_LOWER_BOUND

_FULL = np.ones((3, 3, 3), dtype=bool)     # 26-connectivity

#: report format version (the dict returned by :func:`apply_guard`)
REPORT_VERSION = 1


@dataclass
class GuardLimits:
    """What a refinement may change.

    ``margin_mm``: changes only within this distance (mm) of the initial mask's surface (or in
    a region). ``pin_score``: a region with mean score at or above this is rated 5 and pinned.
    ``direction_max_score``: the over/under direction is enforced for regions whose mean score is
    below this (a rating of 4.5 from a 4 and a 5 is "small error", still directed).
    ``amount_slack``: relative slack on the per-region amount bound; ``min_allowed_voxels``:
    absolute slack (voxels) so a tiny region may still move its boundary by a voxel.
    ``keep_initial_components``: never remove a whole initial component.
    ``against_share``: changes against a region's rated direction are kept up to this multiple
    of the changes in the rated direction (0 = none).
    """

    margin_mm: float = 6.0
    pin_score: float = 4.5
    direction_max_score: float = 4.5
    amount_slack: float = 0.25
    min_allowed_voxels: int = 8
    keep_initial_components: bool = True
    against_share: float = 0.5

    @classmethod
    def for_regions(cls, region_info: Optional[Mapping] = None, extra_mm: float = 2.0,
                    **kwargs) -> "GuardLimits":
        """Limits whose margin is the widest band the regions were made with (``max_band_mm``,
        else ``band_mm``, from feedback.json's ``regions`` entry or ``RegionParams.info()``)
        plus ``extra_mm``: what a refiner trained on those regions could legitimately move."""
        info = dict(region_info or {})
        band = float(info.get("max_band_mm", info.get("band_mm", 3.0)) or 3.0)
        return cls(margin_mm=max(band + float(extra_mm), kwargs.pop("margin_mm", 0.0)), **kwargs)

    def validate(self) -> None:
        if not np.isfinite(self.margin_mm) or self.margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0 mm, got {self.margin_mm!r}")
        if self.amount_slack < 0 or self.min_allowed_voxels < 0 or self.against_share < 0:
            raise ValueError("amount_slack, min_allowed_voxels and against_share must be >= 0")


def allowed_fraction(score: float, error: str) -> float:
    """The largest change a region rated ``score`` (1..5, a mean may fall between) with error
    ``over``/``under`` implies, as a multiple of the region's initial voxel count (before slack).
    ``inf`` when the score bounds nothing (a failed region, under-segmented)."""
    s = float(np.clip(score, 1.0, 5.0))
    grid = sorted(DICE_LOWER_BOUND)
    d = float(np.interp(s, grid, [DICE_LOWER_BOUND[k] for k in grid]))
    if error == "under":
        return np.inf if d <= 0 else 2.0 * (1.0 - d) / d
    return 2.0 * (1.0 - d) / (2.0 - d)


def apply_guard(initial: np.ndarray, proposed: np.ndarray, spacing_zyx: Sequence[float],
                limits: Optional[GuardLimits] = None, regions: Optional[np.ndarray] = None,
                ratings: Optional[Mapping[int, tuple[float, str]]] = None
                ) -> tuple[np.ndarray, dict]:
    """Clip ``proposed`` to the changes allowed from ``initial`` (see the module docstring).

    Args:
        initial, proposed: masks ``(z, y, x)`` on one grid, non-zero = inside.
        spacing_zyx: voxel spacing in mm, array order.
        limits: :class:`GuardLimits` (defaults when None).
        regions: optional int label map ``(z, y, x)`` (0 = no region), the rated regions.
        ratings: optional ``{region: (mean score, error)}`` (``CaseFeedback.consensus()``);
            only used with ``regions``.

    Returns:
        ``(guarded, report)``: uint8 ``(z, y, x)`` and a JSON-able dict with the voxels clipped
        per rule, the components removed or restored and, with ratings, per region what was
        allowed and clipped and why.
    """
    limits = limits or GuardLimits()
    limits.validate()
    ini = np.asarray(initial) != 0
    prop = np.asarray(proposed) != 0
    if ini.shape != prop.shape or ini.ndim != 3:
        raise ValueError(f"initial {ini.shape} and proposed {prop.shape} must be one 3D grid")
    reg = None if regions is None else np.asarray(regions)
    if reg is not None and reg.shape != ini.shape:
        raise ValueError(f"regions {reg.shape} must be on the mask grid {ini.shape}")
    sp = np.asarray(spacing_zyx, dtype=float)
    report: dict = {"version": REPORT_VERSION, "limits": asdict(limits),
                    "proposed_changed": int((ini != prop).sum()),
                    "clipped": {"outside_zone": 0, "rated_5": 0, "against_direction": 0,
                                "over_amount": 0, "unconnected": 0, "initial_component": 0},
                    "components_removed": 0, "initial_components_restored": 0,
                    "regions": {}, "notes": []}
    if not ini.any():
        report["notes"].append("empty initial mask: no change is allowed")
        report["clipped"]["outside_zone"] = int(prop.sum())
        out = np.zeros(ini.shape, np.uint8)
        report.update(changed=0, added=0, removed=0)
        return out, report

    # work on a crop holding every change and the initial mask plus the margin
    pad = np.ceil(limits.margin_mm / sp).astype(int) + 2
    box_src = ini | prop | (reg > 0 if reg is not None else False)
    crop = padded_bbox(box_src, pad)
    i, p = ini[crop], prop[crop].copy()
    r = reg[crop] if reg is not None else None

    # 1. zone: near the initial surface (both sides), or in a region
    d_out = ndi.distance_transform_edt(~i, sampling=sp)
    d_in = ndi.distance_transform_edt(i, sampling=sp)
    dist = np.where(i, d_in, d_out)            # mm from the other side of the surface
    zone = dist <= limits.margin_mm + 1e-9
    if r is not None:
        zone |= r > 0
    bad = (p != i) & ~zone
    report["clipped"]["outside_zone"] = int(bad.sum())
    p[bad] = i[bad]

    # 2. ratings
    if r is not None and ratings:
        for label in sorted(int(k) for k in ratings):
            score, error = ratings[label]
            score = float(score)
            sel = r == label
            if not sel.any():
                continue
            entry = {"score": score, "error": str(error), "voxels": int(sel.sum()),
                     "initial_voxels": int((i & sel).sum()),
                     "proposed_change": int(((p != i) & sel).sum()), "clipped": 0, "why": []}
            if error == "none" or score >= limits.pin_score:
                ch = (p != i) & sel
                n = int(ch.sum())
                p[ch] = i[ch]
                entry["allowed"] = 0
                if n:
                    entry["why"].append(f"rated 5: {n} changed voxels reverted")
                report["clipped"]["rated_5"] += n
                entry["clipped"] += n
            else:
                if error in ("over", "under") and score < limits.direction_max_score:
                    wrong = sel & ((p & ~i) if error == "over" else (~p & i))
                    right = int((sel & ((~p & i) if error == "over" else (p & ~i))).sum())
                    keep = int(np.floor(limits.against_share * right))
                    cand = np.flatnonzero(wrong)
                    drop = cand[np.lexsort((cand, dist.ravel()[cand]))[keep:]]
                    n = int(drop.size)
                    pf = p.reshape(-1)
                    pf[drop] = i.reshape(-1)[drop]
                    if n:
                        entry["why"].append(f"rated {error}: {n} "
                                            f"{'added' if error == 'over' else 'removed'} voxels "
                                            f"reverted")
                    report["clipped"]["against_direction"] += n
                    entry["clipped"] += n
                frac = allowed_fraction(score, error if error in ("over", "under") else "over")
                room = int(sel.sum())
                base = entry["initial_voxels"]
                allowed = room if not np.isfinite(frac) else int(
                    min(room, np.floor(base * frac * (1.0 + limits.amount_slack))
                        + limits.min_allowed_voxels))
                entry["allowed"] = allowed
                ch = np.flatnonzero((p != i) & sel)
                if ch.size > allowed:
                    # keep the changes nearest the initial surface; ties by index (deterministic)
                    order = np.lexsort((ch, dist.ravel()[ch]))
                    drop = ch[order[allowed:]]
                    pf = p.reshape(-1)
                    pf[drop] = i.reshape(-1)[drop]
                    entry["why"].append(f"score {score:g} allows at most {allowed} changed voxels; "
                                        f"{drop.size} farthest from the initial surface reverted")
                    report["clipped"]["over_amount"] += int(drop.size)
                    entry["clipped"] += int(drop.size)
            entry["kept_change"] = int(((p != i) & sel).sum())
            report["regions"][str(label)] = entry

    # 3. connection: every component of the result holds a voxel of the initial mask
    near = i
    lab, n = ndi.label(p, structure=_FULL)
    if n:
        touching = np.zeros(n + 1, dtype=bool)
        touching[np.unique(lab[near & (lab > 0)])] = True
        touching[0] = True
        drop = ~touching[lab]
        report["components_removed"] = int(n - (touching[1:]).sum())
        report["clipped"]["unconnected"] = int(drop.sum())
        p[drop] = False

    # 4. never remove a whole initial component
    if limits.keep_initial_components:
        ilab, m = ndi.label(i, structure=_FULL)
        if m:
            kept = np.zeros(m + 1, dtype=bool)
            kept[np.unique(ilab[p & i])] = True
            kept[0] = True
            lost = ~kept[ilab]
            restore = lost & ~p
            report["initial_components_restored"] = int(m - kept[1:].sum())
            report["clipped"]["initial_component"] = int(restore.sum())
            p |= lost

    out = ini.copy()
    out[crop] = p
    changed = out != ini
    report.update(changed=int(changed.sum()), added=int((out & ~ini).sum()),
                  removed=int((ini & ~out).sum()))
    report["clipped_total"] = int(sum(report["clipped"].values()))
    return out.astype(np.uint8), report


def guard_volume(initial, proposed, limits: Optional[GuardLimits] = None, regions=None,
                 feedback=None):
    """:func:`apply_guard` on Volumes (the shape inference and the prediction loop use).

    ``initial``: the initial mask Volume; ``proposed``: a Volume on its grid or an array;
    ``regions``: optional Volume/array of region labels; ``feedback``: optional
    ``CaseFeedback`` (its ``consensus()`` is used, and its ``region_info`` sets the margin when
    ``limits`` is None). Returns ``(guarded Volume (uint8), report)``.
    """
    from ..imageio import Volume, check_same_grid

    prop = proposed
    if isinstance(proposed, Volume):
        check_same_grid(initial.geometry, proposed.geometry, "initial mask", "refined mask")
        prop = proposed.array
    reg = regions
    if isinstance(regions, Volume):
        check_same_grid(initial.geometry, regions.geometry, "initial mask", "regions")
        reg = regions.array
    ratings = feedback.consensus() if feedback is not None else None
    if limits is None:
        limits = GuardLimits.for_regions(feedback.region_info) if feedback is not None \
            else GuardLimits()
    out, report = apply_guard(initial.array, prop, initial.geometry.spacing_zyx, limits,
                              reg, ratings)
    return initial.with_array(out), report
