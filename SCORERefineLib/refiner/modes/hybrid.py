"""Hybrid: a few dense cases and many weak ones, weak cases weighted by the instance indicator.

Cases split into **dense** (``reference.nii.gz``; ``dense_ids``, or the first ``dense_count``
cases with a reference, by id) and **weak** (every other case with the weak feedback: ratings,
``weak="score"``, or strokes, ``weak="scribble"``). A case never serves as both. The split is made
by :meth:`HybridMode.select` (the trainer's case-selection hook) and recorded in the checkpoint.

Loss: ``dense_loss + mean_i w_i * weak_loss_i`` over the weak cases present in the batch (the
typed :class:`~..targets.Batch` carries each item's case id), where ``dense_loss`` is the full
supervision DiceCE on the dense items, ``weak_loss_i`` the weak sub-mode's loss on case ``i``'s
items and ``w_i`` the :class:`~..hybrid_weights.HybridWeighter` weight (recomputed every
``indicator_every`` steps from last-layer gradients; ``indicator="fixed"`` is the ablation).
Before ``indicator_start`` steps the weak cases wait (dense warm-up). The weighter's state
(weights + history) goes into the checkpoint metadata (``metadata["mode_state"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError, TrainingError
from ..hybrid_weights import HybridWeighter, last_layer_grad
from ..losses import full_loss
from ..targets import Batch
from .base import CaseTargets, ModeConfig, TrainingMode
from .full import FullMode
from .score import ScoreMode
from .scribble import ScribbleMode

WEAK_KINDS = ("score", "scribble")
INDICATORS = ("dynamic", "fixed")


@dataclass
class HybridConfig(ModeConfig):
    """HybridMode settings: the dense cases (``dense_ids`` or ``dense_count``), the weak feedback
    kind, the instance indicator (``dynamic`` | ``fixed``, every N steps from ``indicator_start``,
    ``smoothing`` between updates) and the dense share of patches."""

    dense_ids: list | None = None
    dense_count: int | None = None
    weak: str = "score"
    indicator: str = "dynamic"
    indicator_every: int = 20
    indicator_start: int = 0
    smoothing: float = 0.0
    dense_share: float = 0.5

    def __post_init__(self):
        if self.weak not in WEAK_KINDS:
            raise InputError(f"--weak must be one of {list(WEAK_KINDS)}, got {self.weak!r}.")
        if self.indicator not in INDICATORS:
            raise InputError(f"--indicator must be one of {list(INDICATORS)}, got {self.indicator!r}.")
        if int(self.indicator_every) < 1:
            raise InputError(f"--indicator-every must be at least 1, got {self.indicator_every}.")
        if not 0.0 < float(self.dense_share) < 1.0:
            raise InputError(f"dense_share must lie in (0, 1), got {self.dense_share}.")
        if self.dense_ids is not None:
            self.dense_ids = [str(c) for c in self.dense_ids]


class HybridMode(TrainingMode):
    """Few dense (reference) cases + many weak (ratings or scribbles) cases."""

    name = "hybrid"
    requires = ("reference",)
    #: no held-out validation: the dense/weak roles and the instance indicator need every case
    supports_validation = False
    label_maps = tuple(sorted(set(FullMode.label_maps) | set(ScoreMode.label_maps)
                              | set(ScribbleMode.label_maps)))
    Config = HybridConfig

    def __init__(self, config: HybridConfig | None = None):
        super().__init__(config)
        cfg = self.config
        base = ModeConfig(channels=cfg.channels, no_edge=cfg.no_edge)
        sub = ScoreMode.Config if cfg.weak == "score" else ScribbleMode.Config
        self.weak_mode: TrainingMode = (ScoreMode if cfg.weak == "score" else ScribbleMode)(
            sub(channels=base.channels, no_edge=base.no_edge))
        self.full_mode = FullMode(base)
        self.roles: dict[str, str] = {}
        self.weighter: HybridWeighter | None = None
        self.model = None
        self.step = 0

    # roles and hooks ------------------------------------------------------------------------
    def _weak_usable(self, case) -> bool:
        return case.has_feedback if self.config.weak == "score" else case.has_scribbles

    def assign_roles(self, cases) -> dict[str, str]:
        """``{case_id: "dense" | "weak"}`` for the usable cases; dense ones have a reference."""
        cfg = self.config
        if cfg.dense_ids is None and cfg.dense_count is None:
            raise InputError("hybrid training needs its dense cases: give --dense CASE_IDS or "
                             "--dense-count K.")
        cases = sorted(cases, key=lambda c: c.case_id)
        with_ref = [c.case_id for c in cases if c.has_reference]
        if cfg.dense_ids is not None:
            missing = [c for c in cfg.dense_ids if c not in with_ref]
            if missing:
                raise TrainingError(f"dense case(s) {missing} have no reference.nii.gz; a dense case "
                                    f"needs one. Cases with a reference: {with_ref[:20]}")
            dense = list(cfg.dense_ids)
        else:
            k = int(cfg.dense_count)
            if k < 1 or k > len(with_ref):
                raise TrainingError(f"--dense-count {k}: {len(with_ref)} case(s) have a reference; "
                                    f"choose 1..{len(with_ref)}.")
            dense = with_ref[:k]
        roles = {c: "dense" for c in dense}
        for c in cases:
            if c.case_id not in roles and self._weak_usable(c):
                roles[c.case_id] = "weak"
        if not any(r == "weak" for r in roles.values()):
            raise TrainingError(f"no weak case: hybrid training needs cases with "
                                f"{'feedback.json' if cfg.weak == 'score' else 'scribbles.nii.gz'} "
                                f"besides the dense ones {dense}.")
        self.roles = roles
        weak_ids = [c for c in sorted(roles) if roles[c] == "weak"]
        self.weighter = HybridWeighter(weak_ids, every=int(cfg.indicator_every),
                                       fixed=cfg.indicator == "fixed", start=int(cfg.indicator_start),
                                       smoothing=float(cfg.smoothing))
        return dict(roles)

    def select(self, cases: list) -> list:
        self.assign_roles(cases)
        return [c for c in cases if c.case_id in self.roles]

    def attach(self, model) -> None:
        self.model = model
        self.weak_mode.attach(model)
        self.step = 0

    def after_step(self, model, step: int | None = None) -> None:
        self.weak_mode.after_step(model, step)
        self.step = self.step + 1 if step is None else int(step)

    def state_dict(self) -> dict:
        return {"step": int(self.step), "weak": self.weak_mode.state_dict(),
                "weighter": self.weighter.to_dict() if self.weighter is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", self.step))
        self.weak_mode.load_state_dict(state.get("weak") or {})
        w = state.get("weighter")
        if w and self.weighter is not None:
            restored = HybridWeighter.from_dict(w)
            self.weighter.weights.update(restored.weights)
            self.weighter.history[:] = restored.history

    def checkpoint_metadata(self) -> dict:
        return {"roles": dict(self.roles),
                "weighter": self.weighter.to_dict() if self.weighter is not None else None}

    # TrainingMode ---------------------------------------------------------------------------
    def usable(self, case) -> bool:
        if not self.roles:
            raise TrainingError("HybridMode.assign_roles(cases) (or select) must run before usable(case)")
        return case.case_id in self.roles

    def missing_message(self, dataset) -> str:
        return (f"hybrid training in {dataset} needs dense cases (reference.nii.gz) and weak cases "
                f"({'ratings' if self.config.weak == 'score' else 'scribbles'}); see --dense / "
                f"--dense-count.")

    def keep(self, targets: CaseTargets) -> bool:
        return targets.info.get("role") == "dense" or self.weak_mode.keep(targets)

    def prepare_case(self, case) -> CaseTargets:
        role = self.roles.get(case.case_id)
        if role is None:
            raise TrainingError(f"case {case.case_id} has no role in this hybrid run")
        t = (self.full_mode if role == "dense" else self.weak_mode).prepare_case(case)
        t.info["role"] = role
        return t

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        """The sub-mode's candidates, scaled so dense cases get ``dense_share`` of all patches
        (each dense case an equal part) and weak cases the rest (each an equal part)."""
        role = targets.info.get("role")
        mode = self.full_mode if role == "dense" else self.weak_mode
        idx, w = mode.sampling_weights(targets)
        total = float(np.sum(w))
        if total <= 0:
            return idx, w
        n_dense = max(sum(1 for r in self.roles.values() if r == "dense"), 1)
        n_weak = max(sum(1 for r in self.roles.values() if r == "weak"), 1)
        share = (self.config.dense_share / n_dense if role == "dense"
                 else (1.0 - self.config.dense_share) / n_weak)
        return idx, w / total * share

    def loss(self, logits, batch: Batch):
        if batch.case_ids is None:
            raise TrainingError("hybrid training needs the case id of each batch item (Batch.case_ids)")
        cases = list(batch.case_ids)
        dense_items = [i for i, c in enumerate(cases) if self.roles.get(c) == "dense"]
        weak_by_case: dict[str, list[int]] = {}
        for i, c in enumerate(cases):
            if self.roles.get(c) == "weak":
                weak_by_case.setdefault(c, []).append(i)
        total = logits.float().sum() * 0.0
        terms: dict[str, float] = {}
        dense_loss = None
        if dense_items:
            sub = batch.select(dense_items)
            dense_loss, _ = full_loss(logits[dense_items], sub.reference, sub.valid)
            total = total + dense_loss
            terms["dense"] = float(dense_loss.detach())
        if self.step >= int(self.config.indicator_start) and weak_by_case:
            weak_losses = {}
            for c, items in weak_by_case.items():
                weak_losses[c], _ = self.weak_mode.loss(logits[items], batch.select(items))
            if (self.weighter is not None and dense_loss is not None and self.model is not None
                    and self.weighter.due(self.step)):
                g_dense = last_layer_grad(self.model, dense_loss)
                self.weighter.update(self.step, g_dense,
                                     {c: last_layer_grad(self.model, l) for c, l in weak_losses.items()})
            ws = {c: (self.weighter.weight(c) if self.weighter is not None else 1.0) for c in weak_losses}
            weak_total = sum(ws[c] * weak_losses[c] for c in weak_losses) / len(weak_losses)
            total = total + weak_total
            terms["weak"] = float(weak_total.detach())
            terms["weak_weight_mean"] = float(np.mean(list(ws.values())))
        return total, terms
