"""Fully supervised upper bound: DiceCE against ``reference.nii.gz``."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..losses import full_loss
from ..targets import Batch
from .base import CaseTargets, TrainingMode, band_indices


class FullMode(TrainingMode):
    """Fully supervised upper bound: DiceCE against reference.nii.gz."""

    name = "full"
    requires = ("reference",)
    label_maps = ("reference", "regions")

    def usable(self, case) -> bool:
        return case.has_reference

    def missing_message(self, dataset) -> str:
        return (f"no case in {dataset} has a reference.nii.gz; --mode full needs dense references. "
                f"Use --mode score to train from ratings.")

    def prepare_case(self, case) -> CaseTargets:
        image, initial, x = self._load_base(case)
        ref = case.load_reference(like=image)
        if case.has_regions:
            regions = case.load_regions(like=image).array
        else:  # a band of ~3 mm around the initial surface
            dist_in = ndimage.distance_transform_edt(initial.array, sampling=image.geometry.spacing_zyx)
            dist_out = ndimage.distance_transform_edt(1 - initial.array, sampling=image.geometry.spacing_zyx)
            regions = ((np.where(initial.array > 0, dist_in, dist_out) <= 3.0)).astype(np.int16)
        return CaseTargets(case.case_id, x, initial.array.astype(np.uint8), image.geometry.spacing_zyx,
                           maps={"reference": ref.array.astype(np.uint8), "regions": regions.astype(np.int16)},
                           info={"n_rated_regions": 0, "n_regions": int(len(np.unique(regions)) - 1)})

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        band = band_indices(targets.maps["regions"])
        return band, np.full(len(band), 1.0 / max(len(band), 1))

    def loss(self, logits, batch: Batch):
        return full_loss(logits, batch.reference, batch.valid)
