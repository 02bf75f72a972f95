"""``scorerefine phantoms``: write a synthetic humerus cohort with known truth."""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import InputError
from ..phantoms import COHORT_FILE, PRESETS, load_cohort, make_cohort

HELP = ("write a synthetic humerus CT cohort (image, TotalSegmentator-like initial mask, "
        "reference) with known, per-case error strengths")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset",
                        help="dataset folder to write (cases/case_000, ... and cohort.json)")
    parser.add_argument("--n", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="tiny: ~40x32x32 voxels for tests; default: 96x64x64 voxels "
                             "(z, y, x), ~2 mm slices, ~1.2 mm in-plane (default)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite case folders of the same names")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display (default bar)")


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    from ..progress import CancelToken
    cancel = CancelToken()
    cancel.install_signal_handlers()
    cases = make_cohort(args.dataset, args.n, args.seed, preset=args.preset,
                        overwrite=args.force, progress=args.progress, cancel=cancel)
    cohort = load_cohort(args.dataset)
    dice = np.array([c["initial_dice"] for c in cohort["cases"]])
    shape = cohort["cases"][0]["params"]["shape_zyx"]
    sp = np.array([c["params"]["spacing_zyx"] for c in cohort["cases"]])
    present = {k: sum(1 for c in cohort["cases"] if c["errors"][k]["strength"] > 0)
               for k in cohort["cases"][0]["errors"]}
    print(f"wrote {len(cases)} phantom case(s) ({args.preset} preset, seed {args.seed}) to "
          f"{args.dataset}/cases; parameters in {args.dataset}/{COHORT_FILE}")
    print(f"  grid {shape[0]}x{shape[1]}x{shape[2]} (z, y, x), spacing z {sp[:, 0].min():.2f}-"
          f"{sp[:, 0].max():.2f} mm, in-plane {sp[:, 1:].min():.2f}-{sp[:, 1:].max():.2f} mm")
    print(f"  initial Dice vs reference: mean {dice.mean():.3f} (min {dice.min():.3f}, "
          f"max {dice.max():.3f})")
    print("  cases with each error: " + ", ".join(f"{k} {v}" for k, v in present.items()))
    return 0
