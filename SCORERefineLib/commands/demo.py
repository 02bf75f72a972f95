"""``scorerefine demo``: the whole SCORE loop on a small synthetic cohort, with a before/after table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = ("run the SCORE loop on an embedded default: synthetic cohort, regions, simulated ratings, "
        "training, refinement of held-out cases, before/after table and PNG")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="default", help="phantom preset (tiny|default)")
    p.add_argument("--steps", type=int, default=1200, help="SCORE training steps")
    p.add_argument("--network", default="small", help="network preset (tiny|small|large)")
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"])


def _print_case_ratings(case) -> None:
    from ..calibration import ANCHORS
    from ..feedback import load_feedback
    fb = load_feedback(case.feedback_path)
    print(f"  ratings of {case.case_id} (simulated rater, from its reference):")
    for r in sorted(fb.ratings(), key=lambda r: r.region):
        print(f"    region {r.region:>2}: score {r.score} ({ANCHORS[r.score]}), error {r.error}")


def run(args: argparse.Namespace) -> int:
    from ..case import list_cases
    from ..metrics import evaluate_dataset
    from ..overlay import save_overlay
    from ..pipeline import evaluate_masks, format_table, make_split, summary_table, train_model
    from ..progress import CancelToken
    from ..refiner.trainer import TrainConfig
    from ..refiners import make_refiner
    from ..regions import RegionParams

    t_start = time.perf_counter()
    out = Path(args.out)
    params = RegionParams(seed=args.seed)
    print(f"[1/5] synthetic humerus cohort: {args.n_train} training + {args.n_test} held-out cases "
          f"({args.preset} preset) in {out}; regions ({params.method}, {params.n_regions}, "
          f"{params.band_mm} mm band); simulated ratings of the training cases")
    split = make_split(out, args.n_train, args.n_test, args.seed, args.preset, params)
    train_cases = list_cases(split.train)
    _print_case_ratings(train_cases[0])
    _, s = evaluate_dataset(split.train, "initial")
    print(f"  training cases' initial masks: Dice {s['dice']['mean']:.3f}, "
          f"HD95 {s['hd95']['mean']:.2f} mm (the rater saw these errors; the trainer never sees the "
          f"references)")

    print(f"[2/5] SCORE training from ratings only ({args.steps} steps, {args.network} network)")
    cancel = CancelToken()
    cancel.install_signal_handlers()
    config = TrainConfig(mode="score", steps=args.steps, network=args.network,
                         patch_size=tuple(args.patch), seed=args.seed, device=args.device)
    trained = train_model(split.train, out / "model.pt", config, progress=args.progress, cancel=cancel)
    print(f"  trained in {trained.seconds:.0f} s -> {trained.model}")

    print("[3/5] refining the held-out cases")
    results = [evaluate_masks(split.test, "initial", make_refiner("identity"), cancel=cancel),
               evaluate_masks(split.test, "classical", make_refiner("classical"), cancel=cancel),
               evaluate_masks(split.test, "refined", make_refiner(trained.model, args.device),
                              cancel=cancel)]

    print("[4/5] before/after on the held-out cases (against their references)")
    table = summary_table(results)
    print(format_table(table))
    per_case = {r["case"]: r for r in results[0].rows}
    for r in results[2].rows:
        b = per_case[r["case"]]
        print(f"  {r['case']}: Dice {b['dice']:.4f} -> {r['dice']:.4f}, "
              f"HD95 {b['hd95']:.2f} -> {r['hd95']:.2f} mm, ASSD {b['assd']:.3f} -> {r['assd']:.3f} mm")

    case = list_cases(split.test)[0]
    image = case.load_image()
    png = save_overlay(out / "overlay.png", image.array, image.geometry.spacing_zyx,
                       {"reference": case.load_reference(like=image).array,
                        "initial": case.load_initial(like=image).array,
                        "refined": case.load_prediction("refined", like=image).array},
                       regions=case.load_regions(like=image).array,
                       title=f"{case.case_id}: initial, SCORE-refined and reference")
    print(f"[5/5] overlay of {case.case_id}: {png}")
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0
