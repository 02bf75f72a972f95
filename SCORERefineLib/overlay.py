"""PNG overlays: CT slices in a bone window with mask contours and optional region labels.

The figure shows a coronal and a sagittal slice through the structure's centre (the long axis is
z, so these show the whole bone) and ``n_slices`` axial slices spread from the top (head) to the
bottom of the structure. Each contour gets a distinct colour and a legend entry; regions are drawn
as semi-transparent colours with their numbers at their centres. Pixels are drawn in millimetres,
so anisotropic spacing keeps the right aspect ratio. Matplotlib's Agg backend is used (no display).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import InputError

#: colours for well-known contour names; others cycle through :data:`_CYCLE`
COLOURS = {"reference": "#22dd22", "initial": "#ff3030", "refined": "#2a7fff",
           "prediction": "#2a7fff"}
_CYCLE = ("#ffcc00", "#ff44ff", "#00e5ff", "#ff8800", "#b0ff30")
#: bone window (HU) for display: level 400, width 1800
WINDOW = (-500.0, 1300.0)


def _colour(name: str, i: int) -> str:
    return COLOURS.get(name.lower(), _CYCLE[i % len(_CYCLE)])


def _slices(shape: Sequence[int], masks: list[np.ndarray], n_slices: int):
    """Centre (z, y, x) of the union of ``masks`` and ``n_slices`` axial indices from top down."""
    union = np.zeros(shape, bool)
    for m in masks:
        union |= m
    if union.any():
        idx = np.argwhere(union)
        centre = np.round(idx.mean(axis=0)).astype(int)
        zlo, zhi = idx[:, 0].min(), idx[:, 0].max()
    else:
        centre = np.asarray(shape) // 2
        zlo, zhi = 0, shape[0] - 1
    fr = np.linspace(0.85, 0.12, n_slices) if n_slices > 1 else np.array([0.5])
    axial = [int(round(zlo + f * (zhi - zlo))) for f in fr]
    return centre, axial


def _layout(shape, spacing_zyx, n_slices: int, title: str, dpi: int):
    """Figure size (inches, whole pixels) and panel boxes (x0, y0, w, h inches).

    The coronal and sagittal views stand side by side at full height; the axial views are
    stacked in a third column.
    """
    sz, sy, sx = spacing_zyx
    Z, Y, X = shape[0] * sz, shape[1] * sy, shape[2] * sx
    tall_h = 7.0
    col_w = [tall_h * X / Z, tall_h * Y / Z]
    ax_h = tall_h / max(n_slices, 1)
    ax_w = ax_h * X / Y if n_slices else 0.0
    legend_h, title_h = 0.5, (0.45 if title else 0.15)
    fig_w = sum(col_w) + ax_w + 0.3 * (len(col_w) + (1 if n_slices else 0)) + 0.2
    fig_h = tall_h + legend_h + title_h + 0.3
    fig_w, fig_h = round(fig_w * dpi) / dpi, round(fig_h * dpi) / dpi
    boxes = []
    x = 0.3
    for w in col_w:
        boxes.append((x, legend_h + 0.15, w, tall_h))
        x += w + 0.3
    for j in range(n_slices):
        boxes.append((x, legend_h + 0.15 + tall_h - (j + 1) * ax_h + 0.05, ax_w - 0.1, ax_h - 0.1))
    return fig_w, fig_h, boxes


def figure_size(shape, spacing_zyx, n_slices: int = 3, title: str = "", dpi: int = 100
                ) -> tuple[int, int]:
    """The PNG size ``(width, height)`` in pixels that :func:`save_overlay` writes."""
    fig_w, fig_h, _ = _layout(shape, tuple(float(s) for s in spacing_zyx), max(int(n_slices), 0),
                              title, dpi)
    return round(fig_w * dpi), round(fig_h * dpi)


def save_overlay(path: str | os.PathLike, image: np.ndarray, spacing_zyx: Sequence[float],
                 contours: Mapping[str, np.ndarray], regions: Optional[np.ndarray] = None,
                 title: str = "", n_slices: int = 3, window: tuple[float, float] = WINDOW,
                 dpi: int = 100, focus: Optional[np.ndarray] = None) -> Path:
    """Write a PNG overlay and return its path.

    ``image``: ``(z, y, x)`` HU; ``contours``: name -> binary ``(z, y, x)`` mask (drawn in
    order, e.g. reference green, initial red, refined blue); ``regions``: int ``(z, y, x)`` labels
    (0 = none) or None; ``spacing_zyx``: mm. The figure size depends only on the array shape,
    spacing and ``n_slices`` (not on the content). ``focus``: the mask whose centre and z extent
    pick the slices (default: the union of the contours; the volume centre when empty).
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"overlay image must be 3D (z, y, x), got shape {image.shape}")
    masks = {}
    for name, m in contours.items():
        m = np.asarray(m)
        if m.shape != image.shape:
            raise InputError(f"contour '{name}' has shape {m.shape}, the image {image.shape}; "
                             f"masks must share the image grid.")
        masks[name] = m != 0
    if regions is not None and np.asarray(regions).shape != image.shape:
        raise InputError(f"regions have shape {np.asarray(regions).shape}, the image "
                         f"{image.shape}; regions must share the image grid.")
    n_slices = max(int(n_slices), 0)
    sz, sy, sx = (float(s) for s in spacing_zyx)
    Z, Y, X = image.shape[0] * sz, image.shape[1] * sy, image.shape[2] * sx
    pick = [np.asarray(focus) != 0] if focus is not None else list(masks.values())
    centre, axial = _slices(image.shape, pick, n_slices)

    # panels: (title, 2D image, 2D masks, 2D regions, extent (mm), size (w, h) mm)
    def take(a, kind, i):
        if a is None:
            return None
        return {"cor": lambda: a[:, i, :], "sag": lambda: a[:, :, i], "ax": lambda: a[i]}[kind]()

    panels = [("coronal y=%d" % centre[1], "cor", int(centre[1]), (0, X, 0, Z), (X, Z)),
              ("sagittal x=%d" % centre[2], "sag", int(centre[2]), (0, Y, 0, Z), (Y, Z))]
    panels += [("axial z=%d" % k, "ax", k, (0, X, Y, 0), (X, Y)) for k in axial]

    fig_w, fig_h, boxes = _layout(image.shape, (sz, sy, sx), n_slices, title, dpi)
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    cmap_regions = matplotlib.colormaps["tab20"]
    lo, hi = window

    def place(x0, y0, w, h):
        return fig.add_axes((x0 / fig_w, y0 / fig_h, w / fig_w, h / fig_h))

    for (label, kind, i, extent, _), box in zip(panels, boxes):
        ax = place(*box)
        ax.set_facecolor("black")
        sl = take(image, kind, i).astype(np.float32)
        origin = "upper" if kind == "ax" else "lower"
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, extent=extent, origin=origin,
                  interpolation="nearest", aspect="equal")
        h2, w2 = sl.shape
        px = (extent[1] - extent[0]) / w2
        py = (extent[3] - extent[2]) / h2
        xs = extent[0] + (np.arange(w2) + 0.5) * px
        ys = extent[2] + (np.arange(h2) + 0.5) * py
        if kind == "ax":   # rows run top (y = 0) to bottom
            ys = (np.arange(h2) + 0.5) * abs(py)
        if regions is not None:
            r = take(np.asarray(regions), kind, i).astype(np.int32)
            if r.any():
                rgba = cmap_regions((r % 20) / 19.0 if r.max() > 0 else r)
                rgba[..., 3] = np.where(r > 0, 0.35, 0.0)
                ax.imshow(rgba, extent=extent, origin=origin, interpolation="nearest",
                          aspect="equal")
                for lab in np.unique(r[r > 0]):
                    rr, cc = np.nonzero(r == lab)
                    k = np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2)
                    ax.text(xs[cc[k]], ys[rr[k]], str(int(lab)), color="white", fontsize=7,
                            ha="center", va="center", fontweight="bold")
        for j, (name, m) in enumerate(masks.items()):
            m2 = take(m, kind, i)
            if m2.any() and not m2.all():
                ax.contour(xs, ys, m2.astype(np.float32), levels=[0.5], colors=[_colour(name, j)],
                           linewidths=1.0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, color="white", fontsize=8, pad=2)

    handles = [Line2D([0], [0], color=_colour(n, j), lw=2, label=n) for j, n in enumerate(masks)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   labelcolor="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white", fontsize=10, y=1.0 - 0.08 / fig_h, va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())
    return path
