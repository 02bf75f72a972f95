"""Patch sampling and augmentation for training.

Patch centres are drawn from :meth:`TrainingMode.sampling_weights` (ScoreMode: a voxel of a rated
region, region weight ``(6 - s)^2`` so low scores are drawn more, plus a share anywhere on the
boundary band), jittered by up to a quarter patch, and cropped with zero padding where the patch
leaves the volume (``valid`` marks real voxels). Each rank of a distributed run draws from its
own random stream (``seed + rank``), so ranks see different patches.

Augmentation (MONAI dictionary transforms): random flips on each axis and in-plane (y, x) 90 degree
rotations, applied jointly to every image channel and target map (exact permutations: labels stay
labels); on the CT channel only, what real scanners vary (issue 8, "the augmentations real data
needs"): intensity scale and shift (another calibration or window), Gaussian noise (dose),
Gaussian blur (reconstruction kernel) and a simulated lower resolution (down- then up-sampling:
thicker slices, another pixel size). Spacing itself is handled by training at the cohort's
median spacing (trainer) and inferring at it (inference).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .modes import CaseTargets, TrainingMode
from .targets import Batch, RegionTables


def build_augmentation(spatial_keys: Sequence[str], ct_key: str | None, seed: int,
                       appearance: bool = True):
    """The MONAI augmentation pipeline (see the module docstring).

    Args:
        spatial_keys: keys moved jointly by flips and rotations (channels and maps).
        ct_key: the CT channel's key (intensity transforms), or None.
        seed: random state.
        appearance: add the scanner-variation transforms (shift, blur, lower resolution) to the
            CT channel; False keeps the earlier noise + scale only.

    Returns:
        A seeded ``monai.transforms.Compose``.
    """
    from monai.transforms import (Compose, RandFlipd, RandGaussianNoised, RandGaussianSmoothd,
                                  RandRotate90d, RandScaleIntensityd, RandShiftIntensityd,
                                  RandSimulateLowResolutiond)

    keys = list(spatial_keys)
    tr = [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
    tr.append(RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(1, 2)))
    if ct_key is not None:
        tr.append(RandGaussianNoised([ct_key], prob=0.3, mean=0.0, std=0.02))
        tr.append(RandScaleIntensityd([ct_key], factors=0.1, prob=0.3))
        if appearance:
            # the CT channel is HU windowed to [0, 1] over 2000 HU: 0.05 is 100 HU
            tr.append(RandShiftIntensityd([ct_key], offsets=0.05, prob=0.3))
            tr.append(RandGaussianSmoothd([ct_key], sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0),
                                          sigma_z=(0.25, 1.0), prob=0.2))
            tr.append(RandSimulateLowResolutiond([ct_key], prob=0.15, zoom_range=(0.5, 1.0)))
    comp = Compose(tr)
    comp.set_random_state(seed=int(seed) % (2 ** 32))
    return comp


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill=0) -> np.ndarray:
    """Crop ``array[..., z, y, x]`` at ``start`` (may be negative/out of range) with padding."""
    lead = array.shape[:-3]
    out = np.full(lead + tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-3:]):
        a, b = max(s, 0), min(s + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def valid_mask(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``crop(ones(shape)[None], start, size)`` without the whole-volume array: (1, *size) float32,
    1 where the patch lies inside the volume."""
    out = np.zeros((1,) + tuple(size), np.float32)
    dst = []
    for s, n, dim in zip(start, size, shape):
        a, b = max(s, 0), min(s + n, dim)
        if b <= a:
            return out
        dst.append(slice(a - s, b - s))
    out[(Ellipsis, *dst)] = 1.0
    return out


