"""Speed and memory at real sizes: ``scorerefine benchmark --preset perf`` -> docs/performance.md (+ .json).

What it measures (each refine measurement in its own child process, so the peak resident memory it
reports is that process's own high-water mark, ``VmHWM`` of /proc/self/status):

* refining one and two phantom humeri placed in a synthetic 512x512x220 CT at 0.8x0.8x1.5 mm
  (:func:`synthetic_ct`), at 1 and 2 CPU threads and on CUDA when present, with the time split
  into stages and beside the forward-pass floor (one network pass over each ROI's input crop,
  no sliding-window overlap);
* the same one and two humeri without test-time augmentation (``tta=False``, one network pass
  per window instead of 16: what ``scorerefine refine --no-tta`` costs);
* how refine time grows with the volume size (three sizes, one humerus);
* the region split (:func:`SCORERefineLib.regions.make_regions`) on the full volume;
* training steps per second of the existing trainer (default network preset, a short run on two
  default phantoms; steps/s from the difference of two run lengths, so start-up and checkpoint
  writes cancel out), extrapolated to 1800 steps.

The refiner used for timing is untrained (built from :mod:`.refiner.network`, saved with
:func:`~.refiner.checkpoint.save_checkpoint`): a network's cost does not depend on its weights.
Targets are stated and compared in the report, never asserted in tests.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["synthetic_ct", "make_timing_checkpoint", "run_perf", "render_markdown",
           "write_perf_report", "TARGETS", "PERF_PRESETS"]

#: Targets of issue 12 (measured and compared in the report, not asserted).
TARGETS = {
    "refine_one_cpu2_s": 5.0,        # one humerus, 512x512x220, 2 CPU threads
    "refine_one_cuda_s": 0.5,        # the same on an H100
    "two_over_one_ratio": 2.0,       # two humeri take <= 2x one
    "refine_peak_rss_mb": 2048.0,    # peak memory of a refine process
    "train_1800_cuda_s": 60.0,       # 1800 steps of the default preset on an H100
    "train_1800_cpu2_s": 150.0,      # ... on 2 idle CPU threads
}

#: ``full``: the real sizes of the issue; ``tiny``: tests (seconds).
PERF_PRESETS = {
    "full": dict(shape=(220, 512, 512), spacing_zyx=(1.5, 0.8, 0.8),
                 sizes=[(110, 256, 256), (220, 512, 512), (330, 640, 640)],
                 phantom_shape=(128, 96, 96), network="small", patch=(48, 48, 48),
                 train_spacing_zyx=(2.0, 1.2, 1.2),
                 train_steps=(10, 60), batch=2, threads=(1, 2), split=True),
    "tiny": dict(shape=(48, 96, 96), spacing_zyx=(2.5, 1.5, 1.5),
                 sizes=[(40, 64, 64), (48, 96, 96), (56, 112, 112)],
                 phantom_shape=(40, 32, 32), network="tiny", patch=(16, 16, 16),
                 train_spacing_zyx=(3.0, 2.0, 2.0),
                 train_steps=(1, 3), batch=1, threads=(1,), split=True),
}


# ----------------------------------------------------------------------------- synthetic volume

def synthetic_ct(shape: Sequence[int] = (220, 512, 512),
                 spacing_zyx: Sequence[float] = (1.5, 0.8, 0.8), n_humeri: int = 1, seed: int = 0,
                 phantom_shape: Sequence[int] = (128, 96, 96)):
    """A large CT (int16 HU) with ``n_humeri`` (1 or 2) phantom humeri and their initial masks.

    Each humerus is a default-preset phantom rendered at ``spacing_zyx`` on ``phantom_shape``
    voxels and pasted into a soft-tissue background (40 HU + noise) near the left shoulder; the
    second is mirrored (x flipped) near the right one. Returns ``(image, initial)`` Volumes.
    """
    from .imageio import Geometry, Volume
    from .phantoms import PRESETS, make_phantom
    from dataclasses import replace

    if n_humeri not in (1, 2):
        raise ValueError("n_humeri must be 1 or 2")
    shape = tuple(int(v) for v in shape)
    cfg = replace(PRESETS["default"], shape=tuple(int(v) for v in phantom_shape),
                  spacing_zyx=tuple(float(s) for s in spacing_zyx), spacing_jitter=(0.0, 0.0, 0.0))
    ph = make_phantom(seed, cfg)
    pim, pmask = ph.image.array, ph.initial.array
    rng = np.random.default_rng(seed)
    img = rng.normal(40.0, 20.0, size=shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    pz, py, px = (min(a, b) for a, b in zip(pim.shape, shape))
    z0 = max((shape[0] - pz) // 2, 0)
    y0 = max((shape[1] - py) // 2, 0)
    xs = [max(shape[2] // 5 - px // 2, 0)]
    if n_humeri == 2:
        xs.append(min(shape[2] - shape[2] // 5 - px // 2, shape[2] - px))
    for i, x0 in enumerate(xs):
        a, m = pim[:pz, :py, :px], pmask[:pz, :py, :px]
        if i == 1:
            a, m = a[:, :, ::-1], m[:, :, ::-1]
        img[z0:z0 + pz, y0:y0 + py, x0:x0 + px] = a
        mask[z0:z0 + pz, y0:y0 + py, x0:x0 + px] = m
    geom = Geometry.isotropic(shape, tuple(float(s) for s in spacing_zyx))
    return Volume(img, geom), Volume(mask, geom)


def make_timing_checkpoint(path, network: str = "small", patch: Sequence[int] = (48, 48, 48),
                           spacing_mm: Optional[Sequence[float]] = None) -> Path:
    """An untrained refiner checkpoint (what the trainer's metadata holds, step 0)."""
    from .refiner.checkpoint import save_checkpoint
    from .refiner.inputs import CHANNELS, NORMALISATION
    from .refiner.network import build_network, network_config

    cfg = network_config(network, in_channels=CHANNELS)
    model = build_network(cfg)
    meta = {"channels": list(CHANNELS), "normalisation": NORMALISATION,
            "patch_size": [int(p) for p in patch], "network": cfg.to_dict(), "mode": "untrained",
            "n_cases": 0, "cases": [], "n_rated_regions": 0, "complete": True}
    if spacing_mm is not None:
        meta["spacing_mm"] = [float(s) for s in spacing_mm]
    return save_checkpoint(path, model, meta)


# ----------------------------------------------------------------------------- child processes

def _maxrss_mb() -> float:
    """This process's peak resident memory (MB): ``VmHWM`` of /proc/self/status, the high-water
    mark of its own address space. (``getrusage``'s ``ru_maxrss`` keeps the parent's high-water
    mark across fork + exec on Linux, so a child started by a large parent would report the
    parent's peak.) Falls back to ``ru_maxrss`` where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _child_refine(spec: dict) -> dict:
    """Runs in a child process: load the volume, refine it, time the forward-pass floor."""
    import torch
    from .imageio import Geometry, Volume
    from .refiner.inference import forward_floor, load_model, refine_volume

    torch.set_num_threads(int(spec["threads"]))
    data = np.load(spec["volume"])
    geom = Geometry.isotropic(tuple(data["image"].shape), tuple(data["spacing_zyx"]))
    image, initial = Volume(data["image"], geom), Volume(data["initial"], geom)
    model, meta = load_model(spec["model"], spec["device"])
    base_mb = _maxrss_mb()
    kw = dict(spec.get("refine_kwargs") or {})
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
    # warm-up on a small crop (first-call allocations, MKL/oneDNN set-up, CUDA context)
    refine_volume(model, meta, *_small(image, initial), device=spec["device"],
                  num_threads=int(spec["threads"]), **kw)
    timings: dict = {}
    t0 = time.perf_counter()
    refined = refine_volume(model, meta, image, initial, device=spec["device"],
                            num_threads=int(spec["threads"]), timings=timings, **kw)
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_mb = _maxrss_mb()
    out = {"seconds": seconds, "peak_rss_mb": peak_mb, "baseline_rss_mb": base_mb,
           "timings": timings, "changed_voxels": int((refined.array != initial.array).sum())}
    if spec["device"].startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if spec.get("floor", True):
        out["floor_s"] = forward_floor(model, timings["input_shapes"], device=spec["device"])
    if spec.get("split"):
        from .regions import make_regions
        t1 = time.perf_counter()
        regions = make_regions(initial)
        out["split_s"] = time.perf_counter() - t1
        out["n_regions"] = int(len(np.unique(regions.array)) - 1)
    return out


def _small(image, initial):
    """A small crop around the first foreground voxel (for warm-up)."""
    from .imageio import Volume
    from .refiner.inference import crop_geometry

    idx = np.argwhere(initial.array)[0]
    crop = tuple(slice(max(int(i) - 8, 0), int(i) + 8) for i in idx)
    g = crop_geometry(image.geometry, crop)
    return (Volume(np.ascontiguousarray(image.array[crop]), g),
            Volume(np.ascontiguousarray(initial.array[crop]), g))


def _child_train(spec: dict) -> dict:
    """Runs in a child process: the trainer for ``steps`` steps; wall time of ``train``."""
    import torch
    from .refiner.trainer import TrainConfig, train

    torch.set_num_threads(int(spec["threads"]))
    cfg = TrainConfig(mode="score", steps=int(spec["steps"]), network=spec["network"],
                      patch_size=tuple(spec["patch"]), batch_size=int(spec["batch"]),
                      device=spec["device"], num_threads=int(spec["threads"]),
                      checkpoint_every=0)
    t0 = time.perf_counter()
    train(spec["dataset"], spec["out"], cfg, progress="none")
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _maxrss_mb()}


def _run_child(kind: str, spec: dict, timeout: float = 1800.0, isolate: bool = True) -> dict:
    """Run ``kind`` (refine | train) in a fresh interpreter; its JSON result. ``isolate=False``
    runs it in this process (tests: quick, but the peak memory is then this process's)."""
    if not isolate:
        return json.loads(json.dumps(_child_refine(spec) if kind == "refine" else _child_train(spec)))
    env = dict(os.environ)
    n = str(int(spec.get("threads", 1)))
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "SCORERefineLib.perf", kind, json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"perf child {kind} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the run

def _devices(device: str) -> list[str]:
    import torch
    if device == "cpu":
        return ["cpu"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        from .errors import InputError
        raise InputError("--device cuda requested but CUDA is not available to torch.")
    return ["cpu", "cuda"] if (device == "cuda" or torch.cuda.is_available()) else ["cpu"]


def _train_cohort(root: Path, n: int = 2, seed: int = 0, preset: str = "default") -> Path:
    from .feedback import save_feedback
    from .imageio import write_volume
    from .phantoms import make_cohort
    from .rater import simulate_feedback
    from .regions import RegionParams, make_regions

    cases = make_cohort(root, n, seed, preset=preset)
    params = RegionParams()
    for case in cases:
        image = case.load_image()
        initial = case.load_initial(like=image)
        regions = make_regions(initial, params)
        write_volume(regions, case.regions_path, dtype=np.int16)
        fb = simulate_feedback(case.case_id, initial.array, case.load_reference(like=image).array,
                               regions.array, region_info=params.info()
                               if hasattr(params, "info") else None)
        save_feedback(fb, case.feedback_path)
    return root


def run_perf(workdir, preset: str = "full", device: str = "auto",
             threads: Optional[Sequence[int]] = None, refine_kwargs: Optional[dict] = None,
             progress=print, isolate: bool = True) -> dict:
    """Run every measurement (see the module docstring); the report as a dict. ``isolate``: each
    measurement in its own child process (honest peak memory); False only for tests."""
    from .benchmark import machine_description

    if preset not in PERF_PRESETS:
        raise ValueError(f"perf preset must be one of {list(PERF_PRESETS)}, got {preset!r}")
    p = PERF_PRESETS[preset]
    threads = tuple(int(t) for t in (threads or p["threads"]))
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda *_: None)
    model = make_timing_checkpoint(work / "untrained.pt", p["network"], p["patch"])
    started = time.perf_counter()
    report = {"preset": preset, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_description(), "cores_available": len(os.sched_getaffinity(0)),
              "load_before": list(os.getloadavg()), "shape_zyx": list(p["shape"]),
              "spacing_zyx": list(p["spacing_zyx"]), "network": p["network"],
              "patch": list(p["patch"]), "refine_kwargs": dict(refine_kwargs or {}),
              "refine": [], "refine_no_tta": [], "refine_trained_spacing": [], "scaling": [],
              "train": [],
              "targets": []}

    def volume(shape, n):
        path = work / f"ct_{'x'.join(map(str, shape))}_{n}.npz"
        if not path.exists():
            image, initial = synthetic_ct(shape, p["spacing_zyx"], n, phantom_shape=p["phantom_shape"])
            np.savez(path, image=image.array, initial=initial.array,
                     spacing_zyx=np.asarray(p["spacing_zyx"]))
        return path

    devs = _devices(device)

    def _child(kind, spec):
        if not isolate:
            import torch
            before = torch.get_num_threads()
            try:
                return _run_child(kind, spec, isolate=False)
            finally:
                torch.set_num_threads(before)
        return _run_child(kind, spec)
    for dev in devs:
        for t in (threads if dev == "cpu" else (max(threads),)):
            for n in (1, 2):
                say(f"perf: refine {n} humerus/humeri, {dev}, {t} thread(s)")
                r = _child("refine", {"volume": str(volume(p["shape"], n)), "model": str(model),
                                          "device": dev, "threads": t, "floor": True,
                                          "split": bool(p["split"]) and n == 1 and dev == "cpu",
                                          "refine_kwargs": refine_kwargs or {}})
                report["refine"].append(dict(r, device=dev, threads=t, n_humeri=n))
    # the default runs 16 views per window (test-time augmentation); one pass is the fast option
    for n in (1, 2):
        t = max(threads)
        say(f"perf: refine {n} humerus/humeri without test-time augmentation, cpu, {t} thread(s)")
        r = _child("refine", {"volume": str(volume(p["shape"], n)), "model": str(model),
                              "device": "cpu", "threads": t, "floor": False, "split": False,
                              "refine_kwargs": {**(refine_kwargs or {}), "tta": False}})
        report["refine_no_tta"].append(dict(r, device="cpu", threads=t, n_humeri=n))
    # a checkpoint trained on the default phantoms records their spacing; refine then infers at
    # it and resamples the change back (the "inference at the training resolution")
    trained = make_timing_checkpoint(work / "trained_spacing.pt", p["network"], p["patch"],
                                     spacing_mm=p["train_spacing_zyx"])
    for n in (1, 2):
        t = max(threads)
        say(f"perf: refine {n} humerus/humeri at the training spacing, cpu, {t} thread(s)")
        r = _child("refine", {"volume": str(volume(p["shape"], n)), "model": str(trained),
                              "device": "cpu", "threads": t, "floor": True, "split": False,
                              "refine_kwargs": refine_kwargs or {}})
        report["refine_trained_spacing"].append(dict(r, device="cpu", threads=t, n_humeri=n,
                                                     spacing_mm=list(p["train_spacing_zyx"])))
    t_scale = max(threads)
    for shape in p["sizes"]:
        say(f"perf: scaling, volume {shape}")
        r = _child("refine", {"volume": str(volume(shape, 1)), "model": str(model),
                                  "device": "cpu", "threads": t_scale, "floor": False,
                                  "refine_kwargs": refine_kwargs or {}})
        report["scaling"].append(dict(r, shape_zyx=list(shape), voxels=int(np.prod(shape)),
                                      threads=t_scale, device="cpu"))
    cohort = work / "train_cohort"
    if not (cohort / "cases").exists():
        say("perf: training cohort")
        _train_cohort(cohort, preset="default" if preset == "full" else "tiny")
    lo, hi = p["train_steps"]
    for dev in devs:
        for t in (threads if dev == "cpu" else (max(threads),)):
            say(f"perf: training steps/s, {dev}, {t} thread(s)")
            runs = [_child("train", {"dataset": str(cohort), "out": str(work / "train.pt"),
                                         "steps": s, "network": p["network"], "patch": list(p["patch"]),
                                         "batch": p["batch"], "device": dev, "threads": t})
                    for s in (lo, hi)]
            per_step = max((runs[1]["seconds"] - runs[0]["seconds"]) / (hi - lo), 1e-9)
            report["train"].append({"device": dev, "threads": t, "steps": [lo, hi],
                                    "seconds": [r["seconds"] for r in runs],
                                    "steps_per_s": 1.0 / per_step,
                                    "extrapolated_1800_s": 1800.0 * per_step,
                                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)})
    report["load_after"] = list(os.getloadavg())
    report["seconds_total"] = time.perf_counter() - started
    # the load before the run says whether other work shared the CPUs; the load after includes
    # this run's own threads (always about the core count), so it cannot tell
    report["busy"] = report["load_before"][0] > 0.5 * report["cores_available"]
    report["targets"] = evaluate_targets(report)
    return report


def _pick(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def evaluate_targets(report: dict) -> list[dict]:
    """Each target with its measured value and met/missed (None: not measured on this machine)."""
    out = []

    def add(name, value, limit, note=""):
        out.append({"target": name, "value": value, "limit": limit,
                    "met": None if value is None else bool(value <= limit), "note": note})

    cpu2 = _pick(report["refine"], device="cpu", threads=2, n_humeri=1)
    cpu2b = _pick(report["refine"], device="cpu", threads=2, n_humeri=2)
    gpu1 = _pick(report["refine"], device="cuda", n_humeri=1)
    add("refine one humerus, 512x512x220, 2 CPU threads <= 5 s",
        cpu2[0]["seconds"] if cpu2 else None, TARGETS["refine_one_cpu2_s"])
    no_tta = _pick(report.get("refine_no_tta", []), threads=2, n_humeri=1)
    add("the same without test-time augmentation (`--no-tta`) <= 5 s",
        no_tta[0]["seconds"] if no_tta else None, TARGETS["refine_one_cpu2_s"],
        "one network pass per window instead of 16")
    add("refine one humerus on CUDA (H100) <= 0.5 s", gpu1[0]["seconds"] if gpu1 else None,
        TARGETS["refine_one_cuda_s"])
    for dev in ("cpu", "cuda"):
        one = [r for r in report["refine"] if r["device"] == dev and r["n_humeri"] == 1]
        two = [r for r in report["refine"] if r["device"] == dev and r["n_humeri"] == 2]
        if one and two:
            t = max(r["threads"] for r in one)
            a = [r for r in one if r["threads"] == t][0]["seconds"]
            b = [r for r in two if r["threads"] == t][0]["seconds"]
            add(f"two humeri <= 2x one ({dev}, {t} thread(s))", b / a, TARGETS["two_over_one_ratio"])
    peaks = [r["peak_rss_mb"] for r in report["refine"]]
    add("peak memory of refine < 2 GB (MB, RSS high-water mark)", max(peaks) if peaks else None,
        TARGETS["refine_peak_rss_mb"])
    cpu_t = _pick(report["train"], device="cpu", threads=2)
    gpu_t = _pick(report["train"], device="cuda")
    add("1800 training steps on 2 CPU threads <= 150 s (extrapolated)",
        cpu_t[0]["extrapolated_1800_s"] if cpu_t else None, TARGETS["train_1800_cpu2_s"],
        "extrapolated from measured steps/s")
    add("1800 training steps on CUDA (H100) <= 60 s (extrapolated)",
        gpu_t[0]["extrapolated_1800_s"] if gpu_t else None, TARGETS["train_1800_cuda_s"],
        "extrapolated from measured steps/s")
    return out


# ----------------------------------------------------------------------------- report

def _machine_line(m: dict) -> str:
    return (f"{m.get('processor')}, {m.get('cpu_count')} CPUs, device {m.get('device')}; "
            f"{m.get('platform')}; Python {m.get('python')}, torch {m.get('torch')}, "
            f"MONAI {m.get('monai', '?')}, scorerefine {m.get('scorerefine')}")


def _fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def _refine_table(rows: Sequence[dict], floor: bool) -> list[str]:
    """A markdown table of refine measurements: device, threads, humeri, seconds, the forward
    floor (``floor``), windows, input and network seconds, peak memory."""
    head = ["device", "threads", "humeri", "refine s"] + (["floor s"] if floor else []) + [
        "windows run / total", "input s", "network s", "peak RSS MB"]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        t = r["timings"]
        cells = [r["device"], r["threads"], r["n_humeri"], f"{r['seconds']:.2f}"]
        cells += [_fmt(r.get("floor_s"))] if floor else []
        cells += [f"{t.get('windows_run')} / {t.get('windows_total')}", _fmt(t.get("input_s")),
                  _fmt(t.get("network_s")), f"{r['peak_rss_mb']:.0f}"]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return out


def render_markdown(report: dict, command: str) -> str:
    m = report["machine"]
    busy = report.get("busy")
    lines = ["# SCORERefine performance", "", "Generated by the command below; do not edit by hand.",
             "", "```", command, "```", "",
             f"- date: {report['date']}",
             f"- machine: {_machine_line(m)}",
             f"- cores available to this process: {report['cores_available']}; load average "
             f"(1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in report['load_before'])}, after "
             f"{', '.join(f'{v:.2f}' for v in report['load_after'])}",
             f"- **{'measured on a busy machine' if busy else 'measured on an idle machine'}**"
             + (" (1-minute load average above half the cores before the run: other work shared the "
                "CPUs, so the CPU figures are pessimistic; rerun when idle)" if busy else
                " (1-minute load average below half the cores before the run; the load after "
                "includes this run's own threads)"),
             f"- volume: {' x '.join(map(str, report['shape_zyx']))} voxels (z, y, x) at "
             f"{' x '.join(map(str, report['spacing_zyx']))} mm, synthetic CT with phantom humeri "
             f"(`perf.synthetic_ct`); untrained `{report['network']}` refiner (the cost does not "
             f"depend on the weights), patch {tuple(report['patch'])}"
             + (f"; refine settings {report['refine_kwargs']}" if report.get("refine_kwargs") else
                "; default refine settings"),
             f"- whole run: {report['seconds_total']:.0f} s", ""]
    lines += ["## Refine", "",
              "Each row is one child process: refine time (after a small warm-up), its stages, the "
              "forward-pass floor (one network pass over each ROI's input crop, no sliding-window "
              "overlap) and the process's peak resident memory (RSS high-water mark; the baseline "
              "is after imports and loading the volume).", "",
              "| device | threads | humeri | refine s | floor s | ratio to floor | windows run / total "
              "| input s | network s | paste s | peak RSS MB | baseline RSS MB | split s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["refine"]:
        t = r["timings"]
        floor = r.get("floor_s")
        lines.append(
            f"| {r['device']} | {r['threads']} | {r['n_humeri']} | {r['seconds']:.2f} | {_fmt(floor)} | "
            f"{_fmt(r['seconds'] / floor if floor else None, 1)} | {t.get('windows_run')} / "
            f"{t.get('windows_total')} | {_fmt(t.get('input_s'))} | {_fmt(t.get('network_s'))} | "
            f"{_fmt(t.get('paste_s'))} | {r['peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | "
            f"{_fmt(r.get('split_s'))} |")
    if report.get("refine_no_tta"):
        lines += ["", "## Refine without test-time augmentation", "",
                  "The rows above run the default: each sliding window's probability is the mean "
                  "over its 16 flipped and turned views (`inference.view_mean_probability`, 16 "
                  "network passes per window; on real CT it turned single models' harm to a test "
                  "case into gains, docs/score-loss.md stop 25). These rows run one pass per "
                  "window (`scorerefine refine --no-tta`).", ""]
        lines += _refine_table(report["refine_no_tta"], floor=False)
    if report.get("refine_trained_spacing"):
        lines += ["", "## Refine at the training spacing", "",
                  "The same volumes with a checkpoint that records the spacing it was trained at "
                  "(`spacing_mm`, here the default phantoms' "
                  f"{' x '.join(map(str, report['refine_trained_spacing'][0]['spacing_mm']))} mm, as "
                  "`scorerefine train` on that cohort writes it): the crop is resampled to it, "
                  "inferred there, and only the network's change is resampled back. The targets "
                  "above are read from the native-spacing rows (the stricter case: a model trained "
                  "on CT at this CT's own spacing).", ""]
        lines += _refine_table(report["refine_trained_spacing"], floor=True)
    lines += ["", "## Refine time vs. volume size (one humerus)", "",
              "| volume (z, y, x) | voxels (M) | refine s | peak RSS MB |", "| --- | --- | --- | --- |"]
    for r in report["scaling"]:
        lines.append(f"| {' x '.join(map(str, r['shape_zyx']))} | {r['voxels'] / 1e6:.1f} | "
                     f"{r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "## Training throughput", "",
              "The existing trainer (`refiner/trainer.train`, score mode, default network preset, "
              "batch and patch as in the table) on two default phantoms; steps/s from the "
              "difference of two run lengths. 1800 steps are **extrapolated** from it.", "",
              "| device | threads | runs (steps: s) | steps/s | 1800 steps s (extrapolated) | peak RSS MB |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in report["train"]:
        runs = ", ".join(f"{s}: {sec:.1f}" for s, sec in zip(r["steps"], r["seconds"]))
        lines.append(f"| {r['device']} | {r['threads']} | {runs} | {r['steps_per_s']:.2f} | "
                     f"{r['extrapolated_1800_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        met = "not measured here" if t["met"] is None else ("yes" if t["met"] else "**no (missed)**")
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {met} |")
    has_cuda = any(r["device"] == "cuda" for r in report["refine"])
    lines += ["", "## Notes", ""]
    if not has_cuda:
        lines.append("- CUDA figures are absent: no GPU was available to this run. On a GPU machine "
                     "run `scorerefine benchmark --preset perf --device cuda` and keep both reports.")
    if busy:
        lines.append("- On a busy machine more threads can be slower than fewer: with more runnable "
                     "threads than free cores, torch's threads wait for each other at every "
                     "operation.")
    lines += ["- Peak memory is each child process's own `VmHWM` (its address space's resident "
              "high-water mark), read at the end of the measurement.",
              "- Timed figures are single measurements; on a shared machine they vary by tens of "
              "percent from run to run.",
              "- Rerun: the command above (as `.venv/bin/scorerefine ...`) from the repository root."]
    return "\n".join(lines) + "\n"


def write_perf_report(report: dict, out_md, command: str) -> tuple[Path, Path]:
    """Write the markdown report and its JSON twin (same name, ``.json``)."""
    from .atomicio import atomic_write_text

    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    js = out_md.with_suffix(".json")
    atomic_write_text(out_md, render_markdown(report, command))
    atomic_write_text(js, json.dumps(dict(report, command=command), indent=2) + "\n")
    return out_md, js


def run_command(args) -> int:
    """``scorerefine benchmark --preset perf``: run :func:`run_perf` and write the report."""
    import shlex

    out = Path(args.out) if getattr(args, "out", None) is not None else Path("docs/performance.md")
    if out == Path("docs/benchmark.md"):        # the benchmark's report -> ours
        out = Path("docs/performance.md")
    report = run_perf(Path(args.workdir) / "perf", "full", device=args.device)
    command = "scorerefine benchmark --preset perf" + (
        f" --device {args.device}" if args.device != "auto" else "")
    if Path(sys.argv[0]).name.startswith("scorerefine"):
        command = "scorerefine " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md, js = write_perf_report(report, out, command)
    for t in report["targets"]:
        state = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"target: {t['target']}: {_fmt(t['value'])} -> {state}")
    print(f"wrote {md} and {js}")
    return 0


def _main(argv: Sequence[str]) -> int:
    kind, spec = argv[0], json.loads(argv[1])
    result = _child_refine(spec) if kind == "refine" else _child_train(spec)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
