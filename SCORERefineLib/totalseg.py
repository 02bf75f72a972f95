"""Running TotalSegmentator to get the initial humerus mask, with clear errors when it cannot run.

Inside Slicer the module prefers the TotalSegmentator extension's own logic (it manages its Python
package and weights); elsewhere, or when the extension is missing, the ``TotalSegmentator``
command of the ``totalsegmentator`` package runs in a subprocess::

    TotalSegmentator -i ct.nii.gz -o out --roi_subset humerus_left humerus_right [--fast] [--ml] [--device cpu]

This module builds that command, finds and merges its outputs into one binary mask on the CT grid,
and turns its failures into :class:`TotalSegmentatorNotInstalled` (how to install it) or
:class:`WeightsUnavailable` (how to use local weights offline: ``TOTALSEG_WEIGHTS_PATH`` or
``totalseg_import_weights -i weights.zip``). The TotalSegmentator package pins an older ``vtk`` and
``torchvision``: install it in its own environment (or through the Slicer extension), not beside
``slicer-core``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import InputError, SCORERefineError
from .imageio import Geometry, Volume, read_labels, resample_mask_to, write_volume

DEFAULT_STRUCTURES = ("humerus_left", "humerus_right")
#: TotalSegmentator v2 ``total`` task labels of the structures near the humerus (multi-label output)
TOTAL_V2_LABELS = {"humerus_left": 69, "humerus_right": 70, "scapula_left": 71, "scapula_right": 72,
                   "clavicula_left": 73, "clavicula_right": 74}
#: weight folders (``DatasetNNN_*``) the ``total`` task needs: fast (3 mm) and full resolution.
#: ``--roi_subset`` first runs the 6 mm model (Dataset298) to crop to the structures, so it is
#: needed in both modes.
WEIGHT_IDS = {"fast": (297, 298), "full": (291, 292, 293, 294, 295, 298)}
EXECUTABLE_ENV = "SCORE_TOTALSEG"       # path of a TotalSegmentator executable to use
WEIGHTS_ENV = "TOTALSEG_WEIGHTS_PATH"
HOME_ENV = "TOTALSEG_HOME_DIR"

INSTALL_HINT = (
    "In 3D Slicer: install the TotalSegmentator extension (Extensions Manager) and restart Slicer; "
    "SCORERefine then asks the extension to install its Python package (its "
    "setupPythonRequirements()) before the first run. Outside Slicer: "
    "`pip install TotalSegmentator` in its own virtual environment (it pins an older vtk and "
    "torchvision that clash with slicer-core) and put that environment's bin folder on PATH, or set "
    f"{EXECUTABLE_ENV}=/path/to/TotalSegmentator. Or pick an existing segmentation instead.")


class TotalSegmentatorNotInstalled(InputError):
    """TotalSegmentator cannot be found."""


class WeightsUnavailable(InputError):
    """TotalSegmentator has no model weights and cannot download them (offline)."""


class TotalSegmentatorFailed(SCORERefineError):
    """TotalSegmentator ran and failed for another reason (the message holds its last lines)."""


def weights_dir(env: Optional[dict] = None) -> Path:
    """Where TotalSegmentator looks for its weights (``TOTALSEG_WEIGHTS_PATH`` first)."""
    env = os.environ if env is None else env
    if env.get(WEIGHTS_ENV):
        return Path(env[WEIGHTS_ENV]).expanduser()
    home = Path(env[HOME_ENV]).expanduser() if env.get(HOME_ENV) else Path.home() / ".totalsegmentator"
    return home / "nnunet" / "results"


def missing_weights(fast: bool = True, env: Optional[dict] = None) -> list[int]:
    """The ``DatasetNNN`` weight folders the ``total`` task needs that are not on disk."""
    root = weights_dir(env)
    present = set()
    if root.is_dir():
        for p in root.rglob("Dataset*_*"):
            m = re.match(r"Dataset(\d+)_", p.name)
            if m and p.is_dir():
                present.add(int(m.group(1)))
    return [i for i in WEIGHT_IDS["fast" if fast else "full"] if i not in present]


def weights_hint(fast: bool = True, env: Optional[dict] = None) -> str:
    ids = ", ".join(f"Dataset{i}" for i in WEIGHT_IDS["fast" if fast else "full"])
    return (f"TotalSegmentator's model weights ({ids}_...) are not in {weights_dir(env)} and could "
            f"not be downloaded (no internet?). Get the weights zip on a computer with internet and "
            f"import it with `totalseg_import_weights -i weights.zip` (in Slicer: the TotalSegmentator "
            f"module's 'Import weights' button), or set {WEIGHTS_ENV} to a folder that holds the "
            f"Dataset..._ weight folders, then run again.")


def find_command(env: Optional[dict] = None, python: Optional[Sequence[str]] = None) -> list[str]:
    """How to start TotalSegmentator here; raises :class:`TotalSegmentatorNotInstalled`.

    ``python``: the interpreter that has the ``totalsegmentator`` package (default: the engine's
    Python, which is PythonSlicer inside the Slicer application, never the application itself).
    """
    env = os.environ if env is None else env
    override = env.get(EXECUTABLE_ENV)
    if override:
        if Path(override).exists() or shutil.which(override):
            return [override]
        raise TotalSegmentatorNotInstalled(f"{EXECUTABLE_ENV}={override} does not exist. {INSTALL_HINT}")
    found = shutil.which("TotalSegmentator", path=env.get("PATH"))
    if found:
        return [found]
    if importlib.util.find_spec("totalsegmentator") is not None:
        if python is None:
            from .jobs import python_command
            python = python_command()
        return [*python, "-c",
                "import sys; from totalsegmentator.bin.TotalSegmentator import main; sys.exit(main())"]
    raise TotalSegmentatorNotInstalled(f"TotalSegmentator is not installed (no `TotalSegmentator` "
                                       f"command on PATH). {INSTALL_HINT}")


def build_command(input_path: str | os.PathLike, output: str | os.PathLike,
                  structures: Sequence[str] = DEFAULT_STRUCTURES, fast: bool = True, ml: bool = False,
                  device: Optional[str] = None, executable: Sequence[str] = ("TotalSegmentator",),
                  task: str = "total") -> list[str]:
    """The TotalSegmentator command line (``-o``: a folder, or the file with ``ml``)."""
    structures = [s.strip() for s in structures if s and s.strip()]
    if not structures:
        raise InputError("choose at least one structure to keep (e.g. humerus_left humerus_right).")
    bad = [s for s in structures if not re.fullmatch(r"[a-z0-9_]+", s)]
    if bad:
        raise InputError(f"structure names {bad} are not TotalSegmentator class names; use names "
                         f"such as humerus_left, humerus_right.")
    if device is not None and not re.fullmatch(r"gpu(:\d+)?|cpu|mps", device):
        raise InputError(f"TotalSegmentator device must be gpu, gpu:N, cpu or mps, got {device!r}.")
    cmd = [*executable, "-i", str(input_path), "-o", str(output)]
    if task != "total":
        cmd += ["--task", task]
    cmd += ["--roi_subset", *structures]
    if fast:
        cmd.append("--fast")
    if ml:
        cmd.append("--ml")
    if device is not None:
        cmd += ["--device", device]
    return cmd


def find_outputs(output: str | os.PathLike, structures: Sequence[str] = DEFAULT_STRUCTURES,
                 ml: bool = False) -> dict[str, Path]:
    """The output file of each structure (one file per structure, or the ``--ml`` file for all)."""
    output = Path(output)
    if ml:
        for cand in (output, output.with_suffix(".nii.gz") if output.suffix != ".gz" else output,
                     Path(str(output) + ".nii.gz"), Path(str(output) + ".nii")):
            if cand.is_file():
                return {s: cand for s in structures}
        raise TotalSegmentatorFailed(f"TotalSegmentator wrote no multi-label file at {output}; "
                                     f"see its log above.")
    if not output.is_dir():
        raise TotalSegmentatorFailed(f"TotalSegmentator wrote no output folder {output}; see its log.")
    found, missing = {}, []
    for s in structures:
        for ext in (".nii.gz", ".nii", ".nrrd"):
            if (output / f"{s}{ext}").is_file():
                found[s] = output / f"{s}{ext}"
                break
        else:
            missing.append(s)
    if missing:
        have = sorted(p.name.split(".")[0] for p in output.glob("*.nii*"))
        raise TotalSegmentatorFailed(f"TotalSegmentator output {output} has no {missing}; it holds "
                                     f"{have[:30]}. Check the structure names (--roi_subset).")
    return found


@dataclass
class MergedMask:
    mask: Volume                       # uint8 {0, 1}
    voxels: dict[str, int]             # voxels of each structure
    empty: list[str]                   # structures TotalSegmentator did not find in the image


def merge_structures(outputs: dict[str, Path], like: Optional[Geometry] = None,
                     labels: Optional[dict[str, int]] = None) -> MergedMask:
    """Union of the chosen structures as one binary mask (resampled onto ``like`` if needed)."""
    labels = TOTAL_V2_LABELS if labels is None else labels
    merged, geometry, voxels, empty = None, None, {}, []
    cache: dict[Path, Volume] = {}
    for name, path in outputs.items():
        vol = cache.get(path) or read_labels(path)
        cache[path] = vol
        values = set(np.unique(vol.array).tolist()) - {0}
        if len(values) > 1 or (values and list(outputs.values()).count(path) > 1):
            if name not in labels:
                raise InputError(f"{path.name} is a multi-label map and the label of '{name}' is not "
                                 f"known; run TotalSegmentator without --ml.")
            part = vol.array == labels[name]
        else:
            part = vol.array != 0
        if geometry is None:
            geometry, merged = vol.geometry, np.zeros(vol.array.shape, bool)
        elif not geometry.matches(vol.geometry):
            part = resample_mask_to(vol.with_array(part.astype(np.uint8)), geometry).array != 0
        merged |= part
        voxels[name] = int(part.sum())
        if not voxels[name]:
            empty.append(name)
    if merged is None:
        raise InputError("no TotalSegmentator output to merge.")
    if not merged.any():
        raise InputError(f"TotalSegmentator found none of {list(outputs)} in this CT (all masks "
                         f"empty); check that the humerus is in the field of view, or pick another "
                         f"structure or an existing segmentation.")
    mask = Volume(merged.astype(np.uint8), geometry)
    if like is not None:  # exactly the CT grid (NIfTI stores spacing as float32)
        mask = Volume(mask.array, like) if like.matches(geometry) else resample_mask_to(mask, like)
    return MergedMask(mask, voxels, empty)


_NOT_INSTALLED = re.compile(r"No module named '?totalsegmentator|command not found|"
                            r"is not recognized as an internal or external command", re.I)
_OFFLINE = re.compile(r"URLError|ConnectionError|Max retries exceeded|Temporary failure in name "
                      r"resolution|Name or service not known|HTTPSConnectionPool|Network is unreachable|"
                      r"getaddrinfo failed|Failed to establish a new connection", re.I)
_DOWNLOAD = re.compile(r"download|weights|zenodo|github\.com/wasserth", re.I)


def explain_failure(returncode: int, output: str, fast: bool = True,
                    env: Optional[dict] = None) -> SCORERefineError:
    """The error to show for a failed TotalSegmentator run, from its exit status and output."""
    tail = "\n".join(line for line in output.strip().splitlines()[-8:])
    if _NOT_INSTALLED.search(output) or returncode == 127:
        return TotalSegmentatorNotInstalled(f"TotalSegmentator could not be started. {INSTALL_HINT}")
    if _OFFLINE.search(output) and (_DOWNLOAD.search(output) or missing_weights(fast, env)):
        return WeightsUnavailable(weights_hint(fast, env))
    if re.search(r"out of memory|CUDA error", output, re.I):
        return TotalSegmentatorFailed(f"TotalSegmentator ran out of memory; tick 'fast' or use the "
                                      f"CPU. Its last lines:\n{tail}")
    return TotalSegmentatorFailed(f"TotalSegmentator failed (exit status {returncode}). Its last "
                                  f"lines:\n{tail}")


Runner = Callable[..., subprocess.CompletedProcess]


def _run(cmd, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")


@dataclass
class TotalSegResult:
    mask: Volume
    voxels: dict[str, int]
    empty: list[str]
    command: list[str]
    log: str


@dataclass
class PreparedRun:
    """A TotalSegmentator command ready to run (in the background by the panel's job runner)."""

    command: list[str]
    work: Path
    out: Path
    structures: list[str]
    fast: bool
    env: dict
    owned: bool

    def cleanup(self) -> None:
        if self.owned:
            shutil.rmtree(self.work, ignore_errors=True)


def prepare_run(image: Volume, structures: Sequence[str] = DEFAULT_STRUCTURES, fast: bool = True,
                device: Optional[str] = None, workdir: Optional[str | os.PathLike] = None,
                env: Optional[dict] = None, offline: Optional[bool] = None) -> PreparedRun:
    """Write the CT and build the command (checks installation and, offline, the weights)."""
    env = dict(os.environ if env is None else env)
    executable = find_command(env)
    if offline is None:
        offline = bool(env.get("SCORE_OFFLINE") or env.get("HF_HUB_OFFLINE"))
    if offline and missing_weights(fast, env):
        raise WeightsUnavailable(weights_hint(fast, env))
    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="scorerefine-totalseg-")) if owned else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        ct = write_volume(image, work / "ct.nii.gz",
                          dtype=np.int16 if np.all(np.mod(image.array, 1) == 0) else np.float32)
        out = work / "out"
        cmd = build_command(ct, out, structures, fast=fast, device=device, executable=executable)
    except BaseException:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return PreparedRun(cmd, work, out, [s.strip() for s in structures if s.strip()], bool(fast),
                       env, owned)


