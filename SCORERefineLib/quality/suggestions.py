"""The quality predictor's suggestions as a ``suggested`` rater in feedback.json, marked as a model.

Format (backward compatible: version 1 unchanged, one optional top-level key)::

    "raters": {"dr_a": [...], "suggested": [{"region": 3, "score": 2, "error": "under",
                                             "rated_at": "...", "seconds": 0.0}, ...]},
    "model_raters": ["suggested"],
    "model_details": {"suggested": {"3": {"score_probs": [...5], "error_probs": [over, under, none]}}}

A suggestion is an ordinary, validated rating (so old readers still parse the file), stored under
a rater listed in ``model_raters``. Human consensus (the SCORE training target) ignores it;
:func:`~SCORERefineLib.feedback.save_feedback` refuses to let a model rater replace a person's
ratings or the reverse. A person accepts a suggestion with :func:`accept_suggestion` (the panel's
one key): the suggestion is copied into that person's own ratings, never over one they gave.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import FeedbackError
from ..feedback import CaseFeedback, Rating, load_feedback, save_feedback, utc_now
from .ranking import QualityPrediction, _prediction

SUGGESTED = "suggested"


def add_suggestions(fb: CaseFeedback, preds: dict[int, QualityPrediction],
                    rater: str = SUGGESTED, rated_at: Optional[str] = None) -> int:
    """Replace ``rater``'s ratings in ``fb`` by the predictions (most probable score, consistent
    error type) and mark ``rater`` as a model. Returns the number of suggestions.

    Raises FeedbackError when ``rater`` already holds a person's ratings.
    """
    if rater in fb.raters and not fb.is_model(rater):
        raise FeedbackError(f"case {fb.case_id}: '{rater}' holds a person's ratings; suggestions "
                            f"are never written over them. Choose another name for the model.")
    fb.raters.pop(rater, None)
    fb.model_raters.add(rater)
    details = fb.model_details[rater] = {}
    rated_at = rated_at or utc_now()
    n = 0
    for region in sorted(preds):
        if region in fb.region_labels:
            p = preds[region]
            fb.rate(rater, region, p.score, p.error, seconds=0.0, rated_at=rated_at)
            details[int(region)] = {"score_probs": [float(v) for v in p.score_probs],
                                    "error_probs": [float(v) for v in p.error_probs]}
            n += 1
    return n


def suggestions_from_feedback(fb: CaseFeedback, rater: str = SUGGESTED
                              ) -> dict[int, QualityPrediction]:
    """The model rater's suggestions back as :class:`QualityPrediction` (from ``model_details``;
    regions suggested without probabilities are left out). Empty when there are none."""
    if not fb.is_model(rater):
        return {}
    rated = fb.raters.get(rater, {})
    return {int(r): _prediction(int(r), d["score_probs"], d["error_probs"])
            for r, d in fb.model_details.get(rater, {}).items() if int(r) in rated}


def write_suggestions(path: str | os.PathLike, preds: dict[int, QualityPrediction],
                      case_id: str, region_labels: list[int], region_info: Optional[dict] = None,
                      rater: str = SUGGESTED) -> CaseFeedback:
    """Write the suggestions into the feedback file at ``path`` (created when missing); every
    other rater in it is kept as it is. Returns what was saved."""
    path = Path(path)
    fb = load_feedback(path) if path.exists() else CaseFeedback(case_id, list(region_labels),
                                                                 dict(region_info or {}))
    add_suggestions(fb, preds, rater)
    save_feedback(fb, path)
    return fb


def accept_suggestion(fb: CaseFeedback, region: int, human: str, rater: str = SUGGESTED,
                      seconds: float = 0.0, overwrite: bool = False) -> Optional[Rating]:
    """Copy ``rater``'s suggestion for ``region`` into ``human``'s ratings (one key in the panel).

    Returns the new rating, or None when there is no suggestion or ``human`` already rated the
    region (kept unless ``overwrite``: the person's own rating wins).
    """
    if fb.is_model(human):
        raise FeedbackError(f"case {fb.case_id}: '{human}' is a model rater; accept as a person.")
    suggestion = fb.raters.get(rater, {}).get(region)
    if suggestion is None or (region in fb.raters.get(human, {}) and not overwrite):
        return None
    return fb.rate(human, region, suggestion.score, suggestion.error, seconds=seconds)
