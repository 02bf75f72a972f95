"""The quality network: a small MONAI CNN on a crop around one region, with two heads.

Input ``x``: ``(B, 3, D, H, W)`` float32, channels :data:`CHANNELS` = windowed CT in [0, 1],
the mask under judgement (0/1, linearly resampled), the region indicator (0/1).
Output: ``(score_logits (B, 5), error_logits (B, 3))``; score index ``i`` is score ``i + 1``,
error index follows :data:`ERROR_TYPES` (``over``, ``under``, ``none``).

The body is :class:`monai.networks.nets.Regressor` (strided residual conv units, then a linear
layer to ``hidden`` features); the heads are two linear layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ..errors import CheckpointError

CHANNELS = ("ct", "mask", "region")
ERROR_TYPES = ("over", "under", "none")
N_SCORES = 5


@dataclass
class QualityConfig:
    """What builds a :class:`QualityNet`; stored in the checkpoint metadata as a dict."""

    preset: str = "small"
    crop_size: tuple = (24, 24, 24)        # voxels (z, y, x) of the crop
    crop_spacing_mm: tuple = (1.5, 1.5, 1.5)
    channels: tuple = (8, 16, 32)
    strides: tuple = (2, 2, 2)
    hidden: int = 32
    dropout: float = 0.1

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("crop_size", "crop_spacing_mm", "channels", "strides"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QualityConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"quality network config has unknown fields {sorted(unknown)}; "
                                  f"written by a newer SCORERefine. Update SCORERefine.")
        d = dict(d)
        for k in ("crop_size", "channels", "strides"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        if "crop_spacing_mm" in d:
            d["crop_spacing_mm"] = tuple(float(v) for v in d["crop_spacing_mm"])
        return cls(**d)


PRESETS = {
    "tiny": dict(crop_size=(16, 16, 16), crop_spacing_mm=(2.0, 2.0, 2.0), channels=(8, 16),
                 strides=(2, 2), hidden=16, dropout=0.0),
    "small": dict(crop_size=(24, 24, 24), crop_spacing_mm=(1.5, 1.5, 1.5), channels=(8, 16, 32),
                  strides=(2, 2, 2), hidden=32, dropout=0.1),
}


def quality_config(preset: str = "small", **overrides) -> QualityConfig:
    if preset not in PRESETS:
        raise ValueError(f"quality network preset must be one of {list(PRESETS)}, got {preset!r}")
    kw = dict(PRESETS[preset])
    kw.update(overrides)
    return QualityConfig(preset=preset, **kw)


class QualityNet(nn.Module):
    """Regressor body -> PReLU -> (score head, error head)."""

    def __init__(self, config: QualityConfig):
        super().__init__()
        from monai.networks.nets import Regressor

        self.config = config
        self.body = Regressor(in_shape=(len(CHANNELS),) + tuple(config.crop_size),
                              out_shape=(int(config.hidden),), channels=tuple(config.channels),
                              strides=tuple(config.strides), dropout=float(config.dropout) or None)
        self.act = nn.PReLU()
        self.score_head = nn.Linear(int(config.hidden), N_SCORES)
        self.error_head = nn.Linear(int(config.hidden), len(ERROR_TYPES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, 3, D, H, W) -> ``(score_logits (B, 5), error_logits (B, 3))``."""
        h = self.act(self.body(x))
        return self.score_head(h), self.error_head(h)


def build_quality_network(config: QualityConfig | dict) -> QualityNet:
    if isinstance(config, dict):
        config = QualityConfig.from_dict(config)
    return QualityNet(config)
