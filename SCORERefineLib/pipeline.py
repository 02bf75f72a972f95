"""The SCORE loop as reusable steps, shared by ``scorerefine demo`` and ``scorerefine benchmark``.

cohort (known truth) -> regions -> simulated ratings -> training -> refinement -> evaluation.
Training and test cases live in two datasets (``<workdir>/train``, ``<workdir>/test``) generated
from different seeds, so a model never sees a test case.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .case import Case, list_cases
from .feedback import save_feedback
from .imageio import write_volume
from .metrics import case_metrics, summarise
from .phantoms import make_cohort
from .predictions import Predictor, iter_predict_dataset
from .progress import CancelToken
from .rater import simulate_feedback
from .regions import RegionParams, make_regions

TEST_SEED_OFFSET = 100_000


@dataclass
class Split:
    """Paths of a generated train/test split."""

    train: Path
    test: Path


def prepare_regions(cases: Sequence[Case], params: RegionParams) -> int:
    """Write regions.nii.gz for every case; returns the number of regions made."""
    total = 0
    for case in cases:
        image = case.load_image()
        regions = make_regions(case.load_initial(like=image), params)
        write_volume(regions, case.regions_path, dtype=np.int16)
        total += int(len(np.unique(regions.array)) - 1)
    return total


def rate_cases(cases: Sequence[Case], params: RegionParams, noise: float = 0.0, seed: int = 0,
               rater: str = "simulated", seconds_per_rating: float = 5.0) -> int:
    """Simulated ratings from each case's reference; returns the number of ratings given."""
    n = 0
    for i, case in enumerate(cases):
        image = case.load_image()
        initial = case.load_initial(like=image).array
        reference = case.load_reference(like=image)
        regions = case.load_regions(like=image).array
        fb = simulate_feedback(case.case_id, initial, reference.array, regions, noise=noise,
                               seed=seed + i, rater=rater, seconds_per_rating=seconds_per_rating,
                               region_info={"method": params.method, "n_regions": params.n_regions,
                                            "band_mm": params.band_mm})
        save_feedback(fb, case.feedback_path)
        n += len(fb.ratings(rater))
    return n


def make_split(workdir: Path, n_train: int, n_test: int, seed: int, preset: str,
               params: RegionParams, noise: float = 0.0) -> Split:
    """Generate the train and test cohorts, split regions and rate the training cases."""
    workdir = Path(workdir)
    split = Split(workdir / "train", workdir / "test")
    for path in (split.train, split.test):
        if path.exists():
            shutil.rmtree(path)
    make_cohort(split.train, n_train, seed, preset=preset)
    make_cohort(split.test, n_test, seed + TEST_SEED_OFFSET, preset=preset)
    prepare_regions(list_cases(split.train), params)
    prepare_regions(list_cases(split.test), params)
    rate_cases(list_cases(split.train), params, noise=0.0, seed=seed)
    return split


def copy_with_noisy_ratings(train: Path, out: Path, params: RegionParams, noise: float,
                            seed: int) -> Path:
    """A copy of a training dataset whose feedback comes from a noisy simulated rater only."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(train, out, ignore=shutil.ignore_patterns("feedback.json", "predictions"))
    rate_cases(list_cases(out), params, noise=noise, seed=seed + 7, rater="simulated_noisy")
    return out


@dataclass
class TrainResult:
    model: Path
    seconds: float
    args: list = field(default_factory=list)


def train_model(dataset: Path, out: Path, mode: str, steps: int, network: str, patch: Sequence[int],
                batch: int = 2, seed: int = 0, device: str = "auto", progress: str = "bar",
                extra: Sequence[str] = ()) -> TrainResult:
    """Run ``scorerefine train`` in this process and time it."""
    from .cli import main

    argv = ["train", str(dataset), "--out", str(out), "--mode", mode, "--steps", str(steps),
            "--network", network, "--patch", *[str(p) for p in patch], "--batch", str(batch),
            "--seed", str(seed), "--device", device, "--progress", progress, *extra]
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        from .errors import TrainingError
        raise TrainingError(f"training failed (exit code {code}): scorerefine {' '.join(argv)}")
    return TrainResult(Path(out), seconds, argv)


@dataclass
class EvalResult:
    """Per-case metrics of one method on the test set, and inference seconds per case."""

    name: str
    rows: list
    seconds_per_case: list


def evaluate_masks(test: Path, name: str, predict: Predictor, progress: str = "none",
                   cancel: Optional[CancelToken] = None) -> EvalResult:
    """Apply ``predict(image, initial) -> mask array`` to every test case; score against reference.

    Predictions (and their sidecars) are written to ``cases/<id>/predictions/<name>.*``.
    """
    rows, times, last = [], [], {}

    def keep(image, initial):  # keep what the loop has in memory instead of reading it back
        last["image"], last["pred"] = image, predict(image, initial)
        return last["pred"]

    for case, path, info in iter_predict_dataset(test, name, keep, {"method": name},
                                                 progress=progress, cancel=cancel):
        image = last["image"]
        row = {"case": case.case_id}
        row.update(case_metrics(last["pred"], case.load_reference(like=image).array,
                                image.geometry.spacing_zyx))
        rows.append(row)
        times.append(info["seconds"])
    return EvalResult(name, rows, times)


def initial_predictor(image, initial):
    return initial.array


def classical_predictor(image, initial):
    from .refiner.postprocess import classical_postprocess
    return classical_postprocess(initial.array, image.geometry.spacing_zyx)


def model_predictor(model_path: Path, device: str = "auto"):
    """A predictor that refines with a trained checkpoint (the function the Slicer module calls)."""
    from .refiner.checkpoint import load_refiner
    from .refiner.inference import refine_volume, resolve_device

    dev = resolve_device(device)
    model, metadata = load_refiner(model_path, device=dev)

    def predict(image, initial):
        return refine_volume(model, metadata, image, initial, device=dev).array
    return predict


def summary_table(results: Sequence[EvalResult], baseline: str = "initial") -> list[dict]:
    """Mean/std of each metric per method, share of cases whose Dice improved on the baseline."""
    base = {r["case"]: r for r in next(res for res in results if res.name == baseline).rows}
    table = []
    for res in results:
        entry = {"method": res.name, "n": len(res.rows)}
        for metric, stats in summarise(res.rows).items():
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = stats["mean"], stats["std"]
        deltas = np.array([r["dice"] - base[r["case"]]["dice"] for r in res.rows])
        entry["dice_gain"] = float(deltas.mean())
        entry["improved"] = float((deltas > 1e-4).mean())
        entry["seconds_per_case"] = float(np.mean(res.seconds_per_case))
        table.append(entry)
    return table


def format_table(table: Sequence[dict]) -> str:
    """A plain-text table for the terminal."""
    head = f"{'method':<26}{'Dice':>16}{'HD95 mm':>16}{'ASSD mm':>16}{'dDice':>9}{'improved':>10}"
    lines = [head, "-" * len(head)]
    for e in table:
        lines.append(f"{e['method']:<26}"
                     f"{e['dice_mean']:>9.4f} ±{e['dice_std']:<5.3f}"
                     f"{e['hd95_mean']:>9.2f} ±{e['hd95_std']:<5.2f}"
                     f"{e['assd_mean']:>9.3f} ±{e['assd_std']:<5.3f}"
                     f"{e['dice_gain']:>+9.4f}{e['improved']:>9.0%}")
    return "\n".join(lines)
