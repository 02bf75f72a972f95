"""bbox.padded_bbox: the one bounding box grown by a pad (guard, veto, baseline, regions, ROI)."""

from __future__ import annotations

import numpy as np
import pytest

from SCORERefineLib.bbox import padded_bbox
from SCORERefineLib.errors import InputError


def test_the_box_holds_every_voxel_and_is_grown_then_clipped():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2, 5, 13] = 1
    mask[6, 3, 7] = 1
    box = padded_bbox(mask, (1, 2, 3))
    assert box == (slice(1, 8), slice(1, 8), slice(4, 14))   # x clipped at the array's end
    assert mask[box].sum() == mask.sum()
    assert padded_bbox(mask, (0, 0, 0)) == (slice(2, 7), slice(3, 6), slice(7, 14))


def test_an_empty_mask_has_no_box():
    with pytest.raises(InputError, match="empty"):
        padded_bbox(np.zeros((4, 4, 4), bool), (1, 1, 1))
