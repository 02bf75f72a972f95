"""The refiner network: a MONAI 3D U-Net with a residual prior on the initial mask.

``logits = head(body(x)) + residual_gain * (2 * initial - 1)``

``body`` is :class:`monai.networks.nets.UNet`; ``head`` is a 1x1x1 convolution initialised to zero.
So the *untrained* network already reproduces the initial mask (``P = sigmoid(+-gain)``, 0.88/0.12
for the default gain 2) and learns only a correction. This keeps SCORE training stable (a rating only asks
for local changes), makes the anchor term nearly free, and means a network that learns nothing
cannot do worse than the initial mask. ``residual_gain = 0`` gives a plain U-Net.
Gain 2 (P = 0.88 / 0.12 untrained) rather than 4: with 4 a voxel needs a correction of 4 logits to
flip and SCORE training flipped too few (docs/score-loss.md).

Presets (:data:`PRESETS`): ``tiny`` (tests, seconds on CPU), ``small`` (demo/benchmark on 2 CPU
cores), ``large`` (GPU). Patch sides must be divisible by :meth:`NetworkConfig.divisor`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import torch
from torch import nn

from ..errors import CheckpointError


@dataclass
class NetworkConfig:
    """What builds a :class:`RefinerNet`; stored in checkpoints as a dict."""

    preset: str = "small"
    channels: tuple = (16, 32, 64, 128)       # U-Net feature widths per level
    strides: tuple = (2, 2, 2)
    num_res_units: int = 1
    head_features: int = 8
    dropout: float = 0.0
    norm: str = "INSTANCE"
    residual_gain: float = 2.0
    in_channels: list = field(default_factory=lambda: ["ct", "initial", "edge"])

    def divisor(self) -> int:
        d = 1
        for s in self.strides:
            d *= int(s)
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        d["in_channels"] = list(self.in_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"network config has unknown fields {sorted(unknown)}; the checkpoint "
                                  f"was written by a newer SCORERefine. Update SCORERefine.")
        d = dict(d)
        for k in ("channels", "strides"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        if "in_channels" in d:
            d["in_channels"] = list(d["in_channels"])
        return cls(**d)


PRESETS = {
    "tiny": dict(channels=(4, 8, 16), strides=(2, 2), num_res_units=0, head_features=4),
    "small": dict(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, head_features=8),
    "large": dict(channels=(32, 64, 128, 256, 320), strides=(2, 2, 2, 2), num_res_units=2,
                  head_features=16, dropout=0.1),
}


def network_config(preset: str = "small", in_channels: Sequence[str] = ("ct", "initial", "edge"),
                   **overrides) -> NetworkConfig:
    """The :class:`NetworkConfig` of a preset, with ``overrides`` (e.g. ``residual_gain=0``)."""
    if preset not in PRESETS:
        raise ValueError(f"network preset must be one of {list(PRESETS)}, got {preset!r}")
    kw = dict(PRESETS[preset])
    kw.update(overrides)
    return NetworkConfig(preset=preset, in_channels=list(in_channels), **kw)


class RefinerNet(nn.Module):
    """U-Net body + zero-initialised 1x1x1 head + residual prior on the ``initial`` channel."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        names = list(config.in_channels)
        if "initial" not in names:
            raise ValueError("the refiner needs the 'initial' input channel")
        self.initial_index = names.index("initial")
        self.body = UNet(spatial_dims=3, in_channels=len(names), out_channels=config.head_features,
                         channels=tuple(config.channels), strides=tuple(config.strides),
                         num_res_units=config.num_res_units, norm=config.norm,
                         dropout=config.dropout)
        self.act = nn.PReLU()
        self.head = nn.Conv3d(config.head_features, 1, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("residual_gain", torch.tensor(float(config.residual_gain)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, z, y, x) -> logits (B, 1, z, y, x)."""
        out = self.head(self.act(self.body(x)))
        if float(self.config.residual_gain) != 0.0:
            m0 = x[:, self.initial_index:self.initial_index + 1]
            out = out + self.residual_gain.to(out.dtype) * (2.0 * m0 - 1.0)
        return out


def build_network(config: NetworkConfig | dict) -> RefinerNet:
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    return RefinerNet(config)
