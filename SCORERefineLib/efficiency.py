"""Annotation efficiency: test Dice against expert minutes, per kind of feedback (issue 10).

Which feedback should a clinic pay for? For each kind (region **ratings** -> ``score`` mode,
**scribbles** -> ``scribble``, **hybrid** K dense + ratings -> ``hybrid``, **dense** references
-> ``full``) the benchmark trains a refiner on nested subsets of the training cases (the
*budgets*: shares such as 1/4, 1/2 and all of them) and measures the held-out Dice. The expert
time of a budget comes from one stated cost model (assumptions, not measurements):

* a region rating: :data:`~.benchmark.SECONDS_PER_RATING` (5 s);
* scribbles: :data:`~.scribbles.SECONDS_PER_STROKE` (3 s) per stroke plus
  :data:`~.scribbles.SECONDS_PER_SLICE` (5 s) per slice drawn on, counted on the strokes by
  :func:`~.scribbles.stroke_summary` (the same count the Slicer panel shows);
* a dense case: :data:`~.benchmark.SECONDS_PER_DENSE_CORRECTION` (300 s);
* hybrid: its dense cases at the dense price plus the ratings of its weak cases.

This module also prepares the benchmark's scribble datasets (:func:`add_scribbles`,
:func:`copy_with_misplaced_strokes`), gives the hybrid rows their settings
(:func:`hybrid_settings`) and weight logs (:func:`hybrid_log`), and renders the efficiency table,
the hybrid weights and the plot (:func:`plot_efficiency`, a PNG beside the report).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .case import Case, cases_dir, list_cases
from .catalog import DEFAULT_THICK_LAYER_LLR
from .feedback import load_feedback

#: feedback kind -> benchmark row trained at the full budget (and its training mode)
METHODS = {"ratings": "score", "scribbles": "scribble", "hybrid": "hybrid", "dense": "full"}
#: rows ``scorerefine benchmark --efficiency`` runs when no ``--rows`` are given
EFFICIENCY_ROWS = ("score", "score_noisy", "scribble", "scribble_noisy", "hybrid", "hybrid_fixed", "full")
#: budgets when ``--efficiency`` is given without values (shares of the training cases)
DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)
#: the hybrid rows' indicator schedule: weights start after this share of the steps (dense warm-up)
HYBRID_START_SHARE = 0.1
#: ... and carry over between updates with this smoothing (docs/modes-scribble-hybrid.md)
HYBRID_SMOOTHING = 0.5


# ----------------------------------------------------------------------------- datasets

def add_scribbles(dataset: Path, n_slices: int = 4, seed: int = 0, overwrite: bool = True) -> dict:
    """Simulate scribbles (:func:`~.scribbles.simulate_scribbles`) from every case's reference and
    write ``scribbles.nii.gz``. Returns ``{case_id: scribbler info}``."""
    from .scribbles import simulate_scribbles, write_scribbles

    out = {}
    for i, case in enumerate(list_cases(dataset)):
        if case.has_scribbles and not overwrite:
            continue
        image = case.load_image()
        labels, info = simulate_scribbles(case.load_initial(like=image).array,
                                          case.load_reference(like=image).array,
                                          image.geometry.spacing_zyx, n_slices=n_slices, seed=seed + i)
        write_scribbles(image.with_array(labels), case.scribbles_path, like=image.geometry)
        out[case.case_id] = info
    return out


def copy_with_misplaced_strokes(train: Path, out: Path, share: float, seed: int) -> Path:
    """A copy of a training dataset whose strokes are the noisy scribbler's: a ``share`` of each
    case's strokes get the wrong label (:func:`~.scribbles.misplace_strokes`)."""
    from .scribbles import misplace_strokes, write_scribbles

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(train, out, ignore=shutil.ignore_patterns("predictions"))
    for i, case in enumerate(list_cases(out)):
        if not case.has_scribbles:
            continue
        image = case.load_image()
        labels, _ = misplace_strokes(case.load_scribbles(like=image).array, share, seed=seed + 13 + i)
        write_scribbles(image.with_array(labels), case.scribbles_path, like=image.geometry)
    return out


def budget_subset(train: Path, out: Path, k: int, seed: int) -> tuple[Path, list[str]]:
    """The first ``k`` training cases of a seeded order (nested: a smaller budget's cases are part
    of every larger one) copied to ``out`` with everything they hold. Returns (dataset, ids)."""
    cases = list_cases(train)
    order = np.random.default_rng([int(seed), 77]).permutation(len(cases))
    chosen = sorted(cases[int(i)].case_id for i in order[:k])
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    for cid in chosen:
        shutil.copytree(cases_dir(train) / cid, cases_dir(out) / cid,
                        ignore=shutil.ignore_patterns("predictions"))
    return out, chosen


