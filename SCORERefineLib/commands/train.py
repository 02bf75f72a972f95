"""``scorerefine train``: train the refiner from ratings (``--mode score``), references (``full``),
strokes (``scribble``) or a few dense cases plus many weak ones (``hybrid``).

Ctrl-C / SIGTERM saves a checkpoint and exits (status 130); ``--resume`` continues from it.
Several GPUs: ``torchrun --nproc-per-node N -m SCORERefineLib.cli train ...``.
"""

from __future__ import annotations

import argparse
import sys

HELP = ("train the refiner from regional ratings (score), dense references (full), scribbles "
        "(scribble) or a few dense + many weak cases (hybrid)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..catalog import TRAINING_MODES, names
    from ..refiner.network import PRESETS

    p.add_argument("dataset", help="dataset folder (cases/<id>/image.nii.gz, initial, regions, feedback.json)")
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. model.pt)")
    p.add_argument("--mode", choices=names(TRAINING_MODES), default="score",
                   help="; ".join(f"{e.name}: {e.description}" for e in TRAINING_MODES.values()))
    p.add_argument("--steps", type=int, default=900, help="optimisation steps (default 900)")
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48], metavar=("Z", "Y", "X"),
                   help="patch size in voxels (multiples of 4 tiny / 8 small / 16 large)")
    p.add_argument("--batch", type=int, default=2, help="patches per step (default 2)")
    p.add_argument("--lr", type=float, default=4e-3, help="Adam learning rate, default 4e-3 (cosine decay to lr/10)")
    p.add_argument("--network", choices=sorted(PRESETS), default="small",
                   help="network size: tiny (tests), small (CPU), large (GPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="bar on a terminal, json: one JSON object per line on stdout")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out's checkpoint (its step and optimizer state)")
    p.add_argument("--no-edge", action="store_true", help="ablation: no edge-prior input channel")
    p.add_argument("--no-direction", action="store_true", help="ablation: ignore the error type (over/under) everywhere")
    p.add_argument("--no-amount", action="store_true", help="ablation: ignore how much the score says (pseudo/amount off, direction only)")
    p.add_argument("--fill-in", metavar="RATER", default=None,
                   help="score mode: fill in unrated regions with this model rater's confident "
                        "ratings (e.g. 'suggested' from `scorerefine quality predict`), each weighted "
                        "q^2 (q: the predicted score's probability)")
    p.add_argument("--fill-in-q-min", type=float, default=None,
                   help="with --fill-in: predicted ratings below this confidence are not used (default 0.5)")
    p.add_argument("--loss-weights", default="",
                   help="SCORE loss weights, e.g. 'pseudo=1,pin=0.5,anchor=0.5,edge=0.05,pseudo_fraction=0.6' "
                        "(see docs/score-loss.md); 'organs' names the organ setting (removals only "
                        "where rated <= 2 and weighted 12, additions only <= 3, thin parts exempt): "
                        "for refiners trained and applied on the same kinds of structure, e.g. "
                        "'organs' or 'organs,pseudo_thin_mm=0'")
    g = p.add_argument_group("scribble / hybrid")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="scribble: EMA decay of the pseudo-label teacher (default 0.99)")
    g.add_argument("--dense", default=None, metavar="CASE_IDS",
                   help="hybrid: the dense cases (with reference.nii.gz), comma separated")
    g.add_argument("--dense-count", type=int, default=None, metavar="K",
                   help="hybrid: the first K cases with a reference (by id) are the dense ones")
    g.add_argument("--weak", choices=("score", "scribble"), default=None,
                   help="hybrid: the weak cases' feedback, ratings (score, default) or scribbles")
    g.add_argument("--indicator", choices=("dynamic", "fixed"), default=None,
                   help="hybrid: instance-indicator weights (dynamic, default) or all 1 (fixed, ablation)")
    g.add_argument("--indicator-every", type=int, default=None, metavar="N",
                   help="hybrid: recompute the weak-case weights every N steps (default 20)")
    g.add_argument("--indicator-start", type=int, default=None, metavar="STEP",
                   help="hybrid: weak cases join after STEP dense warm-up steps (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="write a checkpoint every K steps (0: only at the end/cancel)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations/intensity jitter")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the cores this process may run on)")
    p.add_argument("--native-spacing", action="store_true",
                   help="train every case on its own grid and record no spacing_mm (default: "
                        "cases are resampled to their median spacing, which inference then uses)")
    v = p.add_argument_group("validation and early stopping")
    v.add_argument("--val-fraction", type=float, default=None,
                   help="share of the cases held out for validation (default: none in every "
                        "mode: at 24-30 real-CT cases the split cost SCORE and full supervision "
                        "their gain; e.g. 0.2 asks for it; no validation below --val-min-cases "
                        "cases or in hybrid mode). The checkpoint keeps the best weights by the "
                        "mode's loss on the held-out cases")
    v.add_argument("--val-min-cases", type=int, default=20,
                   help="the fewest usable cases a validation split is made from (default 20: "
                        "on smaller cohorts holding cases out cost more than it gave)")
    v.add_argument("--val-every", type=int, default=100, help="steps between validations (100)")
    v.add_argument("--val-batches", type=int, default=None,
                   help="fixed held-out batches measured at each validation (default: "
                        "32; with 4 SCORE's held-out loss was noise)")
    v.add_argument("--val-patience", type=int, default=5,
                   help="validations without improvement before stopping early (5; never before "
                        "30%% of --steps)")
    p.add_argument("--appearance-mm", type=float, default=None,
                   help="score mode: mm of depth one unit of the image's appearance evidence is "
                        "worth when ranking the pseudo-labels (default 1; 0: depth only)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="batches drawn ahead in a background thread (default: 2 on CUDA, 0 on the "
                        "CPU, where the thread slowed training down on 2 cores)")


def config_from_args(args):
    """The :class:`~SCORERefineLib.refiner.trainer.TrainConfig` the parsed flags describe.

    The ablation flags and ``--loss-weights`` are settings of the chosen mode's own config; a
    flag the mode does not have is an InputError.

    Args:
        args: the parsed ``scorerefine train`` arguments.

    Returns:
        The training config.
    """
    from dataclasses import fields

    from ..errors import InputError
    from ..refiner.losses import ScoreLossWeights
    from ..refiner.modes import MODES, mode_config
    from ..refiner.trainer import TrainConfig

    given = {"no_edge": args.no_edge, "no_direction": args.no_direction, "no_amount": args.no_amount}
    if getattr(args, "appearance_mm", None) is not None:
        if args.appearance_mm < 0:
            raise InputError(f"--appearance-mm must be >= 0, got {args.appearance_mm}.")
        given["appearance_mm"] = float(args.appearance_mm)
    if args.loss_weights:
        try:
            given["weights"] = (_scribble_weights(args.loss_weights) if args.mode == "scribble"
                                else ScoreLossWeights.parse(args.loss_weights))
        except ValueError as exc:
            raise InputError(f"--loss-weights: {exc}") from exc
    dense = getattr(args, "dense", None)
    mode_flags = {"ema_decay": getattr(args, "ema_decay", None),
                  "dense_ids": [c for c in dense.split(",") if c] if dense else None,
                  "dense_count": getattr(args, "dense_count", None),
                  "weak": getattr(args, "weak", None), "indicator": getattr(args, "indicator", None),
                  "indicator_every": getattr(args, "indicator_every", None),
                  "indicator_start": getattr(args, "indicator_start", None)}
    given.update({k: v for k, v in mode_flags.items() if v is not None})
    fill_in = getattr(args, "fill_in", None)
    q_min = getattr(args, "fill_in_q_min", None)
    if q_min is not None and not 0.0 <= q_min <= 1.0:
        raise InputError(f"--fill-in-q-min must be a probability in [0, 1], got {q_min}.")
    if q_min is not None and not fill_in:
        raise InputError("--fill-in-q-min needs --fill-in RATER (e.g. --fill-in suggested).")
    given.update({k: v for k, v in (("fill_in", fill_in), ("fill_in_q_min", q_min)) if v is not None})
    if args.mode == "hybrid" and mode_flags["dense_ids"] and mode_flags["dense_count"] is not None:
        raise InputError("give either --dense CASE_IDS or --dense-count K, not both.")
    known = {f.name for f in fields(MODES[args.mode].Config)}
    foreign = [k for k, v in given.items() if v is not None and v is not False and k not in known]
    if foreign:
        names = {"weights": "loss-weights", "dense_ids": "dense"}
        flags = ", ".join("--" + names.get(k, k.replace("_", "-")) for k in foreign)
        raise InputError(f"{flags} do(es) not apply to --mode {args.mode}.")
    settings = {k: v for k, v in given.items() if k in known}
    return TrainConfig(
        mode=args.mode, mode_config=mode_config(args.mode, **settings), steps=args.steps,
        patch_size=tuple(args.patch), batch_size=args.batch, lr=args.lr, network=args.network,
        device=args.device, seed=args.seed, checkpoint_every=args.checkpoint_every,
        resume=args.resume, amp=not args.no_amp, augment=not args.no_augment,
        num_threads=args.threads, resample=not getattr(args, "native_spacing", False),
        val_fraction=_fraction(getattr(args, "val_fraction", None)),
        val_every=_positive("--val-every", getattr(args, "val_every", 100)),
        val_batches=(TrainConfig.val_batches if getattr(args, "val_batches", None) is None
                     else _positive("--val-batches", args.val_batches)),
        val_patience=_positive("--val-patience", getattr(args, "val_patience", 5)),
        val_min_cases=_positive("--val-min-cases", getattr(args, "val_min_cases", 20)),
        prefetch=(None if getattr(args, "prefetch", None) is None
                  else max(int(args.prefetch), 0)))


def _fraction(value: float | None) -> float | None:
    from ..errors import InputError

    if value is None:
        return None   # the mode's default
    if not 0.0 <= float(value) < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {value}.")
    return float(value)


def _positive(flag: str, value: int) -> int:
    from ..errors import InputError

    if int(value) < 1:
        raise InputError(f"{flag} must be at least 1, got {value}.")
    return int(value)


def _scribble_weights(text: str):
    """``ScribbleLossWeights`` from ``'pce=1,pseudo=0.5,...'`` (ValueError on an unknown key)."""
    from dataclasses import fields

    from ..refiner.scribble_losses import ScribbleLossWeights

    w = ScribbleLossWeights()
    types = {f.name: type(getattr(w, f.name)) for f in fields(w)}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise ValueError(f"'{part}': expected name=value with a name in {sorted(types)}")
        setattr(w, key, types[key](float(value)))
    return w


def run(args) -> int:
    from ..progress import CancelToken
    from ..refiner.trainer import train

    config = config_from_args(args)
    cancel = CancelToken()
    cancel.install_signal_handlers()
    out = train(args.dataset, args.out, config, progress=args.progress, cancel=cancel)
    if args.progress != "json":
        print(f"checkpoint written: {out}", file=sys.stderr)
    return 0
