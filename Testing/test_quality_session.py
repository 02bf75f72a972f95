"""The quality predictor in the rating session (issue 11): suggestions shown per region, A accepts
one as the person's rating (never over theirs), doubtful regions first, "confidently good"."""

from __future__ import annotations

import numpy as np
import pytest

from SCORERefineLib import session as S
from SCORERefineLib.errors import FeedbackError, InputError
from SCORERefineLib.feedback import CaseFeedback, load_feedback, save_feedback
from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.quality.ranking import _prediction
from SCORERefineLib.quality.suggestions import add_suggestions, suggestions_from_feedback


def _regions(labels=(1, 2, 3, 4)) -> Volume:
    arr = np.zeros((6, 8, 4 * len(labels)), dtype=np.int16)
    for i, k in enumerate(labels):
        arr[1:5, 2:6, 4 * i:4 * i + 3] = k
    return Volume(arr, Geometry.isotropic(arr.shape, (2.0, 1.0, 1.5)))


def _pred(region, probs, err=(0.2, 0.7, 0.1)):
    return _prediction(region, np.asarray(probs, float), np.asarray(err, float))


#: region 1 doubtful, 2 confidently 5, 3 fairly sure 2 under, 4 confidently 5
PREDS = {1: _pred(1, [0.2, 0.2, 0.2, 0.2, 0.2]), 2: _pred(2, [0, 0, 0, 0.02, 0.98]),
         3: _pred(3, [0.05, 0.7, 0.2, 0.05, 0.0]), 4: _pred(4, [0, 0, 0.01, 0.04, 0.95])}


@pytest.fixture
def session():
    s = S.RatingSession("case_000", _regions(), rater="dr_a", auto_advance=True)
    s.add_suggestions(PREDS)
    return s


def test_each_region_shows_its_suggestion_with_confidence(session):
    rows = {row.region: row for row in session.rows()}
    assert rows[3].suggestion == "2 under (confidence 0.70)"
    assert rows[2].suggestion.startswith("5 (confidence 0.98")
    session.go_to(3)
    assert "Suggested: 2 under (confidence 0.70); press A to accept" in session.status_text()
    # the model rater is marked as one and stays out of the person's ratings and the consensus
    assert session.feedback.is_model("suggested") and session.feedback.human_raters() == []
    assert session.feedback.consensus() == {}


def test_key_a_records_the_suggestion_as_the_persons_rating(session):
    session.go_to(3)
    assert S.command_for_key("A") == S.Command("accept_suggestion")
    assert session.handle_key("A")
    mine = session.feedback.raters["dr_a"][3]
    assert (mine.rater, mine.score, mine.error) == ("dr_a", 2, "under")
    assert session.feedback.consensus() == {3: (2.0, "under")}
    assert "suggestion accepted" in session.last_message
    assert session.undo() and session.rating(3) is None          # undoable like any key


def test_a_never_overwrites_a_rating_the_person_gave(session):
    session.go_to(3)
    session.handle_key("4")
    session.handle_key("O")                                      # the person says 4 over
    session.go_to(3)
    assert session.accept_suggestion() is None
    assert (session.rating(3).score, session.rating(3).error) == (4, "over")
    assert "is kept" in session.last_message
    # new suggestions later leave the person's rating alone too
    session.add_suggestions({3: _pred(3, [0.9, 0.1, 0, 0, 0])})
    assert (session.rating(3).score, session.rating(3).error) == (4, "over")


def test_no_suggestion_says_what_to_do():
    s = S.RatingSession("case_000", _regions(), rater="dr_a")
    assert s.accept_suggestion() is None and "Suggest" in s.last_message
    assert s.rating(s.current) is None


def test_a_person_named_like_the_model_is_refused(tmp_path):
    fb = CaseFeedback("case_000", [1, 2, 3, 4])
    add_suggestions(fb, PREDS)
    with pytest.raises(InputError, match="quality predictor"):
        S.RatingSession("case_000", _regions(), rater="suggested", feedback=fb)
    s = S.RatingSession("case_000", _regions(), rater="suggested")
    with pytest.raises(InputError, match="quality predictor"):
        s.add_suggestions(PREDS)


def test_doubtful_first_follows_entropy_and_says_when_the_rest_is_confidently_good(session):
    session.set_order("uncertainty")
    assert session.remaining_order() == [1, 3, 4, 2]             # by decreasing entropy
    session.go_to(2)
    assert session.next_unrated() == 1
    session.handle_key("3")
    session.handle_key("U")                                      # auto-advance: next doubtful
    assert session.current == 3
    assert session.confidence_note() == ""                       # region 3 is not good
    session.handle_key("2")
    session.handle_key("U")
    assert session.remaining_confidently_good()
    assert "remaining 2 regions are confidently good" in session.last_message
    assert "confidently good" in session.status_text()
    # in label order the same session goes by label
    session.set_order("regions")
    assert session.remaining_order() == [2, 4]


def test_order_and_suggestions_survive_the_scene_round_trip(session):
    session.set_order("uncertainty")
    again = S.RatingSession.from_json(session.to_json(), session.regions)
    assert again.order == "uncertainty"
    assert {r: p.score_probs for r, p in again.suggestions().items()} == \
        {r: p.score_probs for r, p in PREDS.items()}


def test_probabilities_are_kept_in_feedback_and_merged_with_their_ratings(tmp_path, session):
    path = tmp_path / "feedback.json"
    session.go_to(3)
    session.accept_suggestion()
    session.save_to_case(tmp_path)
    fb = load_feedback(path)
    assert sorted(fb.model_details["suggested"]) == [1, 2, 3, 4]
    assert suggestions_from_feedback(fb)[1].entropy == pytest.approx(np.log(5))
    # a person's later save without the suggestions keeps them on disk
    other = CaseFeedback("case_000", [1, 2, 3, 4])
    other.rate("dr_b", 1, 5, "none")
    save_feedback(other, path)
    fb = load_feedback(path)
    assert fb.model_details["suggested"][3]["score_probs"][1] == pytest.approx(0.7)
    assert fb.raters["dr_a"][3].score == 2 and fb.raters["dr_b"][1].score == 5


def test_broken_probabilities_are_one_clear_error():
    fb = CaseFeedback("case_000", [1, 2])
    add_suggestions(fb, {1: _pred(1, [0, 0, 0, 0, 1.0])})
    d = fb.to_dict()
    d["model_details"]["suggested"]["1"]["score_probs"] = [0.5, 0.5, 0.5, 0, 0]
    with pytest.raises(FeedbackError, match="5 probabilities summing to 1"):
        CaseFeedback.from_dict(d)
    d = fb.to_dict()
    d["model_details"]["dr_a"] = d["model_details"].pop("suggested")
    with pytest.raises(FeedbackError, match="not listed in 'model_raters'"):
        CaseFeedback.from_dict(d)
    plain = CaseFeedback("case_000", [1, 2])
    plain.rate("dr_a", 1, 5, "none")
    assert "model_details" not in plain.to_dict()
