"""The interface every training mode implements, and helpers the modes share.

A :class:`TrainingMode` says which cases it can use (:meth:`~TrainingMode.usable`), turns a case
folder into :class:`CaseTargets` (network input + per-voxel maps + per-region
:class:`~..targets.RegionTables`, cached in memory by the trainer), says where patches should be
drawn (:meth:`~TrainingMode.sampling_weights`) and computes the loss on a typed
:class:`~..targets.Batch`. Its settings, ablations included, live in its own :class:`ModeConfig`
subclass (``Config``). Register a new mode in ``modes/__init__.py`` and name it in
``SCORERefineLib.catalog.TRAINING_MODES``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import numpy as np
from scipy import ndimage

from ..inputs import CHANNELS, edge_prior, make_input
from ..targets import Batch, RegionTables


@dataclass
class ModeConfig:
    """Settings every mode has: the input channels; ``no_edge`` (ablation) drops the edge prior."""

    channels: tuple = CHANNELS
    no_edge: bool = False

    def input_channels(self) -> tuple:
        """The network's input channels under this config."""
        return tuple(c for c in self.channels if not (self.no_edge and c == "edge"))

    def to_dict(self) -> dict:
        """JSON-ready settings (stored in the checkpoint's ``metadata["training"]["mode_config"]``)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModeConfig":
        """The config back from :meth:`to_dict` (unknown keys are ignored).

        Args:
            d: a dict as :meth:`to_dict` wrote it.

        Returns:
            The config.
        """
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "channels" in kw:
            kw["channels"] = tuple(kw["channels"])
        return cls(**kw)


@dataclass
class CaseTargets:
    """One case, prepared for training (kept in memory).

    ``image``: (C, z, y, x) float32 network input. ``initial``: (z, y, x) uint8.
    ``maps``: per-voxel arrays travelling with patches through spatial augmentation, by
    :class:`~..targets.Batch` field name (``regions`` int16, ``edge`` float32, ``reference``
    uint8...; other names go to ``Batch.extra``). ``tables``: per-region tables or None.
    ``info``: counts for metadata/logging (``n_rated_regions``, ...).
    """

    case_id: str
    image: np.ndarray
    initial: np.ndarray
    spacing_zyx: tuple
    maps: dict = field(default_factory=dict)
    tables: RegionTables | None = None
    info: dict = field(default_factory=dict)


class TrainingMode:
    """Interface of a training mode (subclass, then register it in ``modes/__init__.py``)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()   # case files beyond image/initial (as in the catalog)
    label_maps: ClassVar[tuple[str, ...]] = ()  # keys of CaseTargets.maps that are integer labels
    #: the trainer may hold out cases for validation and early stopping (refiner/validation.py)
    supports_validation: ClassVar[bool] = True
    #: the share of cases held out when ``TrainConfig.val_fraction`` is None (the default): 0, no
    #: split unless asked for (``--val-fraction``). At the hidden set's size (24-30 cases, where
    #: the split applies) it cost SCORE two thirds of its gain (stop 26) and full supervision
    #: too: +0.005 with against +0.024 without, +0.020 against +0.029 (docs/score-loss.md, stop 27)
    default_val_fraction: ClassVar[float] = 0.0
    Config: ClassVar[type[ModeConfig]] = ModeConfig

    def __init__(self, config: ModeConfig | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def channels(self) -> tuple:
        """The network's input channels."""
        return self.config.input_channels()

    def usable(self, case) -> bool:
        """Whether ``case`` has the files this mode needs (others are skipped)."""
        raise NotImplementedError

    def keep(self, targets: CaseTargets) -> bool:
        """Whether a prepared case has anything to learn from (e.g. at least one rating)."""
        return True

    def prepare_case(self, case) -> CaseTargets:
        """Load ``case`` and build its network input, maps and tables."""
        raise NotImplementedError

    def sampling_weights(self, targets: CaseTargets) -> tuple[np.ndarray, np.ndarray]:
        """Candidate patch centres: ``(flat voxel indices, weights)``; weights sum to the case's
        share of patches relative to other cases."""
        raise NotImplementedError

    def loss(self, logits, batch: Batch) -> tuple:
        """``(scalar loss tensor, {term: float})`` on a batch."""
        raise NotImplementedError

    def missing_message(self, dataset) -> str:
        """What to do when no case of ``dataset`` is usable."""
        raise NotImplementedError

    # optional trainer hooks (no-ops here; modes with a teacher, weights... override them) ----
    def select(self, cases: list) -> list:
        """The cases to prepare, from all of a dataset's cases (default: the usable ones).

        A mode that must see every case first (e.g. to assign roles) overrides this."""
        return [c for c in cases if self.usable(c)]

    def attach(self, model) -> None:
        """Called once with the bare network before the first step (after a resume's load)."""

    def after_step(self, model, step: int) -> None:
        """Called after every optimiser step; ``step`` is the number of steps done."""

    def state_dict(self) -> dict:
        """Tensors/plain data to resume the mode's own state (saved in the checkpoint's extra)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (called after :meth:`attach` on resume)."""

    def checkpoint_metadata(self) -> dict:
        """JSON-ready facts for the checkpoint metadata (``metadata["mode_state"]``)."""
        return {}

    # shared helpers -----------------------------------------------------------------------
    def _load_base(self, case):
        image = case.load_image()
        initial = case.load_initial(like=image)
        x = make_input(image, initial.array, self.channels)
        return image, initial, x

    def _edge_map(self, image, x) -> np.ndarray:
        ch = list(self.channels)
        if "edge" in ch:
            return x[ch.index("edge")]
        return edge_prior(image.array, image.geometry.spacing_zyx)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a background 6-neighbour."""
    m = mask.astype(bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def band_indices(regions: np.ndarray) -> np.ndarray:
    """Flat indices of the voxels in any region."""
    return np.flatnonzero(regions.reshape(-1) > 0)
