"""Training loop: prepared cases in memory, patch batches, Adam, checkpoints, cancel/resume, DDP.

``train(dataset, out, config, progress="bar", cancel=None) -> Path`` trains the refiner with a
:class:`~.modes.TrainingMode` and writes a checkpoint (:mod:`.checkpoint`) to ``out``:

* periodically every ``checkpoint_every`` steps and at the end (atomic writes; a checkpoint is
  never written with non-finite weights, so a NaN loss leaves the last good one in place);
* on cancel (:class:`~SCORERefineLib.progress.CancelToken`: SIGINT/SIGTERM in the CLI) the current
  weights and optimizer state are saved, then :class:`~SCORERefineLib.errors.Cancelled` is raised;
* ``resume=True`` continues from ``out``'s step with its optimizer state.
* held-out validation (:mod:`.validation`): with ``val_fraction`` > 0 (None, the default: the
  mode's ``default_val_fraction``, 0 in every mode: no split unless asked for) and at least
  ``val_min_cases`` (20) usable cases, a share of
  the cases is never trained on; the mode's loss on ``val_batches`` fixed batches of patches of
  them is measured every ``val_every`` steps, the best weights are kept, and training stops early when it stops
  improving (``val_patience``). The checkpoint holds the best weights and
  ``metadata["validation"]`` (held-out cases, history, best and stop step). After ``--resume``
  the best weights so far are not known: selection starts again.

Learning rate: Adam, cosine decay from ``lr`` to ``lr/10`` over ``steps`` (a pure function of the
step, so resume needs no scheduler state). Mixed precision (autocast + GradScaler) and
``cudnn.benchmark`` on CUDA; the network and its input batches in ``channels_last_3d``
(``channels_last``, :func:`~.device.memory_format`: the network's forward + backward twice as
fast on 2 CPU threads; a whole step, with sampling and the loss, only slightly faster:
5.0 -> 5.4 steps/s in docs/performance.md); on
CPU torch uses as many threads as cores this process may run on
(``os.sched_getaffinity``) unless ``num_threads`` says otherwise. Seeded with
``monai.utils.set_determinism``; each distributed rank draws different patches.

Throughput is reported: each JSON progress line carries ``steps_per_s`` (since the run or resume
started), and the checkpoint's ``metadata["training"]`` gets ``seconds`` (wall time of the steps
of this run) and ``steps_per_second``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..case import list_cases
from ..errors import Cancelled, CheckpointError, InputError, TrainingError
from ..progress import CancelToken, Progress
from . import distributed as ddp
from .checkpoint import DEFAULT_TASK, load_checkpoint, save_checkpoint
from .device import memory_format, resolve_device
from .inputs import NORMALISATION
from .modes import MODES, CaseTargets, ModeConfig, TrainingMode, get_mode
from .network import build_network, network_config
from .sampling import PatchSampler, Prefetcher
from .validation import MIN_CASES_FOR_VALIDATION, EarlyStopping, split_validation


@dataclass(frozen=True)
class Task:
    """What is trained: ``network_config(train_config, channels)`` -> a network config with
    ``to_dict()`` and ``divisor()``; ``build(network_config)`` -> the ``torch.nn.Module``. The
    checkpoint's ``metadata["task"]`` names it (checkpoints without one are ``"refiner"``)."""

    name: str
    network_config: Callable
    build: Callable


def _refiner_network_config(config: "TrainConfig", channels: tuple):
    return network_config(config.network, in_channels=channels, residual_gain=config.residual_gain)


#: trainable tasks by name (a quality predictor would add its own network builder here)
TASKS: dict[str, Task] = {
    DEFAULT_TASK: Task(DEFAULT_TASK, _refiner_network_config, build_network),
}


