"""The predictor's view of a region and the decisions made from it, without torch.

:class:`QualityPrediction` (score and error-type probabilities, expected score, entropy,
confidence), the uncertainty order, "confidently good" and the fill-in weights. The rating
session (and so the Slicer panel) reads these from feedback.json without importing torch;
:mod:`.predict` makes them from the network and re-exports everything here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np


@dataclass(frozen=True)
class QualityPrediction:
    """The predictor's view of one region.

    ``score_probs``: P(score = 1..5) (5 floats); ``error_probs``: P(over, under, none);
    ``expected_score``: sum s P(s); ``entropy``: of ``score_probs`` in nats (0 .. ln 5);
    ``confidence`` q: the largest score probability.
    """

    region: int
    score_probs: tuple
    error_probs: tuple
    expected_score: float
    entropy: float
    confidence: float

    @property
    def score(self) -> int:
        """The most probable score."""
        return int(np.argmax(self.score_probs)) + 1

    @property
    def error(self) -> str:
        """The error type consistent with :attr:`score`: ``none`` for 5, else the likelier of
        over/under."""
        if self.score == 5:
            return "none"
        return "over" if self.error_probs[0] >= self.error_probs[1] else "under"

    def p_good(self, min_score: int = 4) -> float:
        """P(score >= min_score)."""
        return float(sum(self.score_probs[min_score - 1:]))


def _prediction(region: int, sp: np.ndarray, ep: np.ndarray) -> QualityPrediction:
    sp = np.asarray(sp, dtype=np.float64)
    ent = float(-(sp * np.log(np.clip(sp, 1e-12, 1.0))).sum())
    return QualityPrediction(int(region), tuple(float(v) for v in sp), tuple(float(v) for v in ep),
                             float((sp * np.arange(1, 6)).sum()), ent, float(sp.max()))


def order_by_uncertainty(preds: dict[int, QualityPrediction], exclude: Iterable[int] = ()
                         ) -> list[int]:
    """Regions by decreasing entropy (ties: lower expected score first, then label);
    ``exclude``: regions already rated."""
    skip = set(exclude)
    return sorted((r for r in preds if r not in skip),
                  key=lambda r: (-preds[r].entropy, preds[r].expected_score, r))


def confidently_good(preds: dict[int, QualityPrediction], regions: Optional[Iterable[int]] = None,
                     min_score: int = 4, p_min: float = 0.9) -> bool:
    """True when every region of ``regions`` (default all) has P(score >= min_score) >= p_min:
    the remaining regions are, to the predictor, confidently good."""
    rs = list(preds) if regions is None else list(regions)
    return all(preds[r].p_good(min_score) >= p_min for r in rs)


def fill_in_weight(q: float, q_min: float = 0.5) -> float:
    """Training weight of a predicted rating of confidence ``q``: ``q**2`` if ``q >= q_min``
    else 0 (the quality-weighted pseudo-label rule of issue 11)."""
    return float(q) ** 2 if q >= q_min else 0.0


def fill_in_ratings(preds: dict[int, QualityPrediction], q_min: float = 0.5,
                    exclude: Iterable[int] = ()) -> dict[int, tuple[int, str, float]]:
    """``{region: (score, error, weight)}`` for unrated regions (not in ``exclude``) whose weight
    is positive; weight = :func:`fill_in_weight` of the prediction's confidence."""
    skip = set(exclude)
    out = {}
    for r, p in preds.items():
        w = fill_in_weight(p.confidence, q_min)
        if r not in skip and w > 0.0:
            out[r] = (p.score, p.error, w)
    return out


def max_entropy() -> float:
    return math.log(5.0)
