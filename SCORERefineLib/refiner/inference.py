"""Refine an initial mask with a trained refiner: the function the CLI and the Slicer module call.

:func:`refine_volume` crops a region of interest (ROI) around the initial mask's bounding box
(``margin_mm`` per axis, clipped to the volume), builds the network input on that crop plus some
context (:func:`~.inputs.make_input`; the edge prior needs a few mm beyond the ROI, and the crop is
grown to at least one training patch where the volume allows), runs MONAI sliding-window
inference with the training ``patch_size``, applies the sigmoid and the threshold, and pastes the
ROI back into a copy of the initial mask. Everything outside the ROI is exactly the initial mask;
the result lies on exactly the image grid.

Files and case folders are not this module's business: :class:`SCORERefineLib.refiners.ModelRefiner`
wraps :func:`refine_volume` and :mod:`SCORERefineLib.predictions` does the reading and writing.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..case import Case
from ..errors import CheckpointError, InputError, SCORERefineError
from ..imageio import Geometry, Volume, check_same_grid, read_image, read_mask, write_volume
from ..progress import CancelToken, Progress
from .device import resolve_device
from .inputs import make_input

__all__ = ["resolve_device", "load_model", "roi_slices", "context_slices", "crop_geometry", "count_windows",
           "context_mm", "refine_volume"]

#: Least context beyond the ROI for the input (mm); see :func:`context_mm`. The edge prior's
#: Gaussian (scipy truncates at 4 sigma) then sees real voxels at the ROI border, not a cut.
CONTEXT_MM = 5.0

ProgressCallback = Callable[[int, int], None]


def roi_slices(mask: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float = 10.0
               ) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` (z, y, x) grown by ``margin_mm`` (``ceil(margin/spacing)`` voxels per
    axis) and clipped to the array. Raises :class:`InputError` for an empty mask."""
    if margin_mm < 0:
        raise InputError(f"margin must be >= 0 mm, got {margin_mm}")
    fg = np.asarray(mask) != 0
    if not fg.any():
        raise InputError("the initial mask is empty (no foreground voxel): there is nothing to "
                         "refine. Check that the segmentation ran and the right label was chosen.")
    out = []
    for axis, (n, sp) in enumerate(zip(fg.shape, spacing_zyx)):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.nonzero(fg.any(axis=other))[0]
        pad = int(math.ceil(margin_mm / float(sp) - 1e-9))
        out.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, n)))
    return tuple(out)  # type: ignore[return-value]