# ----------------------------------------------------------------------------- cost model

def hybrid_dense_count(n_cases: int, requested: int = 0) -> int:
    """Dense cases of a hybrid run on ``n_cases``: ``requested`` (capped so one weak case is left),
    else a quarter of the cases, at least 1."""
    k = int(requested) if requested else max(1, int(n_cases) // 4)
    return max(1, min(k, int(n_cases) - 1))


def hybrid_settings(cfg, n_cases: int) -> dict:
    """HybridConfig settings of a benchmark row: dense count, indicator start (a tenth of the
    steps) and smoothing."""
    return {"dense_count": hybrid_dense_count(n_cases, getattr(cfg, "hybrid_dense", 0)),
            "indicator_start": int(cfg.steps * HYBRID_START_SHARE),
            "smoothing": HYBRID_SMOOTHING}


def case_cost(case: Case, kind: str) -> float:
    """Expert seconds of one case's feedback of ``kind`` (``ratings``, ``scribbles``, ``dense``)."""
    from .benchmark import SECONDS_PER_DENSE_CORRECTION, SECONDS_PER_RATING
    from .scribbles import stroke_summary

    if kind == "dense":
        return float(SECONDS_PER_DENSE_CORRECTION)
    if kind == "ratings":
        return len(load_feedback(case.feedback_path).ratings()) * SECONDS_PER_RATING \
            if case.has_feedback else 0.0
    if kind == "scribbles":
        return stroke_summary(case.load_scribbles().array)["seconds"] if case.has_scribbles else 0.0
    raise ValueError(f"unknown feedback kind {kind!r}")


def annotation_cost(dataset: Path, method: str, dense_count: int = 0) -> dict:
    """Expert time of training ``method`` (a :data:`METHODS` key) on ``dataset``.

    Returns ``{"seconds", "minutes", "n_cases", "feedback"}``; ``feedback`` says what was paid for
    (e.g. ``"96 ratings"``, ``"31 strokes"``, ``"1 dense + 3 rated cases"``)."""
    from .scribbles import stroke_summary

    cases = list_cases(dataset)
    n = len(cases)
    if method == "dense":
        seconds, text = sum(case_cost(c, "dense") for c in cases), f"{n} dense cases"
    elif method == "ratings":
        n_r = sum(len(load_feedback(c.feedback_path).ratings()) for c in cases if c.has_feedback)
        seconds, text = sum(case_cost(c, "ratings") for c in cases), f"{n_r} ratings"
    elif method == "scribbles":
        sums = [stroke_summary(c.load_scribbles().array) for c in cases if c.has_scribbles]
        seconds = float(sum(s["seconds"] for s in sums))
        text = (f"{sum(s['n_strokes'] for s in sums)} strokes on {sum(s['slices'] for s in sums)} "
                f"slices")
    elif method == "hybrid":
        with_ref = [c for c in cases if c.has_reference]
        dense = {c.case_id for c in with_ref[:dense_count]}      # HybridMode: first K by id
        weak = [c for c in cases if c.case_id not in dense]
        seconds = sum(case_cost(c, "dense") for c in cases if c.case_id in dense) \
            + sum(case_cost(c, "ratings") for c in weak)
        text = f"{len(dense)} dense + {len(weak)} rated cases"
    else:
        raise ValueError(f"unknown feedback kind {method!r}; known: {list(METHODS)}")
    return {"seconds": float(seconds), "minutes": float(seconds) / 60.0, "n_cases": n, "feedback": text}


def row_feedback(mode: str, dataset: Path, settings: dict) -> tuple[str, float]:
    """The benchmark table's feedback column of a scribble or hybrid row: (text, seconds)."""
    if mode == "scribble":
        c = annotation_cost(dataset, "scribbles")
    else:
        c = annotation_cost(dataset, "hybrid", int(settings.get("dense_count") or 0))
    return c["feedback"], c["seconds"]


def hybrid_log(model: Path) -> dict:
    """A hybrid checkpoint's roles and instance-indicator log (``metadata["mode_state"]``):
    ``{"roles", "weights" (final), "history" ([{"step", "weights"}...]), "fixed"}``."""
    from .refiner.checkpoint import load_checkpoint

    state = load_checkpoint(model)["metadata"].get("mode_state") or {}
    w = state.get("weighter") or {}
    history = [{"step": int(h["step"]), "weights": {k: float(v) for k, v in h["weights"].items()},
                **({"would_be": {k: float(v) for k, v in h["would_be"].items()}} if "would_be" in h else {})}
               for h in w.get("history", [])]
    return {"roles": dict(state.get("roles") or {}), "weights": dict(w.get("weights") or {}),
            "history": history, "fixed": bool(w.get("fixed", False))}


def noisy_rating_share(clean: Path, noisy: Path) -> dict[str, float]:
    """Per case, the share of regions whose noisy rating (score or over/under) differs from the
    clean simulated rater's: how misleading each weak case's feedback is."""
    out = {}
    for case in list_cases(noisy):
        ref = cases_dir(clean) / case.case_id / "feedback.json"
        if not (case.has_feedback and ref.exists()):
            continue
        a, b = load_feedback(ref).consensus(), load_feedback(case.feedback_path).consensus()
        common = sorted(set(a) & set(b))
        if common:
            out[case.case_id] = float(np.mean([a[r] != b[r] for r in common]))
    return out


# ----------------------------------------------------------------------------- the budgets

def run_budgets(split, cfg, fractions: Sequence[float], device: str = "auto", progress: str = "none",
                cancel=None, log: Callable[[str], None] = print, reuse: Optional[dict] = None,
                initial_dice: float = float("nan"), workdir: Optional[Path] = None,
                veto_thick_llr: Optional[float] = DEFAULT_THICK_LAYER_LLR,
                confidence: bool = True, add_threshold: Optional[float] = None) -> dict:
    """Train every :data:`METHODS` kind on each budget and evaluate it on the test split.

    Args:
        split: the benchmark's :class:`~.pipeline.Split` (training cases rated, with references
            and scribbles).
        cfg: the :class:`~.benchmark.BenchConfig` (steps, network, seed...).
        fractions: budgets as shares of the training cases (0 < f <= 1).
        reuse: ``{row: (EvalResult, TrainResult)}`` of rows already run on all training cases
            (the full budget is then not trained again).
        initial_dice: mean test Dice of the initial masks (the zero-minute point).
        veto_thick_llr: the appearance veto's thick-layer threshold the trained models refine
            with (default 0.8; None: off; ``scorerefine benchmark --veto-thick-llr``).

    Returns:
        ``{"fractions", "points": [...], "initial_dice", "cost_model"}``; a point per
        (kind, budget): ``method``, ``row``, ``fraction``, ``n_cases``, ``minutes``,
        ``feedback``, ``dice_mean``, ``dice_std``, ``hd95_mean``, ``dice_gain``,
        ``gain_per_hour``, ``train_seconds``, ``dense_count`` (hybrid).
    """
    from .benchmark import SECONDS_PER_DENSE_CORRECTION, SECONDS_PER_RATING, row_config
    from .errors import InputError
    from .metrics import summarise
    from .pipeline import evaluate_masks, train_model
    from .refiners import make_refiner
    from .scribbles import SECONDS_PER_SLICE, SECONDS_PER_STROKE

    bad = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad or not fractions:
        raise InputError(f"annotation budgets are shares of the training cases in (0, 1], got "
                         f"{list(fractions)}; e.g. --efficiency 0.25 0.5 1.")
    reuse = reuse or {}
    workdir = Path(workdir) if workdir is not None else Path(split.train).parent
    n_train = len(list_cases(split.train))
    points = []
    for f in sorted({float(x) for x in fractions}):
        k = max(1, math.ceil(f * n_train - 1e-9))
        if k >= n_train:
            dataset, ids = Path(split.train), [c.case_id for c in list_cases(split.train)]
        else:
            dataset, ids = budget_subset(split.train, workdir / "budgets" / f"{k}_cases" / "train",
                                         k, cfg.seed)
        for method, row in METHODS.items():
            dense_count = 0
            if method == "hybrid":
                if k < 2:
                    log(f"[efficiency] {method} skipped at {k} case(s): it needs one dense and one weak case")
                    continue
                dense_count = hybrid_dense_count(k, getattr(cfg, "hybrid_dense", 0))
            cost = annotation_cost(dataset, method, dense_count)
            if k >= n_train and row in reuse:
                res, tr = reuse[row]
            else:
                name = f"{row}_budget{k}"
                log(f"[efficiency] training '{row}' on {k} of {n_train} training cases ({cfg.steps} steps)")
                tr = train_model(dataset, workdir / "models" / f"{name}.pt",
                                 row_config(row, cfg, device, n_train=k), progress=progress, cancel=cancel)
                res = evaluate_masks(split.test, name,
                                     make_refiner(tr.model, device, veto_thick_llr=veto_thick_llr,
                                                  confidence=confidence,
                                                  add_threshold=add_threshold),
                                     cancel=cancel)
            stats = summarise(res.rows)
            gain = stats["dice"]["mean"] - initial_dice
            hours = cost["seconds"] / 3600.0
            points.append({"method": method, "row": row, "fraction": f, "n_cases": k, "case_ids": ids,
                           "minutes": cost["minutes"], "feedback": cost["feedback"],
                           "dice_mean": stats["dice"]["mean"], "dice_std": stats["dice"]["std"],
                           "hd95_mean": stats["hd95"]["mean"], "dice_gain": gain,
                           "gain_per_hour": gain / hours if hours > 0 else float("nan"),
                           "train_seconds": tr.seconds, "dense_count": dense_count})
    return {"fractions": sorted({float(x) for x in fractions}), "points": points,
            "initial_dice": initial_dice, "n_train": n_train,
            "cost_model": {"seconds_per_rating": SECONDS_PER_RATING,
                           "seconds_per_stroke": SECONDS_PER_STROKE,
                           "seconds_per_slice": SECONDS_PER_SLICE,
                           "seconds_per_dense_case": SECONDS_PER_DENSE_CORRECTION}}


# ----------------------------------------------------------------------------- report

def markdown_sections(report: dict) -> list[str]:
    """The efficiency table and the hybrid weights, as markdown lines ([] when neither ran)."""
    lines: list[str] = []
    eff = report.get("efficiency")
    if eff:
        cm = eff["cost_model"]
        lines += ["", "## Annotation efficiency: test Dice against expert minutes", "",
                  f"Cost model (stated assumptions, not measured): {cm['seconds_per_rating']:.0f} s per "
                  f"region rating; {cm['seconds_per_stroke']:.0f} s per stroke + "
                  f"{cm['seconds_per_slice']:.0f} s per slice drawn on; "
                  f"{cm['seconds_per_dense_case']:.0f} s per dense case; hybrid = its dense cases + the "
                  f"ratings of its weak cases. Budgets: nested subsets of the {eff['n_train']} training "
                  f"cases (seeded order); each point is one training run (single seed). Initial masks: "
                  f"Dice {eff['initial_dice']:.4f} at 0 minutes.", ""]
        if eff.get("plot"):
            lines += [f"![test Dice against expert minutes]({eff['plot']})", ""]
        lines += ["| feedback | budget | cases | feedback given | expert min | Dice mean ± sd | HD95 mm "
                  "| ΔDice | ΔDice per expert hour | training s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in sorted(eff["points"], key=lambda p: (list(METHODS).index(p["method"]), p["fraction"])):
            lines.append(f"| {p['method']} (`{p['row']}`) | {p['fraction']:.0%} | {p['n_cases']} "
                         f"| {p['feedback']} | {p['minutes']:.1f} | {p['dice_mean']:.4f} ± "
                         f"{p['dice_std']:.4f} | {p['hd95_mean']:.2f} | {p['dice_gain']:+.4f} "
                         f"| {p['gain_per_hour']:+.4f} | {p['train_seconds']:.0f} |")
        best = max((p for p in eff["points"] if np.isfinite(p["gain_per_hour"])),
                   key=lambda p: p["gain_per_hour"], default=None)
        if best is not None:
            lines += ["", f"Most Dice gained per expert hour in this run: {best['method']} at "
                          f"{best['fraction']:.0%} of the cases ({best['gain_per_hour']:+.4f} per hour, "
                          f"{best['minutes']:.1f} min). Highest Dice: "
                          + max(eff["points"], key=lambda p: p["dice_mean"])["method"] + "."]
    logs = {r["method"]: r["hybrid"] for r in report.get("rows", []) if r.get("hybrid")}
    if logs:
        lines += ["", "## Hybrid: instance-indicator weights of the weak cases", "",
                  "Final weight of each weak case (each update normalises the weights of the weak cases "
                  "in that batch to mean 1, smoothed with the previous ones; cases not in the batch keep "
                  "their weight; a weight near 0 means the case's gradient disagreed with the dense "
                  "cases'). Fixed rows keep every weight at 1 and log "
                  "the weights the dynamic rule would have given (`would be`). Noisy rows: the share of "
                  "each case's regions whose noisy rating differs from the clean rater's.", "",
                  "| row | dense cases | weak case | final weight | would be (fixed) | noisy share "
                  "| updates |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for row, h in logs.items():
            dense = ", ".join(sorted(c for c, r in h["roles"].items() if r == "dense"))
            last = h["history"][-1] if h["history"] else {}
            noisy = h.get("noisy_share", {})
            for cid in sorted(c for c, r in h["roles"].items() if r == "weak"):
                wb = last.get("would_be", {}).get(cid)
                ns = noisy.get(cid)
                lines.append(f"| {row} | {dense} | {cid} | {float(h['weights'].get(cid, 1.0)):.3f} "
                             f"| {'' if wb is None else f'{wb:.3f}'} | {'' if ns is None else f'{ns:.0%}'} "
                             f"| {len(h['history'])} |")
    return lines


def plot_efficiency(report: dict, path: Path) -> Path:
    """The annotation-efficiency plot (PNG): left, test Dice against expert minutes (log scale)
    for each feedback kind over the budgets, the other trained rows (noisy, ablations) as single
    markers, the initial masks as a line; right, the hybrid rows' weak-case weights over training."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .atomicio import atomic_path

    eff = report.get("efficiency") or {}
    logs = {r["method"]: r["hybrid"] for r in report.get("rows", []) if r.get("hybrid")}
    fig = Figure(figsize=(12, 4.8) if logs else (7, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if logs else 1, 1)
    colours = {"ratings": "tab:blue", "scribbles": "tab:orange", "hybrid": "tab:green", "dense": "tab:red"}
    for method, colour in colours.items():
        pts = sorted((p for p in eff.get("points", []) if p["method"] == method), key=lambda p: p["minutes"])
        if pts:
            ax.errorbar([max(p["minutes"], 1e-2) for p in pts], [p["dice_mean"] for p in pts],
                        yerr=[p["dice_std"] for p in pts], color=colour, marker="o", capsize=3,
                        label=f"{method} ({METHODS[method]})")
    others = [r for r in report.get("rows", []) if r["method"] not in ("initial", "classical")
              and r["method"] not in METHODS.values() and r.get("feedback_seconds", 0) > 0]
    for i, r in enumerate(others):
        ax.scatter([r["feedback_seconds"] / 60.0], [r["dice_mean"]], marker="x^sdvP*"[i % 7],
                   color="0.3", label=r["method"], zorder=3)
    init = eff.get("initial_dice")
    if init is None:
        init = next((r["dice_mean"] for r in report.get("rows", []) if r["method"] == "initial"), None)
    if init is not None and np.isfinite(init):
        ax.axhline(init, color="0.5", ls="--", lw=1, label="initial masks")
    cls = next((r["dice_mean"] for r in report.get("rows", []) if r["method"] == "classical"), None)
    if cls is not None:
        ax.axhline(cls, color="0.5", ls=":", lw=1, label="classical")
    ax.set_xscale("log")
    ax.set_xlabel("expert minutes for the training set (stated cost model)")
    ax.set_ylabel("test Dice (mean ± sd)")
    ax.set_title(f"annotation efficiency, preset {report.get('preset', '?')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if logs:
        ax2 = fig.add_subplot(1, 2, 2)
        styles = ["-", "--", ":", "-."]
        for j, (row, h) in enumerate(logs.items()):
            key = "would_be" if h.get("fixed") else "weights"
            weak = sorted(c for c, r in h["roles"].items() if r == "weak")
            for i, cid in enumerate(weak):
                steps = [e["step"] for e in h["history"] if cid in e.get(key, {})]
                ws = [e[key][cid] for e in h["history"] if cid in e.get(key, {})]
                if steps:
                    ax2.plot(steps, ws, ls=styles[j % len(styles)], color=f"C{i % 10}", marker=".",
                             label=f"{row}: {cid}" + (" (would be)" if key == "would_be" else ""))
        ax2.set_xlabel("training step")
        ax2.set_ylabel("weak-case weight")
        ax2.set_title("hybrid: instance-indicator weights")
        ax2.grid(True, alpha=0.3)
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(fontsize=6, ncol=2)
        else:
            ax2.text(0.5, 0.5, "no indicator update in this run", ha="center", transform=ax2.transAxes)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
