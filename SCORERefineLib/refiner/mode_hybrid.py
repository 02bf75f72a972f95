"""HybridMode: a few dense cases and many weak ones, weak cases weighted by the instance indicator.

Written against today's :class:`~.modes.TrainingMode` and *not registered*: it moves to
``refiner/modes/hybrid.py`` once the modes package, the typed batch and the generic trainer land
(docs/modes-scribble-hybrid.md). Until then it works around today's interface:

* roles: :meth:`HybridMode.assign_roles` ``(cases)`` picks the dense cases (``dense_ids``, or
  the first ``dense_count`` cases with a reference, by id) before :meth:`usable` is asked;
* case identity per batch item: a constant label map ``case_tag`` (1-based case index; 0 where
  a patch was padded), read back as the patch maximum. The typed batch will carry case ids;
* the loss needs the model (for gradients): :meth:`attach` ``(model)`` and :meth:`after_step`
  ``(model)`` as in :class:`~.mode_scribble.ScribbleMode`.

Loss: ``dense_loss + mean_i w_i * weak_loss_i`` over the weak cases present in the batch, where
``dense_loss`` is the full-supervision DiceCE on the dense items, ``weak_loss_i`` the weak
sub-mode's loss (SCORE on ratings, or scribbles) on case ``i``'s items, and ``w_i`` the
:class:`~.hybrid_weights.HybridWeighter` weight (recomputed every ``every`` steps from
last-layer gradients; ``fixed=True`` is the ablation). Before ``start`` steps the weak cases
wait (dense warm-up).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, TrainingError
from .hybrid_weights import HybridWeighter, last_layer_grad
from .losses import full_loss
from .mode_scribble import ScribbleMode
from .modes import CaseTargets, FullMode, ModeConfig, ScoreMode, TrainingMode

WEAK_KINDS = ("score", "scribble")
#: empty per-region tables for dense cases, so batches mixing them with rated cases can be padded
_SCORE_TABLES = {"agreement": np.float32, "rated": bool, "error": np.int64, "score": np.float32}


class HybridMode(TrainingMode):
    """Few dense (reference) cases + many weak (ratings or scribbles) cases."""

    name = "hybrid"
    requires = "reference"

    def __init__(self, config: Optional[ModeConfig] = None, dense_ids: Optional[Sequence[str]] = None,
                 dense_count: Optional[int] = None, weak: str = "score", every: int = 20,
                 start: int = 0, fixed: bool = False, dense_share: float = 0.5,
                 weak_mode: Optional[TrainingMode] = None):
        super().__init__(config)
        if weak not in WEAK_KINDS:
            raise InputError(f"weak feedback must be one of {list(WEAK_KINDS)}, got {weak!r}")
        if dense_ids is None and dense_count is None:
            raise InputError("hybrid training needs its dense cases: give --dense CASE_IDS or "
                             "--dense-count K")
        if not 0.0 < float(dense_share) < 1.0:
            raise InputError(f"dense_share must lie in (0, 1), got {dense_share}")
        self.dense_ids = None if dense_ids is None else [str(c) for c in dense_ids]
        self.dense_count = dense_count
        self.weak = weak
        self.weak_mode = weak_mode or (ScoreMode(self.config) if weak == "score"
                                       else ScribbleMode(self.config))
        self.full_mode = FullMode(self.config)
        self.label_maps = tuple(sorted(set(self.full_mode.label_maps) | set(self.weak_mode.label_maps)
                                       | {"case_tag"}))
        self.every, self.start, self.fixed = int(every), int(start), bool(fixed)
        self.dense_share = float(dense_share)
        self.roles: dict[str, str] = {}
        self.tags: dict[str, int] = {}
        self.weighter: Optional[HybridWeighter] = None
        self.model: Optional[torch.nn.Module] = None
        self.step = 0

    # roles and hooks ------------------------------------------------------------------------
    def _weak_usable(self, case) -> bool:
        return case.has_feedback if self.weak == "score" else case.has_scribbles

    def assign_roles(self, cases: Iterable) -> dict[str, str]:
        """``{case_id: "dense" | "weak"}`` for the usable cases; dense ones have a reference."""
        cases = sorted(cases, key=lambda c: c.case_id)
        with_ref = [c.case_id for c in cases if c.has_reference]
        if self.dense_ids is not None:
            missing = [c for c in self.dense_ids if c not in with_ref]
            if missing:
                raise TrainingError(f"dense case(s) {missing} have no reference.nii.gz; a dense case "
                                    f"needs one. Cases with a reference: {with_ref[:20]}")
            dense = list(self.dense_ids)
        else:
            k = int(self.dense_count)
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
                                f"{'feedback.json' if self.weak == 'score' else 'scribbles.nii.gz'} "
                                f"besides the dense ones {dense}.")
        self.roles = roles
        self.tags = {cid: i + 1 for i, cid in enumerate(sorted(roles))}
        weak_ids = [c for c in sorted(roles) if roles[c] == "weak"]
        self.weighter = HybridWeighter(weak_ids, every=self.every, fixed=self.fixed, start=self.start)
        return dict(roles)

    def attach(self, model: torch.nn.Module) -> None:
        self.model = model
        if hasattr(self.weak_mode, "attach"):
            self.weak_mode.attach(model)
        self.step = 0

    def after_step(self, model: torch.nn.Module) -> None:
        if hasattr(self.weak_mode, "after_step"):
            self.weak_mode.after_step(model)
        self.step += 1

    # TrainingMode ---------------------------------------------------------------------------
    def usable(self, case) -> bool:
        if not self.roles:
            raise TrainingError("HybridMode.assign_roles(cases) must run before usable(case)")
        return case.case_id in self.roles

    def missing_message(self, dataset) -> str:
        return (f"hybrid training in {dataset} needs dense cases (reference.nii.gz) and weak cases "
                f"({'ratings' if self.weak == 'score' else 'scribbles'}); see --dense / --dense-count.")

    def prepare_case(self, case) -> CaseTargets:
        role = self.roles.get(case.case_id)
        if role is None:
            raise TrainingError(f"case {case.case_id} has no role in this hybrid run")
        if role == "dense":
            t = self.full_mode.prepare_case(case)
            if self.weak == "score":
                for k, dt in _SCORE_TABLES.items():
                    t.tables.setdefault(k, np.zeros(1, dt))
        else:
            t = self.weak_mode.prepare_case(case)
        t.maps["case_tag"] = np.full(t.initial.shape, self.tags[case.case_id], np.int16)
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
        share = self.dense_share / n_dense if role == "dense" else (1.0 - self.dense_share) / n_weak
        return idx, w / total * share

    def _tag_to_id(self) -> dict[int, str]:
        return {t: c for c, t in self.tags.items()}

    def item_cases(self, batch: dict) -> list[Optional[str]]:
        """The case id of each batch item (from the ``case_tag`` map)."""
        tags = batch["case_tag"].flatten(1).max(1).values.tolist()
        names = self._tag_to_id()
        return [names.get(int(t)) for t in tags]

    @staticmethod
    def _subset(batch: dict, idx: list[int]) -> dict:
        sel = torch.as_tensor(idx, dtype=torch.long)
        return {k: (v.index_select(0, sel.to(v.device)) if torch.is_tensor(v) and v.dim() > 0
                    and v.shape[0] == batch["image"].shape[0] else v) for k, v in batch.items()}

    def loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        cases = self.item_cases(batch)
        dense_items = [i for i, c in enumerate(cases) if self.roles.get(c) == "dense"]
        weak_by_case: dict[str, list[int]] = {}
        for i, c in enumerate(cases):
            if self.roles.get(c) == "weak":
                weak_by_case.setdefault(c, []).append(i)
        total = logits.float().sum() * 0.0
        terms: dict[str, float] = {}
        dense_loss = None
        if dense_items:
            sub = self._subset(batch, dense_items)
            dense_loss, _ = full_loss(logits[dense_items], sub["reference"], sub.get("valid"))
            total = total + dense_loss
            terms["dense"] = float(dense_loss.detach())
        weak_active = self.step >= self.start and weak_by_case
        if weak_active:
            weak_losses = {}
            for c, items in weak_by_case.items():
                weak_losses[c], _ = self.weak_mode.loss(logits[items], self._subset(batch, items))
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
