"""Scribble feedback: ``scribbles.nii.gz``, its validation, and a simulated scribbler.

A scribble map is a label volume on the image grid (array order ``(z, y, x)``):

* ``0`` (:data:`NONE`): not scribbled;
* ``1`` (:data:`FOREGROUND`): a stroke on the structure;
* ``2`` (:data:`BACKGROUND`): a stroke just outside it.

A person draws a few thin strokes on some slices, where the initial mask is wrong (the
supervision ScribbleVS trains from; its ACDC scribbles were drawn by hand, and synthetic scribble
sets are commonly made, as here, from skeletons of dense labels).

The simulated scribbler (:func:`simulate_scribbles`) draws from a reference: on ``n_slices``
slices along ``axis`` it cuts the in-plane skeletons of (a) the reference and the initial mask's
missed parts (foreground) and (b) a background ring around the reference and the initial mask's
leaks (background) into strokes of at most ``stroke_mm``, and picks a few per slice, preferring
slices and strokes on the initial mask's errors (``error_weighted``). Foreground strokes lie
inside the reference and background strokes outside it, always; :func:`misplace_strokes` makes
the noisy variant (a share of strokes with the wrong label).

Cost model (recorded in ``info["seconds"]``): :data:`SECONDS_PER_STROKE` per stroke plus
:data:`SECONDS_PER_SLICE` per scribbled slice (scrolling to it and looking). For comparison a
rating costs ``rater.SECONDS_PER_RATING`` (5 s).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from .errors import InputError
from .imageio import Geometry, Volume, read_labels, write_volume

NONE, FOREGROUND, BACKGROUND = 0, 1, 2
LABELS = (NONE, FOREGROUND, BACKGROUND)

#: seconds to draw one stroke (a drag of a few centimetres with a brush)
SECONDS_PER_STROKE = 3.0
#: seconds to scroll to a slice and look at it before drawing there
SECONDS_PER_SLICE = 5.0

_FIX = ("a scribble map holds 0 (none), 1 (foreground stroke, on the structure) and 2 "
        "(background stroke, just outside it) on the image grid")


# ----------------------------------------------------------------------------- file contract

def validate_scribbles(array: np.ndarray, source: str = "scribbles") -> np.ndarray:
    """Check a scribble label array and return it as uint8.

    Raises :class:`InputError` naming the problem and the fix for labels other than 0/1/2 or a
    map without any stroke.
    """
    a = np.asarray(array)
    if a.dtype.kind == "f" and (not np.all(np.isfinite(a)) or not np.all(np.mod(a, 1) == 0)):
        raise InputError(f"{source} holds non-integer values; {_FIX}. Re-export it as a label map.")
    values = np.unique(a).astype(np.int64)
    bad = [int(v) for v in values if int(v) not in LABELS]
    if bad:
        raise InputError(f"{source} holds labels {bad[:10]} besides 0/1/2; {_FIX}. Relabel it "
                         f"(e.g. structure strokes -> 1, outside strokes -> 2) and save it again.")
    if not np.any(a != NONE):
        raise InputError(f"{source} is empty (no stroke); draw at least one stroke (1 on the "
                         f"structure or 2 just outside it) or delete the file to train without "
                         f"scribbles for this case.")
    return a.astype(np.uint8)


def read_scribbles(path: Union[str, os.PathLike], like: Optional[Geometry] = None) -> Volume:
    """Read ``scribbles.nii.gz`` as uint8 0/1/2. ``like``: the image grid it must share
    (:class:`~SCORERefineLib.errors.GridMismatchError` otherwise)."""
    path = Path(path)
    vol = read_labels(path, like=like)
    return vol.with_array(validate_scribbles(vol.array, f"scribble map {path}"))


def write_scribbles(volume: Volume, path: Union[str, os.PathLike],
                    like: Optional[Geometry] = None) -> Path:
    """Validate and write a scribble map atomically (uint8). ``like``: grid to check against."""
    from .imageio import check_same_grid

    if like is not None:
        check_same_grid(like, volume.geometry, "image", "scribbles")
    arr = validate_scribbles(volume.array, f"scribble map for {Path(path)}")
    return write_volume(volume.with_array(arr), path, dtype=np.uint8)


def scribble_counts(labels: np.ndarray) -> dict:
    """Voxel counts ``{"foreground", "background", "slices"}`` (slices along axis 0 with a stroke)."""
    a = np.asarray(labels)
    return {"foreground": int((a == FOREGROUND).sum()), "background": int((a == BACKGROUND).sum()),
            "slices": int(np.any(a != NONE, axis=(1, 2)).sum()) if a.ndim == 3 else 0}


# ----------------------------------------------------------------------------- skeletons, strokes

def skeleton_2d(mask: np.ndarray) -> np.ndarray:
    """A thin (about one pixel) centre line of a 2D mask.

    ``skimage.morphology.skeletonize`` when scikit-image is installed; otherwise the ridge of
    the Euclidean distance transform (pixels whose distance to the background is maximal in
    their 3x3 neighbourhood), which is thin and stays inside the mask.
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return m
    try:  # optional: not a dependency of SCORERefine
        from skimage.morphology import skeletonize
        return skeletonize(m).astype(bool) & m
    except ImportError:
        pass
    d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    ridge = m & (d >= ndimage.maximum_filter(d, size=3)) & (d > 0)
    # very thin parts (<= 2 px) keep their own pixels so small errors are not lost
    thin = m & (d <= 1.0) & ~ndimage.binary_opening(m, iterations=1)
    return ridge | thin


