"""ScribbleMode: train the refiner from scribbles (``scribbles.nii.gz``), after ScribbleVS.

Written against today's :class:`~.modes.TrainingMode` and *not registered*: it moves to
``refiner/modes/scribble.py`` once the modes package lands (docs/modes-scribble-hybrid.md).
Beyond today's interface it needs two trainer hooks, which the generic trainer will call and a
hand-written loop calls now:

* :meth:`ScribbleMode.attach` ``(model)`` once before training: makes the EMA teacher;
* :meth:`ScribbleMode.after_step` ``(model)`` after every optimiser step: updates the teacher and
  the step counter that drives the pseudo-label ramp-up.

Without :meth:`attach` the loss is partial CE plus self-training pseudo-labels (the student
competes with itself).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from ..errors import GridMismatchError, InputError, TrainingError
from .modes import BOUNDARY_FRACTION, CaseTargets, ModeConfig, TrainingMode
from .scribble_losses import EMATeacher, ScribbleLossWeights, scribble_loss

#: half-width (mm) of the band around the initial surface where extra patch centres are drawn
BAND_MM = 3.0


def boundary_band(initial: np.ndarray, spacing_zyx, mm: float = BAND_MM) -> np.ndarray:
    """uint8 band of voxels within ``mm`` of the initial mask's surface (inside and outside)."""
    m = initial.astype(bool)
    d = np.where(m, ndimage.distance_transform_edt(m, sampling=spacing_zyx),
                 ndimage.distance_transform_edt(~m, sampling=spacing_zyx))
    return (d <= mm).astype(np.uint8)


class ScribbleMode(TrainingMode):
    """Partial CE on the strokes + competitive (student / EMA teacher) pseudo-labels elsewhere."""

    name = "scribble"
    requires = "scribbles"
    label_maps = ("scribbles", "band")

    def __init__(self, config: Optional[ModeConfig] = None,
                 weights: Optional[ScribbleLossWeights] = None, ema_decay: float = 0.99):
        super().__init__(config)
        self.weights = weights or ScribbleLossWeights()
        self.ema_decay = float(ema_decay)
        self.teacher: Optional[EMATeacher] = None
        self.step = 0

    # trainer hooks ------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> None:
        self.teacher = EMATeacher(model, self.ema_decay)
        self.step = 0

    def after_step(self, model: torch.nn.Module) -> None:
        if self.teacher is not None:
            self.teacher.update(model)
        self.step += 1

    # TrainingMode ---------------------------------------------------------------------------
    def usable(self, case) -> bool:
        return case.has_scribbles

    def missing_message(self, dataset) -> str:
        return (f"no case in {dataset} has a scribbles.nii.gz; --mode scribble needs strokes. Draw "
                f"them in the Slicer module (foreground 1, background 2) or simulate them from "
                f"references, then train.")

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
        from ..scribbles import strokes
        return CaseTargets(case.case_id, x, initial.array.astype(np.uint8), image.geometry.spacing_zyx,
                           maps={"scribbles": scr.astype(np.uint8), "band": band},
                           info={"n_strokes": len(strokes(scr)), "fg_voxels": int((scr == 1).sum()),
                                 "bg_voxels": int((scr == 2).sum()), "n_rated_regions": 0})

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        """Stroke voxels (weight 1 each) plus a ``boundary_fraction`` share on the band."""
        stroke_idx = np.flatnonzero(targets.maps["scribbles"].reshape(-1) > 0)
        band_idx = np.flatnonzero(targets.maps["band"].reshape(-1) > 0)
        w_strokes = np.ones(len(stroke_idx))
        total = float(len(stroke_idx))
        bf = float(getattr(self.config, "boundary_fraction", BOUNDARY_FRACTION))
        if len(band_idx) and total > 0:
            w_band = np.full(len(band_idx), total * bf / max(1.0 - bf, 1e-6) / len(band_idx))
        else:
            w_band = np.zeros(len(band_idx))
        return np.concatenate([stroke_idx, band_idx]), np.concatenate([w_strokes, w_band])

    def loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        teacher_logits = None
        if self.teacher is not None and self.weights.pseudo:
            teacher_logits = self.teacher(batch["image"].to(logits.device))
        return scribble_loss(logits, batch, teacher_logits, self.step, self.weights)