def finish_run(run: PreparedRun, returncode: int, log: str, like: Geometry) -> "TotalSegResult":
    """The merged mask after the command ended (raises the explained failure otherwise)."""
    if returncode != 0:
        raise explain_failure(returncode, log, run.fast, run.env)
    merged = merge_structures(find_outputs(run.out, run.structures), like=like)
    return TotalSegResult(merged.mask, merged.voxels, merged.empty, run.command, log)


def run_totalsegmentator(image: Volume, structures: Sequence[str] = DEFAULT_STRUCTURES,
                         fast: bool = True, device: Optional[str] = None,
                         workdir: Optional[str | os.PathLike] = None, runner: Runner = _run,
                         env: Optional[dict] = None, offline: Optional[bool] = None) -> TotalSegResult:
    """Run TotalSegmentator on ``image`` and return the merged mask of ``structures`` on its grid
    (blocking; the panel runs :func:`prepare_run`'s command in the background instead).

    ``offline``: when True (or when ``HF_HUB_OFFLINE``/``SCORE_OFFLINE`` is set) missing weights
    are reported before running instead of letting TotalSegmentator try to download them.
    """
    run = prepare_run(image, structures, fast, device, workdir, env, offline)
    try:
        try:
            proc = runner(run.command, env=run.env, cwd=str(run.work))
        except FileNotFoundError as exc:
            raise TotalSegmentatorNotInstalled(f"TotalSegmentator could not be started ({exc}). "
                                               f"{INSTALL_HINT}") from exc
        return finish_run(run, proc.returncode, proc.stdout or "", image.geometry)
    finally:
        run.cleanup()


