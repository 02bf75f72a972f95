"""``scorerefine quality``: the region-quality predictor (issue 11, docs/quality-predictor.md).

``quality train DATASET --out quality.pt``: synthetic corruptions of every reference mask in the
dataset (each region gets a known score and error type), then, when cases have people's ratings in
feedback.json, a short fine-tune on the rated regions of the initial masks (the synthetic samples
stay in at a lower weight).

``--corruption realistic|mixed`` adds whole-case errors of the real-CT error model, ``--with-initial``
the cases' own initial masks (scored against the reference as the simulated rater does).

``quality predict DATASET --model quality.pt``: per-region suggestions written as the
``suggested`` model rater in each case's feedback.json (people's ratings are never touched), and
a per-case summary with how many regions are confidently good.

``quality benchmark --preset quick|real``: simulated active learning
(:mod:`SCORERefineLib.quality.active_learning`), report + JSON + PNG in docs/.
"""

from __future__ import annotations

import argparse
import sys

HELP = "train the region-quality predictor, or write its suggested ratings (issue 11)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="quality_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train on synthetic corruptions of the reference masks, then "
                                     "fine-tune on rated regions when feedback exists")
    t.add_argument("dataset", help="dataset folder (cases/<id>/image, initial, reference, feedback.json)")
    t.add_argument("--out", required=True, help="quality checkpoint to write (e.g. quality.pt)")
    t.add_argument("--steps", type=int, default=1200, help="steps on synthetic samples (default 1200)")
    t.add_argument("--finetune-steps", type=int, default=None,
                   help="steps on rated regions (default steps/3; 0: no fine-tuning)")
    t.add_argument("--network", choices=("tiny", "small"), default="small",
                   help="tiny (tests) or small (default)")
    t.add_argument("--init", default=None, help="start from this quality checkpoint")
    t.add_argument("--corruptions", type=int, default=12,
                   help="corrupted copies of each reference (default 12; one sample per region each)")
    t.add_argument("--corruption", choices=("regions", "realistic", "mixed"), default="realistic",
                   help="synthetic masks: per-region corruptions of the reference, whole-case "
                        "errors of the real-CT error model with regions split from the corrupted "
                        "mask, or half each (docs/quality-predictor.md)")
    t.add_argument("--with-initial", action="store_true",
                   help="also learn from each case's own initial.nii.gz, its regions split from it "
                        "and scored against reference.nii.gz as the simulated rater does (the "
                        "segmenter's real errors; best measured transfer, docs/quality-predictor.md)")
    t.add_argument("--n-regions", type=int, default=12,
                   help="regions split from each reference for the synthetic samples (default 12)")
    t.add_argument("--synthetic-weight", type=float, default=0.3,
                   help="weight of synthetic samples while fine-tuning on ratings (default 0.3)")
    t.add_argument("--batch", type=int, default=16, help="crops per step (default 16)")
    t.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="bar on a terminal, json: one JSON object per line on stdout")
    t.add_argument("--case", nargs="+", metavar="ID", help="only these cases")
    t.set_defaults(_quality=run_train)

    p = sub.add_parser("predict", help="write the predictor's suggestions as the 'suggested' "
                                       "rater in each case's feedback.json")
    p.add_argument("dataset", help="dataset folder (cases/<id>/image, initial, regions)")
    p.add_argument("--model", required=True, help="quality checkpoint (from `quality train`)")
    p.add_argument("--case", nargs="+", metavar="ID", help="only these cases")
    add_goodness_arguments(p)
    p.add_argument("--rater", default="suggested", help="model rater name (default 'suggested')")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(_quality=run_predict)

    b = sub.add_parser("benchmark", help="simulated active learning: Dice gain after k ratings per "
                                         "case for random order, uncertainty order and uncertainty "
                                         "order with filled-in ratings; the predictor's accuracy")
    b.add_argument("--preset", default="quick", choices=("smoke", "quick", "real", "real_smoke"),
                   help="smoke/real_smoke (tests, seconds), quick (phantoms) or real (real-CT "
                        "cohort); about 15 minutes each for quick and real on 2 CPU cores")
    b.add_argument("--out", default=None,
                   help="markdown report (default docs/active-learning-<cohort>.md); its .json "
                        "twin and .png curve go beside it")
    b.add_argument("--workdir", default=None, help="where cohorts and models go (default: a temporary folder)")
    b.add_argument("--steps", type=int, default=None, help="SCORE steps per arm (default: the preset's)")
    b.add_argument("--ks", default=None,
                   help="ratings per case, comma separated, 'all' for every region (e.g. 0,3,6,all)")
    b.set_defaults(_quality=run_benchmark)