def context_slices(roi: Sequence[slice], shape: Sequence[int], spacing_zyx: Sequence[float],
                   min_size: Sequence[int] = (1, 1, 1), context_mm: float = CONTEXT_MM
                   ) -> tuple[slice, slice, slice]:
    """The input crop: ``roi`` grown by ``context_mm`` and, where the volume allows, to at least
    ``min_size`` voxels per axis (centred on the ROI, shifted to stay inside the volume)."""
    out = []
    for s, n, sp, m in zip(roi, shape, spacing_zyx, min_size):
        pad = int(math.ceil(context_mm / float(sp) - 1e-9))
        lo, hi = max(s.start - pad, 0), min(s.stop + pad, n)
        short = int(m) - (hi - lo)
        if short > 0:
            lo = max(lo - short // 2, 0)
            hi = min(lo + int(m), n)
            lo = max(hi - int(m), 0)
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def crop_geometry(geometry: Geometry, crop: Sequence[slice]) -> Geometry:
    """The grid of ``array[crop]``: same spacing and direction, origin at the crop's first voxel."""
    start = [s.start for s in crop]
    size_zyx = [s.stop - s.start for s in crop]
    return Geometry(size=tuple(int(v) for v in reversed(size_zyx)), spacing=geometry.spacing,
                    origin=geometry.index_to_physical(start), direction=geometry.direction)


def count_windows(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI uses for an input of ``shape`` (z, y, x) (padded to roi)."""
    total = 1
    for n, r in zip(shape, roi_size):
        n, r = max(int(n), int(r)), int(r)
        if n > r:
            interval = max(int(r * (1 - overlap)), 1)
            total *= int(math.ceil((n - r) / interval)) + 1
    return total


def context_mm(metadata: dict) -> float:
    """Input context beyond the ROI (mm): 4 sigma of the edge prior's Gaussian + 1 mm, at least
    :data:`CONTEXT_MM`, so the edge prior inside the ROI equals the one on the whole image."""
    try:
        sigma = float(metadata["normalisation"]["edge"]["sigma_mm"])
    except (KeyError, TypeError, ValueError):
        sigma = 1.0
    return max(CONTEXT_MM, 4.0 * sigma + 1.0)


def _patch_size(metadata: dict) -> tuple[int, int, int]:
    ps = metadata.get("patch_size")
    if ps is None:
        raise CheckpointError("checkpoint metadata lacks 'patch_size'; it is damaged. Retrain.")
    ps = [int(ps)] * 3 if isinstance(ps, (int, float)) else [int(v) for v in ps]
    if len(ps) != 3 or min(ps) < 1:
        raise CheckpointError(f"checkpoint patch_size {ps} is not three positive sizes (z, y, x).")
    return tuple(ps)  # type: ignore[return-value]


def _model_in_channels(model: torch.nn.Module) -> Optional[int]:
    """Input channels the model expects: ``config.in_channels`` or the first convolution's."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "in_channels", None) is not None:
        names = config.in_channels
        return len(names) if isinstance(names, (list, tuple)) else int(names)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            return int(module.in_channels)
    return None


def _to_probability(out) -> torch.Tensor:
    """Model output (B, 1|2, z, y, x) logits, or a tuple/list whose first item is -> P(foreground)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if out.shape[1] == 1:
        return torch.sigmoid(out.float())
    if out.shape[1] == 2:
        return torch.softmax(out.float(), dim=1)[:, 1:2]
    raise CheckpointError(f"the refiner returned {out.shape[1]} output channels; expected 1 "
                          f"(foreground logit) or 2 (background/foreground).")


def refine_volume(model: torch.nn.Module, metadata: dict, image: Volume, initial: Volume,
                  device: str | torch.device = "cpu", margin_mm: float = 10.0,
                  threshold: float = 0.5, overlap: float = 0.25, sw_batch_size: int = 1,
                  progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None, return_probability: bool = False
                  ) -> Volume | tuple[Volume, Volume]:
    """Refine ``initial`` (binary, on ``image``'s grid) with ``model``; a uint8 {0,1} Volume.

    ``image``: CT in HU, array (z, y, x). ``metadata``: the checkpoint metadata (``channels``,
    ``patch_size`` (z, y, x), ``normalisation``). Only voxels within ``margin_mm`` of the initial
    mask's bounding box may change. ``progress(done, total)`` is called per sliding-window batch;
    ``cancel`` is checked between batches (raises :class:`~SCORERefineLib.errors.Cancelled`).
    ``return_probability``: also return the float32 foreground probability on the same grid
    (outside the ROI it equals the initial mask).
    """
    check_same_grid(image.geometry, initial.geometry, "image", "initial mask")
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {threshold}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if int(sw_batch_size) < 1:
        raise InputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    channels = list(metadata.get("channels") or [])
    if not channels:
        raise CheckpointError("checkpoint metadata lacks 'channels'; it is damaged. Retrain.")
    expected = _model_in_channels(model)
    if expected is not None and expected != len(channels):
        raise CheckpointError(f"the network takes {expected} input channels but its metadata lists "
                              f"{len(channels)} ({channels}); the checkpoint is inconsistent. "
                              f"Use a checkpoint written by `scorerefine train`.")
    patch = _patch_size(metadata)
    dev = resolve_device(device)
    geom = image.geometry
    spacing = geom.spacing_zyx
    mask0 = (np.asarray(initial.array) != 0).astype(np.uint8)

    roi = roi_slices(mask0, spacing, margin_mm)
    ctx = context_slices(roi, mask0.shape, spacing, min_size=patch,
                         context_mm=context_mm(metadata))
    crop_img = Volume(np.ascontiguousarray(image.array[ctx]), crop_geometry(geom, ctx))
    x = make_input(crop_img, mask0[ctx], channels, normalisation=metadata.get("normalisation"))
    if x.shape[0] != len(channels):
        raise CheckpointError(f"make_input returned {x.shape[0]} channels for {channels}.")

    total = count_windows(x.shape[1:], patch, overlap)
    done = [0]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        if cancel is not None:
            cancel.raise_if_cancelled()
        prob = _to_probability(model(batch))
        done[0] = min(done[0] + int(batch.shape[0]), total)
        if progress is not None:
            progress(done[0], total)
        return prob

    from monai.inferers import sliding_window_inference

    model.to(dev).eval()
    inputs = torch.from_numpy(x)[None]
    try:
        with torch.inference_mode():
            prob = sliding_window_inference(
                inputs, roi_size=patch, sw_batch_size=int(sw_batch_size), predictor=predictor,
                overlap=overlap, mode="gaussian", padding_mode="replicate",
                sw_device=dev, device=torch.device("cpu"))
    except torch.OutOfMemoryError as exc:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        raise SCORERefineError(
            f"out of memory on {dev} while refining (input crop {tuple(x.shape[1:])} voxels, patch "
            f"{patch}, sw_batch_size {sw_batch_size}). Use --device cpu, or a smaller "
            f"--sw-batch-size (1) and --overlap, or a smaller --margin-mm.") from exc
    prob_np = prob[0, 0].float().numpy()

    # ROI inside the context crop
    inner = tuple(slice(r.start - c.start, r.stop - c.start) for r, c in zip(roi, ctx))
    roi_prob = prob_np[inner]
    refined = mask0.copy()
    refined[roi] = (roi_prob >= threshold).astype(np.uint8)
    result = Volume(refined, geom)
    if not return_probability:
        return result
    full = mask0.astype(np.float32)
    full[roi] = roi_prob
    return result, Volume(full, geom)


def _window_bar(mode: str, label: str) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback that opens a :class:`Progress` on first use; and its closer."""
    state: dict = {}

    def callback(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = Progress(label, total, mode)
        state["bar"].update(done)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return callback, close


def load_model(model_path: str | os.PathLike, device: str | torch.device = "auto"
               ) -> tuple[torch.nn.Module, dict]:
    """Load a refiner checkpoint on ``device`` (``"auto"`` allowed): ``(model in eval mode, metadata)``.

    A missing file is an :class:`InputError` that points to ``scorerefine train`` and the
    classical baseline; a bad file a :class:`CheckpointError`.
    """
    from .checkpoint import load_refiner

    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}. Train one with `scorerefine train "
                         f"<dataset> --out {path.name}`, or use --model classical for the "
                         f"non-learned baseline.")
    return load_refiner(path, device=resolve_device(device))
