"""What the Slicer panel asks of the quality predictor (issue 11): suggest ratings for the case being
rated (in-process: a few crops through a small network, well under a second), and train the
predictor in the background (``scorerefine quality train ... --progress json`` as a
:class:`~SCORERefineLib.jobs.BackgroundJob`, like refiner training).

No Qt and no slicer here: the panel passes the CT and the initial mask it read from the scene and
binds the results; pytest reaches everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import CheckpointError, InputError
from ..imageio import Volume

#: the quality checkpoint the panel uses when none is chosen: beside the dataset's refiner
DEFAULT_NAME = "quality.pt"


def quality_model_path(model_path, dataset_folder) -> Path:
    """The chosen quality checkpoint, else ``<dataset>/quality.pt``."""
    text = str(model_path or "").strip()
    return Path(text) if text not in ("", ".") else Path(dataset_folder) / DEFAULT_NAME


def suggest_for_session(session, image: Volume, mask, model_path: str | os.PathLike,
                        device: str = "cpu") -> int:
    """Predict every region of ``session`` (its regions, on ``image``/``mask``) and store the
    suggestions in its feedback as the ``suggested`` model rater. Returns their number.

    Raises:
        CheckpointError: no quality checkpoint at ``model_path``, or a refiner checkpoint.
        InputError: the mask is not on the regions' grid.
    """
    from .predict import predict_case
    from .train import load_quality_model

    path = Path(model_path)
    if not path.is_file():
        raise CheckpointError(f"no quality model at {path}: train one (Train quality predictor, or "
                              f"`scorerefine quality train DATASET --out {path}`) or choose its file.")
    mask = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    if mask.shape != session.regions.array.shape or image.array.shape != mask.shape:
        raise InputError(f"the CT {image.array.shape}, the mask {mask.shape} and the regions "
                         f"{session.regions.array.shape} are not on one grid; split the segment "
                         f"into regions again (step 2) on this CT.")
    model, meta = load_quality_model(path, device=device)
    preds = predict_case(model, meta, image, mask, session.regions.array, device=device)
    return session.add_suggestions(preds)


def quality_train_command(dataset: str | os.PathLike, out: str | os.PathLike, steps: int = 300,
                          extra: Sequence[str] = (), python: Optional[Sequence[str]] = None
                          ) -> list[str]:
    """``python -m SCORERefineLib.cli quality train <dataset> --out <out> --steps N --progress json``."""
    from ..jobs import engine_command
    from ..training_job import check_training_inputs

    dataset = check_training_inputs(dataset, steps, "at least one case")
    return engine_command("quality", "train", str(dataset), "--out", str(out), "--steps",
                          str(int(steps)), "--progress", "json", *extra, python=python)


def start_quality_training(dataset, out, steps: int = 300, extra: Sequence[str] = (),
                           log_path=None, **kwargs):
    """Start the predictor's training as a background job (log beside the checkpoint)."""
    from ..jobs import BackgroundJob

    command = quality_train_command(dataset, out, steps, extra)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path else Path(out).with_suffix(".train.log")
    return BackgroundJob(command, log, checkpoint=out, what="quality training", **kwargs).start()
