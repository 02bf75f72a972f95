"""``scorerefine refine``: refine masks with a trained refiner (or the classical baseline).

One case from files::

    scorerefine refine --model model.pt --image ct.nii.gz --mask seg.nii.gz --label 69 --out refined.nii.gz

Every case of a dataset (writes ``cases/<id>/predictions/<name>.nii.gz`` and ``<name>.json``)::

    scorerefine refine --model model.pt --dataset DATASET [--name refined] [--case ID ...]

``--model classical`` (or ``--classical``) runs the non-learned baseline (closing, hole filling,
largest component) instead of a network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..catalog import BUILTIN_REFINERS, DEFAULT_THICK_LAYER_LLR
from ..errors import InputError

HELP = "refine initial masks with a trained refiner (--model model.pt) or the classical baseline"

CLASSICAL = "classical"


def thick_llr_argument(text: str):
    """argparse type of ``--veto-thick-llr``: a number or ``off``."""
    from ..refiners import parse_thick_llr
    try:
        return parse_thick_llr(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("method")
    what.add_argument("--model", metavar="MODEL",
                      help="checkpoint written by `scorerefine train`, or a built-in refiner: "
                           + "; ".join(f"'{e.name}' ({e.description})" for e in BUILTIN_REFINERS.values()))
    what.add_argument("--also-model", action="append", default=[], metavar="MODEL",
                      help="another checkpoint of the same setting (e.g. trained with another "
                           "--seed); repeat it. The refinement then uses the mean probability of "
                           "all the models (an ensemble), then the guard")
    what.add_argument("--classical", action="store_true", help="same as --model classical")
    one = parser.add_argument_group("one case from files")
    one.add_argument("--image", type=Path, help="CT (NIfTI/NRRD, HU); needed with a network")
    one.add_argument("--mask", type=Path, help="initial segmentation on the CT grid")
    one.add_argument("--label", type=int,
                     help="label to refine in a multi-label mask (e.g. 69 = humerus_left)")
    one.add_argument("--out", type=Path, help="refined mask to write (.nii.gz)")
    many = parser.add_argument_group("a dataset")
    many.add_argument("--dataset", type=Path, help="dataset folder (holds cases/<case_id>/)")
    many.add_argument("--name", help="prediction name (default: 'refined', or 'classical' with "
                                     "the classical baseline)")
    many.add_argument("--case", nargs="+", metavar="ID", help="only these cases")
    net = parser.add_argument_group("network inference")
    net.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    net.add_argument("--margin-mm", type=float, default=10.0,
                     help="only voxels within this distance of the mask's bounding box may change "
                          "(default 10)")
    net.add_argument("--threshold", type=float, default=0.5,
                     help="probability threshold: a voxel of the initial mask is kept where the "
                          "network's probability is at least this (0.5)")
    net.add_argument("--add-threshold", type=float, default=None, metavar="P",
                     help="a voxel outside the initial mask is added where the network's "
                          "probability is at least this (default: the model's training mode's, "
                          "0.4 for score; --threshold for the other modes)")
    net.add_argument("--overlap", type=float, default=0.25,
                     help="sliding-window overlap in [0, 1) (default 0.25)")
    net.add_argument("--sw-batch-size", type=int, default=4,
                     help="windows per forward pass (default 4: batched windows run several times "
                          "faster per window than single ones on a CPU; raise on a large GPU, "
                          "lower to 1 if memory is short)")
    net.add_argument("--no-guard", dest="guard", action="store_false",
                     help="skip the do-no-harm guard on the network's proposal (ablations only; "
                          "by default far islands, detached components and changes beyond the "
                          "training band are clipped and reported in the sidecar's 'guard')")
    net.add_argument("--fragment-share", type=float, default=None,
                     help="after the guard, drop pieces the refinement cut off an initial component "
                          "that are smaller than this share of its largest piece (default 0.2; 0 "
                          "keeps them): the body of a cut leak that lies beyond the guard's zone")
    net.add_argument("--no-veto", dest="veto", action="store_false",
                     help="skip the appearance veto (ablations; the guard still runs). By default "
                          "added voxels that look like the surroundings, and structure-like layers "
                          "peeled off the boundary, are taken back (the case's own intensity "
                          "statistics; reported in the sidecar's 'veto')")
    net.add_argument("--veto-thick-llr", type=thick_llr_argument, default=DEFAULT_THICK_LAYER_LLR,
                     metavar="LLR",
                     help=f"also veto removed layers of any thickness whose mean appearance "
                          f"evidence is above LLR (default {DEFAULT_THICK_LAYER_LLR:g}; 'off' "
                          f"switches the rule off): a layer peeled more than two voxels deep "
                          f"otherwise passes as a cut protrusion (docs/score-loss.md, stops "
                          f"32-34)")
    net.add_argument("--no-confidence", dest="confidence", action="store_false",
                     help="keep every added piece of the network's proposal (ablations). By "
                          "default an added piece whose highest probability is below 0.9 and "
                          "that grows from a part of the mask the network doubts (mean "
                          "probability below 0.85 next to it) is taken back (reported in the "
                          "sidecar's 'confidence'; docs/score-loss.md stop 38)")
    net.add_argument("--no-tta", dest="tta", action="store_false",
                     help="one network pass per window instead of the mean over its 16 flipped "
                          "and turned views (test-time augmentation, the default: 16 times the "
                          "network time, and on real CT fewer cases made worse; "
                          "docs/score-loss.md stop 25)")
    cls = parser.add_argument_group("classical baseline")
    cls.add_argument("--closing-mm", type=float, default=2.0,
                     help="radius of the closing ball in mm (default 2)")
    parser.add_argument("--progress", choices=["bar", "json", "none"],
                        help="bar (default on a terminal), json lines for programs, none")


def _check(args: argparse.Namespace) -> bool:
    """Validate the argument combination; returns True for the classical baseline."""
    classical = bool(args.classical) or (args.model or "").strip().lower() == CLASSICAL
    if args.classical and args.model and args.model.strip().lower() != CLASSICAL:
        raise InputError(f"give either --model {args.model} or --classical, not both.")
    if not classical and not args.model:
        raise InputError("say which refiner to use: --model model.pt (from `scorerefine train`) or "
                         "--model classical for the non-learned baseline.")
    also = getattr(args, "also_model", None) or []
    if also and (classical or (args.model or "").strip().lower() in BUILTIN_REFINERS):
        raise InputError("--also-model averages trained checkpoints; the first must be one too "
                         "(--model model.pt), not a built-in refiner.")
    single = [n for n in ("image", "mask", "out", "label") if getattr(args, n) is not None]
    if args.dataset is not None:
        if single:
            raise InputError(f"--dataset refines the dataset's cases; drop "
                             f"{', '.join('--' + n for n in single)} (those are for one case).")
        return classical
    if args.case:
        raise InputError("--case needs --dataset.")
    missing = [n for n in ("mask", "out") if getattr(args, n) is None]
    if not classical and args.image is None:
        missing.insert(0, "image")
    if missing:
        raise InputError(f"missing {', '.join('--' + n for n in missing)}: give --image CT --mask "
                         f"MASK --out REFINED for one case, or --dataset DATASET.")
    if args.out.suffix not in (".gz", ".nii", ".nrrd"):
        raise InputError(f"--out {args.out} should be a NIfTI (.nii.gz/.nii) or NRRD (.nrrd) file.")
    return classical


def _report(info: dict, case_id: str, mode: str) -> None:
    from ..predictions import format_summary

    if mode == "json":
        record = {"stage": "refine", "event": "case", "case": case_id}
        record.update({k: v for k, v in info.items() if k != "case_id"})
        sys.stdout.write(json.dumps(record, default=str) + "\n")
        sys.stdout.flush()
    else:
        line = format_summary(case_id, info)
        guard = info.get("guard")
        if isinstance(guard, dict) and guard.get("clipped_total"):
            line += (f"; guard clipped {guard['clipped_total']} voxel(s), "
                     f"{guard.get('components_removed', 0)} detached component(s)")
        print(line)


def _make(args: argparse.Namespace, classical: bool, mode: str, cancel):
    """The refiner the flags ask for, and a closer for its progress bar."""
    from ..refiners import make_refiner

    if classical:
        return make_refiner(CLASSICAL, closing_mm=args.closing_mm), (lambda: None)
    if args.model.strip().lower() in BUILTIN_REFINERS:
        return make_refiner(args.model), (lambda: None)
    if args.dataset is None:  # one case: a bar over its sliding windows
        from ..refiner.inference import _window_bar
        callback, close = _window_bar(mode, "refine")
    else:
        callback, close = None, (lambda: None)
    refiner = make_refiner(args.model, device=args.device, margin_mm=args.margin_mm,
                           threshold=args.threshold,
                           add_threshold=getattr(args, "add_threshold", None),
                           overlap=args.overlap,
                           sw_batch_size=args.sw_batch_size, cancel=cancel, progress=callback,
                           guard=getattr(args, "guard", True),
                           fragment_share=getattr(args, "fragment_share", None),
                           also=getattr(args, "also_model", None) or (),
                           veto=getattr(args, "veto", True), tta=getattr(args, "tta", True),
                           veto_thick_llr=getattr(args, "veto_thick_llr",
                                                  DEFAULT_THICK_LAYER_LLR),
                           confidence=getattr(args, "confidence", True))
    return refiner, close


def run(args: argparse.Namespace) -> int:
    from ..predictions import iter_predict_dataset, predict_file
    from ..progress import CancelToken

    classical = _check(args)
    mode = args.progress or ("bar" if sys.stderr.isatty() else "none")
    cancel = CancelToken()
    cancel.install_signal_handlers()
    refiner, close = _make(args, classical, mode, cancel)

    if args.dataset is None:
        try:
            info = predict_file(refiner, args.mask, args.out, image_path=args.image, label=args.label)
        finally:
            close()
        _report(info, Path(args.mask).name, mode)
        if mode != "json":
            print(f"wrote {info['out']}")
        return 0

    name = args.name or (CLASSICAL if classical else "refined")
    n = 0
    for case, _path, info, _mask in iter_predict_dataset(args.dataset, name, refiner, args.case,
                                                         progress=mode, cancel=cancel):
        _report(info, case.case_id, mode)
        n += 1
    if mode != "json":
        print(f"wrote {n} prediction(s) '{name}' under {Path(args.dataset) / 'cases'}/<id>/predictions/")
    return 0