def _strokes_2d(skel: np.ndarray, spacing_yx: Sequence[float], stroke_mm: float,
                min_pixels: int) -> list[np.ndarray]:
    """Cut a skeleton into strokes: its 8-connected pieces within ``stroke_mm`` tiles."""
    if not skel.any():
        return []
    comp, n = ndimage.label(skel, structure=np.ones((3, 3), bool))
    ty = max(1, int(round(stroke_mm / spacing_yx[0])))
    tx = max(1, int(round(stroke_mm / spacing_yx[1])))
    yy, xx = np.nonzero(skel)
    tiles = (yy // ty) * (skel.shape[1] // tx + 1) + (xx // tx)
    key = comp[yy, xx].astype(np.int64) * (tiles.max() + 1) + tiles
    out = []
    for k in np.unique(key):
        sel = key == k
        if sel.sum() >= min_pixels:
            out.append(np.stack([yy[sel], xx[sel]], 1))
    return out


# ----------------------------------------------------------------------------- the scribbler

def simulate_scribbles(initial: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float],
                       n_slices: int = 4, seed: int = 0, error_weighted: bool = True,
                       axis: int = 0, fg_per_slice: int = 2, bg_per_slice: int = 2,
                       ring_mm: tuple[float, float] = (1.5, 4.5), stroke_mm: float = 20.0,
                       error_gain: float = 20.0) -> tuple[np.ndarray, dict]:
    """Scribbles a careful annotator would draw to correct ``initial`` towards ``reference``.

    Args:
        initial, reference: binary masks ``(z, y, x)`` on one grid (non-zero = inside).
        spacing_zyx: voxel spacing (mm), array order.
        n_slices: how many slices along ``axis`` get strokes (fewer if fewer hold the structure).
        seed: the random stream (same seed and inputs -> same scribbles).
        error_weighted: prefer slices and strokes where ``initial`` differs from ``reference``
            (slice weight ``1 + error voxels``, stroke weight ``1 + error_gain * share of its
            pixels on an error``); ``False``: uniform over slices holding the structure and
            over strokes.
        fg_per_slice, bg_per_slice: strokes of each label per slice (fewer if fewer candidates).
        ring_mm: the background ring, ``(inner, outer)`` distance from the reference (mm).
        stroke_mm: longest stroke (skeletons are cut into tiles of this side).

    Returns:
        ``(labels, info)``: uint8 ``(z, y, x)`` with 0 none / 1 foreground / 2 background, and
        ``{"n_strokes", "n_fg_strokes", "n_bg_strokes", "slices", "seconds",
        "seconds_per_stroke", "seconds_per_slice", "error_weighted", "seed", "axis"}``.
        Foreground strokes lie inside ``reference``, background strokes outside it.
    """
    ini = np.asarray(initial) != 0
    ref = np.asarray(reference) != 0
    if ini.shape != ref.shape or ini.ndim != 3:
        raise InputError(f"initial and reference must be 3D masks of one shape; got {ini.shape} "
                         f"and {ref.shape}.")
    if not ref.any():
        raise InputError("the reference is empty; a scribbler needs the structure to draw on.")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2 (z, y, x), got {axis}")
    rng = np.random.default_rng([int(seed), 10])
    sp = [float(s) for s in spacing_zyx]
    sp_plane = [s for i, s in enumerate(sp) if i != axis]
    ini_m = np.moveaxis(ini, axis, 0)
    ref_m = np.moveaxis(ref, axis, 0)
    err_m = ini_m != ref_m

    has = np.flatnonzero(ref_m.any(axis=(1, 2)))
    k = int(min(max(int(n_slices), 0), len(has)))
    if error_weighted:
        w = 1.0 + err_m[has].sum(axis=(1, 2)).astype(float)
    else:
        w = np.ones(len(has))
    chosen = np.sort(rng.choice(has, size=k, replace=False, p=w / w.sum())) if k else np.array([], int)

    out = np.zeros(ref_m.shape, np.uint8)
    n_fg = n_bg = 0
    for s in chosen:
        r2, i2, e2 = ref_m[s], ini_m[s], err_m[s]
        d_out = ndimage.distance_transform_edt(~r2, sampling=sp_plane)
        ring = (~r2) & (d_out >= ring_mm[0]) & (d_out <= ring_mm[1])
        cand = {
            FOREGROUND: (skeleton_2d(r2) | skeleton_2d(r2 & ~i2)) & r2,
            BACKGROUND: (skeleton_2d(ring) | skeleton_2d(i2 & ~r2)) & ~r2,
        }
        near_err = ndimage.binary_dilation(e2, iterations=1)
        for label, per in ((FOREGROUND, fg_per_slice), (BACKGROUND, bg_per_slice)):
            strokes = _strokes_2d(cand[label], sp_plane, stroke_mm, min_pixels=2)
            if not strokes or per <= 0:
                continue
            if error_weighted:
                sw = np.array([1.0 + error_gain * near_err[p[:, 0], p[:, 1]].mean() for p in strokes])
            else:
                sw = np.ones(len(strokes))
            take = rng.choice(len(strokes), size=min(int(per), len(strokes)), replace=False,
                              p=sw / sw.sum())
            for t in take:
                p = strokes[int(t)]
                out[s][p[:, 0], p[:, 1]] = label
            if label == FOREGROUND:
                n_fg += len(take)
            else:
                n_bg += len(take)
    labels = np.moveaxis(out, 0, axis).copy()
    n = n_fg + n_bg
    n_sl = int(len(chosen))
    info = {"n_strokes": int(n), "n_fg_strokes": int(n_fg), "n_bg_strokes": int(n_bg),
            "slices": [int(v) for v in chosen], "axis": int(axis),
            "seconds": float(n * SECONDS_PER_STROKE + n_sl * SECONDS_PER_SLICE),
            "seconds_per_stroke": SECONDS_PER_STROKE, "seconds_per_slice": SECONDS_PER_SLICE,
            "error_weighted": bool(error_weighted), "seed": int(seed)}
    return labels, info


