import pytest
from hypothesis import given, strategies as st

from SCORERefineLib.calibration import (AGREEMENT, ANCHORS, DICE_LOWER_BOUND, SCORES, dice_to_score,
                                        score_to_agreement)


@pytest.mark.parametrize("dice,score", [(1.0, 5), (0.95, 5), (0.949, 4), (0.85, 4), (0.8, 3),
                                        (0.70, 3), (0.69, 2), (0.5, 2), (0.49, 1), (0.0, 1)])
def test_dice_to_score_table(dice, score):
    assert dice_to_score(dice) == score


@given(st.floats(0.0, 1.0))
def test_score_is_monotone_and_agreement_inside_its_interval(d):
    s = dice_to_score(d)
    assert s in SCORES
    assert d >= DICE_LOWER_BOUND[s]
    # the agreement a score stands for maps back to the same score
    assert dice_to_score(score_to_agreement(s)) == s
    if d + 0.05 <= 1.0:
        assert dice_to_score(d + 0.05) >= s


def test_every_score_has_anchor_and_agreement():
    assert set(ANCHORS) == set(AGREEMENT) == set(SCORES)
    assert score_to_agreement(5) == 1.0
    assert [AGREEMENT[s] for s in SCORES] == sorted(AGREEMENT[s] for s in SCORES)


@pytest.mark.parametrize("bad", [0, 6, 2.5, "3"])
def test_bad_score_refused(bad):
    with pytest.raises(ValueError):
        score_to_agreement(bad)


def test_bad_dice_refused():
    with pytest.raises(ValueError):
        dice_to_score(1.5)
