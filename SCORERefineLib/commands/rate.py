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

HELP = ("rate each case's regions with the simulated rater (needs reference.nii.gz), or print "
        "the order to rate them in (--order uncertainty --model quality.pt)")


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
    parser.add_argument("--order", choices=("uncertainty",), default=None,
                        help="print, per case, the regions in the order to rate them (the quality "
                             "predictor's most uncertain first; confidently good ones last, "
                             "flagged); writes nothing. Needs --model")
    parser.add_argument("--model", default=None, help="quality checkpoint for --order")
    parser.add_argument("--device", default="cpu", help="device for --model (default cpu)")
    from .quality import add_goodness_arguments
    add_goodness_arguments(parser)


def case_seed(seed: int, case_id: str) -> int:
    """A per-case seed: reproducible, different between cases of one run."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(case_id.encode())])
               .generate_state(1)[0])


def run(args: argparse.Namespace) -> int:
    if args.order or args.model:
        return run_order(args)
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


def run_order(args: argparse.Namespace) -> int:
    """``--order uncertainty``: regions by decreasing entropy of the predicted score, regions a
    person already rated left out, confidently good regions moved last and flagged."""
    from .quality import case_predictions, load_model, require_regions, select_cases
    from ..quality.predict import order_by_uncertainty

    if not args.order or not args.model:
        raise InputError("--order uncertainty and --model quality.pt go together.")
    if args.simulate:
        raise InputError("--order only prints an order and writes nothing; run --simulate "
                         "separately.")
    if not 0.0 <= args.p_min <= 1.0:
        raise InputError(f"--p-min must be a probability in [0, 1], got {args.p_min}.")
    cases = select_cases(args.dataset, args.case)
    require_regions(cases, args.dataset)
    model, meta = load_model(args.model, device=args.device)
    for case in cases:
        _, _, preds = case_predictions(case, model, meta, device=args.device)
        rated = []
        if case.has_feedback:
            fb = load_feedback(case.feedback_path)
            rated = sorted({r for n in fb.human_raters() for r in fb.raters[n]})
        order = order_by_uncertainty(preds, exclude=rated)
        good = {r for r in order if preds[r].p_good(args.min_score) >= args.p_min}
        order = [r for r in order if r not in good] + [r for r in order if r in good]
        print(f"{case.case_id}: rate {len(order)} region(s) in this order"
              + (f" ({len(rated)} already rated by people: {', '.join(map(str, rated))})"
                 if rated else ""), flush=True)
        for i, r in enumerate(order, 1):
            p = preds[r]
            flag = "  [confidently good]" if r in good else ""
            print(f"  {i:3d}. region {r:3d}  entropy {p.entropy:.3f}  suggested {p.score} "
                  f"{p.error:<5s}  P(score>={args.min_score}) {p.p_good(args.min_score):.2f}{flag}",
                  flush=True)
    return 0
