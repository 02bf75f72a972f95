"""Atomic writes: complete or untouched, and readable like an ordinary write."""

import os
import stat

import pytest

from SCORERefineLib.atomicio import atomic_path, atomic_write_text


def test_new_file_gets_umask_mode_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "feedback.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "feedback.json").stat().st_mode) == 0o644


def test_existing_file_keeps_its_mode(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_failure_leaves_target_and_no_temporary(tmp_path):
    target = tmp_path / "m.txt"
    target.write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"]
