"""Training modes behind one small interface, so new supervision kinds can join.

A :class:`TrainingMode` says what a case must provide (``requires``: ``"feedback"`` or
``"reference"``), turns a case folder into :class:`CaseTargets` (network input + per-voxel maps +
per-region tables, cached in memory by the trainer), says where patches should be drawn
(:meth:`~TrainingMode.sampling_weights`) and computes the loss on a batch.

Registry: :data:`MODES` = ``{"score": ScoreMode, "full": FullMode}``.

* :class:`ScoreMode` reads ``image``, ``initial``, ``regions`` and ``feedback.json`` only; it never
  opens ``reference.nii.gz``.
* :class:`FullMode` reads ``reference.nii.gz`` and trains with MONAI's DiceCE: the fully supervised
  upper bound.

Ablations (benchmark): ``ModeConfig.weights.direction = 0`` (no direction term),
``.amount = 0`` (no amount term), ``channels = ("ct", "initial")`` (no edge channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from ..calibration import AGREEMENT
from ..errors import GridMismatchError, InputError, TrainingError
from .inputs import CHANNELS, edge_prior, make_input
from .losses import ERROR_CODES, ScoreLossWeights, full_loss, score_loss

#: share of a ScoreMode case's patch centres drawn anywhere on the boundary band (not by score)
BOUNDARY_FRACTION = 0.25
#: no anchor within this distance (mm) of a region scored <= ANCHOR_EXCLUSION_MAX_SCORE: such
#: large errors (leaks, big holes) often reach past the band, where the anchor would pin them
ANCHOR_EXCLUSION_MM = 10.0
ANCHOR_EXCLUSION_MAX_SCORE = 2.0
#: a band that covers less than this share of the initial mask's surface no longer "fits" it
MIN_BAND_COVERAGE = 0.5


def agreement_for(mean_score: float) -> float:
    """c(s) for a (possibly non-integer consensus) score: linear between the calibration table's
    entries, so an integer score gives exactly ``calibration.score_to_agreement``."""
    s = sorted(AGREEMENT)
    return float(np.interp(float(mean_score), s, [AGREEMENT[k] for k in s]))


def score_weight(mean_score: float) -> float:
    """Patch-sampling weight of a rated region: ``(6 - s)^2`` (a 1 is drawn 25x as often as a 5)."""
    return float((6.0 - float(mean_score)) ** 2)


@dataclass
class ModeConfig:
    """What a mode needs to know: input channels, loss weights, boundary sampling share."""

    channels: tuple = CHANNELS
    weights: ScoreLossWeights = field(default_factory=ScoreLossWeights)
    boundary_fraction: float = BOUNDARY_FRACTION
    anchor_exclusion_mm: float = ANCHOR_EXCLUSION_MM
    anchor_exclusion_max_score: float = ANCHOR_EXCLUSION_MAX_SCORE


@dataclass
class CaseTargets:
    """One case, prepared for training (kept in memory).

    ``image``: (C, z, y, x) float32 network input. ``initial``: (z, y, x) uint8.
    ``maps``: per-voxel arrays travelling with patches through spatial augmentation
    (e.g. ``regions`` int16, ``edge`` float32, ``reference`` uint8).
    ``tables``: per-region arrays indexed by region label (length max label + 1).
    ``info``: counts for metadata/logging (``n_rated_regions``, ...).
    """

    case_id: str
    image: np.ndarray
    initial: np.ndarray
    spacing_zyx: tuple
    maps: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class TrainingMode:
    """Interface of a training mode (subclass and add to :data:`MODES`)."""

    name: str = ""
    requires: str = ""                 # "feedback" | "reference"
    label_maps: tuple = ()             # keys of CaseTargets.maps that are labels (nearest only)

    def __init__(self, config: Optional[ModeConfig] = None):
        self.config = config or ModeConfig()

    def usable(self, case) -> bool:
        """Whether ``case`` has what this mode needs (others are skipped)."""
        raise NotImplementedError

    def prepare_case(self, case) -> CaseTargets:
        raise NotImplementedError

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        """Candidate patch centres: ``(flat voxel indices, weights)``; weights sum to the case's
        share of patches relative to other cases."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def missing_message(self, dataset) -> str:
        raise NotImplementedError

    # shared helpers -----------------------------------------------------------------------
    def _load_base(self, case):
        image = case.load_image()
        initial = case.load_initial(like=image)
        x = make_input(image, initial.array, self.config.channels)
        return image, initial, x

    def _edge_map(self, image, x) -> np.ndarray:
        ch = list(self.config.channels)
        if "edge" in ch:
            return x[ch.index("edge")]
        return edge_prior(image.array, image.geometry.spacing_zyx)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a background 6-neighbour."""
    m = mask.astype(bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def signed_depth(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Signed distance (mm) to the mask surface, positive inside, float32."""
    m = mask.astype(bool)
    inside = ndimage.distance_transform_edt(m, sampling=spacing_zyx)
    outside = ndimage.distance_transform_edt(~m, sampling=spacing_zyx)
    return (inside - outside).astype(np.float32)


def _band_indices(regions: np.ndarray) -> np.ndarray:
    return np.flatnonzero(regions.reshape(-1) > 0)


