"""Fixed-size crops around a region, resampled to a fixed spacing: the quality network's input.

A crop is ``(3, D, H, W)`` float32 (channels :data:`~.network.CHANNELS`): the CT windowed as the
refiner's (:func:`~SCORERefineLib.refiner.inputs.window_ct`), the mask and the region indicator,
sampled by trilinear interpolation on a grid of ``crop_size`` voxels of ``crop_spacing_mm``
centred on the region's centre voxel (:func:`~SCORERefineLib.regions.region_centres`, nearest the
centroid in mm). Index space is scaled by the voxel spacing (the direction matrix is not
needed: it is the same rotation for the whole case). Outside the image: the nearest edge value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..imageio import Volume
from ..refiner.inputs import window_ct
from ..regions import region_centres
from .network import QualityConfig


@dataclass
class QualitySample:
    """One training/evaluation sample: a crop ``x`` (3, D, H, W) and its target."""

    x: np.ndarray
    score: int            # 1..5
    error: str            # over | under | none
    dice: float = float("nan")
    case_id: str = ""
    region: int = 0
    weight: float = 1.0   # e.g. lower for synthetic samples when fine-tuning on ratings


def _grid(centre, spacing_zyx, crop_size, crop_spacing_mm) -> np.ndarray:
    axes = []
    for a in range(3):
        n = int(crop_size[a])
        offs_mm = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * float(crop_spacing_mm[a])
        axes.append(float(centre[a]) + offs_mm / float(spacing_zyx[a]))
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def region_crops(image: Volume, mask: np.ndarray, regions: np.ndarray, config: QualityConfig,
                 labels: Optional[Sequence[int]] = None, normalisation: Optional[dict] = None
                 ) -> dict[int, np.ndarray]:
    """``{region: crop (3, D, H, W) float32}`` for ``labels`` (default: every region present).

    ``image``: CT in HU; ``mask``/``regions``: arrays ``(z, y, x)`` on the image grid.
    """
    spacing = image.geometry.spacing_zyx
    centres = region_centres(np.asarray(regions), spacing)
    labels = sorted(centres) if labels is None else [int(v) for v in labels if int(v) in centres]
    ct = window_ct(image.array, normalisation)
    m = (np.asarray(mask) != 0).astype(np.float32)
    reg = np.asarray(regions)
    out = {}
    for label in labels:
        coords = _grid(centres[label], spacing, config.crop_size, config.crop_spacing_mm)
        crop = np.empty((3,) + tuple(config.crop_size), dtype=np.float32)
        crop[0] = ndi.map_coordinates(ct, coords, order=1, mode="nearest")
        crop[1] = ndi.map_coordinates(m, coords, order=1, mode="nearest")
        crop[2] = ndi.map_coordinates((reg == label).astype(np.float32), coords, order=1, mode="nearest")
        out[label] = crop
    return out


def synthetic_samples(image: Volume, reference: np.ndarray, config: QualityConfig,
                      rng: np.random.Generator, n_corruptions: int = 4, region_params=None,
                      case_id: str = "", score_probs=None, corruption: str = "regions"
                      ) -> list[QualitySample]:
    """Samples from ``n_corruptions`` corrupted copies of ``reference``.

    ``corruption``: ``regions`` (regions split from the reference; each region of each copy gets
    its own target Dice and kind), ``realistic`` (:func:`realistic_samples`: whole-case errors of
    the real-CT error model, regions split from the corrupted mask) or ``mixed`` (half each)."""
    from ..regions import RegionParams, split_regions
    from .corruptions import corrupt_case

    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    if corruption != "regions":
        n_real = int(n_corruptions) if corruption == "realistic" else (int(n_corruptions) + 1) // 2
        out = realistic_samples(image, reference, config, rng, n_real, region_params, case_id)
        if corruption == "realistic":
            return out
        return out + synthetic_samples(image, reference, config, rng, int(n_corruptions) - n_real,
                                       region_params, case_id, score_probs, "regions")

    ref = np.asarray(reference) != 0
    regions = split_regions(ref.astype(np.uint8), image.geometry.spacing_zyx,
                            region_params or RegionParams())
    out = []
    for _ in range(int(n_corruptions)):
        mask, truth = corrupt_case(ref, regions, image.geometry.spacing_zyx, rng,
                                   score_probs=score_probs)
        for label, crop in region_crops(image, mask, regions, config, labels=sorted(truth)).items():
            t = truth[label]
            out.append(QualitySample(crop, t.score, t.error, t.dice, case_id, label))
    return out


#: how synthetic training masks are made (``synthetic_samples(corruption=...)``)
CORRUPTIONS = ("regions", "realistic", "mixed")
#: CT above this (HU) outside the reference counts as a neighbouring bone a leak can reach
NEIGHBOUR_HU = 250.0


def realistic_mask(image: Volume, reference: np.ndarray, rng: np.random.Generator,
                   strength: Optional[float] = None) -> np.ndarray:
    """A whole-case initial-like mask from the reference with the real-CT error model
    (:func:`SCORERefineLib.realct._apply_real_errors`: smooth boundary shifts, leaks into a
    neighbouring bone, missing parts, holes, blocky steps), scaled by ``strength`` (default drawn
    in [0.2, 1.2]: from almost clean to about the phantoms' initial masks). Neighbouring
    bone is what the CT shows as bone (> :data:`NEIGHBOUR_HU`) outside the reference."""
    from dataclasses import replace

    from ..realct import RealConfig, _apply_real_errors

    ref = np.asarray(reference) != 0
    k = float(rng.uniform(0.2, 1.2)) if strength is None else float(strength)
    base = RealConfig()
    cfg = replace(base, shift_mm=tuple(v * k for v in base.shift_mm),
                  leak_radius_mm=tuple(v * k for v in base.leak_radius_mm),
                  missing_radius_mm=tuple(v * k for v in base.missing_radius_mm),
                  hole_radius_mm=tuple(v * min(k, 1.5) for v in base.hole_radius_mm))
    from scipy import ndimage as _ndi
    nb = (np.asarray(image.array) > NEIGHBOUR_HU) & ~_ndi.binary_dilation(ref, iterations=2)
    mask, _ = _apply_real_errors(ref, nb, image.geometry.spacing_zyx, rng, cfg)
    return mask


def mask_samples(image: Volume, mask: np.ndarray, reference: np.ndarray, config: QualityConfig,
                 region_params=None, case_id: str = "") -> list[QualitySample]:
    """Samples from one whole mask (e.g. a case's own initial mask) whose regions are split from
    that mask, as the SCORE loop splits an initial mask; the truth is what the simulated rater
    says (:func:`SCORERefineLib.rater.region_agreement` against the reference,
    :func:`~SCORERefineLib.calibration.dice_to_score`, the dominant side)."""
    from ..calibration import dice_to_score
    from ..rater import region_agreement
    from ..regions import RegionParams, split_regions

    mask = np.asarray(mask) != 0
    if not mask.any():
        return []
    ref = np.asarray(reference) != 0
    regions = split_regions(mask.astype(np.uint8), image.geometry.spacing_zyx,
                            region_params or RegionParams())
    agree = region_agreement(mask, ref, regions)
    out = []
    for label, crop in region_crops(image, mask, regions, config, labels=sorted(agree)).items():
        a = agree[label]
        score = dice_to_score(min(a["dice"], 1.0))
        error = "none" if score == 5 else ("over" if a["over"] >= a["under"] else "under")
        out.append(QualitySample(crop, score, error, float(a["dice"]), case_id, label))
    return out


def realistic_samples(image: Volume, reference: np.ndarray, config: QualityConfig,
                      rng: np.random.Generator, n_copies: int = 4, region_params=None,
                      case_id: str = "") -> list[QualitySample]:
    """Samples from ``n_copies`` whole-case corruptions (:func:`realistic_mask`), each through
    :func:`mask_samples` (regions split from the corrupted mask, the simulated rater's truth)."""
    out = []
    for _ in range(int(n_copies)):
        out += mask_samples(image, realistic_mask(image, reference, rng), reference, config,
                            region_params, case_id)
    return out


def rated_samples(image: Volume, mask: np.ndarray, regions: np.ndarray, consensus: dict,
                  config: QualityConfig, case_id: str = "", weight: float = 1.0
                  ) -> list[QualitySample]:
    """Samples from human ratings (``feedback.consensus()``: region -> (mean score, error)),
    for fine-tuning; the mean score is rounded to the nearest whole score."""
    crops = region_crops(image, mask, regions, config, labels=sorted(consensus))
    out = []
    for label, crop in crops.items():
        mean, error = consensus[label]
        score = int(min(5, max(1, round(float(mean)))))
        error = "none" if score == 5 else (error if error != "none" else "over")
        out.append(QualitySample(crop, score, error, float("nan"), case_id, label, weight))
    return out
