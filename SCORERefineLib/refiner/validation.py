"""Held-out validation and early stopping for the trainer.

A share of the training cases (``val_fraction``, chosen by seed, at least one when enabled) is
held out: the network never trains on it. Every ``every`` steps the mode's own loss is measured
on a fixed set of un-augmented patches of those cases, without gradient: for SCORE this is how
consistent the refiner is with ratings it has not learned from (the pseudo-labels, direction,
anchor and pin terms on held-out regions); for full supervision, DiceCE to held-out references.
The best weights are kept; training stops when the validation loss has not improved by
``min_delta`` for ``patience`` evaluations (never before ``min_steps``), and the best weights are
what the checkpoint holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .sampling import PatchSampler

__all__ = ["split_validation", "EarlyStopping"]

#: fewer selected cases than this: no validation split. Holding cases out costs training data:
#: on the real-CT cohort (9 rated training structures) holding out 2 cut SCORE's held-out gain
#: from +0.013 to +0.005 mean Dice (docs/benchmark-real.md runs of 2026-12-01), so small cohorts
#: train on every case and keep the last weights
MIN_CASES_FOR_VALIDATION = 20


def split_validation(targets: list, fraction: float, seed: int = 0,
                     min_cases: int = MIN_CASES_FOR_VALIDATION) -> tuple[list, list]:
    """``(train, val)``: ``round(fraction * n)`` cases (at least 1) held out, by seed.

    Args:
        targets: prepared cases (anything with ``case_id``).
        fraction: share held out; 0 (or fewer than ``min_cases`` cases) holds out none.
        seed: which cases (a permutation of the sorted case ids).
        min_cases: the fewest cases a split is made from.

    Returns:
        The training cases and the held-out ones (both in the input order).
    """
    n = len(targets)
    if fraction <= 0 or n < max(int(min_cases), 2):
        return list(targets), []
    k = min(max(int(round(fraction * n)), 1), n - 1)
    ids = sorted(t.case_id for t in targets)
    held = set(np.random.default_rng(int(seed) + 17).permutation(ids)[:k].tolist())
    return [t for t in targets if t.case_id not in held], [t for t in targets if t.case_id in held]


@dataclass
class EarlyStopping:
    """Validation on fixed held-out patches, best weights, and the stop decision.

    ``every``: steps between evaluations; ``patience``: evaluations without improvement before
    stopping; ``min_steps``: no stop before this step; ``min_delta``: the smallest improvement
    that counts. ``history`` holds ``[step, loss]`` pairs.
    """

    every: int = 100
    patience: int = 5
    min_steps: int = 0
    min_delta: float = 1e-4
    history: list = field(default_factory=list)
    best: float = float("inf")
    best_step: int | None = None
    best_state: dict | None = None
    stale: int = 0
    stopped_at: int | None = None
    n_batches: int = 0
    case_ids: list = field(default_factory=list)
    _draw: Callable[[], Iterator] | None = None

    def prepare(self, val_targets: list, mode, patch_size, batch_size: int, n_batches: int = 32,
                seed: int = 0) -> bool:
        """Set up the fixed validation batches; False (validation off) when none can be drawn.

        The batches are not held in memory (32 batches of 2 patches of 96^3 would take about 2 GB):
        each evaluation draws them again from a sampler re-seeded with the same seed, without
        augmentation, so every evaluation sees exactly the same patches, one batch at a time."""
        if not val_targets or int(n_batches) < 1:
            return False
        rng_seed, n, bs = int(seed) + 99, int(n_batches), int(batch_size)
        try:
            sampler = PatchSampler(val_targets, mode, patch_size, seed=rng_seed, augment=False)
        except ValueError:   # no patch centre in the held-out cases (e.g. nothing rated)
            return False

        def draw() -> Iterator:
            sampler.rng = np.random.default_rng(rng_seed)   # the same patches every time
            for _ in range(n):
                yield sampler.sample(bs)

        self._draw, self.n_batches = draw, n
        self.case_ids = [t.case_id for t in val_targets]
        return True

    def batches(self) -> Iterator:
        """The fixed validation batches, drawn one at a time (none before :meth:`prepare`)."""
        return iter(()) if self._draw is None else self._draw()

    @property
    def enabled(self) -> bool:
        return self._draw is not None

    def due(self, step: int, total: int) -> bool:
        """Evaluate after ``step`` steps (every ``every`` steps and at the end)?"""
        return self.enabled and (step % max(int(self.every), 1) == 0 or step == total)

    def loss(self, model, mode, device, memory_format) -> float:
        """Mean mode loss over the validation batches (no gradient, eval mode)."""
        was_training = model.training
        model.eval()
        vals = []
        with torch.no_grad():
            for b in self.batches():
                b = b.to(device)
                logits = model(b.image.contiguous(memory_format=memory_format))
                vals.append(float(mode.loss(logits.float(), b)[0]))
        model.train(was_training)
        return float(np.mean(vals))

    def update(self, step: int, value: float, model) -> bool:
        """Record ``value`` at ``step``; keep the weights when best. True: stop now."""
        self.history.append([int(step), round(float(value), 6)])
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.stale = float(value), int(step), 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.stale += 1
        if self.stale >= int(self.patience) and step >= int(self.min_steps):
            self.stopped_at = int(step)
            return True
        return False

    def restore_best(self, model) -> bool:
        """Load the best weights into ``model`` (True when they differ from the last ones)."""
        if self.best_state is None or self.best_step == (self.history[-1][0] if self.history else None):
            return False
        model.load_state_dict(self.best_state)
        return True

    def report(self) -> dict:
        """JSON-ready summary for the checkpoint's metadata."""
        return {"cases": list(self.case_ids), "every": int(self.every), "batches": int(self.n_batches),
                "patience": int(self.patience), "history": list(self.history),
                "best_step": self.best_step, "best_loss": (None if self.best_step is None
                                                           else round(self.best, 6)),
                "stopped_early": self.stopped_at is not None, "stopped_at": self.stopped_at}
