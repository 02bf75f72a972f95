"""Simulated active learning with the region-quality predictor (issue 11).

How much rating does the predictor save? On a held-out split (phantoms, or the real-CT cohort split
by structure, as the benchmark's), every training case's regions are rated by the simulated rater
(the truth), then, for ``k`` ratings per case, SCORE is trained on only ``k`` of them and the test
cases are refined; the score is the mean Dice gain over the test cases' initial masks. Orders:

``random``
    ``k`` regions per case drawn at random (one seed);
``uncertainty``
    the predictor's ``k`` most doubtful regions per case (highest entropy first,
    :func:`~.ranking.order_by_uncertainty`);
``uncertainty+fill``
    the same ``k`` ratings plus the predictor's confident ratings of the other regions, each
    weighted ``q^2`` (``q >= 0.5``; ``ScoreConfig.fill_in = "suggested"``).

``k = 0`` without fill-in is the initial mask (gain 0, nothing to train on); ``k = all`` is the
same training for every order (computed once). The predictor is trained on synthetic corruptions
of the *training* cases' reference masks only (no ratings, nor their initial masks' truth: the
ratings are what is being counted), and its accuracy is measured on the *test* cases' initial masks (score MAE, Spearman
with the true region Dice, over/under accuracy, ECE; :func:`.evaluate.accuracy`).

The regions are not extended after rating here (every arm keeps the same split) and no training
case is held out for validation, so the ``all``
row is not the benchmark's SCORE row. ``scorerefine quality benchmark --preset quick|real`` writes
the markdown report, its JSON twin and the PNG curve.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

ORDERS = ("random", "uncertainty", "uncertainty+fill")
ALL = -1   # "every region" in ``ks``


@dataclass(frozen=True)
class ALConfig:
    """One active-learning run: the cohort, the k values, the SCORE and predictor budgets."""

    cohort: str = "phantoms"                 # phantoms | real
    n_train: int = 6
    n_test: int = 4
    phantom_preset: str = "default"
    real_structures: Optional[tuple] = None
    n_regions: int = 12
    band_mm: float = 3.0
    ks: tuple = (0, 3, 6, ALL)               # ratings per case; ALL = every region
    steps: int = 600                         # SCORE training steps per arm (reduced budget)
    network: str = "small"
    patch: tuple = (32, 32, 32)
    batch: int = 2
    quality_network: str = "small"
    quality_steps: int = 1200
    quality_corruptions: int = 8
    quality_corruption: str = "realistic"
    #: also the training cases' own initial masks with the rater's truth: that is the very
    #: rating being counted, so it stays off here (it leaks every rating into the predictor)
    quality_with_initial: bool = False
    seed: int = 0
    threads: Optional[int] = 1
    notes: tuple = field(default_factory=tuple)


PRESETS = {
    # the test suite: seconds, numbers meaningless
    "smoke": ALConfig(n_train=2, n_test=1, phantom_preset="tiny", n_regions=4, ks=(0, 2, ALL),
                      steps=2, network="tiny", patch=(16, 16, 16), batch=1, quality_network="tiny",
                      quality_steps=3, quality_corruptions=1),
    # phantoms at real size with a reduced budget: 8 trainings of 600 steps, 32^3 patches
    # (about 15 minutes on 2 shared CPU cores)
    "quick": ALConfig(),
    # the real-CT cohort (benchmark.make_real_split's structures), the same budget per arm and
    # fewer k values (5 trainings), so that both cohorts fit in about 25 minutes
    "real": ALConfig(cohort="real", ks=(0, 6, ALL)),
    "real_smoke": ALConfig(cohort="real", real_structures=("vertebrae_cervical", "rib_left_1",
                                                           "rib_right_1"),
                           n_regions=4, ks=(0, 2, ALL), steps=2, network="tiny", patch=(16, 16, 16),
                           batch=1, quality_network="tiny", quality_steps=3, quality_corruptions=1),
}


# ---------------------------------------------------------------------------- cohort

def make_cohort_split(workdir: Path, cfg: ALConfig, params) -> tuple[Path, Path]:
    """Train and test datasets with regions (not rated, not extended) under ``workdir``."""
    from ..case import cases_dir, list_cases
    from ..phantoms import make_cohort
    from ..pipeline import TEST_SEED_OFFSET, prepare_regions

    workdir = Path(workdir)
    train, test = workdir / "train", workdir / "test"
    for path in (train, test, workdir / "real_cohort"):
        if path.exists():
            shutil.rmtree(path)
    if cfg.cohort == "real":
        from ..realct import make_real_cohort
        tr, te = make_real_cohort(workdir / "real_cohort", seed=cfg.seed,
                                  structures=cfg.real_structures)
        for dest, cases in ((train, tr), (test, te)):
            cases_dir(dest).mkdir(parents=True, exist_ok=True)
            for case in cases:
                shutil.copytree(case.folder, cases_dir(dest) / case.case_id)
    elif cfg.cohort == "phantoms":
        make_cohort(train, cfg.n_train, cfg.seed, preset=cfg.phantom_preset)
        make_cohort(test, cfg.n_test, cfg.seed + TEST_SEED_OFFSET, preset=cfg.phantom_preset)
    else:
        raise ValueError(f"cohort must be 'phantoms' or 'real', got {cfg.cohort!r}")
    prepare_regions(list_cases(train), params)
    prepare_regions(list_cases(test), params)
    return train, test


def truth_ratings(case, params):
    """The simulated rater's ratings of every region of ``case`` (its reference), not saved."""
    from ..rater import simulate_feedback

    image = case.load_image()
    return simulate_feedback(case.case_id, case.load_initial(like=image).array,
                             case.load_reference(like=image).array,
                             case.load_regions(like=image).array, region_info=params.info())


