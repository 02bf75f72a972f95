"""The benchmark: SCORE against its baselines, upper bound and ablations on held-out synthetic cases.

Rows (all on the same held-out test split):

1. ``initial``: the initial masks, no refinement;
2. ``classical``: closing, hole filling, largest component;
3. ``score``: SCORE trained from the simulated rater's ratings;
4. ``score_noisy``: SCORE from a noisy rater (a share of ratings off by one / type flipped);
5. ``full``: the fully supervised refiner (dense references), the upper bound;
6. ``score_no_direction``, ``score_no_amount``, ``score_no_edge``: ablations.

The report (``docs/benchmark.md`` and a JSON twin) is generated, headed by the exact command,
the machine and the date, and says for each target whether it was met.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .case import list_cases
from .catalog import TRAINING_MODES
from .feedback import load_feedback
from .pipeline import (EvalResult, TrainResult, copy_with_noisy_ratings, evaluate_masks,
                       make_split, summary_table, train_model)
from .progress import CancelToken
from .refiners import make_refiner
from .regions import RegionParams

#: stated (not measured) costs used for the feedback-cost column
SECONDS_PER_RATING = 5.0
SECONDS_PER_DENSE_CORRECTION = 300.0

TARGET_DICE_GAIN = 0.03
TARGET_IMPROVED = 0.90
TARGET_RECOVERY = 0.80


@dataclass
class BenchConfig:
    n_train: int
    n_test: int
    phantom_preset: str
    steps: int
    network: str
    patch: tuple
    batch: int = 2
    seed: int = 0
    noise: float = 0.2
    region_method: str = "patches"
    n_regions: int = 12
    band_mm: float = 3.0
    rows: tuple = ("score", "score_noisy", "full", "score_no_direction", "score_no_amount",
                   "score_no_edge")


PRESETS = {
    # for the test suite: exercises every row in seconds; its numbers mean nothing
    "smoke": BenchConfig(n_train=3, n_test=2, phantom_preset="tiny", steps=2, network="tiny",
                         patch=(16, 16, 16), batch=1),
    # minutes: checks the wiring at real sizes; too short for SCORE to converge
    "quick": BenchConfig(n_train=8, n_test=4, phantom_preset="default", steps=300, network="small",
                         patch=(48, 48, 48)),
    # the preset the targets are read from (trainer defaults otherwise: lr 4e-3)
    "full": BenchConfig(n_train=16, n_test=12, phantom_preset="default", steps=1800, network="small",
                        patch=(48, 48, 48)),
}

@dataclass(frozen=True)
class RowTraining:
    """How a trained row is trained: its mode (a ``catalog.TRAINING_MODES`` name), which training
    set (``clean`` or ``noisy`` ratings) and settings of the mode's own config (ablations)."""

    mode: str
    dataset: str = "clean"
    mode_settings: tuple[tuple[str, object], ...] = ()


#: row name -> how it is trained
ROW_TRAINING: dict[str, RowTraining] = {
    "score": RowTraining("score"),
    "score_noisy": RowTraining("score", "noisy"),
    "full": RowTraining("full"),
    "score_no_direction": RowTraining("score", mode_settings=(("no_direction", True),)),
    "score_no_amount": RowTraining("score", mode_settings=(("no_amount", True),)),
    "score_no_edge": RowTraining("score", mode_settings=(("no_edge", True),)),
}

ROW_LABELS = {
    "initial": "1. initial masks",
    "classical": "2. classical post-processing",
    "score": "3. SCORE (simulated rater)",
    "score_noisy": "4. SCORE (noisy rater)",
    "full": "5. fully supervised refiner",
    "score_no_direction": "6a. SCORE w/o direction term",
    "score_no_amount": "6b. SCORE w/o amount term",
    "score_no_edge": "6c. SCORE w/o edge channel",
}


