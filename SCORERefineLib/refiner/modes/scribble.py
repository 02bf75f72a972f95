"""Scribbles: learn from strokes (``scribbles.nii.gz``: 1 foreground, 2 background), after ScribbleVS.

Loss (:func:`..scribble_losses.scribble_loss`): partial CE on the stroke voxels plus, ramped up,
competitive pseudo-labels on confident unscribbled voxels (student vs an EMA teacher, whichever
agrees better with the item's strokes), plus a hinge anchor to the initial mask away from the
strokes that contradict it (:func:`stroke_anchor_map`; ScribbleVS segments from scratch, a
refiner's strokes mark errors only). The mode owns the :class:`~..scribble_losses.EMATeacher`:
the trainer's :meth:`attach` hook makes it, :meth:`after_step` updates it, and its weights go into
the checkpoint (``extra["mode_state"]``) so ``--resume`` continues with the same teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ...errors import GridMismatchError, InputError, TrainingError
from ..scribble_losses import EMATeacher, ScribbleLossWeights, scribble_loss
from ..targets import Batch
from .base import CaseTargets, ModeConfig, TrainingMode
from .score import BOUNDARY_FRACTION

#: half-width (mm) of the band around the initial surface where extra patch centres are drawn
BAND_MM = 3.0
#: no anchor to M0 within this distance (mm) of a stroke that contradicts M0
ANCHOR_EXCLUSION_MM = 3.0


def stroke_anchor_map(initial: np.ndarray, scribbles: np.ndarray, spacing_zyx,
                      exclusion_mm: float = ANCHOR_EXCLUSION_MM) -> np.ndarray:
    """float32 (z, y, x): 1 where training holds the network to the initial mask, 0 on the
    strokes and within ``exclusion_mm`` of a stroke voxel that contradicts M0 (a foreground
    stroke outside it, a background stroke inside it: there M0 is wrong, and its error may reach
    further than the stroke)."""
    m = initial.astype(bool)
    wrong = ((scribbles == 1) & ~m) | ((scribbles == 2) & m)
    keep = scribbles == 0
    if wrong.any():
        keep &= ndimage.distance_transform_edt(~wrong, sampling=spacing_zyx) > float(exclusion_mm)
    return keep.astype(np.float32)


def boundary_band(initial: np.ndarray, spacing_zyx, mm: float = BAND_MM) -> np.ndarray:
    """uint8 band of voxels within ``mm`` of the initial mask's surface (inside and outside)."""
    m = initial.astype(bool)
    d = np.where(m, ndimage.distance_transform_edt(m, sampling=spacing_zyx),
                 ndimage.distance_transform_edt(~m, sampling=spacing_zyx))
    return (d <= mm).astype(np.uint8)


@dataclass
class ScribbleConfig(ModeConfig):
    """ScribbleMode settings: loss weights, EMA decay (``teacher=False``: the student labels
    itself, the ``scribble-student-only`` ablation) and the band share of patch centres."""

    weights: ScribbleLossWeights = field(default_factory=ScribbleLossWeights)
    anchor_exclusion_mm: float = ANCHOR_EXCLUSION_MM
    ema_decay: float = 0.99
    teacher: bool = True
    boundary_fraction: float = BOUNDARY_FRACTION

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["weights"] = self.weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ScribbleConfig":
        cfg = super().from_dict({k: v for k, v in d.items() if k != "weights"})
        if isinstance(d.get("weights"), dict):
            cfg.weights = ScribbleLossWeights(**d["weights"])
        return cfg


class ScribbleMode(TrainingMode):
    """Partial CE on the strokes + competitive (student / EMA teacher) pseudo-labels elsewhere."""

    name = "scribble"
    requires = ("scribbles",)
    label_maps = ("scribbles", "band")
    Config = ScribbleConfig

    def __init__(self, config: ScribbleConfig | None = None):
        super().__init__(config)
        if not isinstance(self.config, ScribbleConfig):  # e.g. a hybrid run's shared ModeConfig
            base = self.config
            self.config = ScribbleConfig(channels=base.channels, no_edge=base.no_edge)
        self.weights = self.config.weights
        self.teacher: EMATeacher | None = None
        self.step = 0

    # trainer hooks ------------------------------------------------------------------------
    def attach(self, model) -> None:
        self.teacher = EMATeacher(model, self.config.ema_decay) if self.config.teacher else None
        self.step = 0

    def after_step(self, model, step: int | None = None) -> None:
        if self.teacher is not None:
            self.teacher.update(model)
        self.step = self.step + 1 if step is None else int(step)

    def state_dict(self) -> dict:
        return {"step": int(self.step),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", self.step))
        if self.teacher is not None and state.get("teacher"):
            self.teacher.load_state_dict(state["teacher"])

    # TrainingMode ---------------------------------------------------------------------------
    def usable(self, case) -> bool:
        return case.has_scribbles

    def missing_message(self, dataset) -> str:
        return (f"no case in {dataset} has a scribbles.nii.gz; --mode scribble needs strokes. Draw "
                f"them (foreground 1, background 2) or simulate them from references: "
                f"`scorerefine scribble {dataset} --simulate`, then train.")

    def prepare_case(self, case) -> CaseTargets:
        image, initial, x = self._load_base(case)
        try:
            scr = case.load_scribbles(like=image).array
        except GridMismatchError as exc:
            raise TrainingError(f"case {case.case_id}: scribbles.nii.gz is not on the image grid "
                                f"({exc}). Redraw or resample the strokes onto the image.") from exc
        except InputError as exc:
            raise TrainingError(f"case {case.case_id}: {exc}") from exc
        band = boundary_band(initial.array, image.geometry.spacing_zyx)
        from ...scribbles import strokes
        return CaseTargets(case.case_id, x, initial.array.astype(np.uint8), image.geometry.spacing_zyx,
                           maps={"scribbles": scr.astype(np.uint8), "band": band,
                                 "stroke_anchor": stroke_anchor_map(
                                     initial.array, scr, image.geometry.spacing_zyx,
                                     self.config.anchor_exclusion_mm)},
                           info={"n_strokes": len(strokes(scr)), "fg_voxels": int((scr == 1).sum()),
                                 "bg_voxels": int((scr == 2).sum()), "n_rated_regions": 0})

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        """Stroke voxels (weight 1 each) plus a ``boundary_fraction`` share on the band."""
        stroke_idx = np.flatnonzero(targets.maps["scribbles"].reshape(-1) > 0)
        band_idx = np.flatnonzero(targets.maps["band"].reshape(-1) > 0)
        w_strokes = np.ones(len(stroke_idx))
        total = float(len(stroke_idx))
        bf = float(self.config.boundary_fraction)
        if len(band_idx) and total > 0:
            w_band = np.full(len(band_idx), total * bf / max(1.0 - bf, 1e-6) / len(band_idx))
        else:
            w_band = np.zeros(len(band_idx))
        return np.concatenate([stroke_idx, band_idx]), np.concatenate([w_strokes, w_band])

    def loss(self, logits, batch: Batch):
        teacher_logits = None
        if self.teacher is not None and self.weights.pseudo:
            teacher_logits = self.teacher(batch.image.to(logits.device))
        return scribble_loss(logits, batch, teacher_logits, self.step, self.weights)