def add_goodness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=int, default=4, choices=(1, 2, 3, 4, 5),
                   help="'good' means score >= this (default 4)")
    p.add_argument("--p-min", type=float, default=0.9,
                   help="confidently good: P(score >= min-score) >= this (default 0.9)")


def run(args: argparse.Namespace) -> int:
    return int(args._quality(args) or 0)


# ---------------------------------------------------------------------------- helpers

def select_cases(dataset, case_ids):
    from ..case import get_case, list_cases
    return [get_case(dataset, c) for c in case_ids] if case_ids else list_cases(dataset)


def require_regions(cases, dataset) -> None:
    from ..errors import InputError
    missing = [c.case_id for c in cases if not c.has_regions]
    if missing:
        raise InputError(f"no regions.nii.gz in case(s) {', '.join(missing)}; run `scorerefine "
                         f"regions {dataset}` first (or pick cases with --case).")


def load_model(path, device: str = "cpu"):
    """The quality model and its metadata; a clear CheckpointError for anything else."""
    from pathlib import Path

    from ..errors import CheckpointError
    from ..quality.train import load_quality_model
    if not Path(path).is_file():
        raise CheckpointError(f"no quality model at {path}; train one with `scorerefine quality "
                              f"train DATASET --out {path}`.")
    return load_quality_model(path, device=device)


def case_predictions(case, model, meta, device: str = "cpu"):
    """``(initial, regions, {region: QualityPrediction})`` for one case's initial mask."""
    from ..quality.predict import predict_case
    image = case.load_image()
    initial = case.load_initial(like=image)
    regions = case.load_regions(like=image)
    return initial, regions, predict_case(model, meta, image, initial, regions, device=device)


# ---------------------------------------------------------------------------- train

