"""Tiny stand-in refiners with known outputs, shared by the inference tests (inputs are the
refiner's channels: 0 windowed CT, 1 initial mask, 2 edge prior)."""

from __future__ import annotations

import torch
from torch import nn


class IdentityModel(nn.Module):
    """Logits = 20 * (2 * initial - 1): returns the initial mask."""

    def __init__(self, initial_index: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(3, 1, 1)
        self.i = initial_index

    def forward(self, x):
        return 20.0 * (2.0 * x[:, self.i:self.i + 1] - 1.0)


class CTThresholdModel(nn.Module):
    """Logits = 40 * (windowed CT - 0.5): foreground where HU >= 700 (checks image alignment)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 1, 1)

    def forward(self, x):
        return 40.0 * (x[:, :1] - 0.5)


class ProbabilityModel(nn.Module):
    """Logits whose sigmoid is the windowed CT itself: the probability is set by the image (HU ->
    (HU + 300) / 2000, :func:`hu_of`), the same in every flipped view."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 1, 1)

    def forward(self, x):
        p = x[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.log(p) - torch.log1p(-p)


def hu_of(prob):
    """The CT (float32 HU) on which :class:`ProbabilityModel` predicts ``prob``."""
    return (prob * 2000.0 - 300.0).astype("float32")
