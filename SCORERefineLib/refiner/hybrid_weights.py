"""The dynamic instance indicator for hybrid training (a few dense cases, many weak ones).

Hybrid training mixes a few cases with a dense reference and many with weak feedback (ratings or
scribbles). Weak feedback can mislead (a wrong rating, a misplaced stroke, a case the weak loss
describes badly); such a case's loss then pulls the network away from what the dense cases
teach. Each weak case ``i`` gets a weight from how well its gradient agrees with the dense
cases' gradient, measured on the network's last layers only (cheap, and where the supervision
signal enters; :func:`head_parameters`: the 1x1x1 head and the U-Net's output convolution):

``s_i = max(0, <g_dense, g_i>)``, ``w_i = s_i / mean_j s_j`` (weights average 1 over weak cases).

``g_dense``: gradient of the dense loss (all dense cases) w.r.t. those weights;
``g_i``: gradient of case ``i``'s weak loss. The weights are recomputed every ``every`` steps
(:class:`HybridWeighter`), optionally smoothed over updates, and logged with the step so the
benchmark can plot them over training. ``fixed=True`` keeps every weight at 1 (the ablation).

Relation to the method this follows (the dynamic instance indicator of "Label-Efficient
Hybrid-Supervised Learning for Medical Image Segmentation", code: DesertsP/Hybrid-Supervised-
Segmentation, ``models/instance_indicator_learner_acc.py``, ``utils/indicator_optm.py``): there
the weights are learnable per-sample parameters updated by an Adam step whose gradient is the
negative influence ``-<g_unbiased, g_i>`` (identity Hessian, classifier weights only) and clamped
to ``[0, 2]``. Here the weight is the clipped, normalised dot product itself (a closed form
recomputed every N steps, with optional smoothing standing in for the optimiser's memory), per
case rather than per image, and over the last two convolutions' weights rather than the
classifier's alone (the refiner's head has only 4-16 weights). ``normalise="none"`` gives
the raw clipped dot products, ``cosine=True`` divides by the norms (a scale-free agreement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d, nn.Linear)


def head_parameters(model: nn.Module, depth: int = 2, bias: bool = False) -> list[torch.nn.Parameter]:
    """The parameters the indicator compares gradients on: the weights of the last ``depth``
    convolutions.

    For the refiner (:class:`~.network.RefinerNet`) that is ``model.head`` (the zero-initialised
    1x1x1 convolution, only ``head_features`` weights: 4 to 16, too few to compare directions
    reliably) and, for ``depth >= 2``, the U-Net body's output convolution (the last one in
    registration order, which MONAI's UNet also runs last). Other models: the last ``depth``
    convolution/linear layers in registration order. DDP is unwrapped. ``bias=True`` adds their
    biases (the paper uses weights only; a bias gradient is the sum of dL/dlogit, the net push
    up or down, which says more about a case's error direction than about its correctness).
    """
    m = model.module if hasattr(model, "module") else model
    convs = [mod for mod in m.modules() if isinstance(mod, _CONVS)]
    head = getattr(m, "head", None)
    body = getattr(m, "body", None)
    if isinstance(head, _CONVS) and isinstance(body, nn.Module):
        layers = [mod for mod in body.modules() if isinstance(mod, _CONVS)][-(max(int(depth), 1) - 1):] \
            if int(depth) > 1 else []
        layers = layers + [head]
    else:
        layers = convs[-max(int(depth), 1):]
    if not layers:
        raise ValueError("the model has no convolution or linear layer to take gradients on")
    out = []
    for layer in layers:
        out.append(layer.weight)
        if bias and getattr(layer, "bias", None) is not None:
            out.append(layer.bias)
    return [p for p in out if p.requires_grad]


def last_layer_grad(model: nn.Module, loss: torch.Tensor,
                    params: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. :func:`head_parameters` (default) or ``params``, as one flat,
    detached float tensor.

    Uses :func:`torch.autograd.grad` (``retain_graph=True``): the parameters' ``.grad`` are left
    alone and the graph can still be back-propagated for the optimiser step. The head of the
    refiner starts at zero, so the body's gradient is zero at step 0, but the head's is not
    (features times dL/dlogit).
    """
    ps = list(params) if params is not None else head_parameters(model)
    grads = torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).detach().float().reshape(-1)
                      for p, g in zip(ps, grads)])


