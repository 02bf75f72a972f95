"""Predictions in the case folder: ``cases/<id>/predictions/<name>.nii.gz`` and its JSON sidecar.

One loop, :func:`iter_predict_dataset`, serves every method that turns a case's image and initial
mask into a new mask (the refiner, the classical baseline, the benchmark's rows): it loads each
case, times the prediction alone, writes the mask and a sidecar with the timing, the change made
(voxels added/removed, volume before/after) and the method's settings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .atomicio import atomic_write_text
from .case import Case, get_case, list_cases
from .errors import InputError
from .imageio import Volume, write_volume
from .progress import CancelToken, Progress

#: ``predict(image, initial) -> mask (z, y, x)`` on the image grid
Predictor = Callable[[Volume, Volume], np.ndarray]


def change_summary(before: np.ndarray, after: np.ndarray, voxel_volume_mm3: float) -> dict:
    """Voxels added/removed and volume before/after (mL) between two binary masks of one grid."""
    b, a = np.asarray(before) != 0, np.asarray(after) != 0
    if b.shape != a.shape:
        raise InputError(f"masks of different shapes {b.shape} and {a.shape}")
    nb, na = int(b.sum()), int(a.sum())
    return {"voxels_added": int(np.count_nonzero(a & ~b)),
            "voxels_removed": int(np.count_nonzero(b & ~a)),
            "voxels_before": nb, "voxels_after": na,
            "volume_before_ml": nb * voxel_volume_mm3 / 1000.0,
            "volume_after_ml": na * voxel_volume_mm3 / 1000.0}


def format_summary(case_id: str, info: dict) -> str:
    """One human line: ``case: +added -removed voxels, before mL -> after mL (seconds s)``."""
    text = (f"{case_id}: +{info['voxels_added']} / -{info['voxels_removed']} voxels, "
            f"{info['volume_before_ml']:.2f} mL -> {info['volume_after_ml']:.2f} mL")
    if "seconds" in info:
        text += f" ({info['seconds']:.2f} s)"
    return text


def info_path(case: Case, name: str) -> Path:
    """The sidecar of a prediction: ``<case>/predictions/<name>.json``."""
    return case.prediction_path(name).with_name(f"{name}.json")


def write_prediction_info(case: Case, name: str, info: dict) -> Path:
    """Write the sidecar JSON atomically (timing in ``seconds``, change summary, settings)."""
    return atomic_write_text(info_path(case, name),
                             json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def read_prediction_info(case: Case, name: str) -> Optional[dict]:
    """The sidecar of prediction ``name`` of ``case`` (``seconds``, voxel counts...), or None."""
    path = info_path(case, name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def select_cases(dataset: str | os.PathLike, case_ids: Optional[Sequence[str]] = None) -> list[Case]:
    """Every case of ``dataset`` (sorted), or the given ``case_ids`` in their order."""
    if case_ids:
        return [get_case(dataset, cid) for cid in case_ids]
    return list_cases(dataset)


def iter_predict_dataset(dataset: str | os.PathLike, name: str, predict: Predictor,
                         settings: Optional[dict] = None, case_ids: Optional[Sequence[str]] = None,
                         progress: str = "bar", cancel: Optional[CancelToken] = None
                         ) -> Iterator[tuple[Case, Path, dict]]:
    """Apply ``predict`` to each case; yields ``(case, prediction path, info)`` per case.

    ``info`` (also written as the sidecar) holds ``seconds`` (the prediction alone, no file IO),
    ``seconds_total``, the change summary and ``settings`` (e.g. method, model, thresholds).
    """
    cases = select_cases(dataset, case_ids)
    with Progress(f"predict ({name})", len(cases), progress) as bar:
        for case in cases:
            if cancel is not None:
                cancel.raise_if_cancelled()
            t0 = time.perf_counter()
            image = case.load_image()
            initial = case.load_initial(like=image)
            t1 = time.perf_counter()
            out = np.asarray(predict(image, initial), dtype=np.uint8)
            seconds = time.perf_counter() - t1
            path = write_volume(initial.with_array(out), case.prediction_path(name), dtype=np.uint8)
            info = {"case_id": case.case_id, "name": name, **(settings or {}),
                    "seconds": seconds, "seconds_total": time.perf_counter() - t0,
                    **change_summary(initial.array, out, image.geometry.voxel_volume_mm3)}
            write_prediction_info(case, name, info)
            bar.update(case=case.case_id, seconds=round(seconds, 3))
            yield case, path, info
