"""``scorerefine rate``: simulated ratings from each case's reference mask (feedback.json)."""

from __future__ import annotations

import argparse
import sys
import zlib

import numpy as np

from ..case import get_case, list_cases
from ..errors import InputError
from ..feedback import load_feedback, rating_summary, save_feedback
from ..rater import SECONDS_PER_RATING, simulate_feedback

HELP = "rate each case's regions with the simulated rater (needs reference.nii.gz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset folder (holds cases/<case_id>/)")
    parser.add_argument("--simulate", action="store_true",
                        help="rate from reference.nii.gz with the simulated rater (interactive "
                             "rating happens in the SCORERefine Slicer module)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="probability of a one-step score error and, independently, of an "
                             "over/under flip per rating (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--rater", default="simulated", help="rater name (default 'simulated')")
    parser.add_argument("--seconds-per-rating", type=float, default=SECONDS_PER_RATING,
                        help=f"time recorded per rating (default {SECONDS_PER_RATING:g} s)")
    parser.add_argument("--case", nargs="+", metavar="ID", help="only these cases")
    parser.add_argument("--no-extend", dest="extend", action="store_false",
                        help="keep the regions as split; by default regions rated 1-4 then grow "
                             "on their rated error side (over: into the mask, under: out of it) "
                             "so they reach the deeper errors (regions.nii.gz is rewritten and "
                             "feedback.json's regions entry records 'extended')")


def case_seed(seed: int, case_id: str) -> int:
    """A per-case seed: reproducible, different between cases of one run."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(case_id.encode())])
               .generate_state(1)[0])


def run(args: argparse.Namespace) -> int:
    if not args.simulate:
        print("scorerefine rate: interactive rating happens in the SCORERefine module in 3D Slicer "
              "(Modules > Segmentation > SCORERefine). Use --simulate to rate from each case's "
              "reference.nii.gz instead.", file=sys.stderr)
        return 2
    if not 0.0 <= args.noise <= 1.0:
        raise InputError(f"--noise must be a probability in [0, 1], got {args.noise}.")
    cases = [get_case(args.dataset, c) for c in args.case] if args.case else list_cases(args.dataset)
    no_ref = [c.case_id for c in cases if not c.has_reference]
    no_reg = [c.case_id for c in cases if not c.has_regions]
    problems = []
    if no_ref:
        problems.append(f"no reference.nii.gz in case(s) {', '.join(no_ref)} (the simulated rater "
                        f"needs a reference; pick cases with --case)")
    if no_reg:
        problems.append(f"no regions.nii.gz in case(s) {', '.join(no_reg)} (run `scorerefine regions "
                        f"{args.dataset}` first)")
    if problems:
        raise InputError("; ".join(problems) + ". Nothing was rated.")

    for case in cases:
        initial = case.load_initial()
        regions = case.load_regions(like=initial)
        reference = case.load_reference(like=initial)
        info = {}
        if case.has_feedback:
            info = load_feedback(case.feedback_path).region_info
        fb = simulate_feedback(case.case_id, initial, reference, regions, noise=args.noise,
                               seed=case_seed(args.seed, case.case_id), rater=args.rater,
                               seconds_per_rating=args.seconds_per_rating, region_info=info)
        save_feedback(fb, case.feedback_path)
        line = rating_summary(fb)
        if getattr(args, "extend", True):
            from ..regions import extend_case_regions
            rec = extend_case_regions(case)
            if rec.get("regions_grown"):
                line += (f"; regions {', '.join(map(str, rec['regions_grown']))} extended "
                         f"(+{rec['voxels_added']} voxels)")
        print(line, flush=True)
    return 0
