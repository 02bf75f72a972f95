"""Losses for scribble supervision (after ScribbleVS), binary foreground/background.

Notation (one patch batch):

* ``logits``: refiner output ``(B, 1, z, y, x)``; ``P = sigmoid(logits)``.
* ``scribbles``: ``(B, 1, z, y, x)`` long/uint8, 0 none / 1 foreground / 2 background
  (:mod:`SCORERefineLib.scribbles`).
* ``valid``: optional ``(B, 1, z, y, x)`` float, 1 inside the image (0 where a patch was padded).

Terms:

partial cross-entropy (:func:`partial_ce`)
    BCE on scribbled voxels only, target 1 on foreground strokes and 0 on background strokes.
competitive pseudo-labels (:func:`competitive_pseudo_labels`, :func:`pseudo_label_loss`)
    Unscribbled voxels get hard labels from the network's own prediction where it is confident
    (``max(P, 1 - P) >= threshold``). The source is chosen per item between the student (the
    network being trained) and the teacher (:class:`EMATeacher`, an exponential moving average
    of the student): the one whose partial CE on the item's scribbles is lower, i.e. the one
    that agrees better with what the annotator drew. ScribbleVS makes this choice once per
    batch; here it is per item, since one batch holds patches of different cases.
anchor (:func:`stroke_anchor_loss`)
    A refiner's strokes are drawn where the initial mask is wrong, so nearly every stroke voxel
    contradicts M0 and nothing in the strokes says where M0 is right; trained on them alone the
    network learns "flip the boundary" and applies it everywhere (measured on the real-CT
    preset at 1800 steps: five of six held-out cases worse, a vertebra from Dice 0.94 to 0.64;
    with the anchor +0.023 to +0.031 over three seeds, one rib worse at two of them;
    docs/modes-scribble-hybrid.md). The anchor is the squared hinge of
    the SCORE loss's (``relu(margin - (2 M0 - 1) z)^2``, zero for the untrained residual network)
    on the voxels farther than ``anchor_exclusion_mm`` from every stroke that contradicts M0
    (the ``stroke_anchor`` map of :class:`~.modes.scribble.ScribbleMode`): it resists changes
    there and leaves the strokes' neighbourhoods to the strokes.
ramp-up (:func:`ramp_up`)
    The pseudo-label weight grows from ~0 to 1 over the first ``total`` steps
    (``exp(-5 (1 - t)^2)``, the usual sigmoid-shaped ramp of mean-teacher training), so early,
    unreliable predictions do not teach the network.

The initial mask stays an input channel and the residual prior of the network (nothing here
changes the input); where no stroke is drawn, the pseudo-labels start out as the initial mask.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

NONE, FOREGROUND, BACKGROUND = 0, 1, 2
STUDENT, TEACHER = 0, 1


def _scribble_weights(scribbles: torch.Tensor, valid: Optional[torch.Tensor], dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    fg = (scribbles == FOREGROUND).to(dtype)
    bg = (scribbles == BACKGROUND).to(dtype)
    if valid is not None:
        fg, bg = fg * valid, bg * valid
    return fg, bg


def partial_ce_per_item(logits: torch.Tensor, scribbles: torch.Tensor,
                        valid: Optional[torch.Tensor] = None, balance: bool = True) -> torch.Tensor:
    """Partial BCE on scribbled voxels, one value per item: ``(B,)``.

    ``balance=True``: the mean over foreground strokes and the mean over background strokes are
    averaged (strokes of one label are often far longer than the other's); ``False``: one mean
    over all scribbled voxels. An item without a stroke gives 0.
    """
    logits = logits.float()
    fg, bg = _scribble_weights(scribbles, valid, logits.dtype)
    dims = tuple(range(1, logits.dim()))
    l_fg = (F.softplus(-logits) * fg).sum(dims)      # -log P on foreground strokes
    l_bg = (F.softplus(logits) * bg).sum(dims)       # -log (1 - P) on background strokes
    n_fg, n_bg = fg.sum(dims), bg.sum(dims)
    if not balance:
        return (l_fg + l_bg) / (n_fg + n_bg).clamp_min(1.0)
    m_fg = l_fg / n_fg.clamp_min(1.0)
    m_bg = l_bg / n_bg.clamp_min(1.0)
    k = (n_fg > 0).to(logits.dtype) + (n_bg > 0).to(logits.dtype)
    return (m_fg + m_bg) / k.clamp_min(1.0)


def partial_ce(logits: torch.Tensor, scribbles: torch.Tensor, valid: Optional[torch.Tensor] = None,
               balance: bool = True) -> torch.Tensor:
    """Partial cross-entropy: scalar mean of :func:`partial_ce_per_item` over items with a
    stroke (0, with a gradient path, when no item has one). Shapes: logits/scribbles/valid
    ``(B, 1, z, y, x)``."""
    per = partial_ce_per_item(logits, scribbles, valid, balance)
    has = (scribbles != NONE).flatten(1).any(1).to(per.dtype)
    return (per * has).sum() / has.sum().clamp_min(1.0) + logits.float().sum() * 0.0


def _prob_bce_per_item(prob: torch.Tensor, scribbles: torch.Tensor,
                       valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Partial CE computed from probabilities (for choosing a pseudo-label source): (B,)."""
    p = prob.float().clamp(1e-6, 1 - 1e-6)
    return partial_ce_per_item(torch.log(p) - torch.log1p(-p), scribbles, valid)


def competitive_pseudo_labels(student_prob: torch.Tensor, teacher_prob: torch.Tensor,
                              scribbles: torch.Tensor, threshold: float = 0.8,
                              valid: Optional[torch.Tensor] = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo-labels for unscribbled voxels from the source that agrees better with the strokes.

    Args:
        student_prob, teacher_prob: foreground probabilities ``(B, 1, z, y, x)`` (no gradient
            is taken through them).
        scribbles: ``(B, 1, z, y, x)`` 0/1/2.
        threshold: confidence needed for a label, on ``max(P, 1 - P)`` in ``[0.5, 1]``.
        valid: optional ``(B, 1, z, y, x)``.

    Returns:
        ``(labels, mask, chosen)``: ``labels`` ``(B, 1, z, y, x)`` float 0/1 (``P > 0.5`` of the
        chosen source); ``mask`` ``(B, 1, z, y, x)`` float, 1 on unscribbled, valid voxels
        where that source is confident; ``chosen`` ``(B,)`` long, :data:`STUDENT` (0) or
        :data:`TEACHER` (1): the source with the lower partial CE on the item's strokes (the
        teacher on ties and on items without a stroke: it is the steadier of the two).
    """
    with torch.no_grad():
        s, t = student_prob.detach().float(), teacher_prob.detach().float()
        ce_s = _prob_bce_per_item(s, scribbles, valid)
        ce_t = _prob_bce_per_item(t, scribbles, valid)
        chosen = torch.where(ce_s < ce_t, torch.full_like(ce_s, STUDENT),
                             torch.full_like(ce_s, TEACHER)).long()
        pick = chosen.view(-1, *([1] * (s.dim() - 1))).to(s.dtype)
        prob = pick * t + (1.0 - pick) * s
        labels = (prob > 0.5).to(s.dtype)
        mask = ((torch.maximum(prob, 1.0 - prob) >= float(threshold)) & (scribbles == NONE)).to(s.dtype)
        if valid is not None:
            mask = mask * valid.to(s.dtype)
    return labels, mask, chosen


def pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE(logits, labels) averaged over ``mask`` (all ``(B, 1, z, y, x)``); 0 for an empty mask."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (bce * mask).sum() / mask.sum().clamp_min(1.0)


def ramp_up(step: int, total: int) -> float:
    """Weight in ``[0, 1]``: ``exp(-5 (1 - t)^2)`` with ``t = clip(step / total, 0, 1)``;
    monotone non-decreasing, 1 from ``step >= total`` (``total <= 0``: always 1)."""
    if total <= 0:
        return 1.0
    t = min(max(float(step) / float(total), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def stroke_anchor_loss(logits: torch.Tensor, initial: torch.Tensor, weight: torch.Tensor,
                       valid: Optional[torch.Tensor] = None, margin: float = 2.0) -> torch.Tensor:
    """Squared hinge ``relu(margin - (2 M0 - 1) z)^2`` averaged over ``weight`` (all
    ``(B, 1, z, y, x)``; ``weight``: the ``stroke_anchor`` map, 1 far from contradicting strokes):
    the logit must stay on M0's side by ``margin`` (the SCORE anchor's hinge,
    :func:`.losses._follow_initial`). 0 for an empty selection."""
    from .losses import _follow_initial

    sel = weight.float() if valid is None else weight.float() * valid.float()
    return _follow_initial(logits.float(), initial.float(), sel, float(margin))


class EMATeacher:
    """A frozen copy of the student whose weights follow it: ``w_T <- d w_T + (1 - d) w_S``.

    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the teacher leaves its random
    start quickly; buffers (e.g. norm statistics, the residual gain) are copied. Call
    :meth:`update` after every optimiser step; :meth:`__call__` runs the teacher without grad.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(_unwrap(student))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """One EMA step towards ``student``; returns the decay used."""
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        src = _unwrap(student)
        for pt, ps in zip(self.model.parameters(), src.parameters()):
            pt.mul_(d).add_(ps.detach().to(pt.dtype), alpha=1.0 - d)
        for bt, bs in zip(self.model.buffers(), src.buffers()):
            bt.copy_(bs)
        self.updates += 1
        return d

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.model.train(False)
        return self.model(x)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state.get("updates", 0))
        self.decay = float(state.get("decay", self.decay))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@dataclass