# ---------------------------------------------------------------------------- predictor

def train_predictor(train: Path, out: Path, cfg: ALConfig, params) -> Path:
    """The quality predictor from synthetic corruptions of the training references and (with
    ``quality_with_initial``) the training cases' own initial masks, with the simulated rater's
    truth; never from the ratings being counted."""
    from ..case import list_cases
    from .data import mask_samples, synthetic_samples
    from .network import quality_config
    from .train import train_quality

    qcfg = quality_config(cfg.quality_network)
    rng = np.random.default_rng(cfg.seed)
    samples = []
    for case in list_cases(train):
        image = case.load_image()
        samples += synthetic_samples(image, case.load_reference(like=image).array, qcfg, rng,
                                     cfg.quality_corruptions, params, case_id=case.case_id,
                                     corruption=cfg.quality_corruption)
        if cfg.quality_with_initial:
            samples += mask_samples(image, case.load_initial(like=image).array,
                                    case.load_reference(like=image).array, qcfg, params,
                                    case_id=case.case_id)
    return train_quality(samples, out, steps=cfg.quality_steps, config=qcfg, seed=cfg.seed,
                         num_threads=cfg.threads)


def case_predictions(model, meta, case):
    from .predict import predict_case
    image = case.load_image()
    return predict_case(model, meta, image, case.load_initial(like=image),
                        case.load_regions(like=image))


def predictor_accuracy(model, meta, test: Path, params) -> dict:
    """Accuracy on the test cases' initial masks against the simulated rater's truth."""
    from ..calibration import dice_to_score
    from ..case import list_cases
    from ..rater import region_agreement
    from .evaluate import _row, accuracy

    rows = []
    for case in list_cases(test):
        image = case.load_image()
        initial = case.load_initial(like=image).array
        regions = case.load_regions(like=image).array
        agree = region_agreement(initial, case.load_reference(like=image).array, regions)
        preds = case_predictions(model, meta, case)
        for r, a in agree.items():
            if r not in preds:
                continue
            score = dice_to_score(min(a["dice"], 1.0))
            error = "none" if score == 5 else ("over" if a["over"] >= a["under"] else "under")
            rows.append(_row(score, error, a["dice"], preds[r]))
    return accuracy(rows) if rows else {"n": 0}


# ---------------------------------------------------------------------------- arms

def region_order(order: str, preds: dict, labels: Sequence[int], rng: np.random.Generator) -> list:
    """The order in which a case's regions are rated."""
    from .ranking import order_by_uncertainty

    labels = [int(v) for v in labels]
    if order == "random":
        return [labels[i] for i in rng.permutation(len(labels))]
    first = order_by_uncertainty({r: preds[r] for r in labels if r in preds})
    return first + [r for r in labels if r not in first]