def machine_description() -> dict:
    import torch
    info = {"platform": platform.platform(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "device": "cpu", "scorerefine": __version__}
    try:
        import monai
        info["monai"] = monai.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        info["processor"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return info


def _count_ratings(dataset: Path) -> int:
    n = 0
    for case in list_cases(dataset):
        if case.has_feedback:
            n += len(load_feedback(case.feedback_path).ratings())
    return n


def row_config(row: str, cfg: BenchConfig, device: str = "auto"):
    """The training config of a trained benchmark row.

    Args:
        row: a :data:`ROW_TRAINING` name.
        cfg: the preset.
        device: training device.

    Returns:
        A :class:`~SCORERefineLib.refiner.trainer.TrainConfig`.
    """
    from .refiner.modes import mode_config
    from .refiner.trainer import TrainConfig

    spec = ROW_TRAINING[row]
    if spec.mode not in TRAINING_MODES:
        raise ValueError(f"benchmark row '{row}' uses unknown training mode '{spec.mode}'")
    return TrainConfig(mode=spec.mode, mode_config=mode_config(spec.mode, **dict(spec.mode_settings)),
                       steps=cfg.steps, network=cfg.network, patch_size=tuple(cfg.patch),
                       batch_size=cfg.batch, seed=cfg.seed, device=device)


def run_benchmark(preset: str, workdir: Path, device: str = "auto", progress: str = "bar",
                  cancel: CancelToken | None = None, rows: Sequence[str] | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Run every row of ``preset``.

    Args:
        preset: a :data:`PRESETS` name.
        workdir: where cohorts, models and predictions go.
        device: training and inference device.
        progress: ``bar`` | ``json`` | ``none`` (training).
        cancel: stops the run.
        rows: trained rows to run (default: the preset's); rows 1-2 always run.
        log: receives one line per stage.

    Returns:
        The report as a JSON-serialisable dict.
    """
    cfg = PRESETS[preset]
    rows = tuple(rows) if rows else cfg.rows
    unknown = set(rows) - set(ROW_TRAINING)
    if unknown:
        raise ValueError(f"unknown benchmark rows {sorted(unknown)}; known: {list(ROW_TRAINING)}")
    workdir = Path(workdir)
    params = RegionParams(method=cfg.region_method, n_regions=cfg.n_regions, band_mm=cfg.band_mm,
                          seed=cfg.seed)
    log(f"[benchmark] generating {cfg.n_train} training and {cfg.n_test} test cases "
        f"({cfg.phantom_preset} phantoms), regions and simulated ratings in {workdir}")
    split = make_split(workdir, cfg.n_train, cfg.n_test, cfg.seed, cfg.phantom_preset, params)
    datasets = {"clean": split.train}
    if "score_noisy" in rows:
        datasets["noisy"] = copy_with_noisy_ratings(split.train, workdir / "train_noisy", params,
                                                    cfg.noise, cfg.seed)
    results: list[EvalResult] = [
        evaluate_masks(split.test, "initial", make_refiner("identity"), cancel=cancel),
        evaluate_masks(split.test, "classical", make_refiner("classical"), cancel=cancel),
    ]
    trainings: dict[str, TrainResult] = {}
    for row in rows:
        spec = ROW_TRAINING[row]
        log(f"[benchmark] training '{row}' ({spec.mode} mode, {cfg.steps} steps)")
        trainings[row] = train_model(datasets[spec.dataset], workdir / "models" / f"{row}.pt",
                                     row_config(row, cfg, device), progress=progress, cancel=cancel)
        results.append(evaluate_masks(split.test, row, make_refiner(trainings[row].model, device),
                                      cancel=cancel))
    table = summary_table(results)
    n_ratings = _count_ratings(split.train)
    for entry in table:
        row = entry["method"]
        entry["label"] = ROW_LABELS[row]
        entry["train_seconds"] = trainings[row].seconds if row in trainings else 0.0
        if row in ("initial", "classical"):
            entry["feedback"] = "none"
            entry["feedback_seconds"] = 0.0
        elif row == "full":
            entry["feedback"] = f"{cfg.n_train} dense masks"
            entry["feedback_seconds"] = cfg.n_train * SECONDS_PER_DENSE_CORRECTION
        else:
            entry["feedback"] = f"{n_ratings} ratings"
            entry["feedback_seconds"] = n_ratings * SECONDS_PER_RATING
    by = {e["method"]: e for e in table}
    targets = evaluate_targets(by)
    return {"preset": preset, "config": asdict(cfg), "machine": machine_description(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": table, "targets": targets, "n_ratings": n_ratings,
            "per_case": {res.name: res.rows for res in results}}


def evaluate_targets(by: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it was met."""
    out = []
    if "score" in by and "initial" in by:
        gain = by["score"]["dice_mean"] - by["initial"]["dice_mean"]
        out.append({"target": f"SCORE mean Dice gain >= {TARGET_DICE_GAIN}", "value": gain,
                    "met": bool(gain >= TARGET_DICE_GAIN)})
        out.append({"target": f"SCORE improves >= {TARGET_IMPROVED:.0%} of test cases",
                    "value": by["score"]["improved"],
                    "met": bool(by["score"]["improved"] >= TARGET_IMPROVED)})
        if "full" in by:
            full_gain = by["full"]["dice_mean"] - by["initial"]["dice_mean"]
            recovery = gain / full_gain if full_gain > 0 else float("nan")
            out.append({"target": f"SCORE recovers >= {TARGET_RECOVERY:.0%} of the fully supervised "
                                  f"Dice gain", "value": recovery,
                        "met": bool(np.isfinite(recovery) and recovery >= TARGET_RECOVERY)})
    return out


def render_markdown(report: dict, command: str) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        "# SCORERefine benchmark",
        "",
        "Generated by the command below; do not edit by hand.",
        "",
        "```",
        command,
        "```",
        "",
        f"- date: {report['date']}",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, device {m['device']}; "
        f"{m['platform']}; Python {m['python']}, torch {m['torch']}, MONAI {m.get('monai', '?')}, "
        f"scorerefine {m['scorerefine']}",
        f"- preset `{report['preset']}`: {cfg['n_train']} training and {cfg['n_test']} held-out test "
        f"cases of the `{cfg['phantom_preset']}` synthetic humerus cohort (seed {cfg['seed']}); "
        f"regions `{cfg['region_method']}` x{cfg['n_regions']}, band {cfg['band_mm']} mm; "
        f"network `{cfg['network']}`, {cfg['steps']} steps, patch {tuple(cfg['patch'])}, "
        f"batch {cfg['batch']}; noisy rater: {cfg['noise']:.0%} of ratings off",
        f"- feedback cost: {SECONDS_PER_RATING:.0f} s per region rating and "
        f"{SECONDS_PER_DENSE_CORRECTION:.0f} s per dense manual correction, both stated assumptions "
        f"(not measured); training and inference times are measured on the machine above.",
        "",
        "## Results on the held-out test cases",
        "",
        "| row | Dice mean ± sd | HD95 mm | ASSD mm | ΔDice | cases improved | feedback (time) "
        "| training s | inference s/case |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in report["rows"]:
        lines.append(
            f"| {e['label']} | {e['dice_mean']:.4f} ± {e['dice_std']:.4f} "
            f"| {e['hd95_mean']:.2f} ± {e['hd95_std']:.2f} | {e['assd_mean']:.3f} ± {e['assd_std']:.3f} "
            f"| {e['dice_gain']:+.4f} | {e['improved']:.0%} "
            f"| {e['feedback']} ({e['feedback_seconds'] / 60:.1f} min) "
            f"| {e['train_seconds']:.0f} | {e['seconds_per_case']:.2f} |")
    lines += ["", "ΔDice and 'cases improved' are against row 1 (the initial masks).", "",
              "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        val = f"{t['value']:.1%}" if "%" in t["target"] else f"{t['value']:+.4f}"
        lines.append(f"| {t['target']} | {val} | {'yes' if t['met'] else '**no (missed)**'} |")
    if not report["targets"]:
        lines.append("| (no SCORE row was run) | | |")
    lines += ["", "## Notes", "",
              "- Ablations (settings of the score mode's config; flags of `scorerefine train`): `--no-direction` drops every use of the "
              "over/under label; `--no-amount` drops every use of the score's size (the pseudo-label, "
              "amount and volume terms; regions rated 5 still pin the mask); `--no-edge` removes the "
              "edge-prior input channel. See docs/score-loss.md.",
              f"- GPU figures: {gpu_note(m)}",
              "- Rerun: the command above (as `.venv/bin/scorerefine ...`) from the repository root after `make test` or `make demo` "
              "(`make benchmark` runs the full preset). Single seed; differences below about 0.005 "
              "Dice are within run-to-run noise.", ""]
    return "\n".join(lines)


def gpu_note(machine: dict) -> str:
    if machine.get("device", "cpu").startswith("cuda"):
        return f"this run used {machine['device']}."
    return ("none in this report: it ran on the CPU (no GPU was available to this run). On a GPU "
            "machine rerun the command with `--device cuda` and keep both reports.")


def write_report(report: dict, out_md: Path, command: str) -> tuple[Path, Path]:
    """Write the markdown report and its JSON twin (same stem, .json), atomically."""
    from .atomicio import atomic_write_text

    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json = out_md.with_suffix(".json")
    atomic_write_text(out_md, render_markdown(report, command))
    atomic_write_text(out_json, json.dumps(dict(report, command=command), indent=2, default=float))
    return out_md, out_json