class ScribbleLossWeights:
    """Weights of the scribble terms and the pseudo-label settings."""

    pce: float = 1.0               # partial CE on the strokes
    pseudo: float = 0.5            # pseudo-label BCE at full ramp
    threshold: float = 0.8         # confidence for a pseudo-label
    ramp_steps: int = 200          # steps of the ramp-up of the pseudo weight
    balance: float = 1.0           # 1: foreground and background strokes weigh the same
    anchor: float = 1.0            # hinge anchor to M0 away from contradicting strokes (0: off)
    anchor_margin: float = 2.0     # its margin (logit)

    def to_dict(self) -> dict:
        return asdict(self)


def scribble_loss(logits: torch.Tensor, batch: dict, teacher_logits: Optional[torch.Tensor],
                  step: int, weights: Optional[ScribbleLossWeights] = None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """``pce * partial_ce + pseudo * ramp_up(step) * pseudo_label_loss + anchor * stroke_anchor_loss``
    (the anchor when the batch has ``initial`` and a ``stroke_anchor`` map).

    ``batch``: a :class:`~.targets.Batch` (or a dict) with ``scribbles`` and optional ``valid`` (``(B, 1, z, y, x)``). ``teacher_logits``:
    the :class:`EMATeacher`'s output on the same input (None: the student competes with itself,
    i.e. plain self-training). Returns ``(total, {"pce", "pseudo", "ramp", "teacher_share"})``.
    """
    w = weights or ScribbleLossWeights()
    if isinstance(batch, dict):
        scr, valid = batch["scribbles"], batch.get("valid")
        initial, keep = batch.get("initial"), batch.get("stroke_anchor")
    else:  # a typed Batch: the strokes travel in ``extra``
        scr, valid = batch.map("scribbles"), batch.valid
        initial, keep = batch.initial, batch.map("stroke_anchor")
    logits = logits.float()
    total = logits.sum() * 0.0
    terms: dict[str, float] = {}
    pce = partial_ce(logits, scr, valid, balance=w.balance > 0)
    total = total + w.pce * pce
    terms["pce"] = float(pce.detach())
    ramp = ramp_up(step, w.ramp_steps)
    terms["ramp"] = ramp
    if w.pseudo:
        sp = torch.sigmoid(logits.detach())
        tp = sp if teacher_logits is None else torch.sigmoid(teacher_logits.detach().float())
        labels, mask, chosen = competitive_pseudo_labels(sp, tp, scr, w.threshold, valid)
        pl = pseudo_label_loss(logits, labels, mask)
        total = total + w.pseudo * ramp * pl
        terms["pseudo"] = float(pl.detach())
        terms["teacher_share"] = float((chosen == TEACHER).float().mean())
    if w.anchor and initial is not None and keep is not None:
        an = stroke_anchor_loss(logits, initial, keep, valid, w.anchor_margin)
        total = total + w.anchor * an
        terms["anchor"] = float(an.detach())
    return total, terms
