"""Accuracy of the quality predictor on held-out phantoms: ``python -m SCORERefineLib.quality.evaluate``.

Trains on synthetic corruptions of the reference masks of training phantoms, then predicts on
held-out phantoms in two settings:

``synthetic``
    held-out reference masks corrupted the same way (the truth is the corruption's region Dice);
``initial``
    the held-out phantoms' own TotalSegmentator-like initial masks split into regions as in the
    SCORE loop (``regions.split_regions`` of the initial mask), the truth being what the
    simulated rater says (region Dice against the reference, calibration table, dominant side).

Metrics: score MAE of the most probable score and of the expected score, exact-score accuracy,
Spearman between the expected score and the true region Dice, over/under accuracy on regions
whose true score is below 5 (the suggestion's error type, ``none`` when it predicts a 5, must be
the truth's), direction accuracy on the same regions (only the likelier of over/under counts), and
calibration (expected calibration error of the top score, 10
bins).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional, Sequence

import numpy as np

from ..phantoms import get_preset, make_phantom
from ..rater import region_agreement
from ..calibration import dice_to_score
from ..regions import RegionParams, split_regions
from .data import mask_samples, synthetic_samples
from .network import QualityConfig, quality_config
from .predict import predict_case, predict_crops
from .train import load_quality_model, train_quality


def _ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total)


def accuracy(rows: list[dict]) -> dict:
    """Metrics over rows ``{"score", "error", "dice", "pred_score", "expected", "pred_error",
    "confidence"}``."""
    from scipy.stats import spearmanr

    s = np.array([r["score"] for r in rows]); ps = np.array([r["pred_score"] for r in rows])
    ex = np.array([r["expected"] for r in rows]); d = np.array([r["dice"] for r in rows])
    conf = np.array([r["confidence"] for r in rows])
    err = [(r["error"], r["pred_error"]) for r in rows if r["score"] < 5]
    # the direction alone: the likelier of over/under, whatever score was predicted
    direction = [r["error"] == ("over" if r["p_over"] >= r["p_under"] else "under")
                 for r in rows if r["score"] < 5 and "p_over" in r]
    rho = spearmanr(ex, d).correlation if len(set(d)) > 1 else float("nan")
    return {"n": len(rows), "score_mae": float(np.abs(ps - s).mean()),
            "expected_score_mae": float(np.abs(ex - s).mean()),
            "score_accuracy": float((ps == s).mean()), "spearman_dice": float(rho),
            "over_under_accuracy": float(np.mean([a == b for a, b in err])) if err else float("nan"),
            "n_errors": len(err),
            "direction_accuracy": float(np.mean(direction)) if direction else float("nan"),
            "ece": _ece(conf, (ps == s).astype(float)),
            "true_score_counts": np.bincount(s, minlength=6)[1:].tolist()}


def _row(score, error, dice, p) -> dict:
    return {"score": int(score), "error": error, "dice": float(dice), "pred_score": p.score,
            "expected": p.expected_score, "pred_error": p.error, "confidence": p.confidence,
            "p_over": float(p.error_probs[0]), "p_under": float(p.error_probs[1])}


def evaluate_predictor(train_seeds: Sequence[int] = range(0, 6), test_seeds: Sequence[int] = range(100, 104),
                       preset: str = "default", network: str = "small", steps: int = 400,
                       n_corruptions: int = 6, n_regions: int = 12, out: str = "quality_eval.pt",
                       num_threads: Optional[int] = 1, seed: int = 0,
                       corruption: str = "regions", with_initial: bool = False,
                       model_path: Optional[str] = None) -> dict:
    """Train on ``train_seeds`` phantoms, evaluate on ``test_seeds`` (see the module docstring)."""
    t0 = time.monotonic()
    cfg = quality_config(network)
    rng = np.random.default_rng(seed)
    params = RegionParams(n_regions=n_regions)
    conf = get_preset(preset)
    samples = []
    for s in ([] if model_path else train_seeds):   # model_path: evaluate that checkpoint only
        p = make_phantom(s, conf)
        samples += synthetic_samples(p.image, p.reference.array, cfg, rng, n_corruptions,
                                     params, case_id=f"train_{s}", corruption=corruption)
        if with_initial:   # the training phantom's own initial mask (its errors, the rater's truth)
            samples += mask_samples(p.image, p.initial.array, p.reference.array, cfg, params,
                                    case_id=f"train_{s}")
    t_data = time.monotonic() - t0
    if model_path:
        out = model_path
    else:
        train_quality(samples, out, steps=steps, config=cfg, seed=seed, num_threads=num_threads)
    t_train = time.monotonic() - t0 - t_data
    model, meta = load_quality_model(out)
    if model_path:
        cfg = QualityConfig.from_dict(meta["network"])
    synth, initial = [], []
    for s in test_seeds:
        p = make_phantom(s, conf)
        for x in synthetic_samples(p.image, p.reference.array, cfg, rng, 2, params):
            pred = predict_crops(model, {x.region: x.x})[x.region]
            synth.append(_row(x.score, x.error, x.dice, pred))
        regions = split_regions(p.initial.array, p.image.geometry.spacing_zyx, params)
        agree = region_agreement(p.initial.array, p.reference.array, regions)
        preds = predict_case(model, meta, p.image, p.initial.array, regions)
        for r, a in agree.items():
            score = dice_to_score(min(a["dice"], 1.0))
            error = "none" if score == 5 else ("over" if a["over"] >= a["under"] else "under")
            initial.append(_row(score, error, a["dice"], preds[r]))
    return {"preset": preset, "network": network, "steps": steps, "corruption": corruption, "seed": seed,
            "with_initial": with_initial,
            "n_train_samples": len(samples),
            "train_seeds": list(train_seeds), "test_seeds": list(test_seeds),
            "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                        "total": round(time.monotonic() - t0, 1)},
            "synthetic": accuracy(synth), "initial": accuracy(initial)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--network", default="small")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--n-train", type=int, default=6)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--corruptions", type=int, default=6)
    ap.add_argument("--out", default="quality_eval.pt")
    ap.add_argument("--corruption", default="regions", choices=("regions", "realistic", "mixed"),
                    help="training masks: region corruptions, the real-CT error model, or half each")
    ap.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    ap.add_argument("--model", default=None,
                    help="evaluate this quality checkpoint (no training; the synthetic held-out "
                         "set is then drawn from a fresh random stream)")
    ap.add_argument("--with-initial", action="store_true",
                    help="also train on the training phantoms' own initial masks (rater's truth)")
    a = ap.parse_args(argv)
    res = evaluate_predictor(range(a.n_train), range(100, 100 + a.n_test), a.preset, a.network,
                             a.steps, a.corruptions, out=a.out, corruption=a.corruption,
                             with_initial=a.with_initial, seed=a.seed, model_path=a.model)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
