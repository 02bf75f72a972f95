"""The one calibration between a region's agreement (Dice) and its 1-5 quality score.

The simulated rater maps a region's Dice to a score with :func:`dice_to_score`; the SCORE loss
asks the refined mask to agree with the initial mask by :func:`score_to_agreement` in a region
that was given that score. Both directions use the same table, so they cannot drift apart.

=====  ===========================================  =====================  =================
score  anchor (what the rater is told)              Dice in the region     agreement c(s)
=====  ===========================================  =====================  =================
5      no visible error                             >= 0.95                1.00
4      small error, clinically acceptable           [0.85, 0.95)           0.90
3      clear error, needs correction                [0.70, 0.85)           0.775
2      large error                                  [0.50, 0.70)           0.60
1      failed: the region is mostly wrong           < 0.50                 0.35
=====  ===========================================  =====================  =================

c(s) is the midpoint of each Dice interval (1.0 for "no error", 0.35 as a typical value for a
failed region).
"""

from __future__ import annotations

SCORES = (1, 2, 3, 4, 5)

ANCHORS = {
    5: "no visible error",
    4: "small error, clinically acceptable",
    3: "clear error, needs correction",
    2: "large error",
    1: "failed: the region is mostly wrong",
}

#: lower Dice bound of each score (score 1 has none)
DICE_LOWER_BOUND = {5: 0.95, 4: 0.85, 3: 0.70, 2: 0.50, 1: 0.0}

#: the agreement c(s) a score stands for
AGREEMENT = {5: 1.0, 4: 0.90, 3: 0.775, 2: 0.60, 1: 0.35}


def dice_to_score(dice: float) -> int:
    """Map a region's Dice (0..1) to the 1-5 score of the table above."""
    if not 0.0 <= dice <= 1.0 + 1e-9:
        raise ValueError(f"Dice must lie in [0, 1], got {dice}")
    for score in (5, 4, 3, 2):
        if dice >= DICE_LOWER_BOUND[score]:
            return score
    return 1


def score_to_agreement(score: int) -> float:
    """The agreement c(s) between refined and initial mask that score ``s`` stands for."""
    if score not in AGREEMENT:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return AGREEMENT[score]