def instance_weights(dense_grad: torch.Tensor, weak_grads: Mapping[str, torch.Tensor],
                     normalise: str = "mean", cosine: bool = False) -> dict[str, float]:
    """Weight of each weak case from its gradient's agreement with the dense gradient.

    ``s_i = max(0, <dense_grad, weak_grads[i]>)`` (``cosine=True``: divided by both norms).
    ``normalise="mean"``: ``w_i = s_i / mean(s)`` so the weights average 1 (all zero when no
    weak case agrees: none of them then helps); ``"none"``: ``w_i = s_i``.
    """
    if normalise not in ("mean", "none"):
        raise ValueError(f"normalise must be 'mean' or 'none', got {normalise!r}")
    d = dense_grad.detach().float().reshape(-1)
    scores = {}
    for cid, g in weak_grads.items():
        g = g.detach().float().reshape(-1).to(d.device)
        if g.shape != d.shape:
            raise ValueError(f"gradient of weak case {cid} has {g.numel()} values, the dense "
                             f"gradient {d.numel()}: they must be of the same layer")
        s = float(torch.dot(d, g))
        if cosine:
            s = s / max(float(d.norm() * g.norm()), 1e-12)
        scores[cid] = max(0.0, s)
    if normalise == "none" or not scores:
        return scores
    mean = sum(scores.values()) / len(scores)
    if mean <= 0:
        return {cid: 0.0 for cid in scores}
    return {cid: s / mean for cid, s in scores.items()}


@dataclass
class HybridWeighter:
    """Per-weak-case weights, recomputed every ``every`` steps, with a history for plots.

    ``weights[case_id]`` starts at 1. :meth:`due` says when to recompute; :meth:`update` takes
    the dense gradient and the weak cases' gradients (:func:`last_layer_grad`) and stores
    ``smoothing * old + (1 - smoothing) * new`` (cases not in this update keep their weight).
    ``fixed=True``: the ablation, every weight stays 1 (updates are still logged, with the
    weights the dynamic rule would have given, as ``would_be``).
    ``history``: ``[{"step", "weights", "scores", "would_be"?}, ...]``, JSON-ready.
    """

    case_ids: Sequence[str]
    every: int = 20
    fixed: bool = False
    smoothing: float = 0.0
    normalise: str = "mean"
    cosine: bool = False
    start: int = 0
    weights: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.every) < 1:
            raise ValueError(f"the weights are recomputed every N >= 1 steps, got {self.every}")
        if not 0.0 <= float(self.smoothing) < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {self.smoothing}")
        self.case_ids = [str(c) for c in self.case_ids]
        for c in self.case_ids:
            self.weights.setdefault(c, 1.0)

    def due(self, step: int) -> bool:
        """Whether the weights should be recomputed at ``step``: from ``start`` on, when no update
        happened yet or ``every`` steps have passed since the last one (so a step that could not
        update, e.g. a batch without a dense patch, only delays the update)."""
        if int(step) < int(self.start):
            return False
        return not self.history or int(step) - int(self.history[-1]["step"]) >= int(self.every)

    def weight(self, case_id: str) -> float:
        return float(self.weights.get(str(case_id), 1.0))

    def update(self, step: int, dense_grad: torch.Tensor,
               weak_grads: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Recompute from gradients; returns the weights now in force."""
        fresh = instance_weights(dense_grad, weak_grads, self.normalise, self.cosine)
        raw = instance_weights(dense_grad, weak_grads, "none", self.cosine)
        entry = {"step": int(step), "scores": dict(raw)}
        if self.fixed:
            entry["would_be"] = dict(fresh)
        else:
            a = float(self.smoothing)
            for cid, w in fresh.items():
                self.weights[cid] = a * self.weight(cid) + (1.0 - a) * float(w)
        entry["weights"] = {c: self.weight(c) for c in self.case_ids}
        self.history.append(entry)
        return dict(entry["weights"])

    def series(self, case_id: str) -> tuple[list[int], list[float]]:
        """``(steps, weights)`` of one case over the updates (for the benchmark's plot)."""
        steps = [h["step"] for h in self.history]
        return steps, [float(h["weights"].get(str(case_id), 1.0)) for h in self.history]

    def to_dict(self) -> dict:
        """JSON-ready state (checkpoint metadata / benchmark rows)."""
        return {"case_ids": list(self.case_ids), "every": int(self.every), "fixed": bool(self.fixed),
                "smoothing": float(self.smoothing), "normalise": self.normalise,
                "cosine": bool(self.cosine), "start": int(self.start),
                "weights": dict(self.weights), "history": list(self.history)}

    @classmethod
    def from_dict(cls, d: dict) -> "HybridWeighter":
        return cls(**{k: d[k] for k in ("case_ids", "every", "fixed", "smoothing", "normalise",
                                         "cosine", "start", "weights", "history") if k in d})


def weighted_sum(losses: Mapping[str, torch.Tensor], weighter: HybridWeighter) -> torch.Tensor:
    """``sum_i w_i * loss_i / n`` over weak cases (their weighted mean: weights average 1)."""
    items: Iterable = list(losses.items())
    if not items:
        raise ValueError("no weak loss to weigh")
    total = None
    for cid, loss in items:
        t = weighter.weight(cid) * loss
        total = t if total is None else total + t
    return total / len(items)