class PatchSampler:
    """Draws augmented training batches from prepared cases."""

    def __init__(self, targets: list[CaseTargets], mode: TrainingMode, patch_size: Sequence[int],
                 seed: int = 0, augment: bool = True):
        self.targets, self.mode = targets, mode
        self.patch = tuple(int(p) for p in patch_size)
        self.rng = np.random.default_rng(seed)
        self.cands, self.case_w = [], []
        for t in targets:
            idx, w = mode.sampling_weights(t)
            total = float(np.sum(w))
            self.cands.append((idx, w / total if total > 0 else w))
            self.case_w.append(total if len(idx) else 0.0)
        cw = np.asarray(self.case_w, float)
        if cw.sum() <= 0:
            raise ValueError("no patch centre candidates in any case")
        self.case_p = cw / cw.sum()
        self.channel_names = list(mode.channels)
        self.map_keys = sorted({k for t in targets for k in t.maps})
        self.label_keys = [k for k in self.map_keys if k in mode.label_maps]
        self.has_tables = any(t.tables is not None for t in targets)
        spatial = [f"ch_{c}" for c in self.channel_names] + ["initial", "valid"] + self.map_keys
        ct_key = "ch_ct" if "ct" in self.channel_names else None
        self.augment = build_augmentation(spatial, ct_key, seed) if augment else None

    def _one(self) -> dict:
        ci = int(self.rng.choice(len(self.targets), p=self.case_p))
        t = self.targets[ci]
        idx, w = self.cands[ci]
        flat = int(idx[self.rng.choice(len(idx), p=w)])
        centre = np.array(np.unravel_index(flat, t.initial.shape))
        jitter = np.array([self.rng.integers(-(p // 4), p // 4 + 1) for p in self.patch])
        start = centre + jitter - np.array(self.patch) // 2
        item = {}
        for i, name in enumerate(self.channel_names):
            item[f"ch_{name}"] = crop(t.image[i:i + 1], start, self.patch)
        # crop first, convert after: nothing per patch costs a whole-volume array
        item["initial"] = crop(t.initial[None], start, self.patch).astype(np.float32)
        item["valid"] = valid_mask(start, self.patch, t.initial.shape)
        for k in self.map_keys:
            arr = t.maps.get(k)
            item[k] = (np.zeros((1,) + self.patch, np.float32) if arr is None
                       else crop(arr[None], start, self.patch))
        if self.augment is not None:
            item = self.augment(item)
        out = {k: torch.as_tensor(np.ascontiguousarray(np.asarray(v))) for k, v in item.items()}
        out["_case"] = ci
        return out

    def sample(self, batch_size: int) -> Batch:
        """A batch of ``batch_size`` augmented patches.

        Args:
            batch_size: patches in the batch.

        Returns:
            A :class:`~.targets.Batch`: ``image`` (B,C,...) float32, ``initial``/``valid``
            (B,1,...), maps (B,1,...; label maps long except ``reference``), per-region tables
            padded to (B, K+1).
        """
        items = [self._one() for _ in range(int(batch_size))]
        image = torch.stack([torch.cat([it[f"ch_{c}"] for c in self.channel_names], 0)
                             for it in items]).float()
        fields: dict = {"initial": torch.stack([it["initial"] for it in items]).float(),
                        "valid": torch.stack([it["valid"] for it in items]).float()}
        extra: dict = {}
        for k in self.map_keys:
            v = torch.stack([it[k] for it in items])
            v = v.long() if k in self.label_keys and k != "reference" else v.float()
            (fields if k in Batch.MAP_FIELDS else extra)[k] = v
        if self.has_tables:
            tabs = [self.targets[it["_case"]].tables for it in items]
            like = next(t.tables for t in self.targets if t.tables is not None)
            for k in RegionTables.LOSS_FIELDS:
                fields[k] = _pad_tables([getattr(t, k) if t is not None else None for t in tabs],
                                        like=getattr(like, k))
        return Batch(image=image, extra=extra, **fields,
                     case_ids=[self.targets[it["_case"]].case_id for it in items])


def _pad_tables(tables: list, like: np.ndarray | None = None) -> torch.Tensor:
    """Stack per-item tables of different lengths into (B, max length), zero padded. A batch
    whose items all lack tables (hybrid: only dense patches) gets (B, 1) zeros of ``like``'s dtype."""
    known = [a for a in tables if a is not None]
    if not known:
        return torch.as_tensor(np.zeros((len(tables), 1), dtype=like.dtype if like is not None else np.float32))
    n = max(len(a) for a in known)
    pad = np.zeros((len(tables), n), dtype=known[0].dtype)
    for i, a in enumerate(tables):
        if a is not None:
            pad[i, :len(a)] = a
    return torch.as_tensor(pad)


class Prefetcher:
    """Draws the next ``depth`` batches of a :class:`PatchSampler` in a background thread while
    the network trains on the current one (the issue's "data loader with workers where it pays").

    One producer thread calls ``sampler.sample(batch_size)`` in order, so the sequence of batches
    is exactly the in-process one (same seed, same patches): prefetching changes the time, never
    the result. Cropping and MONAI's transforms spend most of their time in numpy, which releases
    the GIL, so they overlap with the network's step; a thread rather than worker processes keeps
    the cached case arrays shared and the order deterministic. ``depth=0`` draws in the caller's
    thread. Use as a context manager (the thread is stopped on exit, also after an error).
    """

    def __init__(self, sampler: "PatchSampler", batch_size: int, depth: int = 2):
        import queue
        import threading

        self.sampler, self.batch_size, self.depth = sampler, int(batch_size), int(depth)
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(self.depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if self.depth > 0:
            self._thread = threading.Thread(target=self._produce, name="scorerefine-prefetch",
                                            daemon=True)
            self._thread.start()

    def _produce(self) -> None:
        import queue

        while not self._stop.is_set():
            try:
                item = (self.sampler.sample(self.batch_size), None)
            except BaseException as exc:   # handed to the consumer, raised there
                item = (None, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return

    def next(self) -> Batch:
        """The next batch (raises what the sampler raised)."""
        if self._thread is None:
            return self.sampler.sample(self.batch_size)
        batch, exc = self._queue.get()
        if exc is not None:
            raise exc
        return batch

    def close(self) -> None:
        """Stop the producer thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
