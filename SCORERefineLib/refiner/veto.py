"""The appearance veto: a refinement's change must not contradict the case's own image.

A trained refiner proposes to add and remove voxels near the initial mask. Where the case has no
ratings (a new case), nothing tells it which of its changes are right, and on real CT a model
trained on other structures also redraws boundaries that were right: the lumbar column of the
real-CT preset lost 0.03-0.09 Dice when models peeled a layer off its correct boundary and added
one of soft tissue elsewhere. The case's own intensities still say something:
:func:`~.inputs.appearance_evidence` learns "structure" and "surroundings" from the initial mask's
near-surface voxels in this very image and gives each voxel the log-likelihood ratio (LLR, clipped
to +-3; 0 where the image gives no evidence) that its intensity belongs inside.
:func:`appearance_veto` takes back

- an **added** voxel whose ratio is below ``add_min_llr`` (by default 0.25 since stop 36: an
  added voxel must look more like the structure than like its surroundings, by a margin; before,
  0, as much as), and
- a **removed** voxel whose ratio is above ``remove_margin`` (0.5) when it belongs to a removed
  **layer**: a 26-connected piece of removed voxels of which more than ``layer_share`` (half)
  touch (6-neighbours) what the proposal keeps. A layer peeled off a boundary touches the kept
  structure everywhere; a protrusion that is cut off (a leak, which on the phantoms runs into a
  neighbour of the structure's own intensity) touches it only at its neck, so it may go whatever
  it looks like.

A layer peeled off more than about two voxels deep has fewer than half its voxels next to what
is kept, so the layer rule reads it as a protrusion and lets it go: on `real_abdomen_x2` a model
peeled the unseen lumbar column 0-10 mm deep this way (27,800 removed voxels in one piece,
4,388 of them right, 32% of them next to the kept bone; Dice 0.937 -> 0.831, and the veto took
back 341 voxels). With ``thick_layer_llr`` set, a removed piece is also a layer when its voxels
next to what the proposal keeps are more than ``layer_share`` times its voxels next to the
outside of the initial mask (a peel of any depth touches the kept structure about as widely as
the outside, 0.94 times for that one; a protrusion cut at its neck touches it only there, 0.16
for the leak cut off the same column) **and** its mean evidence is above ``thick_layer_llr``
(the piece as a whole looks like the structure: +1.32 for the column's peel, +0.76 for the
stomach's right removals of liver and spleen at an organ interface, which must stay removed).
On by default since stop 34, with the SCORE loss defaults that learn weighted removals
(``ScoreLossWeights``), at :data:`~SCORERefineLib.catalog.DEFAULT_THICK_LAYER_LLR` (0.8 since
stop 36); ``None`` switches it off. Measured in docs/score-loss.md ("Thick layers", issue 8,
stops 32-36: at 1.0 a second unseen column's peel, mean evidence +0.96, passed, and 0.9 took it
back; at 0.9 a third, +0.86, passed, and 0.8 took it back; neither cost more than 0.0002 Dice
where measured). The margin is thin: the stomach's right removals sit at +0.68 to +0.78.

Measured on the presets' held-out cases (docs/score-loss.md, stop 24; the SCORE models of that
section): real CT +0.005 to +0.018 Dice for each of four models, and the worst case (the lumbar
column) from -0.095 to -0.016 or better; phantoms -0.002 to -0.004 (leak removals kept). Without
the layer rule, vetoing every structure-like removal cost the phantoms half their gain and made
their HD95 worse than the initial masks'. A veto only takes changes back (the output lies
between the initial mask and the proposal).

Pure numpy/scipy; runs on the exact input grid, inside the bounding box of the initial mask and
the proposal grown by the evidence's ring and smoothing reach (the same result as on the whole
volume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..bbox import padded_bbox
from ..catalog import DEFAULT_THICK_LAYER_LLR
from .inputs import NORMALISATION, appearance_llr

#: report format version (the dict returned by :func:`appearance_veto`)
REPORT_VERSION = 2     # 2 (stop 36): limits.add_min_llr replaces add_margin (= -add_min_llr)

_FULL = np.ones((3, 3, 3), dtype=bool)     # 26-connectivity of the removed pieces


@dataclass(frozen=True)
class VetoLimits:
    """When the image contradicts a change (see the module docstring). Margins in LLR units."""

    #: an added voxel needs at least this evidence (stop 36: 0.25; before, 0)
    add_min_llr: float = 0.25
    remove_margin: float = 0.5
    layer_share: float = 0.5
    #: also veto thick layers whose mean evidence is above this (LLR units); None = off
    thick_layer_llr: Optional[float] = DEFAULT_THICK_LAYER_LLR

    def __post_init__(self):
        if not np.isfinite(float(self.add_min_llr)):
            raise ValueError(f"appearance veto: add_min_llr must be a finite number (LLR units), "
                             f"got {self.add_min_llr!r}")
        if not self.remove_margin >= 0:
            raise ValueError(f"appearance veto: remove_margin must be >= 0 (LLR units), got "
                             f"{self.remove_margin}")
        if not 0.0 <= self.layer_share <= 1.0:
            raise ValueError(f"appearance veto: layer_share must be in [0, 1], got "
                             f"{self.layer_share}")
        t = self.thick_layer_llr
        if t is not None:
            try:
                value = float(t)
            except (TypeError, ValueError):
                value = float("nan")
            if not np.isfinite(value):
                raise ValueError(f"appearance veto: thick_layer_llr must be a finite number (LLR "
                                 f"units, e.g. 1.0) or None (off), got {t!r}")
            object.__setattr__(self, "thick_layer_llr", value)     # frozen: store the float


class _Pieces:
    """The 26-connected pieces of the removed voxels (``initial`` and not ``proposal``) and, per
    piece, its size and how many of its voxels are 6-neighbours of a voxel the proposal keeps:
    what both layer rules read, labelled once."""

    def __init__(self, initial: np.ndarray, proposal: np.ndarray):
        self.m0, self.prop = np.asarray(initial) != 0, np.asarray(proposal) != 0
        self.rem = self.m0 & ~self.prop
        self.lab, n = ndimage.label(self.rem, _FULL)
        self.idx = np.arange(1, n + 1)
        self.size = ndimage.sum(self.rem, self.lab, self.idx)
        self.inner = ndimage.sum(ndimage.binary_dilation(self.prop) & self.rem, self.lab, self.idx)

    def paint(self, per_piece: np.ndarray) -> np.ndarray:
        """A per-piece bool on the piece's voxels: bool (z, y, x)."""
        return np.concatenate([[False], per_piece])[self.lab]

    def layers(self, layer_share: float) -> np.ndarray:
        return self.paint(self.inner / np.maximum(self.size, 1.0) > layer_share)

    def thick_layers(self, llr: np.ndarray, layer_share: float, min_mean_llr: float) -> np.ndarray:
        outer = ndimage.sum(ndimage.binary_dilation(~self.m0) & self.rem, self.lab, self.idx)
        layer = self.inner > layer_share * np.maximum(outer, 1.0)
        looks = ndimage.mean(np.asarray(llr, float), self.lab, self.idx) > min_mean_llr
        return self.paint(layer & looks)


