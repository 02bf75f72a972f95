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
                        "table, real_smoke: its test-sized version; perf: speed and memory at "
                        "real sizes -> docs/performance.md")
    p.add_argument("--out", type=Path, default=Path("docs/benchmark.md"),
                   help="markdown report (a JSON twin is written beside it)")
    p.add_argument("--workdir", type=Path, default=Path("benchmark_output"),
                   help="where cohorts, models and predictions go")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--rows", nargs="+", choices=sorted(ROW_TRAINING),
                   help="trained rows to run (default: all); rows 1-2 always run")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
    p.add_argument("--reuse-models", action="store_true",
                   help="use a row's model from an earlier run in --workdir when it was trained "
                        "with the same settings (e.g. after a change to refinement or the guard); "
                        "the report says which rows were reused")


def run(args: argparse.Namespace) -> int:
    if args.preset == "perf":
        from ..perf import run_command
        return run_command(args)
    from ..benchmark import run_benchmark, write_report
    from ..pipeline import format_table
    from ..progress import CancelToken

    cancel = CancelToken()
    cancel.install_signal_handlers()
    report = run_benchmark(args.preset, args.workdir, device=args.device, progress=args.progress,
                           cancel=cancel, rows=args.rows,
                           reuse_models=getattr(args, "reuse_models", False))
    command = "scorerefine " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if Path(sys.argv[0]).name.startswith("scorerefine") else f"scorerefine benchmark --preset {args.preset}"
    md, js = write_report(report, args.out, command)
    print(format_table(report["rows"]))
    for t in report["targets"]:
        print(f"target: {t['target']}: {t['value']:.4f} -> {'met' if t['met'] else 'MISSED'}")
    print(f"wrote {md} and {js}")
    return 0
