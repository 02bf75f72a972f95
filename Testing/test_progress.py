import io
import json
import os
import signal

import pytest

from SCORERefineLib.errors import Cancelled
from SCORERefineLib.progress import CancelToken, Progress


def test_json_lines_progress():
    buf = io.StringIO()
    with Progress("train", total=4, mode="json", stream=buf) as p:
        for i in range(4):
            p.update(loss=1.0 / (i + 1))
    lines = [json.loads(l) for l in buf.getvalue().splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end"
    steps = [l for l in lines if l["event"] == "progress"]
    assert [l["step"] for l in steps] == [1, 2, 3, 4]
    assert all(l["stage"] == "train" and l["total"] == 4 for l in steps)
    assert steps[-1]["loss"] == pytest.approx(0.25)
    assert steps[-1]["eta"] == pytest.approx(0.0, abs=0.05)


def test_bar_and_none_modes_write_no_json():
    buf = io.StringIO()
    with Progress("x", total=2, mode="none", stream=buf) as p:
        p.update()
    assert buf.getvalue() == ""
    buf = io.StringIO()
    with Progress("x", total=2, mode="bar", stream=buf) as p:
        p.update(loss=0.5)
        p.update(2)
    assert "2/2" in buf.getvalue()
    with pytest.raises(ValueError):
        Progress("x", 1, mode="fancy")


def test_cancel_token_and_signal():
    tok = CancelToken()
    tok.raise_if_cancelled()
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        tok.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        assert tok.cancelled and "SIGTERM" in tok.reason
        with pytest.raises(Cancelled):
            tok.raise_if_cancelled()
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
