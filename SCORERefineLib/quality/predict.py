"""Predictions of the quality network per region, the uncertainty order and filled-in ratings."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..imageio import Volume
from .data import region_crops
from .network import ERROR_TYPES, QualityConfig  # noqa: F401
# the torch-free part (re-exported: callers import these from here)
from .ranking import (QualityPrediction, _prediction, confidently_good, fill_in_ratings,  # noqa: F401
                      fill_in_weight, max_entropy, order_by_uncertainty)


@torch.no_grad()
def predict_crops(model: torch.nn.Module, crops: dict[int, np.ndarray], device: str = "cpu",
                  batch_size: int = 64) -> dict[int, QualityPrediction]:
    """``{region: crop (3, D, H, W)}`` -> ``{region: QualityPrediction}``."""
    model.eval()
    labels = sorted(crops)
    out = {}
    for i in range(0, len(labels), batch_size):
        chunk = labels[i:i + batch_size]
        x = torch.from_numpy(np.stack([crops[r] for r in chunk])).to(device)
        sl, el = model(x)
        sp, ep = torch.softmax(sl, 1).cpu().numpy(), torch.softmax(el, 1).cpu().numpy()
        for j, r in enumerate(chunk):
            out[r] = _prediction(r, sp[j], ep[j])
    return out


def predict_case(model: torch.nn.Module, meta: dict, image: Volume, mask: np.ndarray | Volume,
                 regions: np.ndarray | Volume, labels: Optional[Sequence[int]] = None,
                 device: str = "cpu") -> dict[int, QualityPrediction]:
    """Predict every region (or ``labels``) of one case. ``meta``: the checkpoint metadata."""
    config = QualityConfig.from_dict(meta["network"])
    mask = mask.array if isinstance(mask, Volume) else mask
    regions = regions.array if isinstance(regions, Volume) else regions
    crops = region_crops(image, mask, regions, config, labels=labels,
                         normalisation=meta.get("normalisation"))
    return predict_crops(model, crops, device=device)