@dataclass
class TrainConfig:
    """Every training setting (stored in the checkpoint's ``metadata["training"]``).

    ``mode_config``: the training mode's own settings (its ``Config``: input channels, loss
    weights, ablation switches); None means that mode's defaults.
    """

    mode: str = "score"
    task: str = DEFAULT_TASK
    mode_config: ModeConfig | None = None
    steps: int = 900
    patch_size: tuple = (48, 48, 48)
    batch_size: int = 2
    lr: float = 4e-3
    network: str = "small"
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 50
    resume: bool = False
    amp: bool = True
    augment: bool = True
    residual_gain: float = 2.0
    num_threads: int | None = None
    resample: bool = True   # train at the cases' median spacing (recorded as metadata spacing_mm)
    channels_last: bool = True   # network and batches in channels_last_3d (device.memory_format)
    # batches drawn ahead in a background thread (sampling.Prefetcher; 0: none). None: 2 on CUDA,
    # where CPU sampling overlaps the GPU's step, and 0 on the CPU, where the thread competes
    # with torch's own threads (measured on 2 cores: 6.2-6.7 steps/s without, 5.1-5.3 with)
    prefetch: int | None = None
    # held-out validation and early stopping (validation.py): share of cases held out (0: none;
    # off below validation.MIN_CASES_FOR_VALIDATION cases or when the mode does not support it),
    # steps between evaluations, evaluations without improvement before stopping, and the share
    # of the steps before which training never stops
    val_fraction: float | None = None   # None: the mode's default_val_fraction
    val_every: int = 100
    val_patience: int = 5
    val_min_share: float = 0.3
    val_min_cases: int = MIN_CASES_FOR_VALIDATION   # fewer usable cases: no split
    # fixed held-out batches (of batch_size patches) measured at each validation: at 24 phantoms
    # SCORE's loss on 4 was noise (early stop at a chance minimum, held-out gain +0.032 with one
    # case harmed), on 16 +0.040, on 32 +0.046 (no split: +0.049); docs/score-loss.md
    val_batches: int = 32

    def make_mode(self) -> TrainingMode:
        """The training mode with its config (InputError for an unknown mode or a foreign config)."""
        return get_mode(self.mode, self.mode_config)

    def to_dict(self) -> dict:
        """JSON-ready settings; ``mode_config`` is the mode's effective config."""
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        cfg = self.mode_config if self.mode_config is not None else (
            MODES[self.mode].Config() if self.mode in MODES else None)
        d["mode_config"] = cfg.to_dict() if cfg is not None else None
        return d


def _default_num_threads() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def val_share(config: "TrainConfig", mode=None) -> float:
    """The share of cases a training with ``config`` holds out for validation:
    ``config.val_fraction``, or when that is None the mode's ``default_val_fraction``; 0 for a
    mode without validation (hybrid). ``mode``: the built mode (default ``config.make_mode()``).
    A split is made only from ``config.val_min_cases`` usable cases on."""
    mode = config.make_mode() if mode is None else mode
    if not getattr(mode, "supports_validation", True):
        return 0.0
    f = config.val_fraction
    return float(mode.default_val_fraction if f is None else f)


def lr_at(step: int, total: int, lr: float) -> float:
    """Cosine decay from ``lr`` to ``lr / 10``."""
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


#: relative spacing difference (any axis) below which a case is trained on its own grid; the
#: same tolerance as :func:`~.inference.refine_volume` uses before resampling an image
SPACING_TOL = 0.05


def _header_spacing_zyx(path) -> tuple:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(float(v) for v in reversed(reader.GetSpacing()))


def median_spacing(cases) -> tuple:
    """The per-axis median (z, y, x) spacing in mm of ``cases``' images (headers only)."""
    import numpy as np

    sp = np.array([_header_spacing_zyx(c.image_path) for c in cases], float)
    return tuple(float(v) for v in np.median(sp, axis=0))


def _close(spacing_zyx, target_zyx, tol: float = SPACING_TOL) -> bool:
    return all(abs(a - b) <= tol * b for a, b in zip(spacing_zyx, target_zyx))