def write_arm(train: Path, dest: Path, truth: dict, orders: dict, k: int, suggestions: dict) -> int:
    """A copy of the training set whose feedback holds the first ``k`` regions of each case's
    order (the simulated rater's ratings) plus the predictor's suggestions. Returns the number of
    ratings."""
    from ..case import cases_dir, list_cases
    from ..feedback import CaseFeedback, save_feedback
    from .suggestions import add_suggestions

    if dest.exists():
        shutil.rmtree(dest)
    n = 0
    for case in list_cases(train):
        folder = cases_dir(dest) / case.case_id
        folder.mkdir(parents=True)
        for f in case.folder.iterdir():
            if f.is_file() and f.name != "feedback.json":
                (folder / f.name).symlink_to(f.resolve())
        fb_all = truth[case.case_id]
        fb = CaseFeedback(case.case_id, list(fb_all.region_labels), dict(fb_all.region_info))
        chosen = orders[case.case_id] if k == ALL else orders[case.case_id][:k]
        for r in chosen:
            rating = fb_all.raters["simulated"][r]
            fb.rate("simulated", r, rating.score, rating.error, seconds=rating.seconds,
                    rated_at=rating.rated_at)
            n += 1
        add_suggestions(fb, suggestions[case.case_id])
        save_feedback(fb, folder / "feedback.json")
    return n


def filled_in_quality(truth: dict, orders: dict, k: int, preds: dict) -> dict:
    """How many regions the predictor fills in (q >= 0.5) beside the first ``k`` of each case's
    order, their mean trust q^2, and how often the filled-in score / over-under is the truth's."""
    from .ranking import fill_in_ratings

    n = exact = within1 = err_right = err_n = 0
    trust = []
    for cid, fb in truth.items():
        chosen = orders[cid] if k == ALL else orders[cid][:k]
        for r, (score, error, w) in fill_in_ratings(preds[cid], exclude=chosen).items():
            t = fb.raters["simulated"][r]
            n += 1
            trust.append(w)
            exact += int(score == t.score)
            within1 += int(abs(score - t.score) <= 1)
            if t.score < 5 and score < 5:
                err_n += 1
                err_right += int(error == t.error)
    return {"filled_in": n, "filled_in_mean_trust": float(np.mean(trust)) if trust else 0.0,
            "filled_in_exact": exact / n if n else float("nan"),
            "filled_in_within_one": within1 / n if n else float("nan"),
            "filled_in_error_right": err_right / err_n if err_n else float("nan"),
            "filled_in_error_n": err_n}


def _gain(test: Path, name: str, model_path, initial_rows: list) -> tuple[float, list]:
    from ..pipeline import evaluate_masks
    from ..refiners import make_refiner

    res = evaluate_masks(test, name, make_refiner(model_path, "cpu"))
    base = {r["case"]: r["dice"] for r in initial_rows}
    gains = [float(r["dice"] - base[r["case"]]) for r in res.rows]
    return float(np.mean(gains)), res.rows


def ratings_fraction_to_reach(curve: list[tuple[float, float]], target: float) -> Optional[float]:
    """Smallest x (linear between measured points ``(x, gain)``, sorted by x) where the gain
    reaches ``target``; None when it never does."""
    pts = sorted(curve)
    for i, (x, g) in enumerate(pts):
        if g >= target:
            if i == 0:
                return float(x)
            x0, g0 = pts[i - 1]
            return float(x0 + (target - g0) / (g - g0) * (x - x0))
    return None


