"""The SCORE loop as reusable steps, shared by ``scorerefine demo`` and ``scorerefine benchmark``.

cohort (known truth) -> regions -> simulated ratings -> training -> refinement -> evaluation.
Training and test cases live in two datasets (``<workdir>/train``, ``<workdir>/test``) generated
from different seeds, so a model never sees a test case.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .case import Case, list_cases
from .feedback import save_feedback
from .imageio import write_volume
from .metrics import IMPROVED_MIN_DELTA, case_metrics, detached_components, summarise
from .phantoms import make_cohort
from .predictions import iter_predict_dataset
from .progress import CancelToken
from .rater import simulate_feedback
from .refiners import Refiner
from .regions import RegionParams, extend_case_regions, make_regions

if TYPE_CHECKING:  # pragma: no cover
    from .refiner.trainer import TrainConfig

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
               rater: str = "simulated", seconds_per_rating: float = 5.0,
               extend: bool = True) -> int:
    """Simulated ratings from each case's reference; returns the number of ratings given.

    With ``extend`` (default) each case's regions rated at most ``params.extend_max_score``
    (1-4) then grow on their rated error side (:func:`~.regions.extend_case_regions`), so the
    regions reach the deeper errors; feedback.json's ``regions`` entry records it
    (``extended``)."""
    n = 0
    for i, case in enumerate(cases):
        image = case.load_image()
        initial = case.load_initial(like=image).array
        reference = case.load_reference(like=image)
        regions = case.load_regions(like=image).array
        fb = simulate_feedback(case.case_id, initial, reference.array, regions, noise=noise,
                               seed=seed + i, rater=rater, seconds_per_rating=seconds_per_rating,
                               region_info=params.info())
        save_feedback(fb, case.feedback_path)
        n += len(fb.ratings(rater))
        if extend:
            extend_case_regions(case, params)
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
    prepare_regions(list_cases(out), params)   # the unextended regions: this rater extends its own
    rate_cases(list_cases(out), params, noise=noise, seed=seed + 7, rater="simulated_noisy")
    return out


@dataclass
class TrainResult:
    """A trained checkpoint, the training time and the config it was trained with."""

    model: Path
    seconds: float
    config: "TrainConfig | None" = None


def train_model(dataset: Path, out: Path, config: "TrainConfig", progress: str = "bar",
                cancel: CancelToken | None = None) -> TrainResult:
    """Train on ``dataset`` with ``config`` in this process and time it.

    Args:
        dataset: training dataset.
        out: checkpoint to write.
        config: the training settings (:class:`~SCORERefineLib.refiner.trainer.TrainConfig`).
        progress: ``bar`` | ``json`` | ``none``.
        cancel: stops training (checkpoint kept, Cancelled raised).

    Returns:
        The checkpoint path and the seconds training took.
    """
    from .refiner.trainer import train

    t0 = time.perf_counter()
    path = train(dataset, out, config, progress=progress, cancel=cancel)
    return TrainResult(Path(path), time.perf_counter() - t0, config)


@dataclass
class EvalResult:
    """Per-case metrics of one method on the test set, and inference seconds per case."""

    name: str
    rows: list
    seconds_per_case: list


def evaluate_masks(test: Path, name: str, refiner: Refiner, progress: str = "none",
                   cancel: CancelToken | None = None) -> EvalResult:
    """Refine every test case with ``refiner`` and score it against the case's reference.

    Args:
        test: dataset with references.
        name: prediction name (written to ``cases/<id>/predictions/<name>.*``).
        refiner: any :class:`~SCORERefineLib.refiners.Refiner`.
        progress: ``bar`` | ``json`` | ``none``.
        cancel: checked before each case.

    Returns:
        Per-case metrics and inference seconds.
    """
    rows, times = [], []
    for case, _path, info, mask in iter_predict_dataset(test, name, refiner, progress=progress,
                                                        cancel=cancel):
        row = {"case": case.case_id}
        row.update(case_metrics(mask.array, case.load_reference(like=mask).array,
                                mask.geometry.spacing_zyx))
        row["detached"] = detached_components(mask.array, case.load_initial(like=mask).array)
        rows.append(row)
        times.append(info["seconds"])
    return EvalResult(name, rows, times)


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
        entry["improved"] = float((deltas > IMPROVED_MIN_DELTA).mean())
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
