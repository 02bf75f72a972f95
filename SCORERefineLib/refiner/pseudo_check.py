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
  reference (a flip is right when the reference has the target's value there).

If the pseudo-labels are worse than the initial mask on real texture, training is pushed the wrong
way whatever the network; if they are right but the network does not learn them, the fault is
elsewhere. The benchmark reports these figures for the SCORE row (issue: "check whether the SCORE
pseudo-labels are what fails on real texture").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..case import Case
from .losses import ScoreLossWeights, pseudo_labels

__all__ = ["pseudo_label_check", "dataset_pseudo_label_check", "summarise_check"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def _targets(logits: np.ndarray, targets, weights: ScoreLossWeights) -> tuple[np.ndarray, np.ndarray]:
    t = torch.from_numpy
    tab = targets.tables
    target, weight = pseudo_labels(
        t(logits.astype(np.float32))[None, None],
        t(targets.initial.astype(np.float32))[None, None],
        t(targets.maps["regions"].astype(np.int64))[None, None],
        t(np.asarray(tab.agreement, np.float32))[None], t(np.asarray(tab.rated, bool))[None],
        t(np.asarray(tab.error, np.int64))[None], t(targets.maps["depth"])[None, None],
        None, weights.pseudo_depth_per_mm, use_error_type=bool(weights.use_error_type),
        fraction=weights.pseudo_fraction)
    return target[0, 0].numpy() > 0.5, weight[0, 0].numpy() > 0


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
    from .modes.score import ScoreMode

    weights = weights or ScoreLossWeights()
    mode = ScoreMode()
    prepared = mode.prepare_case(case)
    image = case.load_image()
    ref = case.load_reference(like=image).array != 0
    m0 = prepared.initial != 0
    out: dict = {"case": case.case_id}
    logits_before = float(residual_gain) * (2.0 * m0.astype(np.float32) - 1.0)
    target, inside = _targets(logits_before, prepared, weights)
    out["rated_voxels"] = int(inside.sum())
    out["initial_dice"] = _dice(m0 & inside, ref & inside)
    runs = [("before", target)]
    if model is not None:
        from ..imageio import Volume
        from .inference import refine_volume

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
        if all(f"changed_{name}" in r for r in rows):
            n = np.array([r[f"changed_{name}"] for r in rows], float)
            prec = np.array([r[f"precision_{name}"] for r in rows], float)
            ok = n > 0
            out[f"changed_{name}"] = int(n.sum())
            out[f"precision_{name}"] = (float(np.sum(prec[ok] * n[ok]) / n[ok].sum())
                                        if ok.any() else float("nan"))
    return out
