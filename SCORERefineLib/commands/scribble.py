"""``scorerefine scribble``: write ``scribbles.nii.gz`` per case; ``--simulate`` draws the strokes a
careful annotator would draw to correct ``initial`` towards ``reference.nii.gz``
(:func:`SCORERefineLib.scribbles.simulate_scribbles`), optionally with misplaced strokes."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "simulate scribbles (scribbles.nii.gz) from each case's reference (--simulate)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (holds cases/<case_id>/)")
    p.add_argument("--simulate", action="store_true", required=True,
                   help="simulate the strokes from reference.nii.gz (the only source for now; "
                        "draw real ones in the Slicer module)")
    p.add_argument("--n-slices", type=int, default=4, help="slices per case that get strokes (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (each case adds its index)")
    p.add_argument("--misplace", type=float, default=0.0, metavar="P",
                   help="share of strokes given the wrong label (noisy annotator), 0..1 (default 0)")
    p.add_argument("--case", nargs="+", metavar="ID", help="only these cases")
    p.add_argument("--overwrite", action="store_true", help="replace existing scribbles.nii.gz")


def run(args) -> int:
    from ..case import get_case, list_cases
    from ..errors import InputError
    from ..scribbles import misplace_strokes, simulate_scribbles, write_scribbles

    if args.n_slices < 1:
        raise InputError(f"--n-slices must be at least 1, got {args.n_slices}.")
    if not 0.0 <= args.misplace <= 1.0:
        raise InputError(f"--misplace must lie in [0, 1], got {args.misplace}.")
    cases = ([get_case(args.dataset, c) for c in args.case] if args.case
             else list_cases(args.dataset))
    no_ref = [c.case_id for c in cases if not c.has_reference]
    if no_ref:
        raise InputError(f"--simulate needs reference.nii.gz, missing in case(s) {no_ref[:20]}; "
                         f"draw scribbles for those cases instead, or leave them out with --case.")
    written, skipped = 0, 0
    for i, case in enumerate(cases):
        if case.has_scribbles and not args.overwrite:
            skipped += 1
            continue
        image = case.load_image()
        initial = case.load_initial(like=image)
        ref = case.load_reference(like=image)
        labels, info = simulate_scribbles(initial.array, ref.array, image.geometry.spacing_zyx,
                                          n_slices=args.n_slices, seed=args.seed + i)
        if args.misplace > 0:
            labels, noisy = misplace_strokes(labels, args.misplace, seed=args.seed + i)
            info = dict(info, **noisy)
        write_scribbles(image.with_array(labels), case.scribbles_path, like=image.geometry)
        written += 1
        print(json.dumps({"case": case.case_id, **{k: v for k, v in info.items()
                                                    if isinstance(v, (int, float, str))}}))
    print(f"scribbles written for {written} case(s), {skipped} kept (use --overwrite)", file=sys.stderr)
    return 0
