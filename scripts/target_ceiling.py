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
rater, as the benchmark does. ``--subdivide S:P`` (with ``--copy``; N is the preset's count
unless ``--regions`` says) rates that split once without growing the regions, cuts each region
rated <= S into P pieces (:func:`SCORERefineLib.regions.subdivide_regions`: a second, finer
rating where the first said the region is wrong) and rates the result as the benchmark does.
``--precision`` also prints the pseudo-label figures (share of the labelled removals and
additions that agree with the reference: :mod:`SCORERefineLib.refiner.pseudo_check`), e.g.::

    python scripts/target_ceiling.py W/train --preset real_abdomen_seen --subdivide 3:4 --copy /tmp/t --precision
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from SCORERefineLib import benchmark as B
from SCORERefineLib.pipeline import prepare_regions, rate_cases
from SCORERefineLib.feedback import load_feedback
from SCORERefineLib.refiner.pseudo_check import (dataset_pseudo_label_check, summarise_check,
                                                 target_ceiling)
from SCORERefineLib.regions import RegionParams, subdivide_regions
from SCORERefineLib.imageio import write_volume


def subdivide_badly_rated(cases, params: RegionParams, max_score: int, parts: int) -> int:
    """Split each case into ``params`` regions, rate them (simulated, no growing), cut the
    regions rated <= ``max_score`` into ``parts`` pieces, then rate again and grow the regions as
    the benchmark does. Returns the ratings given in both rounds."""
    n = 0
    for case in cases:
        prepare_regions([case], params)
        image = case.load_image()
        regions = case.load_regions(like=image)
        first = rate_cases([case], params, extend=False)
        bad = [r.region for r in load_feedback(case.feedback_path).ratings("simulated")
               if r.score <= max_score]
        case.feedback_path.unlink()   # a throwaway copy: the first round's ratings are counted
        finer = subdivide_regions(regions.array, image.geometry.spacing_zyx, bad, parts,
                                  params.seed)
        write_volume(regions.with_array(finer), case.regions_path, dtype=np.int16)
        second = rate_cases([case], params)   # the simulated rater rates every region again,
        pieces = second - (first - len(bad))   # a person only the pieces: the rest keep theirs
        n += first + pieces
    return n


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="a benchmark split with references, e.g. W/train")
    ap.add_argument("--regions", type=int, default=0, help="re-make N regions per case first")
    ap.add_argument("--preset", default="real", choices=sorted(B.PRESETS))
    ap.add_argument("--copy", type=Path, help="where --regions / --subdivide work (never the dataset itself)")
    ap.add_argument("--subdivide", metavar="S:P", help="cut regions rated <= S into P pieces and "
                    "rate them again (a second, finer rating)")
    ap.add_argument("--precision", action="store_true", help="also print the pseudo-label figures")
    args = ap.parse_args(argv)
    dataset = args.dataset
    if args.regions or args.subdivide:
        if args.copy is None or args.copy.resolve() == dataset.resolve():
            ap.error("--regions and --subdivide need --copy DIR (a new folder; the dataset's "
                     "ratings stay as they are)")
        if args.copy.exists():
            shutil.rmtree(args.copy)
        shutil.copytree(dataset, args.copy,
                        ignore=shutil.ignore_patterns("predictions", "feedback.json"))
        cfg = B.PRESETS[args.preset]
        params = RegionParams(method=cfg.region_method, n_regions=args.regions or cfg.n_regions,
                              band_mm=cfg.band_mm, seed=cfg.seed)
        cases = B.list_cases(args.copy)
        if args.subdivide:
            try:
                max_score, parts = (int(v) for v in args.subdivide.split(":"))
            except ValueError:
                ap.error(f"--subdivide takes S:P (e.g. 3:4), got {args.subdivide!r}")
            n = subdivide_badly_rated(cases, params, max_score, parts)
            print(f"{params.n_regions} regions per case, those rated <= {max_score} cut in "
                  f"{parts}: {n} ratings ({n / max(len(cases), 1):.1f} per case) in {args.copy}")
        else:
            prepare_regions(cases, params)
            n = rate_cases(cases, params, noise=0.0, seed=cfg.seed)
            print(f"{params.n_regions} regions per case, {n} ratings in {args.copy}")
        dataset = args.copy
    if args.precision:
        summary = summarise_check(dataset_pseudo_label_check(B.list_cases(dataset)))
        print("pseudo-labels:", {k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in summary.items()})
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