def run_train(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..errors import InputError
    from ..feedback import load_feedback
    from ..progress import CancelToken
    from ..quality.data import mask_samples, rated_samples, synthetic_samples
    from ..quality.network import QualityConfig, quality_config
    from ..quality.train import train_quality
    from ..regions import RegionParams

    if args.steps < 0 or (args.finetune_steps is not None and args.finetune_steps < 0):
        raise InputError("--steps and --finetune-steps must be >= 0.")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.init is not None:
        _, meta0 = load_model(args.init)
        config = QualityConfig.from_dict(meta0["network"])
    else:
        config = quality_config(args.network)
    cases = select_cases(args.dataset, args.case)
    rng = np.random.default_rng(args.seed)
    synthetic, rated = [], []
    for case in cases:
        image = None
        if case.has_reference:
            image = case.load_image()
            reference = case.load_reference(like=image)
            synthetic += synthetic_samples(image, reference.array, config, rng,
                                           n_corruptions=args.corruptions, case_id=case.case_id,
                                           region_params=RegionParams(n_regions=args.n_regions),
                                           corruption=args.corruption)
            if args.with_initial:
                synthetic += mask_samples(image, case.load_initial(like=image).array,
                                          reference.array, config,
                                          RegionParams(n_regions=args.n_regions), case.case_id)
        if case.has_feedback and case.has_regions:
            consensus = load_feedback(case.feedback_path).consensus()   # people only
            if consensus:
                if image is None:
                    image = case.load_image()
                initial = case.load_initial(like=image)
                regions = case.load_regions(like=image)
                rated += rated_samples(image, initial.array, regions.array, consensus, config,
                                       case_id=case.case_id)
    if not synthetic and not rated:
        raise InputError(f"nothing to train the quality predictor on in {args.dataset}: no case has "
                         f"reference.nii.gz (synthetic corruptions) or people's ratings in "
                         f"feedback.json with regions.nii.gz.")
    if not synthetic and args.init is None:
        raise InputError("no case has reference.nii.gz, so there are no synthetic samples to "
                         "pre-train on; give --init quality.pt to fine-tune on the ratings alone.")
    cancel = CancelToken()
    cancel.install_signal_handlers()
    common = dict(batch_size=args.batch, lr=args.lr, seed=args.seed, progress=args.progress,
                  cancel=cancel, device=args.device, num_threads=args.threads)
    init = args.init
    out = None
    if synthetic and args.steps > 0:
        out = train_quality(synthetic, args.out, steps=args.steps, config=config, init=init,
                            extra_metadata={"stage": "synthetic", "n_synthetic": len(synthetic),
                                            "n_rated": 0}, **common)
        init = str(out)
        _say(args, f"synthetic stage: {len(synthetic)} samples, {args.steps} steps")
    ft_steps = max(1, args.steps // 3) if args.finetune_steps is None else args.finetune_steps
    if rated and ft_steps > 0 and not cancel.cancelled:
        for s in synthetic:
            s.weight = float(args.synthetic_weight)
        samples = rated + (synthetic if args.synthetic_weight > 0 else [])
        out = train_quality(samples, args.out, steps=ft_steps, config=config, init=init,
                            extra_metadata={"stage": "fine-tuned on ratings",
                                            "n_synthetic": len(synthetic), "n_rated": len(rated)},
                            **common)
        _say(args, f"fine-tune stage: {len(rated)} rated regions (+{len(synthetic)} synthetic at "
                   f"weight {args.synthetic_weight:g}), {ft_steps} steps")
    if out is None:
        raise InputError("no training steps were run (--steps 0 and nothing to fine-tune on).")
    if cancel.cancelled:
        from ..errors import Cancelled
        raise Cancelled(f"the weights so far are in {out}")
    _say(args, f"quality checkpoint written: {out}")
    return 0


def _say(args, line: str) -> None:
    if args.progress != "json":
        print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- predict

def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import InputError
    from ..feedback import load_feedback
    from ..quality.predict import order_by_uncertainty
    from ..quality.suggestions import write_suggestions

    if not 0.0 <= args.p_min <= 1.0:
        raise InputError(f"--p-min must be a probability in [0, 1], got {args.p_min}.")
    cases = select_cases(args.dataset, args.case)
    require_regions(cases, args.dataset)
    taken = [c.case_id for c in cases if c.has_feedback
             and args.rater in (fb := load_feedback(c.feedback_path)).raters
             and not fb.is_model(args.rater)]
    if taken:
        raise InputError(f"rater '{args.rater}' holds a person's ratings in case(s) "
                         f"{', '.join(taken)}; suggestions are never written over them. Choose "
                         f"another --rater. Nothing was written.")
    model, meta = load_model(args.model, device=args.device)
    total = total_good = 0
    for case in cases:
        _, regions, preds = case_predictions(case, model, meta, device=args.device)
        labels = sorted(int(v) for v in np.unique(regions.array) if v > 0)
        info = load_feedback(case.feedback_path).region_info if case.has_feedback else {}
        write_suggestions(case.feedback_path, preds, case.case_id, labels, region_info=info,
                          rater=args.rater)
        good = [r for r in preds if preds[r].p_good(args.min_score) >= args.p_min]
        doubtful = order_by_uncertainty(preds)[:3]
        mean = float(np.mean([p.expected_score for p in preds.values()])) if preds else float("nan")
        total += len(preds)
        total_good += len(good)
        print(f"{case.case_id}: {len(preds)} regions suggested (rater '{args.rater}'), "
              f"{len(good)} confidently good (P(score>={args.min_score})>={args.p_min:g}), "
              f"mean expected score {mean:.2f}, most doubtful: "
              f"{', '.join(str(r) for r in doubtful) or '-'}", flush=True)
    print(f"{len(cases)} case(s), {total} regions, {total_good} confidently good", flush=True)
    return 0


# ---------------------------------------------------------------------------- benchmark

def run_benchmark(args: argparse.Namespace) -> int:
    import shlex
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from ..errors import InputError
    from ..quality.active_learning import ALL, PRESETS, run_active_learning, savings_sentence, write_report

    cfg = PRESETS[args.preset]
    if args.steps is not None:
        if args.steps < 1:
            raise InputError(f"--steps must be at least 1, got {args.steps}.")
        cfg = replace(cfg, steps=int(args.steps))
    if args.ks:
        try:
            ks = tuple(ALL if k.strip() == "all" else int(k) for k in args.ks.split(",") if k.strip())
        except ValueError:
            raise InputError(f"--ks takes whole numbers and 'all', comma separated (e.g. 0,3,6,all); "
                             f"got {args.ks!r}.") from None
        if not ks or any(k < 0 and k != ALL for k in ks):
            raise InputError(f"--ks needs numbers >= 0 or 'all', got {args.ks!r}.")
        cfg = replace(cfg, ks=ks)
    out = Path(args.out or f"docs/active-learning-{'real' if cfg.cohort == 'real' else 'phantoms'}.md")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="scorerefine-al-"))
    report = run_active_learning(cfg, work, log=lambda line: print(line, file=sys.stderr, flush=True))
    command = "scorerefine quality benchmark " + " ".join(
        shlex.quote(a) for a in sys.argv[sys.argv.index("benchmark") + 1:]) if "benchmark" in sys.argv \
        else f"scorerefine quality benchmark --preset {args.preset}"
    md, js, png = write_report(report, out, command)
    print(savings_sentence(report))
    print(f"report: {md} (+ {js.name}, {png.name})")
    return 0
