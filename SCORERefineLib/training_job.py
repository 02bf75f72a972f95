"""Training in the background: ``scorerefine train ... --progress json`` as a :class:`~.jobs.BackgroundJob`.

The process handling (progress lines, cancel of the whole process tree, logs) lives in
:mod:`.jobs`, shared with refinement and TotalSegmentator; this module builds the training
command. Names are re-exported so existing callers keep working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from .catalog import TRAINING_MODES
from .errors import InputError
from .jobs import (CANCELLED, EXIT_CANCELLED, FAILED, FINISHED, IDLE, RUNNING, STATES,  # noqa: F401
                   BackgroundJob, Progress, Runner, _descendants, engine_environment, kill_tree_windows,
                   _LIB_ROOT, parse_progress_line, pid_alive, popen_runner, python_command,
                   signal_tree)


class TrainingJob(BackgroundJob):
    """One background training run (a :class:`~.jobs.BackgroundJob` named "training")."""


def train_command(dataset: str | os.PathLike, out: str | os.PathLike, mode: str = "score",
                  steps: int = 300, device: str = "auto", extra: Sequence[str] = (),
                  python: Optional[Sequence[str]] = None) -> list[str]:
    """``python -m SCORERefineLib.cli train <dataset> --out <out> ... --progress json``."""
    if mode not in TRAINING_MODES:
        raise InputError(f"training mode must be one of {sorted(TRAINING_MODES)}, got {mode!r}.")
    if int(steps) < 1:
        raise InputError(f"the number of training steps must be at least 1, got {steps}.")
    dataset = Path(dataset)
    if not (dataset / "cases").is_dir():
        raise InputError(f"{dataset} is not a SCORERefine dataset (no cases/ folder); choose the "
                         f"dataset folder in step 4 and save at least one rated case first.")
    return [*(python or python_command()), "-m", "SCORERefineLib.cli", "train", str(dataset),
            "--out", str(out), "--mode", mode, "--steps", str(int(steps)), "--device", str(device),
            "--progress", "json", *extra]



def start_training(dataset, out, mode="score", steps=300, device="auto", log_path=None,
                   extra: Sequence[str] = (), runner: Runner = popen_runner, **kwargs) -> TrainingJob:
    """Build the command and start a :class:`TrainingJob` (log beside the checkpoint by default)."""
    command = train_command(dataset, out, mode, steps, device, extra)
    log = Path(log_path) if log_path else Path(out).with_suffix(".train.log")
    return TrainingJob(command, log, checkpoint=out, runner=runner, **kwargs).start()