class _ResampledCase:
    """A case whose volumes are served on the grid of ``spacing_zyx`` (same extent): the image
    linearly, the initial mask and reference linearly then ``>= 0.5`` (as inference resamples the
    initial mask), other label maps (regions, scribbles) by nearest neighbour. Region ids and
    ratings are unchanged. Everything else is the wrapped case's."""

    def __init__(self, case, spacing_zyx):
        self._case, self._spacing = case, tuple(float(v) for v in spacing_zyx)
        self._native = None

    def __getattr__(self, name):
        return getattr(self._case, name)

    def _native_image(self):
        if self._native is None:
            self._native = self._case.load_image()
        return self._native

    def _resampled(self, vol, kind: str):
        import numpy as np

        from ..imageio import Geometry, Volume
        from .inference import _resample

        g = vol.geometry
        sp, nsp = g.spacing_zyx, self._spacing
        arr = np.asarray(vol.array)
        if kind == "image":
            out = _resample(arr, sp, nsp).astype(np.float32)
        elif kind == "mask":
            out = (_resample(arr, sp, nsp) >= 0.5).astype(arr.dtype)
        else:
            out = np.rint(_resample(arr, sp, nsp, linear=False)).astype(arr.dtype)
        shift_xyz = np.array([0.5 * (t - s) for s, t in zip(sp, nsp)][::-1])
        origin = np.asarray(g.origin, float) + np.asarray(g.direction, float).reshape(3, 3) @ shift_xyz
        geom = Geometry(size=tuple(int(v) for v in reversed(out.shape)),
                        spacing=tuple(float(v) for v in reversed(nsp)),
                        origin=tuple(float(v) for v in origin), direction=g.direction)
        return Volume(out, geom)

    def load_image(self):
        return self._resampled(self._native_image(), "image")

    def _load(self, name: str, kind: str):
        vol = getattr(self._case, name)(like=self._native_image())
        return None if vol is None else self._resampled(vol, kind)

    def load_initial(self, like=None):
        return self._load("load_initial", "mask")

    def load_reference(self, like=None):
        return self._load("load_reference", "mask")

    def load_regions(self, like=None):
        return self._load("load_regions", "labels")

    def load_scribbles(self, like=None):
        return self._load("load_scribbles", "labels")


def _prepare(mode: TrainingMode, case) -> CaseTargets:
    if not isinstance(case, _ResampledCase):
        return mode.prepare_case(case)
    try:
        return mode.prepare_case(case)
    except TrainingError:
        # resampling lost a small rated region or shifted the band: this case stays on its own
        # grid (a genuine problem of the case raises again from there)
        return mode.prepare_case(case._case)


def prepare_cases(dataset, mode: TrainingMode, resample: bool = False
                  ) -> tuple[list[CaseTargets], tuple | None]:
    """Load and prepare every case the mode can use and learn from (kept in memory: each case is
    loaded, resampled and prepared once per run).

    Args:
        dataset: dataset folder.
        mode: the training mode (asked :meth:`~.modes.TrainingMode.select` once, then ``keep``).
        resample: train at a common spacing, the median over the selected cases
            (:func:`median_spacing`); a case whose spacing differs from it by more than
            :data:`SPACING_TOL` on an axis is resampled to it first (see :class:`_ResampledCase`).
            False: every case on its own grid.

    Returns:
        The prepared cases, and the common spacing (z, y, x) in mm (None without ``resample``).

    Raises:
        TrainingError: no case is left (the mode's message says what to do).
    """
    usable = mode.select(list_cases(dataset))
    spacing_zyx = median_spacing(usable) if resample and usable else None
    if spacing_zyx is not None:
        usable = [c if _close(_header_spacing_zyx(c.image_path), spacing_zyx)
                  else _ResampledCase(c, spacing_zyx) for c in usable]
    targets = [t for t in (_prepare(mode, c) for c in usable) if mode.keep(t)]
    if not targets:
        raise TrainingError(mode.missing_message(dataset))
    return targets, spacing_zyx


