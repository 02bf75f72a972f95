"""Refine an initial mask with a trained refiner: the function the CLI and the Slicer module call.

:func:`refine_volume` refines each connected component of the initial mask in its own region of
interest (ROI: the component's bounding box grown by ``margin_mm`` per axis, clipped to the
volume; components whose ROIs overlap share one, :func:`component_rois`). For each ROI it builds
the network input on that crop plus some context (:func:`~.inputs.make_input`; the edge prior
needs a few mm beyond the ROI, and the crop is grown to at least one training patch where the
volume allows), resamples it to the training spacing when the checkpoint records one
(``metadata["spacing_mm"]``), runs MONAI sliding-window inference with the training
``patch_size`` (windows holding no voxel of the band that may change are not run), applies the
sigmoid (with ``tta``, the mean over the window's 16 views, :func:`view_mean_probability`)
and the thresholds (:func:`~.decision.decide_change`), and pastes the ROI back into a copy of
the initial mask. Only voxels
within ``margin_mm`` of the initial mask's surface may change (``band_only``); everything else is
exactly the initial mask; the result lies on exactly the image grid. :func:`forward_floor` times
one network pass over each input crop, the floor the sliding-window time is compared with
(``docs/performance.md``).

Files and case folders are not this module's business: :class:`SCORERefineLib.refiners.ModelRefiner`
wraps :func:`refine_volume` and :mod:`SCORERefineLib.predictions` does the reading and writing.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..bbox import padded_bbox
from ..case import Case
from ..errors import CheckpointError, InputError, SCORERefineError
from ..imageio import Geometry, Volume, check_same_grid, read_image, read_mask, write_volume
from ..progress import CancelToken, Progress
from .device import memory_format, resolve_device, to_memory_format
from .confidence import ConfidenceLimits, empty_report, merge_reports, take_back_unsure_additions
from .decision import check_threshold, decide_change
from .inputs import make_input

__all__ = ["resolve_device", "load_model", "roi_slices", "context_slices", "crop_geometry", "count_windows",
           "context_mm", "component_rois", "boundary_band", "training_spacing", "default_num_threads",
           "forward_floor", "refine_volume", "VIEWS", "tta_allowed", "view_mean_probability"]

#: Least context beyond the ROI for the input (mm); see :func:`context_mm`. The edge prior's
#: Gaussian (scipy truncates at 4 sigma) then sees real voxels at the ROI border, not a cut.
CONTEXT_MM = 5.0

ProgressCallback = Callable[[int, int], None]

#: Test-time views of a (B, C, z, y, x) window: ``(flip dims, quarter turns)``, the window flipped
#: on ``dims`` (``torch.flip``) then turned ``k`` quarter turns in the (y, x) plane
#: (``torch.rot90``). The 16 are every distinct view the trainer's augmentation draws
#: (``sampling.build_augmentation``: a random flip of each axis and a random in-plane quarter
#: turn): a z flip or none, times the 8 symmetries of the square in (y, x). ``((), 0)`` is the
#: window as it is.
VIEWS: tuple[tuple[tuple[int, ...], int], ...] = tuple(
    (z + y, k) for z, y, k in itertools.product(((), (2,)), ((), (3,)), range(4)))


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
    return padded_bbox(fg, [int(math.ceil(margin_mm / float(sp) - 1e-9))
                            for sp in spacing_zyx])  # type: ignore[return-value]


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


def tta_allowed(metadata: dict) -> bool:
    """Whether the test-time views suit a checkpoint: its training flipped and turned the
    patches (``metadata["training"]["augment"]``, True unless recorded False)."""
    training = (metadata or {}).get("training")
    return not (isinstance(training, dict) and training.get("augment") is False)


def view_mean_probability(model: torch.nn.Module, x: torch.Tensor,
                          views: Sequence[tuple[Sequence[int], int]] = VIEWS) -> torch.Tensor:
    """The mean foreground probability of ``model`` over flipped and turned copies of ``x``.

    ``x``: (B, C, z, y, x). Each copy is one item ``(dims, k)`` of ``views`` (:data:`VIEWS`):
    flipped on ``dims``, turned ``k`` quarter turns in the (y, x) plane, passed through
    ``model``, read as :func:`_to_probability` reads one output and turned and flipped back, so
    every copy's prediction lies on ``x``'s voxels (a window with y != x is turned to (x, y) and
    back: the network is fully convolutional). Returns (B, 1, z, y, x) in [0, 1]; with
    ``views=(((), 0),)`` one plain pass. Averaging the views removes decisions the network takes
    in one orientation only (issue 8: on real CT it turned single models' harm to a test case
    into gains, docs/score-loss.md stop 25).
    """
    total = None
    for dims, k in views:
        dims, k = tuple(int(d) for d in dims), int(k) % 4
        xi = torch.flip(x, dims) if dims else x
        xi = torch.rot90(xi, k, (3, 4)) if k else xi
        p = _to_probability(model(to_memory_format(xi, x.device) if (dims or k) else x))
        p = torch.rot90(p, -k, (3, 4)) if k else p
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total + p
    if total is None:
        raise InputError("view_mean_probability needs at least one view (((), 0) is the plain "
                         "pass).")
    return total / len(views)


class MeanProbability(torch.nn.Module):
    """An ensemble as one refiner: the mean foreground probability of ``models`` (each output
    read as :func:`refine_volume` reads one model's), returned as its logit, so that inference
    (inputs, windows, threshold) runs once for all of them. (B, C, z, y, x) -> (B, 1, z, y, x)."""

    def __init__(self, models: Sequence[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([_to_probability(m(x)) for m in self.members]).mean(0)
        return torch.logit(p, eps=1e-6)


def component_rois(mask: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float = 10.0
                   ) -> list[tuple[tuple[slice, slice, slice], list[int]]]:
    """One ROI per connected component (26-connectivity) of ``mask``: ``[(roi, [labels]), ...]``.

    Each ROI is the component's bounding box grown by ``margin_mm`` (:func:`roi_slices`).
    Components whose ROIs overlap are merged into one group with one ROI (their margins touch, so
    refining them apart would write the same voxels twice); so a component's ROI never holds a
    voxel of a component of another group. Labels are those of
    ``scipy.ndimage.label(mask, ones((3, 3, 3)))``. Raises :class:`InputError` for an empty mask.
    """
    from scipy import ndimage

    fg = np.asarray(mask) != 0
    if not fg.any():
        roi_slices(fg, spacing_zyx, margin_mm)   # raises the empty-mask error
    if margin_mm < 0:
        raise InputError(f"margin must be >= 0 mm, got {margin_mm}")
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), bool))
    pads = [int(math.ceil(margin_mm / float(sp) - 1e-9)) for sp in spacing_zyx]
    groups: list[tuple[list[int], list[int], list[int]]] = []   # (labels, lo, hi)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        lo = [max(b.start - p, 0) for b, p in zip(box, pads)]
        hi = [min(b.stop + p, size) for b, p, size in zip(box, pads, fg.shape)]
        groups.append(([i], lo, hi))
    merged = True
    while merged:   # merge groups whose ROIs overlap until none do
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                la, loa, hia = groups[a]
                lb, lob, hib = groups[b]
                if all(max(x0, y0) < min(x1, y1) for x0, x1, y0, y1 in zip(loa, hia, lob, hib)):
                    groups[a] = (la + lb, [min(x, y) for x, y in zip(loa, lob)],
                                 [max(x, y) for x, y in zip(hia, hib)])
                    del groups[b]
                    merged = True
                    break
            if merged:
                break
    return [(tuple(slice(l, h) for l, h in zip(lo, hi)), sorted(ids))  # type: ignore[misc]
            for ids, lo, hi in sorted(groups, key=lambda g: g[1])]


def boundary_band(mask: np.ndarray, spacing_zyx: Sequence[float], band_mm: float) -> np.ndarray:
    """Voxels within ``band_mm`` (Euclidean, in mm) of ``mask``'s surface, inside and outside.

    Inside voxels: distance to the nearest background voxel <= ``band_mm``; outside voxels:
    distance to the nearest mask voxel <= ``band_mm``. (``regions.boundary_band`` is the same idea
    for the rating band; this one is computed on a crop and does not depend on that module.)
    """
    from scipy import ndimage

    m = np.asarray(mask) != 0
    if not m.any():
        return np.zeros(m.shape, bool)
    if m.all():
        return np.zeros(m.shape, bool)
    sp = [float(s) for s in spacing_zyx]
    out = ndimage.distance_transform_edt(~m, sampling=sp) <= band_mm
    out &= ~m
    out |= m & (ndimage.distance_transform_edt(m, sampling=sp) <= band_mm)
    return out


def training_spacing(metadata: dict) -> Optional[tuple[float, float, float]]:
    """The (z, y, x) spacing in mm the refiner was trained at (``metadata["spacing_mm"]``, a number
    or three), or None when the checkpoint does not record it."""
    sp = metadata.get("spacing_mm")
    if sp is None:
        return None
    sp = [float(sp)] * 3 if isinstance(sp, (int, float)) else [float(v) for v in sp]
    if len(sp) != 3 or min(sp) <= 0 or not all(math.isfinite(v) for v in sp):
        raise CheckpointError(f"checkpoint spacing_mm {sp} is not three positive sizes (z, y, x) in mm.")
    return tuple(sp)  # type: ignore[return-value]


def _resample(array: np.ndarray, spacing_zyx: Sequence[float], new_spacing_zyx: Sequence[float],
              size_zyx: Optional[Sequence[int]] = None, linear: bool = True) -> np.ndarray:
    """Resample an array on a grid of ``spacing_zyx`` to ``new_spacing_zyx`` (same extent: both
    grids' outer voxel edges coincide; ``size_zyx`` forces the output size)."""
    import SimpleITK as sitk

    sp = [float(s) for s in spacing_zyx]
    nsp = [float(s) for s in new_spacing_zyx]
    n = array.shape
    if size_zyx is None:
        size_zyx = [max(int(round(k * s / t)), 1) for k, s, t in zip(n, sp, nsp)]
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.SetSpacing(tuple(reversed(sp)))
    img.SetOrigin((0.0, 0.0, 0.0))
    # first voxel centres such that the grids share their outer edge at -sp/2
    origin = [-0.5 * s + 0.5 * t for s, t in zip(sp, nsp)]
    ref = sitk.Image([int(v) for v in reversed(size_zyx)], sitk.sitkFloat32)
    ref.SetSpacing(tuple(reversed(nsp)))
    ref.SetOrigin(tuple(reversed(origin)))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear if linear else
                        sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32, True)
    return sitk.GetArrayFromImage(out)


def _resample_back(array: np.ndarray, spacing_zyx: Sequence[float], orig_spacing_zyx: Sequence[float],
                   orig_size_zyx: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`_resample`: back onto the original crop grid (linear)."""
    import SimpleITK as sitk

    sp = [float(s) for s in spacing_zyx]
    osp = [float(s) for s in orig_spacing_zyx]
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.SetSpacing(tuple(reversed(sp)))
    img.SetOrigin(tuple(reversed([-0.5 * o + 0.5 * s for o, s in zip(osp, sp)])))
    ref = sitk.Image([int(v) for v in reversed(orig_size_zyx)], sitk.sitkFloat32)
    ref.SetSpacing(tuple(reversed(osp)))
    ref.SetOrigin((0.0, 0.0, 0.0))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
    return sitk.GetArrayFromImage(out)


def default_num_threads() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def forward_floor(model: torch.nn.Module, input_shapes: Sequence[Sequence[int]],
                  device: str | torch.device = "cpu") -> float:
    """Seconds of one network pass over each input crop (``(C, z, y, x)`` shapes, padded up to the
    network's stride multiple): the floor sliding-window inference is compared with (no overlap,
    no window borders). Runs on zeros; the cost does not depend on the values."""
    dev = resolve_device(device)
    config = getattr(model, "config", None)
    div = config.divisor() if config is not None and hasattr(config, "divisor") else 8
    model.to(dev, memory_format=memory_format(dev)).eval()
    total = 0.0
    with torch.inference_mode():
        for shape in input_shapes:
            c, *spatial = [int(v) for v in shape]
            padded = [int(math.ceil(v / div) * div) for v in spatial]
            x = to_memory_format(torch.zeros((1, c, *padded), device=dev), dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            total += time.perf_counter() - t0
            del x
    return total


def refine_volume(model: torch.nn.Module, metadata: dict, image: Volume, initial: Volume,
                  device: str | torch.device = "cpu", margin_mm: float = 10.0,
                  threshold: float = 0.5, overlap: float = 0.25, sw_batch_size: int = 4,
                  progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None, return_probability: bool = False, *,
                  per_component: bool = True, band_only: bool = True,
                  skip_far_windows: bool = True, resample: bool = True,
                  num_threads: Optional[int] = None, timings: Optional[dict] = None,
                  tta: bool = True, confidence: Optional[ConfidenceLimits] = None,
                  add_threshold: Optional[float] = None) -> Volume | tuple[Volume, Volume]:
    """Refine ``initial`` (binary, on ``image``'s grid) with ``model``; a uint8 {0,1} Volume.

    ``image``: CT in HU, array (z, y, x). ``metadata``: the checkpoint metadata (``channels``,
    ``patch_size`` (z, y, x), ``normalisation``, optionally ``spacing_mm``). ``progress(done,
    total)`` is called per sliding-window batch; ``cancel`` is checked between batches (raises
    :class:`~SCORERefineLib.errors.Cancelled`). ``return_probability``: also return the float32
    foreground probability on the same grid (where nothing may change it equals the initial mask).

    What may change: voxels within ``margin_mm`` of the initial mask's bounding box, and with
    ``band_only`` (default) only those within ``margin_mm`` of its surface (inside or outside);
    every other voxel is exactly the initial mask.

    ``threshold``: a voxel of the initial mask is kept where the probability is at least this;
    ``add_threshold``: a voxel outside it is added where the probability is at least this (None:
    ``threshold``; :func:`~.decision.decide_change`).

    Speed at real sizes (issue 12): ``per_component``: one ROI per connected component
    (:func:`component_rois`; components whose ROIs overlap share one), so two distant humeri cost
    two small crops, not one box spanning both. ``skip_far_windows`` (with ``band_only``): a
    sliding window holding no band voxel is not run; it predicts the initial mask, which changes
    no band voxel (every window covering a band voxel holds it and runs), so the result is
    identical. ``resample``: when the checkpoint records its training ``spacing_mm`` and the image's
    differs by more than 5% on an axis, the input crop is resampled to the training spacing
    (SimpleITK, linear), inferred there and the probability resampled back (linear).
    ``tta``: test-time augmentation: each window's probability is the mean over its 16 views
    (flips and in-plane quarter turns, :data:`VIEWS`, :func:`view_mean_probability`), 16 network
    passes per window; skipped for a checkpoint trained without augmentation
    (:func:`tta_allowed`). False: one pass (far less network time, docs/performance.md).
    ``num_threads``: torch CPU threads for this call (default: the cores available to the process,
    ``os.sched_getaffinity``; 0 leaves torch's setting), restored afterwards. ``timings``: a dict
    filled with the stages' seconds (``input_s``, ``network_s``, ``paste_s``), ``windows_run`` /
    ``windows_total``, ``n_rois``, ``input_shapes`` (for :func:`forward_floor`) and
    ``passes_per_window`` (16 with test-time augmentation, else 1), and with ``confidence`` its
    report (``confidence``). ``confidence``: :class:`~.confidence.ConfidenceLimits`: in each ROI,
    the added pieces the network is unsure of are taken back after the threshold
    (:func:`~.confidence.take_back_unsure_additions`; the returned probability is not changed).
    """
    t_start = time.perf_counter()
    check_same_grid(image.geometry, initial.geometry, "image", "initial mask")
    check_threshold(threshold)
    if add_threshold is not None:
        check_threshold(add_threshold, "add threshold")
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
    train_sp = training_spacing(metadata) if resample else None
    dev = resolve_device(device)
    geom = image.geometry
    spacing = geom.spacing_zyx
    mask0 = (np.asarray(initial.array) != 0).astype(np.uint8)
    if per_component:
        rois = [roi for roi, _ in component_rois(mask0, spacing, margin_mm)]
    else:
        rois = [roi_slices(mask0, spacing, margin_mm)]
    if train_sp is not None and all(abs(a - b) <= 0.05 * b for a, b in zip(spacing, train_sp)):
        train_sp = None   # close enough: infer on the image grid
    views = VIEWS if tta and tta_allowed(metadata) else (((), 0),)
    stats = {"input_s": 0.0, "network_s": 0.0, "paste_s": 0.0, "windows_run": 0,
             "windows_total": 0, "n_rois": len(rois), "input_shapes": [],
             "resampled_to": list(train_sp) if train_sp else None,
             "passes_per_window": len(views)}
    if confidence is not None:
        stats["confidence"] = empty_report(confidence)

    threads_before = torch.get_num_threads()
    want = default_num_threads() if num_threads is None else int(num_threads)
    if want > 0 and want != threads_before:
        torch.set_num_threads(want)
    model.to(dev, memory_format=memory_format(dev)).eval()
    refined = mask0.copy()
    full = mask0.astype(np.float32) if return_probability else None
    # window counts for progress over all ROIs
    plans = []
    for roi in rois:
        ctx_sp = train_sp or spacing
        min_size = patch if train_sp is None else [
            int(math.ceil(p * t / s)) for p, t, s in zip(patch, train_sp, spacing)]
        ctx = context_slices(roi, mask0.shape, spacing, min_size=min_size,
                             context_mm=context_mm(metadata))
        plans.append((roi, ctx))
    try:
        totals = []
        for roi, ctx in plans:
            shape = [c.stop - c.start for c in ctx]
            if train_sp is not None:
                shape = [max(int(round(k * s / t)), 1) for k, s, t in zip(shape, spacing, train_sp)]
            totals.append(count_windows(shape, patch, overlap))
        total = int(sum(totals))
        stats["windows_total"] = total
        done = [0]
        for roi, ctx in plans:
            t0 = time.perf_counter()
            roi_prob = _refine_roi(model, metadata, channels, patch, image, mask0, roi, ctx, dev,
                                   margin_mm, overlap, int(sw_batch_size), band_only,
                                   skip_far_windows, train_sp, progress, cancel, done, total, stats,
                                   threshold=threshold, add_threshold=add_threshold,
                                   views=views)
            t1 = time.perf_counter()
            new = decide_change(roi_prob, mask0[roi], threshold, add_threshold)
            if band_only:
                inner = tuple(slice(r.start - c.start, r.stop - c.start) for r, c in zip(roi, ctx))
                keep = ~stats.pop("_band")[inner]
                new[keep] = mask0[roi][keep]
                roi_prob = np.where(keep, mask0[roi].astype(np.float32), roi_prob)
            if confidence is not None:
                new, part = take_back_unsure_additions(mask0[roi], new, roi_prob, confidence)
                merge_reports(stats["confidence"], part)
            refined[roi] = new
            if full is not None:
                full[roi] = roi_prob
            stats["paste_s"] += time.perf_counter() - t1
    finally:
        if want > 0 and want != threads_before:
            torch.set_num_threads(threads_before)
    stats["total_s"] = time.perf_counter() - t_start
    if timings is not None:
        stats.pop("_band", None)
        timings.update(stats)
    result = Volume(refined, geom)
    if not return_probability:
        return result
    return result, Volume(full, geom)


def _refine_roi(model, metadata, channels, patch, image, mask0, roi, ctx, dev, margin_mm, overlap,
                sw_batch_size, band_only, skip_far_windows, train_sp, progress, cancel, done,
                total, stats, threshold: float = 0.5, add_threshold: Optional[float] = None,
                views: Sequence[tuple[Sequence[int], int]] = (((), 0),)) -> np.ndarray:
    """The foreground probability on ``roi`` (float32 array of the ROI's shape).

    With ``train_sp`` only the network's *change* goes back to the image grid: the voxels it adds
    to or removes from the resampled initial mask (at ``threshold`` and ``add_threshold``) are
    resampled back, and only there does the resampled probability replace the initial mask
    (0/1). A network that changes nothing therefore returns exactly the initial mask, not a
    resampling-blurred copy of it.
    """
    from monai.inferers import sliding_window_inference

    t0 = time.perf_counter()
    geom = image.geometry
    spacing = geom.spacing_zyx
    crop_hu = np.ascontiguousarray(image.array[ctx])
    crop_mask = mask0[ctx]
    band = boundary_band(crop_mask, spacing, margin_mm) if band_only else None
    if band is not None:
        stats["_band"] = band
    if train_sp is not None:
        crop_hu = _resample(crop_hu, spacing, train_sp)
        crop_mask = (_resample(crop_mask, spacing, train_sp) >= 0.5).astype(np.uint8)
        net_geom = Geometry(size=tuple(reversed(crop_hu.shape)), spacing=tuple(reversed(train_sp)),
                            origin=geom.index_to_physical([c.start for c in ctx]),
                            direction=geom.direction)
        net_band = (boundary_band(crop_mask, train_sp, margin_mm + max(train_sp))
                    if band is not None else None)
    else:
        net_geom = crop_geometry(geom, ctx)
        net_band = band
    x = make_input(Volume(crop_hu, net_geom), crop_mask, channels,
                   normalisation=metadata.get("normalisation"))
    if x.shape[0] != len(channels):
        raise CheckpointError(f"make_input returned {x.shape[0]} channels for {channels}.")
    stats["input_shapes"].append([int(v) for v in x.shape])
    init_idx = channels.index("initial") if "initial" in channels else None
    # window skipping needs the window coordinates to index the band; MONAI pads inputs smaller
    # than the patch, which shifts them, so skipping is only used when no axis is padded
    can_skip = bool(skip_far_windows and net_band is not None and init_idx is not None
                    and all(n >= p for n, p in zip(x.shape[1:], patch)))
    band_t = torch.from_numpy(net_band) if can_skip else None
    t1 = time.perf_counter()
    stats["input_s"] += t1 - t0

    def run(batch: torch.Tensor) -> torch.Tensor:
        stats["windows_run"] += int(batch.shape[0])
        return view_mean_probability(model, to_memory_format(batch, dev), views)

    def predictor(batch: torch.Tensor, coords=None) -> torch.Tensor:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if band_t is None or coords is None:
            prob = run(batch)
        else:
            need = [bool(band_t[tuple(c[2:])].any()) for c in coords]
            if all(need):
                prob = run(batch)
            else:   # windows without band voxels predict the initial mask
                prob = batch[:, init_idx:init_idx + 1].float().clone()
                if any(need):
                    idx = [i for i, n in enumerate(need) if n]
                    prob[idx] = run(batch[idx])
        done[0] = min(done[0] + int(batch.shape[0]), total)
        if progress is not None:
            progress(done[0], total)
        return prob

    inputs = torch.from_numpy(x)[None]
    try:
        with torch.inference_mode():
            prob = sliding_window_inference(
                inputs, roi_size=patch, sw_batch_size=sw_batch_size, predictor=predictor,
                overlap=overlap, mode="gaussian", padding_mode="replicate",
                sw_device=dev, device=torch.device("cpu"), with_coord=can_skip)
    except torch.OutOfMemoryError as exc:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        raise SCORERefineError(
            f"out of memory on {dev} while refining (input crop {tuple(x.shape[1:])} voxels, patch "
            f"{patch}, sw_batch_size {sw_batch_size}). Use --device cpu, or a smaller "
            f"--sw-batch-size (1) and --overlap, or a smaller --margin-mm.") from exc
    prob_np = prob[0, 0].float().numpy()
    stats["network_s"] += time.perf_counter() - t1
    if train_sp is not None:
        t2 = time.perf_counter()
        size = [c.stop - c.start for c in ctx]
        init = crop_mask != 0
        changed = ((decide_change(prob_np, init, threshold, add_threshold) != 0)
                   != init).astype(np.float32)
        changed_back = _resample_back(changed, train_sp, spacing, size) > 0.01
        prob_back = _resample_back(prob_np, train_sp, spacing, size)
        native = mask0[ctx].astype(np.float32)
        native[changed_back] = prob_back[changed_back]
        prob_np = native
        stats["input_s"] += time.perf_counter() - t2
    inner = tuple(slice(r.start - c.start, r.stop - c.start) for r, c in zip(roi, ctx))
    return np.ascontiguousarray(prob_np[inner])


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
