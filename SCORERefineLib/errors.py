"""Exceptions with messages that name the problem and the fix.

Every error the engine raises for bad input derives from :class:`SCORERefineError`, so a CLI or
the Slicer module can show the message as it is (no traceback needed).
"""


class SCORERefineError(Exception):
    """Base class of all errors the engine raises on purpose."""


class InputError(SCORERefineError, ValueError):
    """An input file or array cannot be used as it is (the message says why and what to do)."""


class GridMismatchError(InputError):
    """Two volumes that must share one voxel grid do not."""


class FeedbackError(InputError):
    """A feedback file or rating is invalid."""


class CheckpointError(SCORERefineError):
    """A checkpoint cannot be loaded (wrong format, version or channel layout)."""


class TrainingError(SCORERefineError):
    """Training cannot go on (no rated region, NaN loss, out of memory, ...)."""


class Cancelled(SCORERefineError):
    """Long work was cancelled on request; what was done so far is kept."""