def strokes(labels: np.ndarray, axis: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """The strokes of a scribble map: ``(slice, label, flat indices)`` for each 8-connected piece
    of one label on one slice along ``axis`` (strokes that touch count as one)."""
    a = np.moveaxis(np.asarray(labels), axis, 0)
    idx = np.moveaxis(np.arange(a.size).reshape(np.asarray(labels).shape), axis, 0)
    out = []
    for s in np.flatnonzero(np.any(a != NONE, axis=(1, 2))):
        for label in (FOREGROUND, BACKGROUND):
            comp, n = ndimage.label(a[s] == label, structure=np.ones((3, 3), bool))
            for c in range(1, n + 1):
                out.append((int(s), label, idx[s][comp == c]))
    return out


def misplace_strokes(labels: np.ndarray, share: float, seed: int = 0,
                     axis: int = 0) -> tuple[np.ndarray, dict]:
    """The noisy scribbler: ``round(share * n)`` of the ``n`` strokes (:func:`strokes`) get the
    other label (foreground <-> background), chosen at random with ``seed``.

    Returns ``(labels uint8, {"n_strokes", "n_misplaced", "misplaced_voxels"})``.
    """
    if not 0.0 <= float(share) <= 1.0:
        raise InputError(f"the share of misplaced strokes must lie in [0, 1], got {share}")
    a = np.asarray(labels).astype(np.uint8).copy()
    st = strokes(a, axis)
    n_bad = int(round(float(share) * len(st)))
    rng = np.random.default_rng([int(seed), 11])
    pick = rng.choice(len(st), size=n_bad, replace=False) if n_bad else []
    flat = a.reshape(-1)
    vox = 0
    for i in pick:
        _, label, ids = st[int(i)]
        flat[ids] = BACKGROUND if label == FOREGROUND else FOREGROUND
        vox += len(ids)
    return a, {"n_strokes": len(st), "n_misplaced": n_bad, "misplaced_voxels": int(vox)}


def stroke_summary(labels: np.ndarray) -> dict:
    """Count the strokes of a scribble map as a person drew them, and their cost.

    A stroke is a 26-connected piece of one label in 3D, so a stroke painted in any slice view
    (axial, coronal or sagittal), with a brush that reaches into the neighbouring slices, counts
    once; strokes of one label that touch count as one. Its slice is the one it was drawn on: the
    middle index along the axis where the stroke is thinnest. The cost model is the simulated
    scribbler's (:data:`SECONDS_PER_STROKE` per stroke, :data:`SECONDS_PER_SLICE` per slice drawn
    on), so drawn and simulated scribbles are priced alike.

    Args:
        labels: ``(z, y, x)`` map, 0 none / 1 foreground / 2 background (other values are an
            InputError; an empty map is allowed here and counts zero).

    Returns:
        ``{"foreground", "background", "n_strokes", "slices", "voxels_foreground",
        "voxels_background", "seconds"}`` (``foreground``/``background``: strokes of each label;
        ``slices``: distinct slices drawn on).
    """
    a = np.asarray(labels)
    if a.ndim != 3:
        raise InputError(f"a scribble map is 3D (z, y, x); got shape {a.shape}.")
    values = [int(v) for v in np.unique(a) if int(v) not in LABELS]
    if values:
        raise InputError(f"the scribble map holds labels {values[:10]} besides 0/1/2; {_FIX}.")
    counts = {FOREGROUND: 0, BACKGROUND: 0}
    planes: set = set()
    full = np.ones((3, 3, 3), bool)
    for label in (FOREGROUND, BACKGROUND):
        comp, n = ndimage.label(a == label, structure=full)
        counts[label] = int(n)
        for sl in ndimage.find_objects(comp):
            extent = [s.stop - s.start for s in sl]
            axis = int(np.argmin(extent))
            planes.add((axis, (sl[axis].start + sl[axis].stop - 1) // 2))
    n = counts[FOREGROUND] + counts[BACKGROUND]
    return {"foreground": counts[FOREGROUND], "background": counts[BACKGROUND], "n_strokes": n,
            "slices": len(planes), "voxels_foreground": int((a == FOREGROUND).sum()),
            "voxels_background": int((a == BACKGROUND).sum()),
            "seconds": float(n * SECONDS_PER_STROKE + len(planes) * SECONDS_PER_SLICE)}


def describe_strokes(summary: dict) -> str:
    """One line for the panel: strokes of each kind, slices and the drawing time they stand for."""
    if not summary["n_strokes"]:
        return ("No strokes yet: paint 'scribble: inside' on the structure and 'scribble: outside' "
                "just outside it, where the segment is wrong.")
    return (f"{summary['foreground']} inside and {summary['background']} outside stroke(s) on "
            f"{summary['slices']} slice(s) (about {summary['seconds']:.0f} s of drawing at "
            f"{SECONDS_PER_STROKE:.0f} s per stroke + {SECONDS_PER_SLICE:.0f} s per slice).")
