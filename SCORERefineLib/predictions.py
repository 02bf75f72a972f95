"""Predictions in the case folder: ``cases/<id>/predictions/<name>.nii.gz`` and its JSON sidecar.

One loop, :func:`iter_predict_dataset`, serves every :class:`~SCORERefineLib.refiners.Refiner`
(a trained model, the classical baseline, the benchmark's rows): it loads each case, times the
refinement alone, writes the mask and a sidecar with the timing, the change made (voxels
added/removed, volume before/after), the refiner's settings and what the refiner reports about
the call (``refiner.last_info``: a model refiner's ``guard`` report, what the do-no-harm guard
clipped and why). A refiner that sets ``accepts_context = True`` also gets the case's regions and
feedback (``context={"regions": ..., "feedback": ...}``, None when the case has none). :func:`predict_file` does the same
for one mask file outside a dataset.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .atomicio import atomic_write_text
from .case import Case, get_case, list_cases
from .errors import InputError
from .imageio import Volume, read_image, read_mask, write_volume
from .progress import CancelToken, Progress

if TYPE_CHECKING:  # pragma: no cover
    from .refiners import Refiner


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


def read_prediction_info(case: Case, name: str) -> dict | None:
    """The sidecar of prediction ``name`` of ``case`` (``seconds``, voxel counts...), or None."""
    path = info_path(case, name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _call(refiner: "Refiner", image, initial, context: dict | None = None):
    """``refiner(image, initial)`` (with ``context`` when it accepts one) and its ``last_info``."""
    if context is not None and getattr(refiner, "accepts_context", False):
        result = refiner(image, initial, context=context)
    else:
        result = refiner(image, initial)
    return result, dict(getattr(refiner, "last_info", None) or {})


def case_context(case: Case, like: Volume) -> dict:
    """The case's regions (Volume) and feedback (CaseFeedback), None for what it lacks."""
    from .feedback import load_feedback

    regions = case.load_regions(like=like) if case.has_regions else None
    feedback = load_feedback(case.feedback_path) if case.has_feedback else None
    return {"regions": regions, "feedback": feedback}


def select_cases(dataset: str | os.PathLike, case_ids: Sequence[str] | None = None) -> list[Case]:
    """Every case of ``dataset`` (sorted), or the given ``case_ids`` in their order."""
    if case_ids:
        return [get_case(dataset, cid) for cid in case_ids]
    return list_cases(dataset)


def iter_predict_dataset(dataset: str | os.PathLike, name: str, refiner: "Refiner",
                         case_ids: Sequence[str] | None = None, progress: str = "bar",
                         cancel: CancelToken | None = None,
                         use_context: bool = True) -> Iterator[tuple[Case, Path, dict, Volume]]:
    """Apply ``refiner`` to each case and write ``predictions/<name>.nii.gz`` plus its sidecar.

    Args:
        dataset: dataset folder.
        name: prediction name.
        refiner: any :class:`~SCORERefineLib.refiners.Refiner`.
        case_ids: only these cases, in this order (default: every case, sorted).
        progress: ``bar`` | ``json`` | ``none``.
        cancel: checked before each case.
        use_context: give a refiner that accepts it the case's regions and feedback.

    Yields:
        ``(case, prediction path, info, mask)`` per case; ``info`` (also the sidecar) holds
        ``seconds`` (the refinement alone, no file IO), ``seconds_total``, the change summary and
        the refiner's ``settings`` and its ``last_info`` (``guard``: the guard's report);
        ``mask`` is the written uint8 Volume (so callers need not
        read it back).
    """
    cases = select_cases(dataset, case_ids)
    with Progress(f"predict ({name})", len(cases), progress) as bar:
        for case in cases:
            if cancel is not None:
                cancel.raise_if_cancelled()
            t0 = time.perf_counter()
            image = case.load_image()
            initial = case.load_initial(like=image)
            context = case_context(case, initial) \
                if use_context and getattr(refiner, "accepts_context", False) else None
            t1 = time.perf_counter()
            result, extra = _call(refiner, image, initial, context)
            out = np.asarray(result.array, dtype=np.uint8)
            seconds = time.perf_counter() - t1
            mask = initial.with_array(out)
            path = write_volume(mask, case.prediction_path(name), dtype=np.uint8)
            info = {"case_id": case.case_id, "name": name, **refiner.settings, **extra,
                    "seconds": seconds, "seconds_total": time.perf_counter() - t0,
                    **change_summary(initial.array, out, image.geometry.voxel_volume_mm3)}
            write_prediction_info(case, name, info)
            bar.update(case=case.case_id, seconds=round(seconds, 3))
            yield case, path, info, mask


def predict_file(refiner: "Refiner", mask_path: str | os.PathLike, out_path: str | os.PathLike,
                 image_path: str | os.PathLike | None = None, label: int | None = None) -> dict:
    """Refine one mask file (``label`` of a multi-label map) and write ``out_path`` (uint8).

    Args:
        refiner: any :class:`~SCORERefineLib.refiners.Refiner`.
        mask_path: initial mask (on the image's grid when ``image_path`` is given).
        out_path: refined mask to write.
        image_path: the CT; a model refiner needs it, the classical one only checks the grid.
        label: label of a multi-label mask to refine.

    Returns:
        ``out``, ``seconds`` (refinement only), ``seconds_total``, the change summary and the
        refiner's settings.

    Raises:
        GridMismatchError: the mask is not on the image's grid.
    """
    t0 = time.perf_counter()
    image = read_image(image_path) if image_path is not None else None
    initial = read_mask(mask_path, label=label, like=image.geometry if image is not None else None)
    t1 = time.perf_counter()
    result, extra = _call(refiner, image, initial)
    out = np.asarray(result.array, dtype=np.uint8)
    seconds = time.perf_counter() - t1
    path = write_volume(initial.with_array(out), out_path, dtype=np.uint8)
    return {"out": str(path), **refiner.settings, **extra, "seconds": seconds,
            "seconds_total": time.perf_counter() - t0,
            **change_summary(initial.array, out, initial.geometry.voxel_volume_mm3)}
