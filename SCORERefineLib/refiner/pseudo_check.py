"""Are the SCORE pseudo-labels right? Their agreement with the reference, before and after training.

The SCORE loss turns each rated region into per-voxel targets (:func:`~.losses.pseudo_labels`):
the score fixes how many voxels change, over/under on which side, and the ranking key
``logit + depth`` picks which. Before training the network is the identity (its logits are the
residual prior ``gain * (2 M0 - 1)``), so the ranking is by depth alone; after training the
network's own logits rank. On a case that also has ``reference.nii.gz`` (the benchmark's training
cases; never read by training) this module measures, inside the rated regions:

* ``initial_dice``: Dice of the initial mask to the reference;
* ``pseudo_dice_before`` / ``pseudo_dice_after``: Dice of the pseudo-label target to the reference;
* ``changed_before`` / ``changed_after``: voxels the target flips from the initial mask, and
  ``precision_before`` / ``precision_after``: the share of those flips that agree with the
  reference (a flip is right when the reference has the target's value there);
  ``removed_*`` / ``removed_precision_*`` and ``added_*`` / ``added_precision_*``: the same for
  each side (on the abdominal organs the removals were right half the time, the additions 69%:
  docs/score-loss.md, stop 27).

If the pseudo-labels are worse than the initial mask on real texture, training is pushed the wrong
way whatever the network; if they are right but the network does not learn them, the fault is
elsewhere. The benchmark reports these figures for the SCORE row (issue: "check whether the SCORE
pseudo-labels are what fails on real texture").

:func:`target_ceiling` asks what limits the targets: the whole structure's Dice gain when the
initial mask takes the targets in its rated regions, with the number of flipped voxels (the
score's share) and the choice of which voxels (the ranking key) each replaced by the reference's
own, the most a refiner could learn from targets of that kind.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..case import Case
from .losses import ScoreLossWeights, flip_limits, pseudo_labels

__all__ = ["pseudo_label_check", "dataset_pseudo_label_check", "summarise_check", "target_ceiling",
           "CEILING_VARIANTS"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def _targets(logits: np.ndarray, targets, weights: ScoreLossWeights, agreement=None, key=None,
             fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pseudo-labels of one prepared case; ``agreement`` / ``key`` / ``fraction`` replace the
    rating's c(s) table, the ranking key (``maps["depth"]``) and the labelled share. The weights'
    per-side score limits (:func:`~.losses.flip_limits`) hold for the rating's own table only,
    except on thin regions (``maps["thin"]``, with ``pseudo_thin_mm``): a replaced table (the
    reference's counts) flips every region it says is wrong."""
    t = torch.from_numpy
    tab = targets.tables
    limits = flip_limits(weights) if agreement is None else {}
    if limits and weights.pseudo_thin_mm > 0 and "thin" in targets.maps:
        limits["thin"] = t(np.asarray(targets.maps["thin"], np.float32))[None, None]
    agreement = tab.agreement if agreement is None else agreement
    key = targets.maps["depth"] if key is None else key
    target, weight = pseudo_labels(
        t(logits.astype(np.float32))[None, None],
        t(targets.initial.astype(np.float32))[None, None],
        t(targets.maps["regions"].astype(np.int64))[None, None],
        t(np.asarray(agreement, np.float32))[None], t(np.asarray(tab.rated, bool))[None],
        t(np.asarray(tab.error, np.int64))[None], t(np.asarray(key, np.float32))[None, None],
        None, weights.pseudo_depth_per_mm, use_error_type=bool(weights.use_error_type),
        fraction=weights.pseudo_fraction if fraction is None else fraction,
        **limits)
    return target[0, 0].numpy() > 0.5, weight[0, 0].numpy() > 0


