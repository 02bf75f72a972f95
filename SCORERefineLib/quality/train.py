"""Training the quality predictor: a plain loop, written to move onto the generic trainer.

``train_quality(samples, out, steps)`` draws shuffled mini-batches of :class:`~.data.QualitySample`
crops (random flips along each axis as augmentation), minimises
``CE(score) + CE(error type)`` (each sample weighted by its ``weight``), and saves a data-only
checkpoint with :func:`~SCORERefineLib.refiner.checkpoint.save_checkpoint` whose metadata says
``task: "quality"``. On the generic trainer, the network builder is :func:`build_quality_network`,
the batch source is the sample list and the loss is :func:`quality_loss`.
Fine-tuning on clinicians' ratings: pass ``init=`` a quality checkpoint and the rated samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, TrainingError
from ..progress import CancelToken, Progress
from ..refiner.checkpoint import build_and_load, load_checkpoint, save_checkpoint
from ..refiner.inputs import NORMALISATION
from .data import QualitySample
from .network import CHANNELS, ERROR_TYPES, QualityConfig, build_quality_network, quality_config

TASK = "quality"


def quality_loss(score_logits, error_logits, score_idx, error_idx, weight) -> torch.Tensor:
    """Weighted ``CE(score) + CE(error)``; targets are class indices (score - 1, error index)."""
    ce = (F.cross_entropy(score_logits, score_idx, reduction="none")
          + F.cross_entropy(error_logits, error_idx, reduction="none"))
    return (ce * weight).sum() / weight.sum().clamp_min(1e-8)


def _batch(samples: Sequence[QualitySample], idx: np.ndarray, rng: np.random.Generator, augment: bool):
    xs = []
    for i in idx:
        x = samples[i].x
        if augment:
            for axis in (1, 2, 3):
                if rng.random() < 0.5:
                    x = np.flip(x, axis=axis)
        xs.append(np.ascontiguousarray(x))
    x = torch.from_numpy(np.stack(xs))
    s = torch.tensor([samples[i].score - 1 for i in idx], dtype=torch.long)
    e = torch.tensor([ERROR_TYPES.index(samples[i].error) for i in idx], dtype=torch.long)
    w = torch.tensor([float(samples[i].weight) for i in idx], dtype=torch.float32)
    return x, s, e, w


def train_quality(samples: Sequence[QualitySample], out, steps: int = 200, batch_size: int = 16,
                  lr: float = 2e-3, seed: int = 0, config: Optional[QualityConfig] = None,
                  init: Optional[str] = None, progress: str = "none",
                  cancel: Optional[CancelToken] = None, device: str = "cpu",
                  augment: bool = True, extra_metadata: Optional[dict] = None,
                  num_threads: Optional[int] = None) -> Path:
    """Train (or fine-tune from ``init``, a quality checkpoint) and save to ``out``.

    Args:
        samples: crops with targets; all crops must have ``config.crop_size``.
        steps: optimiser steps (Adam, ``lr``, cosine decay to 10 %).
        config: the network (default ``quality_config("small")``, or ``init``'s).
        progress: ``bar`` | ``json`` | ``none`` (stage ``quality``, reports ``loss``).
        cancel: stops cleanly at the next step; the checkpoint is still written.
        num_threads: torch CPU threads (as the refiner trainer's ``num_threads``); 1 is much
            faster than the default on a busy 2-core machine for this small network.

    Returns: ``out`` as a Path.
    """
    if not samples:
        raise TrainingError("no quality samples to train on; make synthetic samples from reference "
                            "masks or rate some regions first.")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if init is not None:
        model, meta0 = load_quality_model(init)
        config = QualityConfig.from_dict(meta0["network"])
    else:
        config = config or quality_config("small")
        model = build_quality_network(config)
    shape = tuple(config.crop_size)
    bad = [s for s in samples if tuple(s.x.shape[1:]) != shape or s.x.shape[0] != len(CHANNELS)]
    if bad:
        raise TrainingError(f"{len(bad)} samples have crop shape {bad[0].x.shape}, the network "
                            f"expects {(len(CHANNELS),) + shape}; make them with the same config.")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=lr * 0.1)
    n = len(samples)
    perm, pos, done, last = rng.permutation(n), 0, 0, float("nan")
    bar = Progress("quality", steps, mode=progress)
    try:
        for step in range(steps):
            if cancel is not None and cancel.cancelled:
                break
            if pos + batch_size > n:
                perm, pos = rng.permutation(n), 0
            idx = perm[pos:pos + min(batch_size, n)]
            pos += len(idx)
            x, s, e, w = (t.to(device) for t in _batch(samples, idx, rng, augment))
            sl, el = model(x)
            loss = quality_loss(sl, el, s, e, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last, done = float(loss.detach()), step + 1
            bar.update(done, loss=last)
    finally:
        bar.close()
    model.eval()
    scores = np.bincount([s.score for s in samples], minlength=6)[1:].tolist()
    meta = {"task": TASK, "channels": list(CHANNELS), "normalisation": {"ct": NORMALISATION["ct"]},
            "network": config.to_dict(), "n_samples": n, "score_counts": scores,
            "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                         "init": None if init is None else str(init), "augment": augment},
            "total_steps": steps, "final_loss": last}
    meta.update(extra_metadata or {})
    return save_checkpoint(out, model, meta, step=done)


def load_quality_model(path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a quality checkpoint (``weights_only=True``); a refiner checkpoint (no ``task`` or
    another task) is refused with :class:`CheckpointError`."""
    payload = load_checkpoint(path, map_location="cpu")
    meta = payload["metadata"]
    task = meta.get("task", "refiner")
    if task != TASK:
        raise CheckpointError(f"{path} is a {task} checkpoint, not a quality-predictor one; train "
                              f"one with `scorerefine quality train`.")
    if list(meta["channels"]) != list(CHANNELS):
        raise CheckpointError(f"quality checkpoint {path} has input channels {meta['channels']}, "
                              f"this SCORERefine builds {list(CHANNELS)}. Retrain.")
    model = build_and_load(payload, build_quality_network, f"quality checkpoint {path}")
    model.to(device).eval()
    return model, meta