def segment_name_candidates(structure: str) -> list[str]:
    """Names the Slicer TotalSegmentator extension may give a structure's segment."""
    words = structure.split("_")
    out = [structure, " ".join(words)]
    if len(words) == 2 and words[1] in ("left", "right"):
        out += [f"{words[1]} {words[0]}", f"{words[1].capitalize()} {words[0]}"]
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- the Slicer extension

def extension_process_kwargs(process: Callable, fast: bool = True, cpu: bool = False,
                             subset: Optional[Sequence[str]] = None, task: str = "total") -> dict:
    """Keyword arguments for the installed extension's ``TotalSegmentatorLogic.process``.

    Bound by its signature, never by trial and error: Slicer 5.8's extension takes ``fast=``,
    the extension for Slicer 5.10 and later takes ``quality=`` ("normal", "fast", "faster").
    An extension without ``subset`` would segment all 117 structures: refused with a clear error
    (update the extension) instead of silently running for many minutes.
    """
    params = inspect.signature(process).parameters
    kwargs: dict = {}
    if "quality" in params:
        kwargs["quality"] = "fast" if fast else "normal"
    elif "fast" in params:
        kwargs["fast"] = bool(fast)
    else:
        raise TotalSegmentatorNotInstalled(
            "the installed TotalSegmentator extension has neither a 'quality' nor a 'fast' option "
            "in TotalSegmentatorLogic.process; update it in the Extensions Manager.")
    if "cpu" in params:
        kwargs["cpu"] = bool(cpu)
    if "task" in params:
        kwargs["task"] = task
    if subset:
        if "subset" not in params:
            raise TotalSegmentatorNotInstalled(
                "the installed TotalSegmentator extension cannot segment a subset of structures "
                "(no 'subset' option), so it would segment all 117; update it in the Extensions "
                "Manager.")
        kwargs["subset"] = list(subset)
    if "interactive" in params:
        kwargs["interactive"] = False
    return kwargs


def prepare_extension(logic, fast: bool = True, env: Optional[dict] = None,
                      offline: Optional[bool] = None) -> None:
    """Before running the extension: its Python package installed (``setupPythonRequirements``,
    which the extension's own widget calls only when a person presses Apply there) and, offline,
    its weights present (the same pre-check as the command-line path)."""
    env = os.environ if env is None else env
    if offline is None:
        offline = bool(env.get("SCORE_OFFLINE") or env.get("HF_HUB_OFFLINE"))
    if offline and missing_weights(fast, env):
        raise WeightsUnavailable(weights_hint(fast, env))
    setup = getattr(logic, "setupPythonRequirements", None)
    if callable(setup):
        setup()
