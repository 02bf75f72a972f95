"""feedback.json: schema, validation messages, atomic merge-save, consensus."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from SCORERefineLib import feedback as fbmod
from SCORERefineLib.calibration import ANCHORS
from SCORERefineLib.errors import FeedbackError
from SCORERefineLib.feedback import (ERROR_TYPES, FORMAT, SCHEMA_VERSION, CaseFeedback, Rating,
                                     load_feedback, rating_summary, save_feedback)

T = "2026-11-22T19:00:00Z"
INFO = {"method": "patches", "n_regions": 12, "band_mm": 3.0}


def make_fb(raters=("dr_a",), labels=(1, 2, 3)) -> CaseFeedback:
    fb = CaseFeedback("case_000", list(labels), dict(INFO))
    for i, name in enumerate(raters):
        fb.rate(name, 1, 4, "over", seconds=3.0 + i, rated_at=T)
        fb.rate(name, 2, 5, "none", seconds=2.0, rated_at=T)
    return fb


def write_json(path, data):
    path.write_text(json.dumps(data, indent=1))
    return path


# ------------------------------------------------------------------------- schema


def test_layout_matches_the_documented_schema():
    d = make_fb().to_dict()
    assert d["format"] == FORMAT == "scorerefine-feedback" and d["version"] == SCHEMA_VERSION == 1
    assert d["case_id"] == "case_000"
    assert d["scale"] == {"min": 1, "max": 5, "anchors": {str(k): v for k, v in ANCHORS.items()}}
    assert d["regions"] == {"labels": [1, 2, 3], **INFO}
    assert d["raters"] == {"dr_a": [
        {"region": 1, "score": 4, "error": "over", "rated_at": T, "seconds": 3.0},
        {"region": 2, "score": 5, "error": "none", "rated_at": T, "seconds": 2.0}]}


ratings_st = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
    st.dictionaries(st.integers(1, 30),
                    st.tuples(st.integers(1, 5), st.sampled_from(("over", "under")),
                              st.floats(0, 1e4, allow_nan=False, allow_infinity=False),
                              st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2999, 12, 31),
                                           timezones=st.just(timezone.utc))),
                    max_size=8),
    max_size=4)


@settings(max_examples=40, deadline=None)
@given(raters=ratings_st, labels_extra=st.sets(st.integers(31, 60), max_size=5))
def test_round_trip_through_json(raters, labels_extra):
    fb = CaseFeedback("case_x", list(range(1, 31)) + sorted(labels_extra), dict(INFO))
    for name, regs in raters.items():
        for region, (score, err, secs, when) in regs.items():
            fb.rate(name, region, score, "none" if score == 5 else err, seconds=secs,
                    rated_at=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    back = CaseFeedback.from_dict(json.loads(json.dumps(fb.to_dict())))
    assert back == fb
    assert back.ratings() == fb.ratings()


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,match", [
    (dict(region=9), r"rater 'dr_a', region 9: unknown region 9"),
    (dict(score=6), r"score 6 is out of range 1..5"),
    (dict(score=0), r"score 0 is out of range 1..5"),
    (dict(score=3.5), r"score 3.5 is not an integer"),
    (dict(score=True), r"not an integer"),
    (dict(error="both"), r"unknown error type 'both'"),
    (dict(score=3, error="none"), r"score 3 says there is an error but the error type is 'none'"),
    (dict(score=5, error="over"), r"score 5 means no visible error, but the error type is 'over'"),
    (dict(seconds=-1.0), r"seconds -1.0 must be a time >= 0"),
    (dict(rated_at="yesterday"), r"bad timestamp rated_at='yesterday'"),
    (dict(rated_at="2026-13-45T19:00:00Z"), r"not a real date"),
    (dict(rater="dr a"), r"rater name 'dr a' is not valid"),
])
def test_rate_refuses_invalid_ratings(kwargs, match):
    fb = make_fb(raters=())
    args = dict(rater="dr_a", region=1, score=3, error="under", seconds=1.0, rated_at=T)
    args.update(kwargs)
    with pytest.raises(FeedbackError, match=match):
        fb.rate(**args)
    assert fb.raters == {}


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["raters"]["dr_a"][0].update(region=7), r"rater 'dr_a', region 7: unknown region"),
    (lambda d: d["raters"]["dr_a"][0].update(score=9), r"rater 'dr_a', region 1: score 9 is out"),
    (lambda d: d["raters"]["dr_a"][0].update(score="4"), r"score '4' is not an integer"),
    (lambda d: d["raters"]["dr_a"][0].update(error="over-ish"), r"unknown error type 'over-ish'"),
    (lambda d: d["raters"]["dr_a"][0].update(error="none"), r"error type is 'none'"),
    (lambda d: d["raters"]["dr_a"][1].update(error="under"), r"region 2: score 5 means no visible"),
    (lambda d: d["raters"]["dr_a"][0].update(seconds=-2), r"seconds -2 must be a time >= 0"),
    (lambda d: d["raters"]["dr_a"][0].update(rated_at="22/11/2026"), r"bad timestamp"),
    (lambda d: d["raters"]["dr_a"][0].pop("score"), r"region 1: missing score"),
    (lambda d: d["raters"]["dr_a"].append(dict(d["raters"]["dr_a"][0])), r"rated twice"),
    (lambda d: d.update(format="something-else"), r"not a SCORERefine feedback file"),
    (lambda d: d.update(version=2), r"version 2 was written by a newer SCORERefine.*upgrade"),
    (lambda d: d.update(version="1"), r"bad version '1'"),
    (lambda d: d["scale"].update(max=10), r"not the 1-5 scale"),
    (lambda d: d["regions"].update(labels=[1, 1, 2]), r"distinct integers"),
    (lambda d: d.pop("regions"), r"missing 'regions'"),
])
def test_load_names_file_rater_region_and_problem(tmp_path, edit, match):
    d = make_fb().to_dict()
    edit(d)
    path = write_json(tmp_path / "feedback.json", d)
    before = path.read_bytes()
    with pytest.raises(FeedbackError, match=match) as info:
        load_feedback(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before                       # load never modifies the file


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "feedback.json"
    path.write_text('{\n "format": "scorerefine-feedback",\n "version": 1,,\n}')
    with pytest.raises(FeedbackError, match=r"feedback.json: JSON syntax error at line 3, column 15"):
        load_feedback(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FeedbackError, match="feedback file not found.*Rate the case first"):
        load_feedback(tmp_path / "nope.json")


# ------------------------------------------------------------------------- saving


def test_save_then_load_round_trip(tmp_path):
    fb = make_fb(raters=("dr_a", "dr_b"))
    path = tmp_path / "case_000" / "feedback.json"
    save_feedback(fb, path)
    assert load_feedback(path) == fb
    assert [p.name for p in path.parent.iterdir()] == ["feedback.json"]


def test_merge_keeps_other_raters_and_new_ratings_win(tmp_path):
    path = tmp_path / "feedback.json"
    save_feedback(make_fb(raters=("dr_a", "dr_b")), path)
    mine = CaseFeedback("case_000", [1, 2, 3], dict(INFO))
    mine.rate("dr_a", 3, 2, "under", rated_at=T)         # dr_a re-rated: only region 3 now
    mine.rate("simulated", 1, 1, "over", rated_at=T)
    save_feedback(mine, path)
    disk = load_feedback(path)
    assert sorted(disk.raters) == ["dr_a", "dr_b", "simulated"]
    assert list(disk.raters["dr_a"]) == [3]                # fb's ratings win for dr_a
    assert disk.raters["dr_b"] == make_fb(raters=("dr_a", "dr_b")).raters["dr_b"]


def test_merge_refuses_other_case_or_changed_regions(tmp_path):
    path = tmp_path / "feedback.json"
    save_feedback(make_fb(), path)
    before = path.read_bytes()
    with pytest.raises(FeedbackError, match="belongs to case 'case_000', not 'case_001'"):
        save_feedback(CaseFeedback("case_001", [1, 2, 3]), path)
    with pytest.raises(FeedbackError, match="regions changed since rating"):
        save_feedback(CaseFeedback("case_000", [1, 2, 3, 4]), path)
    assert path.read_bytes() == before


def test_concurrent_savers_do_not_lose_each_other(tmp_path, monkeypatch):
    """dr_b saves while dr_a's save has read the disk but not yet written: without the lock
    dr_a's write would drop dr_b."""
    path = tmp_path / "feedback.json"
    save_feedback(make_fb(raters=("dr_0",)), path)
    inside = threading.Event()
    original = fbmod._atomic_write_json

    def slow_write(data, target):
        if "dr_a" in data["raters"] and not inside.is_set():
            inside.set()
            time.sleep(0.3)
        original(data, target)

    monkeypatch.setattr(fbmod, "_atomic_write_json", slow_write)
    a = threading.Thread(target=save_feedback, args=(make_fb(raters=("dr_a",)), path))
    a.start()
    assert inside.wait(5)
    save_feedback(make_fb(raters=("dr_b",)), path)
    a.join()
    assert sorted(load_feedback(path).raters) == ["dr_0", "dr_a", "dr_b"]