def _prepared_with_reference(case: Case, residual_gain: float,
                             weights: ScoreLossWeights | None = None):
    """``(prepared, m0, ref, logits)``: the case as :class:`~.modes.score.ScoreMode` trains on it
    with ``weights``, its initial and reference masks (bool, the image's grid) and the untrained
    network's logits (``residual_gain * (2 M0 - 1)``)."""
    from .modes.score import ScoreConfig, ScoreMode

    w = weights or ScoreLossWeights()
    # the ranking key is what is checked, whether or not the term trains
    prepared = ScoreMode(ScoreConfig(weights=replace(w, pseudo=w.pseudo or 1.0))).prepare_case(case)
    ref = case.load_reference(like=case.load_initial()).array != 0   # the image's grid (contract)
    m0 = prepared.initial != 0
    return prepared, m0, ref, float(residual_gain) * (2.0 * m0.astype(np.float32) - 1.0)


def pseudo_label_check(case: Case, model=None, metadata: dict | None = None,
                       weights: ScoreLossWeights | None = None, residual_gain: float = 2.0,
                       device: str = "cpu") -> dict:
    """The pseudo-label figures of one rated case with a reference (see the module docstring).

    Args:
        case: a case with regions, feedback.json and reference.nii.gz.
        model, metadata: a trained refiner (:func:`~.inference.load_model`) for the "after"
            figures; None gives only the "before" ones.
        weights: the SCORE loss settings (default: :class:`~.losses.ScoreLossWeights`).
        residual_gain: the untrained network's logit gain on the initial mask.
        device: inference device for ``model``.

    Returns:
        ``{"case", "rated_voxels", "initial_dice", "pseudo_dice_before", "changed_before",
        "precision_before"[, "..._after"]}``.
    """
    weights = weights or ScoreLossWeights()
    prepared, m0, ref, logits_before = _prepared_with_reference(case, residual_gain, weights)
    out: dict = {"case": case.case_id}
    target, inside = _targets(logits_before, prepared, weights)
    out["rated_voxels"] = int(inside.sum())
    out["initial_dice"] = _dice(m0 & inside, ref & inside)
    runs = [("before", target)]
    if model is not None:
        from ..imageio import Volume
        from .inference import refine_volume

        image = case.load_image()
        _, prob = refine_volume(model, metadata or {}, image, Volume(m0.astype(np.uint8), image.geometry),
                                device=device, return_probability=True)
        p = np.clip(prob.array.astype(np.float64), 1e-4, 1 - 1e-4)
        logits_after = np.log(p / (1.0 - p)).astype(np.float32)
        runs.append(("after", _targets(logits_after, prepared, weights)[0]))
    for name, tgt in runs:
        flips = (tgt != m0) & inside
        out[f"pseudo_dice_{name}"] = _dice(tgt & inside, ref & inside)
        out[f"changed_{name}"] = int(flips.sum())
        out[f"precision_{name}"] = (float((tgt[flips] == ref[flips]).mean()) if flips.any()
                                    else float("nan"))
        for side, sel in (("removed", flips & m0), ("added", flips & ~m0)):
            out[f"{side}_{name}"] = int(sel.sum())
            out[f"{side}_precision_{name}"] = (float((tgt[sel] == ref[sel]).mean()) if sel.any()
                                               else float("nan"))
    return out


def dataset_pseudo_label_check(cases: Sequence[Case], model_path=None, device: str = "cpu",
                               weights: ScoreLossWeights | None = None) -> list[dict]:
    """:func:`pseudo_label_check` over the rated cases with a reference (others are skipped)."""
    model = metadata = None
    if model_path is not None:
        from .inference import load_model

        model, metadata = load_model(model_path, device)
    rows = []
    for case in cases:
        if not (case.has_feedback and case.has_regions and case.has_reference):
            continue
        rows.append(pseudo_label_check(case, model, metadata, weights, device=device))
    return rows


def summarise_check(rows: Sequence[dict]) -> dict:
    """Voxel-weighted means of the figures over cases (flips pooled for the precisions)."""
    if not rows:
        return {}
    out = {"n_cases": len(rows)}
    w = np.array([r["rated_voxels"] for r in rows], float)
    for key in ("initial_dice", "pseudo_dice_before", "pseudo_dice_after"):
        vals = [r.get(key) for r in rows]
        if all(v is not None for v in vals):
            out[key] = float(np.average(vals, weights=np.maximum(w, 1)))
    for name in ("before", "after"):
        for count, precision in (("changed", "precision"), ("removed", "removed_precision"),
                                 ("added", "added_precision")):
            if all(f"{count}_{name}" in r for r in rows):
                n = np.array([r[f"{count}_{name}"] for r in rows], float)
                prec = np.array([r[f"{precision}_{name}"] for r in rows], float)
                ok = n > 0
                out[f"{count}_{name}"] = int(n.sum())
                out[f"{precision}_{name}"] = (float(np.sum(prec[ok] * n[ok]) / n[ok].sum())
                                              if ok.any() else float("nan"))
    return out


