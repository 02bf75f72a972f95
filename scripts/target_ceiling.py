"""How much the SCORE targets are worth, and what limits them, on a benchmark's training cases.

For the study in docs/score-loss.md ("What the ratings' targets are worth"). Run
``scorerefine benchmark --preset real --workdir W`` (or ``--preset full``) first; it builds,
splits and rates the cohort in W. Then::

    python scripts/target_ceiling.py W/train
    python scripts/target_ceiling.py W/train --regions 24 --preset real --copy /tmp/train24

prints, per case and in the mean, the whole-structure Dice gains of
:func:`SCORERefineLib.refiner.pseudo_check.target_ceiling`: the targets training uses, then with
the reference's count, the reference's ranking, both, and the reference in every region.
``--regions N`` first copies the split to ``--copy`` without its ratings, re-makes the regions
with N per case (the preset's other region settings) and rates them again with the simulated
rater, as the benchmark does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from SCORERefineLib import benchmark as B
from SCORERefineLib.pipeline import prepare_regions, rate_cases
from SCORERefineLib.refiner.pseudo_check import target_ceiling
from SCORERefineLib.regions import RegionParams


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="a benchmark split with references, e.g. W/train")
    ap.add_argument("--regions", type=int, default=0, help="re-make N regions per case first")
    ap.add_argument("--preset", default="real", choices=sorted(B.PRESETS))
    ap.add_argument("--copy", type=Path, help="where --regions works (never the dataset itself)")
    args = ap.parse_args(argv)
    dataset = args.dataset
    if args.regions:
        if args.copy is None or args.copy.resolve() == dataset.resolve():
            ap.error("--regions needs --copy DIR (a new folder; the dataset's ratings stay as they are)")
        if args.copy.exists():
            shutil.rmtree(args.copy)
        shutil.copytree(dataset, args.copy,
                        ignore=shutil.ignore_patterns("predictions", "feedback.json"))
        cfg = B.PRESETS[args.preset]
        params = RegionParams(method=cfg.region_method, n_regions=args.regions,
                              band_mm=cfg.band_mm, seed=cfg.seed)
        cases = B.list_cases(args.copy)
        prepare_regions(cases, params)
        n = rate_cases(cases, params, noise=0.0, seed=cfg.seed)
        print(f"{args.regions} regions per case, {n} ratings in {args.copy}")
        dataset = args.copy
    rows = [target_ceiling(c) for c in B.list_cases(dataset)]
    if not rows:
        print(f"no case in {dataset}")
        return 1
    keys = [k for k in rows[0] if k != "case"]
    print("case", *keys, sep="\t")
    for r in rows:
        print(r["case"], *(f"{r[k]:+.4f}" if k != "initial_dice" else f"{r[k]:.4f}" for k in keys),
              sep="\t")
    print("mean", *(f"{np.mean([r[k] for r in rows]):+.4f}" if k != "initial_dice"
                    else f"{np.mean([r[k] for r in rows]):.4f}" for k in keys), sep="\t")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