def test_corrupt_file_is_reported_and_left_byte_identical(tmp_path):
    path = tmp_path / "feedback.json"
    path.write_bytes(b'{"format": "scorerefine-feedback", "version": 1, "raters": {')
    before = path.read_bytes()
    with pytest.raises(FeedbackError, match=r"invalid and was NOT overwritten.*line 1.*move it aside"):
        save_feedback(make_fb(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["feedback.json"]


@pytest.mark.parametrize("where", ["json.dumps", "os.replace", "os.fsync"])
def test_crash_mid_write_keeps_the_old_file_and_no_temp_files(tmp_path, monkeypatch, where):
    path = tmp_path / "feedback.json"
    save_feedback(make_fb(raters=("dr_a",)), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):  # os.fsync: the temp file is written but not yet renamed
        raise OSError("disk on fire")

    module, name = where.split(".")
    monkeypatch.setattr({"json": json, "os": os}[module], name, crash)
    with pytest.raises(OSError, match="disk on fire"):
        save_feedback(make_fb(raters=("dr_b",)), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["feedback.json"]
    assert sorted(load_feedback(path).raters) == ["dr_a"]


# ------------------------------------------------------------------------- consensus


def test_consensus_rules():
    fb = CaseFeedback("c", [1, 2, 3, 4, 5, 6])
    for rater, region, score, err in [
        ("a", 1, 5, "none"), ("b", 1, 5, "none"),                        # all none -> none
        ("a", 2, 5, "none"), ("b", 2, 3, "under"),                       # one error beats none
        ("a", 3, 4, "over"), ("b", 3, 2, "under"), ("c", 3, 4, "over"),  # majority over
        ("a", 4, 4, "over"), ("b", 4, 2, "under"),                       # tie -> lowest score's
        ("a", 5, 3, "over"), ("b", 5, 3, "under"),                       # full tie -> over
    ]:
        fb.rate(rater, region, score, err, rated_at=T)
    c = fb.consensus()
    assert c == {1: (5.0, "none"), 2: (4.0, "under"), 3: (pytest.approx(10 / 3), "over"),
                 4: (3.0, "under"), 5: (3.0, "over")}
    assert 6 not in c                                     # unrated regions have no target


def test_unrate_ratings_and_summary():
    fb = make_fb(raters=("dr_a", "dr_b"))
    assert [(r.rater, r.region) for r in fb.ratings()] == [("dr_a", 1), ("dr_a", 2), ("dr_b", 1), ("dr_b", 2)]
    assert isinstance(fb.ratings("dr_a")[0], Rating)
    np_fb = CaseFeedback("c", list(np.array([3, 1, 2])))      # numpy integers are accepted
    np_fb.rate("x", np.int64(2), np.int64(3), "under", seconds=np.float32(1.5), rated_at=T)
    assert np_fb.region_labels == [1, 2, 3] and type(np_fb.raters["x"][2].score) is int
    assert json.loads(json.dumps(np_fb.to_dict()))["raters"]["x"][0]["seconds"] == 1.5
    fb.unrate("dr_b", 1)
    fb.unrate("dr_b", 2)
    fb.unrate("nobody", 1)
    assert list(fb.raters) == ["dr_a"]
    text = rating_summary(fb)
    assert "dr_a: 2/3 rated, mean 4.50" in text and "1:4o 2:5" in text
    assert set(ERROR_TYPES) == {"over", "under", "none"}


def test_atomic_write_leaves_no_temp_on_success(tmp_path):
    path = tmp_path / "feedback.json"
    for _ in range(3):
        save_feedback(make_fb(), path)
    assert os.listdir(tmp_path) == ["feedback.json"]
