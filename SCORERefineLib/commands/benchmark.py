"""``scorerefine benchmark``: SCORE vs. baselines, upper bound and ablations; writes docs/benchmark.md."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "run the benchmark on a held-out synthetic test split and write docs/benchmark.md (+ .json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..benchmark import PRESETS, ROW_TRAINING
    p.add_argument("--preset", choices=sorted(PRESETS) + ["perf"], default="quick",
                   help="quick: minutes; full: the preset the targets are read from; smoke: tests "
                        "only; real: the real-CT cohort (split by structure) with a per-structure "
                        "table, real_abdomen: plus 8 upper-abdominal structures with TotalSegmentator "
                        "--fast references, real_abdomen_x2: its training structures at two error "
                        "seeds (30 cases, the hidden set's size), real_abdomen_seen: the hidden "
                        "set's shape (liver, spleen, stomach, aorta at 6 training and 4 test error "
                        "draws: 24 / 16 cases, the test anatomy seen in training), real_abdomen_hidden: "
                        "the same at the hidden set's error size (error sizes x1.2), real_smoke: its "
                        "test-sized version; perf: speed and memory at "
                        "real sizes -> docs/performance.md")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown report (a JSON twin is written beside it); default "
                        "docs/benchmark.md, with --efficiency docs/efficiency.md (+ .png)")
    p.add_argument("--workdir", type=Path, default=Path("benchmark_output"),
                   help="where cohorts, models and predictions go")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--rows", nargs="+", choices=sorted(ROW_TRAINING),
                   help="trained rows to run (default: all); rows 1-2 always run")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
    p.add_argument("--reuse-models", action="store_true",
                   help="use a row's model from an earlier run in --workdir when it was trained "
                        "with the same settings on the same training data (its fingerprint, "
                        "recorded beside the model as <row>.data.json), e.g. after a change to "
                        "refinement or the guard; the report says which rows were reused")
    p.add_argument("--seeds", type=int, default=1,
                   help="train each row at this many seeds (the preset's and the next ones) and "
                        "add each row's ensemble (the mean probability of its seeds' models, as "
                        "`scorerefine refine --also-model`) with its own targets; default 1")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of every row (default: the preset's); recorded in the report")
    from ..catalog import DEFAULT_THICK_LAYER_LLR
    from .refine import thick_llr_argument
    p.add_argument("--veto-thick-llr", type=thick_llr_argument, default=DEFAULT_THICK_LAYER_LLR,
                   metavar="LLR",
                   help=f"trained rows refine with the appearance veto's thick-layer rule at this "
                        f"evidence threshold (as `scorerefine refine --veto-thick-llr`; default "
                        f"{DEFAULT_THICK_LAYER_LLR:g}, 'off' switches it off); the report says so")
    p.add_argument("--no-confidence", dest="confidence", action="store_false",
                   help="trained rows refine without the confidence rule (as `scorerefine refine "
                        "--no-confidence`: every added piece of the proposal kept); the report "
                        "says so")
    p.add_argument("--add-threshold", type=float, default=None, metavar="P",
                   help="trained rows add voxels from this probability (as `scorerefine refine "
                        "--add-threshold`; default: each model's training mode's, 0.4 for score, "
                        "0.5 for the others); the report says so")
    p.add_argument("--loss-weights", default=None, metavar="SPEC",
                   help="SCORE loss weights of the rows trained in the score mode, as `scorerefine "
                        "train --loss-weights` takes them (e.g. organs); default: the loss "
                        "defaults; the report says so")
    p.add_argument("--train-only", action="store_true",
                   help="train (with --reuse-models: or reuse) every row's models in --workdir and "
                        "stop, without evaluation or report; a later run with --reuse-models "
                        "evaluates them and writes the report")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only rewrite the markdown of a generated report from its JSON twin (its "
                        "figures, date and command; nothing is measured), to --out or beside it; "
                        "with --with-report, the other presets' targets it states are re-read "
                        "from those reports (and its JSON twin updated)")
    p.add_argument("--with-report", type=Path, action="append", default=None, metavar="JSON",
                   help="state another preset's targets in this report, read from the JSON twin "
                        "of its own generated report (e.g. docs/benchmark-real.json); repeatable")
    p.add_argument("--efficiency", type=float, nargs="*", default=None, metavar="SHARE",
                   help="annotation efficiency: also train ratings, scribbles, hybrid and dense on "
                        "these shares of the training cases (default 0.25 0.5 1) and report test "
                        "Dice against expert minutes (table + PNG plot beside the report); without "
                        "--rows the rows are score, score_noisy, scribble, scribble_noisy, hybrid, "
                        "hybrid_fixed and full")


def run(args: argparse.Namespace) -> int:
    from ..catalog import DEFAULT_THICK_LAYER_LLR
    if getattr(args, "render", None) is not None:
        from ..benchmark import render_report
        others = getattr(args, "with_report", None)
        print(f"wrote {render_report(args.render, args.out, with_reports=others)}"
              + (f" and {args.render} (the other reports' targets re-read)" if others else ""))
        return 0
    if args.preset == "perf":
        from ..perf import run_command
        return run_command(args)
    from ..benchmark import other_report_summary, run_benchmark, write_report
    from ..pipeline import format_table
    from ..progress import CancelToken

    from ..efficiency import DEFAULT_FRACTIONS, EFFICIENCY_ROWS
    from ..errors import InputError

    efficiency = getattr(args, "efficiency", None)
    if efficiency is not None:
        efficiency = tuple(efficiency) or DEFAULT_FRACTIONS
        bad = [f for f in efficiency if not 0.0 < f <= 1.0]
        if bad:
            raise InputError(f"--efficiency takes shares of the training cases in (0, 1], got {bad}; "
                             f"e.g. --efficiency 0.25 0.5 1.")
    steps = getattr(args, "steps", None)
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}.")
    seeds = getattr(args, "seeds", 1) or 1
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}.")
    if seeds > 1 and efficiency is not None:
        raise InputError("--seeds applies to the benchmark rows, not to the --efficiency budgets; "
                         "run the two separately.")
    rows = args.rows or (EFFICIENCY_ROWS if efficiency else None)
    others = [other_report_summary(p) for p in getattr(args, "with_report", None) or []]
    if args.out is None:
        args.out = Path("docs/efficiency.md" if efficiency else "docs/benchmark.md")
    cancel = CancelToken()
    cancel.install_signal_handlers()
    report = run_benchmark(args.preset, args.workdir, device=args.device, progress=args.progress,
                           cancel=cancel, rows=rows, steps=steps, efficiency=efficiency,
                           reuse_models=getattr(args, "reuse_models", False), seeds=seeds,
                           veto_thick_llr=getattr(args, "veto_thick_llr", DEFAULT_THICK_LAYER_LLR),
                           score_loss=getattr(args, "loss_weights", None),
                           confidence=getattr(args, "confidence", True),
                           add_threshold=getattr(args, "add_threshold", None),
                           train_only=getattr(args, "train_only", False))
    if getattr(args, "train_only", False):
        for name, path in report["trained"].items():
            print(f"{name}: {path}" + (" (reused)" if name in report["reused_models"] else ""))
        print(f"trained only; write the report with the same command, --reuse-models and without "
              f"--train-only")
        return 0
    if others:
        report["other_reports"] = others
    command = "scorerefine " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if Path(sys.argv[0]).name.startswith("scorerefine") or (
            Path(sys.argv[0]).name == "cli.py" and "benchmark" in sys.argv[1:2]) \
        else _command_of(args, rows, steps, efficiency)
    md, js = write_report(report, args.out, command)
    print(format_table(report["rows"]))
    for t in report["targets"]:
        print(f"target: {t['target']}: {t['value']:.4f} -> {'met' if t['met'] else 'MISSED'}")
    print(f"wrote {md} and {js}")
    return 0


def _command_of(args, rows, steps, efficiency) -> str:
    """The command line the parsed settings stand for (when not run as ``scorerefine``)."""
    from ..catalog import DEFAULT_THICK_LAYER_LLR
    parts = ["scorerefine", "benchmark", "--preset", args.preset]
    if steps is not None:
        parts += ["--steps", str(steps)]
    if (getattr(args, "seeds", 1) or 1) > 1:
        parts += ["--seeds", str(args.seeds)]
    thick = getattr(args, "veto_thick_llr", DEFAULT_THICK_LAYER_LLR)
    if thick != DEFAULT_THICK_LAYER_LLR:
        parts += ["--veto-thick-llr", "off" if thick is None else f"{thick:g}"]
    if getattr(args, "loss_weights", None):
        parts += ["--loss-weights", args.loss_weights]
    if not getattr(args, "confidence", True):
        parts += ["--no-confidence"]
    if getattr(args, "add_threshold", None) is not None:
        parts += ["--add-threshold", f"{args.add_threshold:g}"]
    if efficiency:
        parts += ["--efficiency", *(f"{f:g}" for f in efficiency)]
    if args.rows:
        parts += ["--rows", *rows]
    for p in getattr(args, "with_report", None) or []:
        parts += ["--with-report", str(p)]
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)
