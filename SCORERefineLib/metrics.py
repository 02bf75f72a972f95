"""Segmentation metrics in millimetres (MONAI): Dice, HD95 and ASSD, per case and summarised,
next to the number of connected components of the prediction (26-connectivity; a refinement that
scatters small false components shows up there before it shows in Dice) and, against a baseline
such as the initial mask, which cases got worse (Dice drop > :data:`WORSE_TOLERANCE`).

Masks are binary arrays ``(z, y, x)``; ``spacing_zyx`` is the voxel spacing in the same array order
(use :attr:`imageio.Geometry.spacing_zyx`, not ITK's ``(x, y, z)`` ``spacing``).

Empty masks (MONAI would return NaN/inf with a warning) are handled explicitly:

=======================  ======  =======  =======
case                     dice    hd95     assd
=======================  ======  =======  =======
both empty               1.0     0.0      0.0      (perfect agreement on "nothing")
exactly one empty        0.0     NaN      NaN      (no surface to measure a distance to)
=======================  ======  =======  =======

:func:`summarise` ignores NaN values and reports how many there were (``n_nan``); ``n`` counts the
finite values only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .case import list_cases
from .atomicio import atomic_write_text
from .errors import InputError

METRICS = ("dice", "hd95", "assd")
#: counts reported next to the metrics (``components``: 26-connected components of the prediction)
COUNTS = ("components",)
#: everything :func:`case_metrics` returns and :func:`summarise` summarises by default
ALL_METRICS = METRICS + COUNTS
#: True when a larger value is better
HIGHER_IS_BETTER = {"dice": True, "hd95": False, "assd": False}
#: a case is "worse than initial" when its Dice drops by more than this
WORSE_TOLERANCE = 0.005
#: a case counts as improved (or worse, in :func:`compare`'s shares) when its metric moves the
#: better (worse) way by more than this: a Dice change of 1e-4 is a handful of voxels, not a
#: change a reader sees. One definition for every table ("cases improved" and the targets)
IMPROVED_MIN_DELTA = 1e-4

_FULL = np.ones((3, 3, 3), dtype=bool)   # 26-connectivity


def n_components(mask: np.ndarray) -> int:
    """Number of 26-connected foreground components of ``mask`` ``(z, y, x)`` (0 when empty)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask) != 0
    if not mask.any():
        return 0
    return int(ndi.label(mask, structure=_FULL)[1])


def detached_components(mask: np.ndarray, initial: np.ndarray) -> int:
    """Number of 26-connected components of ``mask`` that do not touch the initial structure's
    neighbourhood (``initial`` dilated by one voxel, 26-neighbourhood): islands a refinement
    created away from the structure it was asked to correct. Both ``(z, y, x)``, one grid."""
    from scipy import ndimage as ndi

    mask, initial = np.asarray(mask) != 0, np.asarray(initial) != 0
    if not mask.any():
        return 0
    lab, n = ndi.label(mask, structure=_FULL)
    near = ndi.binary_dilation(initial, _FULL) if initial.any() else initial
    touching = np.unique(lab[near & (lab > 0)])
    return int(n - len(touching))


