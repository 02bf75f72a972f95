"""Checkpoints: weights + JSON metadata (+ optimizer state for resume). Data, never code.

A checkpoint file is a ``torch.save`` of a plain dict::

    {"format": "scorerefine-checkpoint", "format_version": 1,
     "metadata": {...JSON-serialisable...}, "state_dict": {...tensors...},
     "optimizer": {...} | None}

Metadata keys written by the trainer: ``format_version``, ``package_version``, ``channels``,
``normalisation``, ``patch_size``, ``network`` (a :class:`~.network.NetworkConfig` dict), ``mode``,
``n_rated_regions``, ``n_cases``, ``training`` (the arguments), ``date``, ``step``, ``total_steps``.

Loading uses only ``torch.load(..., weights_only=True)``: a pickle that would run code is refused
(:class:`~SCORERefineLib.errors.CheckpointError`), as are other format versions, another
channel layout than the caller expects, non-checkpoint and truncated files.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Sequence

import torch

from .. import __version__
from ..atomicio import atomic_path
from ..errors import CheckpointError

FORMAT = "scorerefine-checkpoint"
FORMAT_VERSION = 1
#: ``metadata["task"]`` of checkpoints written before tasks existed
DEFAULT_TASK = "refiner"


def _check_json(metadata: dict) -> None:
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc


def save_checkpoint(path, model: torch.nn.Module, metadata: dict,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    extra: dict | None = None) -> Path:
    """Write atomically (temporary file in the same folder, then ``os.replace``). Returns the path.

    ``metadata`` gets ``format_version``, ``package_version``, ``date`` and ``step`` filled in.
    ``extra``: more tensors/plain data needed to resume (e.g. the GradScaler state).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata)
    meta.update(format_version=FORMAT_VERSION, package_version=__version__, step=int(step),
                date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _check_json(meta)
    net = model.module if hasattr(model, "module") else model   # unwrap DDP
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"refusing to save a checkpoint with non-finite weights ({k}).")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": meta,
               "state_dict": state,
               "optimizer": optimizer.state_dict() if optimizer is not None else None,
               "extra": extra or {}}
    with atomic_path(path, suffix="") as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path, map_location="cpu",
                    expect_channels: Sequence[str] | None = None) -> dict:
    """Load and validate a checkpoint dict (``weights_only=True``); :class:`CheckpointError` if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with `scorerefine train "
                              f"<dataset> --out {path.name}`.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            why = ("it contains Python objects other than tensors and plain data (a pickle that "
                   "could run code), which SCORERefine never loads")
        else:
            why = f"it is not a readable checkpoint (truncated or another kind of file: {text[:200]})"
        raise CheckpointError(f"cannot load checkpoint {path}: {why}. Use a checkpoint written by "
                              f"`scorerefine train`.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a SCORERefine checkpoint (no '{FORMAT}' marker); use a "
                              f"file written by `scorerefine train`.")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, this SCORERefine "
                              f"({__version__}) reads version {FORMAT_VERSION}; retrain with "
                              f"`scorerefine train` or use the SCORERefine version that wrote it.")
    meta = payload.get("metadata")
    if not isinstance(meta, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} lacks metadata or weights; it is damaged. Retrain.")
    meta.setdefault("task", DEFAULT_TASK)
    for key in ("channels", "network", "normalisation"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path} metadata lacks '{key}'; it is damaged. Retrain.")
    if expect_channels is not None and list(meta["channels"]) != list(expect_channels):
        raise CheckpointError(f"checkpoint {path} was trained with input channels {list(meta['channels'])} "
                              f"but {list(expect_channels)} were expected; use a checkpoint trained "
                              f"with the same channels (e.g. drop/add --no-edge when training).")
    return payload


def build_and_load(payload: dict, build, what: str) -> torch.nn.Module:
    """Build the network ``payload["metadata"]["network"]`` describes with ``build`` and load the
    payload's weights into it.

    Args:
        payload: what :func:`load_checkpoint` returned.
        build: the task's network builder (a config dict -> ``nn.Module``).
        what: how error messages name the file (e.g. ``"checkpoint model.pt"``).

    Returns:
        The network with the checkpoint's weights (on the CPU, not yet in eval mode).

    Raises:
        CheckpointError: the weights do not fit the described network (a damaged file).
    """
    try:
        model = build(payload["metadata"]["network"])
        model.load_state_dict(payload["state_dict"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{what}: weights do not fit its network description "
                              f"({str(exc).splitlines()[0][:200]}); it is damaged. Retrain.") from exc
    return model


def load_refiner(path, device="cpu", expect_channels: Sequence[str] | None = None
                 ) -> tuple[torch.nn.Module, dict]:
    """Build the network a checkpoint describes, load its weights, ``eval()`` on ``device``.

    Returns ``(model, metadata)``; ``metadata["channels"]`` and ``metadata["normalisation"]`` say how
    to build the input (:func:`~.inputs.make_input`), ``metadata["patch_size"]`` the training patch.
    """
    from .network import build_network

    payload = load_checkpoint(path, map_location="cpu", expect_channels=expect_channels)
    meta = payload["metadata"]
    if meta["task"] != DEFAULT_TASK:
        hint = (" (the region-quality predictor: use it with `scorerefine quality predict "
                "--model` or `scorerefine rate --order uncertainty --model`)"
                if meta["task"] == "quality" else "")
        raise CheckpointError(f"checkpoint {path} holds a '{meta['task']}' model{hint}, not a "
                              f"refiner; use a checkpoint written by `scorerefine train`.")
    model = build_and_load(payload, build_network, f"checkpoint {path}")
    if list(model.config.in_channels) != list(meta["channels"]):
        raise CheckpointError(f"checkpoint {path} is inconsistent: network inputs "
                              f"{model.config.in_channels} vs channels {meta['channels']}. Retrain.")
    model.to(device).eval()
    return model, meta
