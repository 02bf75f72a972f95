"""Training loop: prepared cases in memory, patch batches, Adam, checkpoints, cancel/resume, DDP.

``train(dataset, out, config, progress="bar", cancel=None) -> Path`` trains the refiner with a
:class:`~.modes.TrainingMode` and writes a checkpoint (:mod:`.checkpoint`) to ``out``:

* periodically every ``checkpoint_every`` steps and at the end (atomic writes; a checkpoint is
  never written with non-finite weights, so a NaN loss leaves the last good one in place);
* on cancel (:class:`~SCORERefineLib.progress.CancelToken`: SIGINT/SIGTERM in the CLI) the current
  weights and optimizer state are saved, then :class:`~SCORERefineLib.errors.Cancelled` is raised;
* ``resume=True`` continues from ``out``'s step with its optimizer state.

Learning rate: Adam, cosine decay from ``lr`` to ``lr/10`` over ``steps`` (a pure function of the
step, so resume needs no scheduler state). Mixed precision (autocast + GradScaler) on CUDA.
Seeded with ``monai.utils.set_determinism``; each distributed rank draws different patches.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..case import list_cases
from ..errors import Cancelled, CheckpointError, InputError, TrainingError
from ..progress import CancelToken, Progress
from . import distributed as ddp
from .checkpoint import load_checkpoint, save_checkpoint
from .inputs import CHANNELS, NORMALISATION
from .losses import ScoreLossWeights
from .modes import CaseTargets, ModeConfig, get_mode
from .network import build_network, network_config
from .sampling import PatchSampler


@dataclass
class TrainConfig:
    """Every training setting (stored in the checkpoint's metadata["training"])."""

    mode: str = "score"
    steps: int = 900
    patch_size: tuple = (48, 48, 48)
    batch_size: int = 2
    lr: float = 4e-3
    network: str = "small"
    device: str = "auto"
    seed: int = 0
    channels: tuple = CHANNELS
    weights: ScoreLossWeights = field(default_factory=ScoreLossWeights)
    checkpoint_every: int = 50
    resume: bool = False
    amp: bool = True
    augment: bool = True
    residual_gain: float = 2.0
    boundary_fraction: float = 0.25
    num_threads: Optional[int] = None

    @classmethod
    def with_ablations(cls, no_edge: bool = False, no_direction: bool = False,
                       no_amount: bool = False, **kw) -> "TrainConfig":
        """The ablation switches: drop the edge channel / the direction / the amount term."""
        cfg = cls(**kw)
        if no_edge:
            cfg.channels = tuple(c for c in cfg.channels if c != "edge")
        if no_direction:   # no error type anywhere: direction terms off, pseudo-labels type-blind
            cfg.weights.direction = 0.0
            cfg.weights.direction_voxel = 0.0
            cfg.weights.use_error_type = 0.0
        if no_amount:      # no score: only the error type (direction) and the 5s (pin) remain
            cfg.weights.amount = 0.0
            cfg.weights.volume = 0.0
            cfg.weights.pseudo = 0.0
            if not cfg.weights.direction and not cfg.weights.direction_voxel:
                cfg.weights.direction = 1.0
                cfg.weights.direction_voxel = 0.25
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["channels"] = list(self.channels)
        d["weights"] = self.weights.to_dict()
        return d


def resolve_device(name: str, env: ddp.DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA GPU is available to torch; "
                             "use --device cpu (or auto).")
        if env.enabled:
            return torch.device("cuda", env.local_rank)
        return torch.device(name)
    if name != "cpu":
        raise InputError(f"unknown device '{name}'; use auto, cpu or cuda.")
    return torch.device("cpu")


def lr_at(step: int, total: int, lr: float) -> float:
    """Cosine decay from ``lr`` to ``lr / 10``."""
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def prepare_cases(dataset, mode) -> list[CaseTargets]:
    """Load and prepare every usable case (kept in memory for the whole run)."""
    cases = list_cases(dataset)
    usable = [c for c in cases if mode.usable(c)]
    targets = [mode.prepare_case(c) for c in usable]
    if mode.requires == "feedback":
        targets = [t for t in targets if t.info.get("n_rated_regions", 0) > 0]
    if not targets:
        raise TrainingError(mode.missing_message(dataset))
    return targets


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Trainer:
    """One training run; :meth:`run` returns the checkpoint path. ``model`` is the bare network."""

    def __init__(self, dataset, out, config: TrainConfig, progress: str = "bar",
                 cancel: Optional[CancelToken] = None):
        self.dataset, self.out, self.config = Path(dataset), Path(out), config
        self.progress_mode, self.cancel = progress, cancel or CancelToken()
        self.env = ddp.detect()
        self.device = resolve_device(config.device, self.env)
        self.model: Optional[torch.nn.Module] = None
        self.last_saved_step: Optional[int] = None

    # ------------------------------------------------------------------ set-up
    def _check_config(self, net_cfg) -> None:
        c = self.config
        if c.steps < 1:
            raise InputError(f"--steps must be at least 1, got {c.steps}.")
        if c.batch_size < 1:
            raise InputError(f"--batch must be at least 1, got {c.batch_size}.")
        if len(c.patch_size) != 3 or any(int(p) < 8 for p in c.patch_size):
            raise InputError(f"--patch needs three sides (z y x) of at least 8 voxels, got {list(c.patch_size)}.")
        d = net_cfg.divisor()
        bad = [p for p in c.patch_size if int(p) % d]
        if bad:
            fixed = [int(math.ceil(int(p) / d) * d) for p in c.patch_size]
            raise InputError(f"--patch sides must be multiples of {d} for the '{c.network}' network; "
                             f"got {list(c.patch_size)}, try --patch {' '.join(map(str, fixed))}.")
        if not (c.lr > 0 and math.isfinite(c.lr)):
            raise InputError(f"--lr must be a positive number, got {c.lr}.")

    def _metadata(self, net_cfg, targets, total) -> dict:
        return {
            "channels": list(self.config.channels),
            "normalisation": NORMALISATION,
            "patch_size": [int(p) for p in self.config.patch_size],
            "network": net_cfg.to_dict(),
            "mode": self.config.mode,
            "n_rated_regions": int(sum(t.info.get("n_rated_regions", 0) for t in targets)),
            "n_cases": len(targets),
            "cases": [t.case_id for t in targets],
            "training": self.config.to_dict(),
            "total_steps": int(total),
            "world_size": self.env.world_size,
            "dataset": str(self.dataset),
        }

    def _save(self, model, meta, opt, scaler, step, complete=False) -> None:
        if not self.env.is_main:
            return
        meta = dict(meta, complete=bool(complete))
        extra = {"scaler": scaler.state_dict()} if scaler is not None else {}
        try:
            save_checkpoint(self.out, model, meta, optimizer=opt, step=step, extra=extra)
        except CheckpointError as exc:
            raise TrainingError(self._nan_message(step, str(exc))) from exc
        self.last_saved_step = step

    def _nan_message(self, step, what="the loss became NaN/infinite") -> str:
        kept = (f"the last good checkpoint (step {self.last_saved_step}) is kept in {self.out}"
                if self.last_saved_step is not None else "no checkpoint had been written yet")
        return (f"training stopped at step {step}: {what}; {kept}. Lower --lr (now "
                f"{self.config.lr:g}), check the input images, or resume from the last checkpoint "
                f"with --resume.")

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        c = self.config
        env, device = self.env, self.device
        if c.num_threads:
            torch.set_num_threads(int(c.num_threads))
        ddp.init(env, device)
        try:
            return self._run(c, env, device)
        finally:
            ddp.cleanup(env)

    def _run(self, c: TrainConfig, env, device) -> Path:
        from monai.utils import set_determinism

        net_cfg = network_config(c.network, in_channels=c.channels, residual_gain=c.residual_gain)
        self._check_config(net_cfg)
        mode = get_mode(c.mode, ModeConfig(channels=tuple(c.channels), weights=c.weights,
                                           boundary_fraction=c.boundary_fraction))
        targets = prepare_cases(self.dataset, mode)
        total = int(c.steps)

        set_determinism(seed=int(c.seed))
        model = build_network(net_cfg).to(device)
        self.model = model
        opt = torch.optim.Adam(model.parameters(), lr=c.lr)
        use_amp = bool(c.amp) and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None

        start = 0
        if c.resume:
            start = self._resume(model, opt, scaler, net_cfg, device)
            if start >= total:
                if env.is_main and self.progress_mode == "json":
                    Progress("train", total, mode="json").close(status="already complete", step=start)
                return self.out
        meta = self._metadata(net_cfg, targets, total)

        train_model = ddp.wrap(model, env, device)
        sampler = PatchSampler(targets, mode, c.patch_size,
                               seed=int(c.seed) * 1_000_003 + env.rank * 7919 + start, augment=c.augment)
        every = max(int(c.checkpoint_every), 0)
        bar = Progress("train", total, mode=self.progress_mode if env.is_main else "none")
        if start:
            bar.step = start
            bar._t0 = time.monotonic()
        ema = None
        step = start
        try:
            for step in range(start, total):
                cancelled, = ddp.any_flag([self.cancel.cancelled], env, device)
                if cancelled:
                    self._save(model, meta, opt, scaler, step)
                    raise Cancelled(f"{self.cancel.reason or 'cancelled'} at step {step} of {total}; "
                                    f"checkpoint saved to {self.out}, continue with --resume")
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, c.lr)
                batch = _to_device(sampler.sample(c.batch_size), device)
                model.train()
                try:
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                        logits = train_model(batch["image"])
                    loss, terms = mode.loss(logits.float(), batch)
                    bad, = ddp.any_flag([not bool(torch.isfinite(loss))], env, device)
                    if bad:
                        raise TrainingError(self._nan_message(step))
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                except torch.OutOfMemoryError as exc:
                    raise TrainingError(
                        f"out of memory on {device} at step {step} with --patch "
                        f"{' '.join(map(str, c.patch_size))} --batch {c.batch_size} --network "
                        f"{c.network}: use a smaller --patch (e.g. 32 32 32), --batch 1, a smaller "
                        f"--network, or --device cpu.") from exc
                lv = float(loss.detach())
                ema = lv if ema is None else 0.9 * ema + 0.1 * lv
                done = step + 1
                if every and done % every == 0 and done < total:
                    self._save(model, meta, opt, scaler, done)
                bar.update(done, loss=round(lv, 5), loss_avg=round(ema, 5),
                           **{k: round(v, 5) for k, v in terms.items()})
            self._save(model, meta, opt, scaler, total, complete=True)
            ddp.barrier(env)
        finally:
            bar.close()
        return self.out

    def _resume(self, model, opt, scaler, net_cfg, device) -> int:
        if not self.out.exists():
            raise TrainingError(f"--resume: no checkpoint at {self.out} to continue from; train "
                                f"without --resume first.")
        payload = load_checkpoint(self.out, map_location="cpu", expect_channels=list(self.config.channels))
        meta = payload["metadata"]
        if meta.get("mode") != self.config.mode:
            raise TrainingError(f"--resume: {self.out} was trained with --mode {meta.get('mode')}, "
                                f"not {self.config.mode}; use the same mode or another --out.")
        if meta.get("network") != net_cfg.to_dict():
            raise TrainingError(f"--resume: {self.out} holds a '{meta['network'].get('preset')}' network "
                                f"that differs from --network {self.config.network}; use the same "
                                f"network settings or another --out.")
        model.load_state_dict(payload["state_dict"])
        if payload.get("optimizer"):
            opt.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("extra", {}).get("scaler"):
            scaler.load_state_dict(payload["extra"]["scaler"])
        step = int(meta.get("step", 0))
        self.last_saved_step = step
        return step


def train(dataset, out, config: TrainConfig, progress: str = "bar",
          cancel: Optional[CancelToken] = None) -> Path:
    """Train a refiner on ``dataset`` and write the checkpoint to ``out`` (see module docstring)."""
    return Trainer(dataset, out, config, progress=progress, cancel=cancel).run()
