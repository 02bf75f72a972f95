"""Training modes: one file per supervision kind, one registry (:data:`MODES`).

* ``score`` (:mod:`.score`): from the region ratings in feedback.json alone;
* ``full`` (:mod:`.full`): from dense references, the fully supervised upper bound;
* ``scribble`` (:mod:`.scribble`): from strokes in scribbles.nii.gz (partial CE + EMA-teacher
  pseudo-labels);
* ``hybrid`` (:mod:`.hybrid`): a few dense cases + many weak ones (ratings or strokes), weak cases
  weighted by the instance indicator.

Adding a mode (e.g. scribbles): write ``modes/scribbles.py`` with a :class:`TrainingMode`
subclass (and its ``Config``), add one line to :data:`MODES` below and one ``Entry`` to
``SCORERefineLib.catalog.TRAINING_MODES`` (a test checks the two agree).
"""

from __future__ import annotations

from ...errors import InputError
from ..inputs import signed_depth
from .base import CaseTargets, ModeConfig, TrainingMode, band_indices, surface
from .full import FullMode
from .hybrid import HybridConfig, HybridMode
from .score import ScoreConfig, ScoreMode
from .scribble import ScribbleConfig, ScribbleMode

MODES: dict[str, type[TrainingMode]] = {
    ScoreMode.name: ScoreMode,
    FullMode.name: FullMode,
    ScribbleMode.name: ScribbleMode,
    HybridMode.name: HybridMode,
}

__all__ = ["MODES", "get_mode", "mode_config", "TrainingMode", "ModeConfig", "CaseTargets",
           "ScoreMode", "ScoreConfig", "FullMode", "ScribbleMode", "ScribbleConfig", "HybridMode", "HybridConfig", "surface", "signed_depth", "band_indices"]


def _mode_class(name: str) -> type[TrainingMode]:
    if name not in MODES:
        raise InputError(f"unknown training mode '{name}'; choose one of {sorted(MODES)}.")
    return MODES[name]


def mode_config(name: str, **settings) -> ModeConfig:
    """The config of mode ``name`` with ``settings`` (its own field names) set.

    Args:
        name: a registered mode.
        **settings: fields of that mode's ``Config`` (e.g. ``no_direction=True``).

    Returns:
        The mode's config.
    """
    return _mode_class(name).Config(**settings)


def get_mode(name: str, config: ModeConfig | None = None) -> TrainingMode:
    """An instance of mode ``name`` (``config`` defaults to that mode's ``Config()``).

    Args:
        name: a registered mode (:data:`MODES`).
        config: the mode's config; must be an instance of the mode's ``Config``.

    Returns:
        The mode.

    Raises:
        InputError: unknown mode, or a config of another mode.
    """
    cls = _mode_class(name)
    if config is not None and not isinstance(config, cls.Config):
        raise InputError(f"training mode '{name}' takes a {cls.Config.__name__}, "
                         f"got a {type(config).__name__}.")
    return cls(config)
