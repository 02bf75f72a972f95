"""What a rating means for training: the one place that turns feedback into targets.

A clinician's rating of a region (1-5 score, error type ``over``/``under``/``none``; several
raters are merged by :meth:`~SCORERefineLib.feedback.CaseFeedback.consensus`) becomes, per region:

* ``agreement`` c(s): how much the refined mask should agree (Dice) with the initial mask in the
  region, linear between the entries of :data:`SCORERefineLib.calibration.AGREEMENT` (an integer
  score gives exactly ``calibration.score_to_agreement``);
* ``rated``: whether the region was rated at all;
* ``error``: :data:`NONE`, :data:`OVER` (the truth lies inside the initial mask there: shrink) or
  :data:`UNDER` (the truth contains it: grow);
* ``score``: the consensus score;
* ``weight``: how often patches are drawn from the region, :func:`sampling_weight` ``(6 - s)^2``
  (times ``trust``);
* ``trust``: how much the rating counts in the loss: 1 for people's ratings; for a rating the
  quality predictor filled in (issue 11, ``ScoreConfig.fill_in``) its confidence weight
  ``q^2`` (``q >= 0.5``; below that the region is left unrated). The loss terms multiply each
  region's contribution by it and keep their normalisation by the rated regions' size, so a
  filled-in rating counts ``q^2`` as much as a person's, and a table of people's ratings alone
  gives exactly the loss it gave before.

:func:`region_tables` builds these :class:`RegionTables` (numpy, indexed by region label) and
:func:`target_volume_ratio` says what volume change a (c, error) pair implies. The training batch
that carries them to the losses is the typed :class:`Batch` (built by
:class:`~.sampling.PatchSampler`). This module imports no torch at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibration import AGREEMENT

if TYPE_CHECKING:  # pragma: no cover
    import torch

NONE, OVER, UNDER = 0, 1, 2
#: error type (feedback.json) -> code in the ``error`` table
ERROR_CODES = {"none": NONE, "over": OVER, "under": UNDER}


def agreement_for(mean_score: float) -> float:
    """c(s) for a (possibly non-integer consensus) score.

    Args:
        mean_score: a score in [1, 5] (the mean of several raters' scores may be fractional).

    Returns:
        The agreement, linear between the calibration table's entries.
    """
    s = sorted(AGREEMENT)
    return float(np.interp(float(mean_score), s, [AGREEMENT[k] for k in s]))


def sampling_weight(mean_score: float) -> float:
    """Patch-sampling weight of a rated region: ``(6 - s)^2`` (a 1 is drawn 25x as often as a 5).

    Args:
        mean_score: the region's consensus score.

    Returns:
        The region's total weight (spread over its voxels by the mode).
    """
    return float((6.0 - float(mean_score)) ** 2)


def error_code(error: str) -> int:
    """The table code of an error type (``"over"`` -> :data:`OVER`, ...; unknown -> :data:`NONE`)."""
    return ERROR_CODES.get(str(error), NONE)


@dataclass(frozen=True)
class RegionTables:
    """Per-region targets of one case; every array has length (max region label + 1), entry 0
    (no region) is never rated."""

    agreement: np.ndarray   # float32, c(s)
    rated: np.ndarray       # bool
    error: np.ndarray       # int64, NONE / OVER / UNDER
    score: np.ndarray       # float32, consensus score (0 where unrated)
    weight: np.ndarray      # float64, sampling weight (6 - s)^2 x trust (0 where unrated)
    trust: np.ndarray | None = None   # float32, loss weight of each rating (default: 1 where rated)

    #: the tables the losses read (``weight`` only steers sampling)
    LOSS_FIELDS = ("agreement", "rated", "error", "score", "trust")

    def __post_init__(self) -> None:
        if self.trust is None:
            object.__setattr__(self, "trust", self.rated.astype(np.float32))

    @property
    def n_rated(self) -> int:
        """Number of rated regions."""
        return int(self.rated.sum())

    def __len__(self) -> int:
        return len(self.rated)


def region_tables(consensus: dict[int, tuple[float, str]], n_labels: int,
                  trust: dict[int, float] | None = None) -> RegionTables:
    """Tables from a consensus ``{region: (mean score, error type)}``.

    Args:
        consensus: as :meth:`CaseFeedback.consensus` returns it.
        n_labels: table length (max region label + 1); labels beyond it are an error.
        trust: ``{region: loss weight}`` for ratings that count less than a person's (filled-in
            ratings); regions not in it get 1.

    Returns:
        The case's :class:`RegionTables`.

    Raises:
        ValueError: a rated label is < 1 or >= ``n_labels``.
    """
    n = int(n_labels)
    agreement = np.zeros(n, np.float32)
    rated = np.zeros(n, bool)
    error = np.zeros(n, np.int64)
    score = np.zeros(n, np.float32)
    weight = np.zeros(n, np.float64)
    trusts = np.zeros(n, np.float32)
    for r, (s, err) in consensus.items():
        r = int(r)
        if not 0 < r < n:
            raise ValueError(f"rated region {r} is outside the table (labels 1..{n - 1})")
        agreement[r] = agreement_for(s)
        rated[r] = True
        error[r] = error_code(err)
        score[r] = float(s)
        t = 1.0 if trust is None else float(trust.get(r, 1.0))
        trusts[r] = t
        weight[r] = sampling_weight(s) * t
    return RegionTables(agreement, rated, error, score, weight, trusts)


def filled_in_consensus(feedback, fill_in: str, q_min: float = 0.5
                        ) -> tuple[dict[int, tuple[float, str]], dict[int, float]]:
    """People's consensus plus the model rater ``fill_in``'s ratings of the regions nobody rated.

    A filled-in rating is the predictor's most probable score and error type, kept only when its
    confidence ``q`` (largest score probability, from ``model_details``) is >= ``q_min``, with
    trust ``q^2`` (:func:`SCORERefineLib.quality.ranking.fill_in_weight`).

    Returns:
        ``(consensus, trust)``: trust holds the filled-in regions only.
    """
    from ..quality.ranking import fill_in_ratings
    from ..quality.suggestions import suggestions_from_feedback

    consensus = dict(feedback.consensus())
    preds = suggestions_from_feedback(feedback, fill_in)
    filled = fill_in_ratings(preds, q_min=q_min, exclude=consensus)
    trust = {}
    for r, (score, error, w) in filled.items():
        consensus[int(r)] = (float(score), error)
        trust[int(r)] = float(w)
    return consensus, trust


def feedback_tables(feedback, regions: np.ndarray, fill_in: str = "", q_min: float = 0.5
                    ) -> RegionTables:
    """Tables of a case from its feedback (a :class:`CaseFeedback`) and its region label map.

    Args:
        feedback: the case's :class:`~SCORERefineLib.feedback.CaseFeedback`.
        regions: int region labels (z, y, x), 0 = no region.
        fill_in: a model rater (e.g. ``"suggested"``) whose confident ratings fill in the
            regions nobody rated (:func:`filled_in_consensus`); ``""``: people's ratings only.
        q_min: the confidence below which a predicted rating is not used.

    Returns:
        :class:`RegionTables` of length ``regions.max() + 1``.

    Raises:
        ValueError: the feedback rates a label that is not in ``regions`` (message lists them).
    """
    consensus, trust = (filled_in_consensus(feedback, fill_in, q_min) if fill_in
                        else (feedback.consensus(), None))
    present = set(int(v) for v in np.unique(regions) if v > 0)
    missing = sorted(int(r) for r in consensus if int(r) not in present)
    if missing:
        raise ValueError(f"feedback.json rates regions {missing[:10]} that are not in "
                         f"regions.nii.gz (labels {sorted(present)[:10]}...)")
    return region_tables(consensus, int(regions.max()) + 1 if regions.size else 1, trust)


def target_volume_ratio(agreement, error):
    """|T & R| / |M0 & R| implied by Dice c and the error type, if the error is of one kind.

    over (T inside M0): ``c / (2 - c)``; under (T contains M0): ``(2 - c) / c``; none: 1.

    Args:
        agreement: c per region, a torch tensor or numpy array.
        error: error codes of the same shape.

    Returns:
        The ratio, same type and shape as ``agreement``.
    """
    if isinstance(agreement, np.ndarray):
        c = np.clip(agreement, 0.05, 1.0)
        return np.where(error == OVER, c / (2.0 - c),
                        np.where(error == UNDER, (2.0 - c) / c, np.ones_like(c)))
    import torch

    c = agreement.clamp(0.05, 1.0)
    return torch.where(error == OVER, c / (2.0 - c),
                       torch.where(error == UNDER, (2.0 - c) / c, torch.ones_like(c)))


@dataclass
class Batch:
    """One training batch, as the sampler produces it and the losses consume it.

    Voxel tensors are ``(B, 1, z, y, x)`` (``image``: ``(B, C, z, y, x)``); per-region tables are
    ``(B, K+1)``, padded with unrated entries. Fields a mode does not use stay ``None``; a new
    mode's own per-voxel maps go to ``extra`` under their name.
    """

    image: "torch.Tensor"
    initial: "torch.Tensor"
    valid: "torch.Tensor | None" = None
    regions: "torch.Tensor | None" = None          # long region ids
    agreement: "torch.Tensor | None" = None        # (B, K+1) float
    rated: "torch.Tensor | None" = None            # (B, K+1) bool
    error: "torch.Tensor | None" = None            # (B, K+1) long
    score: "torch.Tensor | None" = None            # (B, K+1) float
    trust: "torch.Tensor | None" = None            # (B, K+1) float, loss weight of each rating
    edge: "torch.Tensor | None" = None             # edge prior (edge loss)
    depth: "torch.Tensor | None" = None            # pseudo-label ranking key: signed depth to M0 (mm) + appearance
    anchor_weight: "torch.Tensor | None" = None    # per-voxel anchor weight
    reference: "torch.Tensor | None" = None        # dense reference (full supervision)
    extra: dict[str, Any] = field(default_factory=dict)
    case_ids: "list[str] | None" = None            # the case id of each item

    #: per-voxel map names with a field of their own (other maps go to ``extra``)
    MAP_FIELDS = ("regions", "edge", "depth", "anchor_weight", "reference")

    def to(self, device) -> "Batch":
        """A copy with every tensor moved to ``device``.

        Args:
            device: a torch device (or its name).

        Returns:
            The moved batch.
        """
        def move(v):
            return v.to(device, non_blocking=True) if hasattr(v, "to") else v
        moved = {f.name: move(getattr(self, f.name)) for f in fields(self)
                 if f.name not in ("extra", "case_ids")}
        return replace(self, **moved, extra={k: move(v) for k, v in self.extra.items()})

    def select(self, items) -> "Batch":
        """The batch of items ``items`` (indices) only; tables, maps and case ids alike.

        Args:
            items: item indices (a list of ints).

        Returns:
            The sub-batch.
        """
        import torch

        idx = [int(i) for i in items]
        n = int(self.image.shape[0])

        def pick(v):
            if hasattr(v, "index_select") and v.dim() > 0 and v.shape[0] == n:
                return v.index_select(0, torch.as_tensor(idx, dtype=torch.long, device=v.device))
            return v
        kept = {f.name: pick(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("extra", "case_ids")}
        ids = None if self.case_ids is None else [self.case_ids[i] for i in idx]
        return replace(self, **kept, extra={k: pick(v) for k, v in self.extra.items()}, case_ids=ids)

    def map(self, name: str):
        """A per-voxel map by name (a field or an ``extra`` entry), or ``None``."""
        if name in self.MAP_FIELDS:
            return getattr(self, name)
        return self.extra.get(name)