def run_active_learning(preset: str | ALConfig, workdir: Path, log: Callable[[str], None] = print
                        ) -> dict:
    """Run the simulation (see the module docstring); returns the JSON-ready report."""
    from ..case import list_cases
    from ..pipeline import evaluate_masks
    from ..refiner.modes import mode_config
    from ..refiner.trainer import TrainConfig, train
    from ..refiners import make_refiner
    from ..regions import RegionParams
    from .train import load_quality_model

    import torch

    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    t_start = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = RegionParams(n_regions=cfg.n_regions, band_mm=cfg.band_mm, seed=cfg.seed)
    log(f"[active learning] {cfg.cohort} cohort, regions, simulated truth in {workdir}")
    train_dir, test_dir = make_cohort_split(workdir, cfg, params)
    train_cases, test_cases = list_cases(train_dir), list_cases(test_dir)
    truth = {c.case_id: truth_ratings(c, params) for c in train_cases}
    n_regions = {cid: len(fb.region_labels) for cid, fb in truth.items()}
    mean_regions = float(np.mean(list(n_regions.values())))

    log(f"[active learning] quality predictor: {cfg.quality_steps} steps on "
        f"{cfg.quality_corruption} corruptions of {len(train_cases)} training references")
    t0 = time.monotonic()
    qpath = train_predictor(train_dir, workdir / "quality.pt", cfg, params)
    t_quality = time.monotonic() - t0
    model, meta = load_quality_model(qpath)
    preds = {c.case_id: case_predictions(model, meta, c) for c in train_cases}
    accuracy = predictor_accuracy(model, meta, test_dir, params)
    rng = np.random.default_rng(cfg.seed)
    orders = {"random": {cid: region_order("random", preds[cid], truth[cid].region_labels, rng)
                         for cid in truth},
              "uncertainty": {cid: region_order("uncertainty", preds[cid], truth[cid].region_labels, rng)
                              for cid in truth}}
    orders["uncertainty+fill"] = orders["uncertainty"]

    initial = evaluate_masks(test_dir, "initial", make_refiner("identity"))
    init_dice = float(np.mean([r["dice"] for r in initial.rows]))
    points: list[dict] = []
    done: dict = {}

    def arm(order: str, k: int) -> dict:
        fill = order == "uncertainty+fill"
        key = ("all",) if k == ALL else (order, k)   # every order rates everything at k = all
        if key in done:
            extra = filled_in_quality(truth, orders[order], k, preds) if fill else {}
            return {**done[key], **extra, "order": order}
        name = f"al_{order.replace('+', '_')}_{'all' if k == ALL else k}"
        dest = workdir / "arms" / name
        n = write_arm(train_dir, dest, truth, orders[order], k, preds)
        if n == 0 and not fill:
            row = {"k": k, "ratings": 0, "gain": 0.0, "dice": init_dice, "trained": False,
                   "seconds": 0.0}
        else:
            t = time.monotonic()
            tc = TrainConfig(mode="score", mode_config=mode_config("score", fill_in="suggested" if fill else ""),
                             steps=cfg.steps, network=cfg.network, patch_size=tuple(cfg.patch),
                             batch_size=cfg.batch, seed=cfg.seed, device="cpu", checkpoint_every=0,
                             num_threads=cfg.threads)
            if hasattr(tc, "val_fraction"):   # every training case trains (no held-out validation)
                tc.val_fraction = 0.0
            model_path = train(dest, workdir / "models" / f"{name}.pt", tc, progress="none")
            gain, rows = _gain(test_dir, name, model_path, initial.rows)
            row = {"k": k, "ratings": n, "gain": gain, "dice": init_dice + gain, "trained": True,
                   "seconds": round(time.monotonic() - t, 1)}
        if fill:
            row.update(filled_in_quality(truth, orders[order], k, preds))
        row["ratings_per_case"] = n / max(len(train_cases), 1)
        row["fraction"] = n / max(sum(n_regions.values()), 1)
        done[key] = row
        log(f"[active learning] {order:>16} k={'all' if k == ALL else k}: {n} ratings, "
            f"Dice gain {row['gain']:+.4f}")
        return {**row, "order": order}

    for k in cfg.ks:
        for order in ORDERS:
            points.append(arm(order, k))
    full = done[("all",)]["gain"] if ("all",) in done else None
    savings = {}
    for order in ORDERS:
        curve = [(p["fraction"], p["gain"]) for p in points if p["order"] == order]
        frac = ratings_fraction_to_reach(curve, full) if full is not None and full > 0 else None
        savings[order] = frac
    return {"cohort": cfg.cohort, "config": {**asdict(cfg), "ks": [("all" if k == ALL else k) for k in cfg.ks]},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_train": len(train_cases), "n_test": len(test_cases),
            "mean_regions_per_case": mean_regions, "initial_dice": init_dice,
            "predictor_accuracy": accuracy, "quality_train_seconds": round(t_quality, 1),
            "points": points, "full_gain": full, "fraction_to_full_gain": savings,
            "seconds": round(time.monotonic() - t_start, 1)}


# ---------------------------------------------------------------------------- report

