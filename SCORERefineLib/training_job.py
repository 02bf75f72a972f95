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


def check_training_inputs(dataset: str | os.PathLike, steps: int, needs: str) -> Path:
    """The dataset folder as a Path, after checking what every background training needs:
    ``steps`` >= 1 and a ``cases/`` folder (InputError naming the fix; ``needs`` says what the
    dataset must hold, e.g. "at least one rated case")."""
    if int(steps) < 1:
        raise InputError(f"the number of training steps must be at least 1, got {steps}.")
    dataset = Path(dataset)
    if not (dataset / "cases").is_dir():
        raise InputError(f"{dataset} is not a SCORERefine dataset (no cases/ folder); choose the "
                         f"dataset folder in step 4 and save {needs} first.")
    return dataset


def train_command(dataset: str | os.PathLike, out: str | os.PathLike, mode: str = "score",
                  steps: int = 300, device: str = "auto", extra: Sequence[str] = (),
                  python: Optional[Sequence[str]] = None) -> list[str]:
    """``python -m SCORERefineLib.cli train <dataset> --out <out> ... --progress json``."""
    if mode not in TRAINING_MODES:
        raise InputError(f"training mode must be one of {sorted(TRAINING_MODES)}, got {mode!r}.")
    dataset = check_training_inputs(dataset, steps, "at least one rated case")
    return [*(python or python_command()), "-m", "SCORERefineLib.cli", "train", str(dataset),
            "--out", str(out), "--mode", mode, "--steps", str(int(steps)), "--device", str(device),
            "--progress", "json", *extra]



def start_training(dataset, out, mode="score", steps=300, device="auto", log_path=None,
                   extra: Sequence[str] = (), runner: Runner = popen_runner, **kwargs) -> TrainingJob:
    """Build the command and start a :class:`TrainingJob` (log beside the checkpoint by default)."""
    command = train_command(dataset, out, mode, steps, device, extra)
    log = Path(log_path) if log_path else Path(out).with_suffix(".train.log")
    return TrainingJob(command, log, checkpoint=out, runner=runner, **kwargs).start()


#: settings of the panel's Train section that apply to a mode (others are hidden)
MODE_SETTINGS = {"score": ("profile",), "hybrid": ("dense", "dense_count", "weak", "indicator")}


def parse_case_ids(text: str) -> list[str]:
    """Case IDs typed as ``case_000, case_003`` (commas and/or spaces), in order, no repeats."""
    out: list[str] = []
    for part in str(text or "").replace(",", " ").split():
        if part not in out:
            out.append(part)
    return out


def mode_arguments(mode: str, dense: str = "", dense_count: int = 0, weak: str = "score",
                   indicator: str = "dynamic", dataset=None, profile: str = "default") -> list[str]:
    """The extra ``scorerefine train`` flags of the mode's settings in the panel.

    ``score``: ``--loss-weights PROFILE`` for a ``profile`` other than ``default`` (names from
    ``catalog.SCORE_PROFILES``, e.g. ``broad``).
    ``hybrid``: ``--dense CASE_IDS`` (``dense``: IDs typed with commas or spaces) or
    ``--dense-count K`` (``dense_count`` > 0), exactly one of them, plus ``--weak`` and
    ``--indicator`` (names from ``catalog.HYBRID_WEAK_KINDS`` / ``HYBRID_INDICATORS``). With
    ``dataset``, the dense IDs must be cases of it with ``reference.nii.gz``. Other modes: none.
    Raises InputError naming the problem and the fix.
    """
    from .catalog import HYBRID_INDICATORS, HYBRID_WEAK_KINDS, SCORE_PROFILES

    if mode == "score":
        if profile not in SCORE_PROFILES:
            raise InputError(f"score training: the loss setting must be one of "
                             f"{list(SCORE_PROFILES)}, got {profile!r}.")
        return [] if profile == "default" else ["--loss-weights", profile]
    if mode != "hybrid":
        return []
    ids = parse_case_ids(dense)
    count = int(dense_count or 0)
    if ids and count > 0:
        raise InputError(f"hybrid training: give either the dense case IDs ({', '.join(ids)}) or a "
                         f"dense case count ({count}), not both; set the count to 0 to use the IDs.")
    if not ids and count <= 0:
        raise InputError("hybrid training needs its dense cases (with reference.nii.gz): type their "
                         "case IDs (e.g. case_000, case_001) or set a dense case count above 0.")
    if weak not in HYBRID_WEAK_KINDS:
        raise InputError(f"hybrid training: the weak feedback must be one of "
                         f"{list(HYBRID_WEAK_KINDS)}, got {weak!r}.")
    if indicator not in HYBRID_INDICATORS:
        raise InputError(f"hybrid training: the weighting must be one of {list(HYBRID_INDICATORS)}, "
                         f"got {indicator!r}.")
    if ids and dataset is not None:
        root = Path(dataset) / "cases"
        missing = [c for c in ids if not (root / c / "reference.nii.gz").exists()]
        if missing:
            raise InputError(f"dense case(s) {missing} have no reference.nii.gz in {dataset}; a "
                             f"dense case needs a full reference: save one for it, or choose "
                             f"other cases.")
    dense_args = ["--dense", ",".join(ids)] if ids else ["--dense-count", str(count)]
    return [*dense_args, "--weak", weak, "--indicator", indicator]