#: :func:`target_ceiling`'s variants: (name, count from, ranking by)
CEILING_VARIANTS = (
    ("targets", "score", "key"),            # what training uses (labelled share of the score's count)
    ("true_count", "reference", "key"),     # the reference's count of wrong voxels on the rated side
    ("oracle_ranking", "score", "reference"),   # the score's count, the wrong voxels first
    ("oracle_both", "reference", "reference"),  # every wrong voxel of the rated side, nothing else
)


def _true_agreement(m0: np.ndarray, ref: np.ndarray, regions: np.ndarray, tables) -> np.ndarray:
    """Per region, the c whose implied count (:func:`~.targets.target_volume_ratio`) is the
    reference's number of wrong voxels on the rated side: over -> |R & M0 & ~ref|, under ->
    |R & ~M0 & ref|, relative to |R & M0|."""
    from .targets import OVER, UNDER

    n = len(tables.rated)
    lab = np.clip(regions.astype(np.int64), 0, n - 1)
    count = lambda sel: np.bincount(lab[sel], minlength=n).astype(np.float64)  # noqa: E731
    n_in = np.maximum(count(m0), 1.0)
    rho_over = 1.0 - count(m0 & ~ref) / n_in
    rho_under = 1.0 + count(~m0 & ref) / n_in
    c = np.asarray(tables.agreement, np.float64).copy()
    over, under = tables.error == OVER, tables.error == UNDER
    c[over] = 2.0 * rho_over[over] / (1.0 + rho_over[over])
    c[under] = 2.0 / (1.0 + rho_under[under])
    return c


def target_ceiling(case: Case, weights: ScoreLossWeights | None = None,
                   residual_gain: float = 2.0) -> dict:
    """Whole-structure Dice gains of ratings-implied targets, and what limits them.

    The initial mask takes the pseudo-label targets in the rated regions (before training: the
    untrained network's logits, the ranking key of :class:`~.modes.score.ScoreMode`), and its
    Dice to the reference is compared with the initial mask's. Each variant of
    :data:`CEILING_VARIANTS` replaces the count (the score's labelled share, or the reference's
    count of wrong voxels on the rated side, all of them) and/or the ranking (the key, or the
    reference: wrong voxels first, ties by the key). ``regions_exact`` is the gain of taking the
    reference inside every region (both error types; the most any use of these regions gives).

    Returns:
        ``{"case", "initial_dice", "<variant>": gain, ..., "regions_exact": gain}``.
    """
    weights = weights or ScoreLossWeights()
    prepared, m0, ref, logits = _prepared_with_reference(case, residual_gain, weights)
    regions = prepared.maps["regions"]
    key = prepared.maps["depth"]
    # a key step larger than any logit + key difference puts the reference's wrong voxels first
    # ("over" drops the lowest keys, "under" adds the highest)
    step = 2.0 * (float(np.abs(key).max()) + 2.0 * float(residual_gain)) + 1.0
    oracle_key = key + np.float32(step) * ref.astype(np.float32)
    base = _dice(m0, ref)
    out: dict = {"case": case.case_id, "initial_dice": base}
    true_c = _true_agreement(m0, ref, regions, prepared.tables)
    for name, count, rank in CEILING_VARIANTS:
        tgt, rated = _targets(logits, prepared, weights,
                              agreement=true_c if count == "reference" else None,
                              key=oracle_key if rank == "reference" else None,
                              fraction=1.0 if count == "reference" else None)
        out[name] = _dice(np.where(rated, tgt, m0), ref) - base
    exact = np.where(regions > 0, ref, m0)
    out["regions_exact"] = _dice(exact, ref) - base
    return out