def _num(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


def _pct(x: Optional[float]) -> str:
    return "not reached" if x is None else f"{100 * x:.0f}%"


def savings_sentence(report: dict) -> str:
    full = report.get("full_gain")
    if full is None or full <= 0:
        return (f"Rating every region gives no Dice gain here ({0.0 if full is None else full:+.4f}), "
                f"so no saving can be measured at this training budget.")
    s = report["fraction_to_full_gain"]
    verdict = ("meets" if s["uncertainty"] is not None and s["uncertainty"] <= 0.5 else "misses")
    return (f"The uncertainty order reaches the gain of rating every region ({full:+.4f} Dice) with "
            f"{_pct(s['uncertainty'])} of the ratings (with filled-in ratings: "
            f"{_pct(s['uncertainty+fill'])}; random order: {_pct(s['random'])}); this {verdict} the "
            f"target of 50%.")


def render_markdown(report: dict, command: str, png_name: str) -> str:
    a = report["predictor_accuracy"]
    cfg = report["config"]
    lines = [f"## Active learning with the quality predictor: {report['cohort']} cohort", "",
             f"Command: `{command}`  ",
             f"Date: {report['date']}; {report['seconds']:.0f} s in all on this machine.", "",
             f"{report['n_train']} training cases ({report['mean_regions_per_case']:.1f} regions "
             f"each), {report['n_test']} held-out test case(s) (initial Dice "
             f"{report['initial_dice']:.4f}). SCORE: {cfg['steps']} steps, network {cfg['network']}, "
             f"patch {tuple(cfg['patch'])}, batch {cfg['batch']}, one seed; predictor: "
             f"{cfg['quality_steps']} steps, network {cfg['quality_network']}, "
             f"{cfg['quality_corruptions']} {cfg['quality_corruption']} corruption(s) per training "
             f"reference{' plus its initial mask' if cfg.get('quality_with_initial') else ''} "
             f"({report['quality_train_seconds']:.0f} s). Regions are not extended "
             f"after rating.", "",
             f"**{savings_sentence(report)}**", "",
             f"![Dice gain against ratings]({png_name})", "",
             "| order | k per case | ratings | ratings / case | share of all | mean Dice gain | trained "
             "| filled in (mean q², exact score, within 1, over/under right of n) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["points"]:
        filled = "" if "filled_in" not in p else (
            f"{p['filled_in']} ({_num(p['filled_in_mean_trust'])}, {_num(p['filled_in_exact'])}, "
            f"{_num(p['filled_in_within_one'])}, {_num(p['filled_in_error_right'])} of "
            f"{p['filled_in_error_n']})")
        lines.append(f"| {p['order']} | {'all' if p['k'] == ALL else p['k']} | {p['ratings']} | "
                     f"{p['ratings_per_case']:.1f} | {100 * p['fraction']:.0f}% | {p['gain']:+.4f} | "
                     f"{'yes' if p['trained'] else 'no (initial mask)'} | {filled} |")
    lines += ["", "Predictor accuracy on the held-out cases' initial masks (truth: the simulated "
              "rater):", "",
              "| regions | score MAE | expected-score MAE | exact score | Spearman (E[score], Dice) | "
              "over/under acc. (n) | direction acc. | ECE | true scores 1-5 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if a.get("n"):
        lines.append(f"| {a['n']} | {a['score_mae']:.2f} | {a['expected_score_mae']:.2f} | "
                     f"{a['score_accuracy']:.2f} | {a['spearman_dice']:.2f} | "
                     f"{a['over_under_accuracy']:.2f} ({a['n_errors']}) | "
                     f"{a['direction_accuracy']:.2f} | {a['ece']:.2f} | "
                     f"{a['true_score_counts']} |")
    return "\n".join(lines) + "\n"


def plot_curve(report: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for order, style in zip(ORDERS, ("o--", "s-", "^-")):
        pts = sorted((p["ratings_per_case"], p["gain"]) for p in report["points"] if p["order"] == order)
        ax.plot([x for x, _ in pts], [g for _, g in pts], style, label=order)
    if report.get("full_gain") is not None:
        ax.axhline(report["full_gain"], color="grey", lw=0.8, ls=":", label="every region rated")
    ax.set_xlabel("ratings per training case")
    ax.set_ylabel("mean Dice gain on held-out cases")
    ax.set_title(f"Active learning, {report['cohort']} cohort")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict, out_md: Path, command: str) -> tuple[Path, Path, Path]:
    """``out_md`` (markdown), its ``.json`` twin and ``.png`` curve beside it (atomic writes)."""
    from ..atomicio import atomic_write_text

    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    png = plot_curve(report, out_md.with_suffix(".png"))
    js = out_md.with_suffix(".json")
    atomic_write_text(js, json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out_md, render_markdown(report, command, png.name))
    return out_md, js, png