def _crop(pred: np.ndarray, ref: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box plus ``margin`` voxels (same result,
    less work for the distance transforms)."""
    union = pred | ref
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, union.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return pred[sl], ref[sl]


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> dict:
    """Dice, HD95 (mm), symmetric ASSD (mm) and ``components`` (26-connected components of
    ``pred``) of binary masks ``pred`` and ``ref`` ``(z, y, x)``.

    Uses ``monai.metrics.compute_dice``, ``compute_hausdorff_distance(percentile=95)`` and
    ``compute_average_surface_distance(symmetric=True)`` with ``spacing=spacing_zyx``.
    Empty masks: see the module docstring.
    """
    pred = np.asarray(pred) != 0
    ref = np.asarray(ref) != 0
    if pred.shape != ref.shape:
        raise InputError(f"prediction and reference have different shapes {pred.shape} and "
                         f"{ref.shape}; they must share one voxel grid.")
    if pred.ndim != 3 or len(spacing_zyx) != 3:
        raise InputError(f"masks must be 3D (z, y, x) with 3 spacings, got shape {pred.shape} "
                         f"and spacing {tuple(spacing_zyx)}")
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "components": 0}
    if n_pred == 0 or n_ref == 0:
        return {"dice": 0.0, "hd95": math.nan, "assd": math.nan, "components": n_components(pred)}

    import torch
    from monai.metrics import (compute_average_surface_distance, compute_dice,
                               compute_hausdorff_distance)

    p, r = _crop(pred, ref)
    tp = torch.from_numpy(p[None, None].astype(np.float32))
    tr = torch.from_numpy(r[None, None].astype(np.float32))
    spacing = [float(s) for s in spacing_zyx]
    with warnings.catch_warnings():   # MONAI 1.5+ warns about its own deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        dice = compute_dice(tp, tr, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(tp, tr, include_background=True, percentile=95,
                                          spacing=spacing)
        assd = compute_average_surface_distance(tp, tr, include_background=True, symmetric=True,
                                                spacing=spacing)
    return {"dice": float(dice.item()), "hd95": float(hd95.item()), "assd": float(assd.item()),
            "components": n_components(pred)}


def summarise(rows: Iterable[Mapping], metrics: Sequence[str] = ALL_METRICS) -> dict:
    """Per metric ``{"mean", "std", "median", "min", "max", "n", "n_nan"}`` over ``rows``.

    NaN values are left out (``n`` counts the finite ones, ``n_nan`` the others); a metric with no
    finite value gets NaN statistics.
    """
    rows = list(rows)
    out = {}
    for m in metrics:
        vals = np.array([float(r[m]) for r in rows if m in r and r[m] is not None], dtype=float)
        finite = vals[np.isfinite(vals)]
        if finite.size:
            stats = {"mean": float(finite.mean()), "std": float(finite.std()),
                     "median": float(np.median(finite)), "min": float(finite.min()),
                     "max": float(finite.max())}
        else:
            stats = {k: math.nan for k in ("mean", "std", "median", "min", "max")}
        stats.update(n=int(finite.size), n_nan=int(vals.size - finite.size))
        out[m] = stats
    return out


def evaluate_dataset(dataset: str | os.PathLike, prediction: str = "initial",
                     skipped: Optional[list] = None, progress: str = "none"
                     ) -> tuple[list[dict], dict]:
    """Metrics of every case of ``dataset`` against its reference.

    ``prediction``: ``"initial"`` (``initial.nii.gz``) or NAME (``predictions/NAME.nii.gz``).
    Returns ``(rows, summary)``; a row is ``{"case_id", "dice", "hd95", "assd", "components",
    "pred_voxels", "ref_voxels"}``. Cases without a reference or without that prediction are skipped; pass a
    list as ``skipped`` to receive ``(case_id, reason)`` notes. Raises :class:`InputError` when
    no case could be evaluated.
    """
    from .progress import Progress

    notes: list = [] if skipped is None else skipped
    rows = []
    cases = list_cases(dataset)
    with Progress(f"evaluate {prediction}", len(cases), mode=progress) as bar:
        for case in cases:
            bar.update()
            if not case.has_reference:
                notes.append((case.case_id, "no reference.nii.gz"))
                continue
            ref = case.load_reference()
            if prediction == "initial":
                if not case.initial_path.exists():
                    notes.append((case.case_id, "no initial.nii.gz"))
                    continue
                from .imageio import read_mask
                pred = read_mask(case.initial_path, like=ref.geometry, allow_empty=True)
            else:
                if not case.prediction_path(prediction).exists():
                    notes.append((case.case_id, f"no prediction '{prediction}'"))
                    continue
                pred = case.load_prediction(prediction, like=ref)
            row = {"case_id": case.case_id}
            row.update(case_metrics(pred.array, ref.array, ref.geometry.spacing_zyx))
            row.update(pred_voxels=int(pred.array.sum()), ref_voxels=int(ref.array.sum()))
            rows.append(row)
    if not rows:
        why = "; ".join(f"{c}: {r}" for c, r in notes[:5])
        raise InputError(f"no case of {dataset} could be evaluated for prediction '{prediction}' "
                         f"({why}). Cases need reference.nii.gz and the prediction "
                         f"(run `scorerefine refine --name {prediction}` first).")
    return rows, summarise(rows)


def worse_than(before: Mapping, after: Mapping, tolerance: float = WORSE_TOLERANCE) -> bool:
    """True when ``after``'s Dice is more than ``tolerance`` below ``before``'s (rows with a
    ``"dice"``); a NaN Dice on either side is not counted as worse."""
    b, a = float(before.get("dice", math.nan)), float(after.get("dice", math.nan))
    return bool(math.isfinite(a) and math.isfinite(b) and a < b - tolerance)


def compare(rows_before: Iterable[Mapping], rows_after: Iterable[Mapping],
            metrics: Sequence[str] = METRICS, tolerance: float = WORSE_TOLERANCE) -> dict:
    """Per-case deltas (after - before) and the share of cases improved, matched by ``case_id``.

    Returns ``{"cases": [{"case_id", "<m>_before", "<m>_after", "<m>_delta",
    "components_before", "components_after", "worse_than_initial"}...],
    "summary": {m: {"mean_delta", "median_delta", "improved", "worse", "n"}},
    "worse_than_initial": {"n", "share", "tolerance", "cases"}, "unmatched": [...]}``
    where ``improved``/``worse`` are shares of the ``n`` cases with finite values on both sides
    whose value moved by more than :data:`IMPROVED_MIN_DELTA` (Dice up, distances down is
    better) and a case is ``worse_than_initial`` when its Dice drops
    by more than ``tolerance`` (``before`` is the baseline, usually the initial mask).
    """
    before = {r["case_id"]: r for r in rows_before}
    after = {r["case_id"]: r for r in rows_after}
    common = sorted(set(before) & set(after))
    unmatched = sorted(set(before) ^ set(after))
    cases = []
    for cid in common:
        row = {"case_id": cid}
        for m in metrics:
            b, a = float(before[cid].get(m, math.nan)), float(after[cid].get(m, math.nan))
            row.update({f"{m}_before": b, f"{m}_after": a, f"{m}_delta": a - b})
        for m in COUNTS:
            if m in before[cid] or m in after[cid]:
                row.update({f"{m}_before": before[cid].get(m), f"{m}_after": after[cid].get(m)})
        row["worse_than_initial"] = worse_than(before[cid], after[cid], tolerance)
        cases.append(row)
    summary = {}
    for m in metrics:
        d = np.array([c[f"{m}_delta"] for c in cases], dtype=float)
        d = d[np.isfinite(d)]
        sign = 1.0 if HIGHER_IS_BETTER.get(m, True) else -1.0
        summary[m] = {
            "mean_delta": float(d.mean()) if d.size else math.nan,
            "median_delta": float(np.median(d)) if d.size else math.nan,
            "improved": float(np.mean(sign * d > IMPROVED_MIN_DELTA)) if d.size else math.nan,
            "worse": float(np.mean(sign * d < -IMPROVED_MIN_DELTA)) if d.size else math.nan,
            "n": int(d.size)}
    worse = [c["case_id"] for c in cases if c["worse_than_initial"]]
    return {"cases": cases, "summary": summary,
            "worse_than_initial": {"n": len(worse), "share": len(worse) / len(cases) if cases
                                   else math.nan, "tolerance": float(tolerance), "cases": worse},
            "unmatched": unmatched}


def _json_safe(obj):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_rows_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write rows as CSV (columns from the first row; NaN written as empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else ["case_id", *METRICS]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in r.items()})
    return path


def write_json(data, path: str | os.PathLike) -> Path:
    """Write ``data`` as standard JSON (NaN as null), atomically."""
    return atomic_write_text(path, json.dumps(_json_safe(data), indent=1))


def format_table(rows: Sequence[Mapping], summary: Mapping) -> str:
    """A readable text table: one line per case, then mean/std/median/min/max (the
    ``components`` column appears when the rows have it)."""
    def f(v, nd):
        return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) \
            else f"{v:.{nd}f}"
    comps = any("components" in r for r in rows) and "components" in summary
    width = max([len("case")] + [len(str(r["case_id"])) for r in rows])
    lines = [f"{'case':<{width}}  {'dice':>7}  {'hd95 mm':>8}  {'assd mm':>8}"
             + (f"  {'comps':>6}" if comps else "")]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r['case_id']:<{width}}  {f(r['dice'], 4):>7}  {f(r['hd95'], 2):>8}  "
                     f"{f(r['assd'], 3):>8}"
                     + (f"  {f(r.get('components'), 0):>6}" if comps else ""))
    lines.append("-" * len(lines[0]))
    for stat in ("mean", "std", "median", "min", "max"):
        lines.append(f"{stat:<{width}}  {f(summary['dice'][stat], 4):>7}  "
                     f"{f(summary['hd95'][stat], 2):>8}  {f(summary['assd'][stat], 3):>8}"
                     + (f"  {f(summary['components'][stat], 1):>6}" if comps else ""))
    nan = {m: summary[m]["n_nan"] for m in METRICS if summary[m]["n_nan"]}
    if nan:
        lines.append(f"(NaN left out of the summary: {nan}; a mask was empty)")
    return "\n".join(lines)