def removed_layers(initial: np.ndarray, proposal: np.ndarray, layer_share: float) -> np.ndarray:
    """The removed voxels (``initial`` and not ``proposal``) that lie in a layer: a 26-connected
    piece of removed voxels of which more than ``layer_share`` are 6-neighbours of a voxel the
    proposal keeps. bool (z, y, x)."""
    return _Pieces(initial, proposal).layers(layer_share)


def thick_layers(initial: np.ndarray, proposal: np.ndarray, llr: np.ndarray,
                 layer_share: float, min_mean_llr: float) -> np.ndarray:
    """The removed voxels (``initial`` and not ``proposal``) in a layer of any thickness that
    looks like the structure: a 26-connected piece of removed voxels whose voxels next to one the
    proposal keeps (6-neighbours) are more than ``layer_share`` times those next to a voxel
    outside ``initial``, and whose mean ``llr`` is above ``min_mean_llr``. bool (z, y, x)."""
    return _Pieces(initial, proposal).thick_layers(llr, layer_share, min_mean_llr)


def appearance_veto(hu: np.ndarray, initial: np.ndarray, proposal: np.ndarray,
                    spacing_zyx: Sequence[float], limits: VetoLimits | None = None,
                    normalisation: Optional[dict] = None) -> tuple[np.ndarray, dict]:
    """Take back the proposal's changes that the case's image contradicts.

    Args:
        hu: CT (z, y, x) in HU.
        initial: the initial mask (z, y, x), non-zero inside.
        proposal: the refiner's proposal on the same grid.
        spacing_zyx: voxel spacing in mm.
        limits: :class:`VetoLimits` (default: the module's defaults).
        normalisation: the checkpoint's normalisation record (its ``appearance`` entry sets the
            evidence; default :data:`~.inputs.NORMALISATION`).

    Returns:
        ``(mask, report)``: uint8 (z, y, x), the initial mask with the kept changes; report
        ``{"version", "limits", "proposed_added", "proposed_removed", "vetoed_added",
        "vetoed_removed", "vetoed_removed_thick"}`` (the last: of ``vetoed_removed``, those
        only the thick-layer rule took back; 0 when it is off).

    Raises:
        ValueError: arrays of different shapes.
    """
    limits = limits or VetoLimits()
    hu, m0, prop = np.asarray(hu), np.asarray(initial) != 0, np.asarray(proposal) != 0
    if not (hu.shape == m0.shape == prop.shape):
        raise ValueError(f"appearance veto: image {hu.shape}, initial {m0.shape} and proposal "
                         f"{prop.shape} must share one grid")
    add, rem = prop & ~m0, m0 & ~prop
    report = {"version": REPORT_VERSION, "limits": asdict(limits),
              "proposed_added": int(add.sum()), "proposed_removed": int(rem.sum()),
              "vetoed_added": 0, "vetoed_removed": 0, "vetoed_removed_thick": 0}
    out = prop.copy()
    if not (add.any() or rem.any()) or not m0.any():
        return out.astype(np.uint8), report
    p = (normalisation or NORMALISATION).get("appearance", NORMALISATION["appearance"])
    reach_mm = float(p["ring_mm"]) + 4.0 * float(p["sigma_mm"])     # the ring plus the smoothing
    pad = np.ceil(reach_mm / np.asarray(spacing_zyx, float)).astype(int) + 1
    box = padded_bbox(m0 | prop, pad)
    llr = appearance_llr(hu[box], m0[box], spacing_zyx, normalisation)
    veto_add = add[box] & (llr < limits.add_min_llr)
    pieces = _Pieces(m0[box], prop[box])
    layers = pieces.layers(limits.layer_share)
    thick = np.zeros_like(layers)
    if limits.thick_layer_llr is not None:
        thick = pieces.thick_layers(llr, limits.layer_share, limits.thick_layer_llr) & ~layers
    veto_rem = (layers | thick) & (llr > limits.remove_margin)
    sub = out[box]
    sub[veto_add] = False
    sub[veto_rem] = True
    out[box] = sub
    report["vetoed_added"] = int(veto_add.sum())
    report["vetoed_removed"] = int(veto_rem.sum())
    report["vetoed_removed_thick"] = int((veto_rem & thick).sum())
    return out.astype(np.uint8), report