class ScoreMode(TrainingMode):
    """SCORE: learn from regional scores and error types (feedback.json) alone."""

    name = "score"
    requires = "feedback"
    label_maps = ("regions",)

    def usable(self, case) -> bool:
        return case.has_feedback

    def missing_message(self, dataset) -> str:
        return (f"no rated region in {dataset}: no case has a feedback.json with ratings. Rate the "
                f"regions first: `scorerefine rate {dataset}` (or the Slicer module), then train.")

    def prepare_case(self, case) -> CaseTargets:
        from ..feedback import load_feedback

        image, initial, x = self._load_base(case)
        if not case.has_regions:
            raise TrainingError(f"case {case.case_id} has feedback.json but no regions.nii.gz; the "
                                f"ratings cannot be placed. Re-run `scorerefine regions` and re-rate.")
        try:
            regions = case.load_regions(like=image).array
        except GridMismatchError as exc:
            raise TrainingError(f"case {case.case_id}: regions.nii.gz no longer matches the case "
                                f"({exc}). The regions were made for another image/initial mask: "
                                f"re-run `scorerefine regions` and re-rate this case.") from exc
        fb = load_feedback(case.feedback_path)
        consensus = fb.consensus()
        present = set(int(v) for v in np.unique(regions) if v > 0)
        missing = sorted(int(r) for r in consensus if int(r) not in present)
        if missing:
            raise TrainingError(f"case {case.case_id}: feedback.json rates regions {missing[:10]} that "
                                f"are not in regions.nii.gz (labels {sorted(present)[:10]}...). The "
                                f"regions were re-made after rating: re-rate the case "
                                f"(`scorerefine rate`) or restore the regions it was rated on.")
        surf = surface(initial.array)
        if surf.any():
            coverage = float((regions[surf] > 0).mean())
            if coverage < MIN_BAND_COVERAGE:
                raise TrainingError(
                    f"case {case.case_id}: the region band covers only {coverage:.0%} of the initial "
                    f"mask's surface, so regions.nii.gz no longer surrounds initial.nii.gz (the initial "
                    f"mask changed after the regions were made). Re-run `scorerefine regions` and "
                    f"re-rate this case.")
        n = int(regions.max()) + 1
        agreement = np.zeros(n, np.float32)
        rated = np.zeros(n, bool)
        error = np.zeros(n, np.int64)
        score = np.zeros(n, np.float32)
        for r, (s, err) in consensus.items():
            r = int(r)
            agreement[r] = agreement_for(s)
            rated[r] = True
            error[r] = ERROR_CODES.get(str(err), 0)
            score[r] = float(s)
        maps = {"regions": regions.astype(np.int16)}
        low = rated & (score <= self.config.anchor_exclusion_max_score)
        if self.config.anchor_exclusion_mm > 0 and low.any():
            near_low = np.isin(regions, np.flatnonzero(low))
            dist = ndimage.distance_transform_edt(~near_low, sampling=image.geometry.spacing_zyx)
            maps["anchor_weight"] = (dist > self.config.anchor_exclusion_mm).astype(np.float32)
        else:
            maps["anchor_weight"] = np.ones(regions.shape, np.float32)
        if self.config.weights.edge:
            maps["edge"] = self._edge_map(image, x).astype(np.float32)
        if self.config.weights.pseudo:
            maps["depth"] = signed_depth(initial.array, image.geometry.spacing_zyx)
        return CaseTargets(case.case_id, x, initial.array.astype(np.uint8), image.geometry.spacing_zyx,
                           maps=maps,
                           tables={"agreement": agreement, "rated": rated, "error": error, "score": score},
                           info={"n_rated_regions": int(rated.sum()), "n_regions": len(present)})

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        regions = targets.maps["regions"].reshape(-1)
        band = _band_indices(targets.maps["regions"])
        labels = regions[band]
        rated, score = targets.tables["rated"], targets.tables["score"]
        counts = np.bincount(labels, minlength=len(rated)).astype(np.float64)
        per_region = np.where(rated, [score_weight(s) for s in score], 0.0)
        # each rated region gets total weight (6-s)^2, spread over its voxels
        w_rated = per_region[labels] / np.maximum(counts[labels], 1.0)
        total_rated = w_rated.sum()
        if total_rated <= 0:
            return band, np.zeros(len(band))
        bf = float(self.config.boundary_fraction)
        w_any = np.full(len(band), total_rated * bf / max(1.0 - bf, 1e-6) / max(len(band), 1))
        return band, w_rated + w_any

    def loss(self, logits, batch):
        return score_loss(logits, batch, self.config.weights)


class FullMode(TrainingMode):
    """Fully supervised upper bound: DiceCE against reference.nii.gz."""

    name = "full"
    requires = "reference"
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
        band = _band_indices(targets.maps["regions"])
        return band, np.full(len(band), 1.0 / max(len(band), 1))

    def loss(self, logits, batch):
        return full_loss(logits, batch["reference"], batch.get("valid"))


MODES: dict[str, type[TrainingMode]] = {"score": ScoreMode, "full": FullMode}


def get_mode(name: str, config: Optional[ModeConfig] = None) -> TrainingMode:
    if name not in MODES:
        raise InputError(f"unknown training mode '{name}'; choose one of {sorted(MODES)}.")
    return MODES[name](config)
