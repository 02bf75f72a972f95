"""The Qt-free rating session the Slicer panel binds to: keys, navigation, undo, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SCORERefineLib import session as S
from SCORERefineLib.case import write_case
from SCORERefineLib.errors import FeedbackError, InputError
from SCORERefineLib.feedback import load_feedback
from SCORERefineLib.imageio import Geometry, Volume


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _regions(labels=(1, 2, 3, 5)) -> Volume:
    arr = np.zeros((6, 8, 4 * len(labels)), dtype=np.int16)
    for i, k in enumerate(labels):
        arr[1:5, 2:6, 4 * i:4 * i + 3] = k
    return Volume(arr, Geometry.isotropic(arr.shape, (2.0, 1.0, 1.5), origin=(5.0, -3.0, 1.0)))


@pytest.fixture
def session():
    return S.RatingSession("case_000", _regions(), rater="dr_a", clock=Clock())


def test_key_map_is_a_pure_function_of_the_key():
    for s in range(1, 6):
        assert S.command_for_key(str(s)) == S.Command("rate", s)
    assert S.command_for_key("o") == S.command_for_key("O") == S.Command("mark_over")
    assert S.command_for_key("u") == S.command_for_key("U") == S.Command("mark_under")
    for key in ("n", "N", " ", "Space"):
        assert S.command_for_key(key) == S.Command("next_unrated")
    for key in ("6", "0", "x", "", "Escape", None):
        assert S.command_for_key(key) is None


def test_scores_and_marks_are_recorded_in_either_order(session):
    events = []
    session.add_observer(lambda ev, s: events.append((ev, s.current)))
    assert session.current == 1
    session.handle_key("5")                       # 5 = no error: recorded at once
    r = session.rating(1)
    assert (r.score, r.error, r.rater) == (5, "none", "dr_a")
    session.go_to(2)
    session.handle_key("3")                       # 3 waits for O/U
    assert session.rating(2) is None and session.needs_error()
    assert session.rows()[1].cells[2] == "needs O/U"
    session.handle_key("u")
    assert (session.rating(2).score, session.rating(2).error) == (3, "under")
    session.go_to(3)
    session.handle_key("O")                       # mark first, then score
    assert session.rating(3) is None and session.error_of(3) == "over"
    session.handle_key("2")
    assert (session.rating(3).score, session.rating(3).error) == (2, "over")
    session.handle_key("O")                       # pressing O again keeps the rating
    assert (session.rating(3).score, session.rating(3).error) == (2, "over")
    session.handle_key("U")                       # the other mark switches it
    assert session.rating(3).error == "under"
    assert ("rating", 1) in events and ("current", 2) in events
    assert session.handle_key("x") is False


def test_a_mark_on_a_five_asks_for_a_new_score(session):
    session.rate(5)
    session.mark_over()
    assert session.rating(1) is None and session.score_of(1) is None and session.error_of(1) == "over"
    session.rate(4)
    assert (session.rating(1).score, session.rating(1).error) == (4, "over")
    session.rate(5)                               # 5 drops the mark
    assert (session.rating(1).score, session.rating(1).error) == (5, "none")


def test_next_unrated_order_wraps_and_reports_all_rated(session):
    events = []
    session.add_observer(lambda ev, s: events.append(ev))
    session.go_to(3)
    session.rate(5)
    assert session.next_unrated() == 5            # after 3 comes 5
    session.rate(5)
    assert session.next_unrated() == 1            # wraps to the start
    session.rate(5)
    assert session.next_unrated() == 2
    session.rate(5)
    assert session.all_rated
    assert session.next_unrated() is None and events[-1] == S.EVENT_ALL_RATED
    assert session.next() == 3 and session.previous() == 2
    with pytest.raises(InputError, match="no region 4"):
        session.go_to(4)


def test_undo_restores_previous_rating_and_region(session):
    session.rate(5)
    session.go_to(2)
    session.rate(2)
    session.mark_over()
    session.rate(3)                                   # replaces (2, over) with (3, over)
    assert session.rating(2).score == 3
    session.go_to(5)
    assert session.undo() and session.current == 2 and session.rating(2).score == 2
    assert session.undo() and session.rating(2) is None and session.score_of(2) == 2
    assert session.undo() and session.score_of(2) is None
    assert session.undo() and session.current == 1 and session.rating(1) is None
    assert session.undo() is False


def test_rating_validation_errors_come_from_feedback(session):
    with pytest.raises(FeedbackError, match="out of range"):
        session.rate(7)
    with pytest.raises(FeedbackError, match="not an integer"):
        session.rate("3")
    assert session.rating(1) is None and not session.can_undo
    with pytest.raises(FeedbackError, match="rater name"):
        S.RatingSession("c", _regions(), rater="dr a?").rate(5)
    with pytest.raises(InputError, match="no region"):
        S.RatingSession("c", Volume(np.zeros((3, 3, 3), np.int16), Geometry.isotropic((3, 3, 3))))


def test_time_spent_is_recorded(session):
    clock = session._clock
    clock.t += 4.5
    session.rate(5)
    assert session.rating(1).seconds == pytest.approx(4.5)


def test_rows_and_centres_for_the_panel(session):
    session.rate(5)
    rows = session.rows()
    assert [r.region for r in rows] == [1, 2, 3, 5] and [r.number for r in rows] == [1, 2, 3, 4]
    assert rows[0].rated and rows[0].current and rows[0].score == 5 and rows[0].cells[3] == "yes"
    assert not rows[1].rated and rows[1].voxels == 4 * 4 * 3
    z, y, x = session.centre(5)
    assert session.regions.array[z, y, x] == 5
    ras = session.centre_ras(5)
    lps = session.regions.geometry.index_to_physical((z, y, x))
    assert ras == pytest.approx((-lps[0], -lps[1], lps[2]))
    assert "1 of 4 rated" in session.status_text()
    assert session.region_at_ras(ras) == 5
    assert session.region_at_ras((-1e4, 0.0, 0.0)) is None
    zero = tuple(int(v) for v in np.argwhere(session.regions.array == 0)[0])
    lps0 = session.regions.geometry.index_to_physical(zero)
    assert session.region_at_ras((-lps0[0], -lps0[1], lps0[2])) is None


def test_json_round_trip_keeps_ratings_pending_input_and_current(session):
    session.rate(5)
    session.go_to(2)
    session.rate(4)
    session.mark_under()
    session.go_to(3)
    session.rate(2)                                    # pending: needs O/U
    text = session.to_json()
    json.loads(text)
    back = S.RatingSession.from_json(text, _regions())
    assert back.current == 3 and back.rater == "dr_a"
    assert back.feedback.to_dict() == session.feedback.to_dict()
    assert back.score_of(3) == 2 and back.needs_error(3)
    back.mark_over()
    assert back.rating(3).error == "over"
    with pytest.raises(FeedbackError, match="regions now hold"):
        S.RatingSession.from_json(text, _regions((1, 2, 3)))
    with pytest.raises(FeedbackError, match="not valid JSON"):
        S.RatingSession.from_json("{oops", _regions())


def test_persistence_round_trip_to_the_case_folder(tmp_path):
    regions = _regions()
    image = Volume(np.zeros(regions.array.shape, np.float32), regions.geometry)
    initial = regions.with_array((regions.array > 0).astype(np.uint8))
    case = write_case(tmp_path / "ds", "case_007", image, initial, regions)
    s1 = S.RatingSession.from_case(case, rater="dr_a", clock=Clock())
    s1.rate(5)
    s1.go_to(3)
    s1.rate(1)
    s1.mark_over()
    path = s1.save_to_case(case.folder)
    on_disk = load_feedback(path)
    assert {(r.region, r.score, r.error) for r in on_disk.ratings("dr_a")} == {(1, 5, "none"), (3, 1, "over")}
    # a second rater saves too: the first one's ratings are kept (merge)
    s2 = S.RatingSession.from_case(case, rater="dr_b", clock=Clock())
    assert s2.current == 1 and s2.rating(1) is None
    s2.rate(4)
    s2.mark_under()
    s2.save_to_case(case.folder)
    merged = load_feedback(path)
    assert sorted(merged.raters) == ["dr_a", "dr_b"]
    # reopening as dr_a starts at dr_a's first unrated region, ratings intact
    s3 = S.RatingSession.from_case(case, rater="dr_a")
    assert s3.current == 2 and s3.rating(3).score == 1
    assert S.next_case_to_rate(tmp_path / "ds", "dr_a") is not None
    for k in (2, 5):
        s3.go_to(k)
        s3.rate(5)
    s3.save_to_case(case.folder)
    assert S.next_case_to_rate(tmp_path / "ds", "dr_a") is None
    assert S.next_case_to_rate(tmp_path / "ds", "dr_c").case_id == "case_007"


def test_rename_case_before_saving(session, tmp_path):
    session.rate(5)
    session.rename_case("case_042")
    assert session.case_id == session.feedback.case_id == "case_042"
    assert S.RatingSession.from_json(session.to_json(), _regions()).case_id == "case_042"
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(InputError, match="cannot be a folder name"):
            session.rename_case(bad)


def test_defect7_one_key_per_obvious_region_auto_advance_and_no_unrate(session):
    """Score 5 = one key, score + O/U = two keys; both advance to the next unrated region;
    pressing O/U again never un-rates; every key says what it did."""
    session.auto_advance = True
    labels = session.labels
    session.handle_key("5")
    assert session.current == labels[1] and "rated 5" in session.last_message
    session.handle_key("3")
    assert session.current == labels[1] and "press O" in session.last_message
    session.handle_key("U")
    assert session.rating(labels[1]).error == "under" and session.current == labels[2]
    session.go_to(labels[1])
    session.handle_key("U")                       # again: still rated, not cleared
    assert session.rating(labels[1]).error == "under" and session.rating(labels[1]).score == 3
    assert session.handle_key("x") is False and "not a rating key" in session.last_message
    while not session.all_rated:
        session.handle_key("5")
    assert "all" in session.last_message.lower()