class Trainer:
    """One training run; :meth:`run` returns the checkpoint path. ``model`` is the bare network."""

    def __init__(self, dataset, out, config: TrainConfig, progress: str = "bar",
                 cancel: CancelToken | None = None):
        self.dataset, self.out, self.config = Path(dataset), Path(out), config
        self.progress_mode, self.cancel = progress, cancel or CancelToken()
        self.env = ddp.detect()
        self.device = resolve_device(config.device, self.env.local_rank if self.env.enabled else None)
        if config.task not in TASKS:
            raise InputError(f"unknown training task '{config.task}'; known: {sorted(TASKS)}.")
        self.task = TASKS[config.task]
        self.mode = config.make_mode()
        self.model: torch.nn.Module | None = None
        self.last_saved_step: int | None = None

    # ------------------------------------------------------------------ set-up
    def val_fraction(self) -> float:
        """The share of cases held out (:func:`val_share`)."""
        return val_share(self.config, self.mode)

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

    def _training_regions(self, targets) -> dict | None:
        """The widest region band the training cases were rated on (feedback.json's ``regions``
        entry): the refiner was trained to change voxels that far from the initial surface, and
        the do-no-harm guard allows that plus a margin (``GuardLimits.for_regions``)."""
        from ..feedback import load_feedback

        ids = {t.case_id for t in targets}
        bands, widest = [], []
        for case in list_cases(self.dataset):
            if case.case_id not in ids or not case.has_feedback:
                continue
            try:
                info = load_feedback(case.feedback_path).region_info or {}
            except Exception:   # an unreadable file was reported by the mode already
                continue
            if "band_mm" in info:
                bands.append(float(info["band_mm"]))
                widest.append(float(info.get("max_band_mm", info["band_mm"]) or info["band_mm"]))
        if not bands:
            return None
        return {"band_mm": max(bands), "max_band_mm": max(widest), "n_cases": len(bands)}

    def _metadata(self, net_cfg, targets, total, spacing=None) -> dict:
        extra = {"spacing_mm": [round(float(v), 6) for v in spacing]} if spacing else {}
        regions = self._training_regions(targets)
        if regions:
            extra["regions"] = regions
        return {
            **extra,
            "task": self.task.name,
            "channels": list(self.mode.channels),
            "normalisation": NORMALISATION,
            "patch_size": [int(p) for p in self.config.patch_size],
            "network": net_cfg.to_dict(),
            "mode": self.config.mode,
            "n_rated_regions": int(sum(t.info.get("n_rated_regions", 0) for t in targets)),
            "n_cases": len(targets),
            "cases": [t.case_id for t in targets],
            "training": self.config.to_dict(),
            # the share asked for (training.val_fraction, or the mode's when that is None);
            # "validation" below is present only when a split was made (>= val_min_cases)
            "val_fraction": self.val_fraction(),
            "total_steps": int(total),
            "world_size": self.env.world_size,
            "dataset": str(self.dataset),
        }

    def _save(self, model, meta, opt, scaler, step, complete=False) -> None:
        if not self.env.is_main:
            return
        meta = dict(meta, complete=bool(complete))
        mode_meta = self.mode.checkpoint_metadata()
        if mode_meta:
            meta["mode_state"] = mode_meta
        extra = {"scaler": scaler.state_dict()} if scaler is not None else {}
        mode_state = self.mode.state_dict()
        if mode_state:
            extra["mode_state"] = mode_state
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
        threads = int(c.num_threads) if c.num_threads else _default_num_threads()
        if device.type == "cpu" and threads > 0 and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ddp.init(env, device)
        try:
            return self._run(c, env, device)
        finally:
            ddp.cleanup(env)

    def _run(self, c: TrainConfig, env, device) -> Path:
        from monai.utils import set_determinism

        mode = self.mode
        net_cfg = self.task.network_config(c, mode.channels)
        self._check_config(net_cfg)
        targets, spacing = prepare_cases(self.dataset, mode, self.config.resample)
        total = int(c.steps)
        val_targets: list = []
        share = self.val_fraction()
        if share > 0:
            targets, val_targets = split_validation(targets, share, int(c.seed),
                                                    min_cases=int(c.val_min_cases))

        set_determinism(seed=int(c.seed))
        fmt = memory_format(device) if c.channels_last else torch.contiguous_format
        model = self.task.build(net_cfg).to(device, memory_format=fmt)
        self.model = model
        opt = torch.optim.Adam(model.parameters(), lr=c.lr)
        use_amp = bool(c.amp) and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None

        start = 0
        mode.attach(model)
        if c.resume:
            start = self._resume(model, opt, scaler, net_cfg, device)
            mode.attach(model)
            mode.load_state_dict(self._resume_mode_state)
            if start >= total:
                if env.is_main and self.progress_mode == "json":
                    Progress("train", total, mode="json").close(status="already complete", step=start)
                return self.out
        meta = self._metadata(net_cfg, targets, total, spacing)
        stopper = EarlyStopping(every=int(c.val_every), patience=int(c.val_patience),
                                min_steps=int(float(c.val_min_share) * total))
        if stopper.prepare(val_targets, mode, c.patch_size, c.batch_size,
                           n_batches=int(c.val_batches), seed=int(c.seed)):
            meta["validation"] = stopper.report()

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
        t_steps = time.perf_counter()
        depth = (2 if device.type == "cuda" else 0) if c.prefetch is None else max(int(c.prefetch), 0)
        batches = Prefetcher(sampler, c.batch_size, depth=depth)
        try:
            for step in range(start, total):
                cancelled, = ddp.any_flag([self.cancel.cancelled], env, device)
                if cancelled:
                    self._save(model, meta, opt, scaler, step)
                    raise Cancelled(f"{self.cancel.reason or 'cancelled'} at step {step} of {total}; "
                                    f"checkpoint saved to {self.out}, continue with --resume")
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, c.lr)
                batch = batches.next().to(device)
                model.train()
                try:
                    image = batch.image.contiguous(memory_format=fmt)
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                        logits = train_model(image)
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
                    mode.after_step(model, step + 1)
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
                rate = (done - start) / max(time.perf_counter() - t_steps, 1e-9)
                val = {}
                if stopper.due(done, total):
                    val["val_loss"] = round(stopper.loss(model, mode, device, fmt), 5)
                    if stopper.update(done, val["val_loss"], model):
                        val["early_stop"] = True
                bar.update(done, loss=round(lv, 5), loss_avg=round(ema, 5),
                           **{k: round(v, 5) for k, v in terms.items()},
                           steps_per_s=round(rate, 4), **val)
                if stopper.stopped_at is not None:
                    break
            seconds = time.perf_counter() - t_steps
            ran = (stopper.stopped_at or total) - start
            meta = dict(meta, training=dict(meta["training"], seconds=round(seconds, 3),
                                            steps_run=int(ran),
                                            steps_per_second=round(ran / max(seconds, 1e-9), 4)))
            if stopper.enabled:
                stopper.restore_best(model)
                meta["validation"] = stopper.report()
            self._save(model, meta, opt, scaler, total, complete=True)
            ddp.barrier(env)
        finally:
            batches.close()
            bar.close()
        return self.out

    def _resume(self, model, opt, scaler, net_cfg, device) -> int:
        if not self.out.exists():
            raise TrainingError(f"--resume: no checkpoint at {self.out} to continue from; train "
                                f"without --resume first.")
        payload = load_checkpoint(self.out, map_location="cpu", expect_channels=list(self.mode.channels))
        meta = payload["metadata"]
        if meta["task"] != self.task.name:
            raise TrainingError(f"--resume: {self.out} holds a '{meta['task']}' model, not a "
                                f"'{self.task.name}'; use another --out.")
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
        self._resume_mode_state = payload.get("extra", {}).get("mode_state") or {}
        if scaler is not None and payload.get("extra", {}).get("scaler"):
            scaler.load_state_dict(payload["extra"]["scaler"])
        step = int(meta.get("step", 0))
        self.last_saved_step = step
        return step


def train(dataset, out, config: TrainConfig, progress: str = "bar",
          cancel: CancelToken | None = None) -> Path:
    """Train on ``dataset`` and write the checkpoint (see the module docstring).

    Args:
        dataset: dataset folder (case folder contract).
        out: checkpoint file to write.
        config: every setting (:class:`TrainConfig`).
        progress: ``bar`` | ``json`` | ``none``.
        cancel: stops the run at the next step (a checkpoint is saved, then Cancelled raised).

    Returns:
        ``out``.
    """
    return Trainer(dataset, out, config, progress=progress, cancel=cancel).run()
