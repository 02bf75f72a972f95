"""The background training job: progress parsing, finish, failure with log, and cancel of the
whole process tree on real subprocesses (a fake trainer that prints JSON lines and spawns a child)."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
import time

import pytest

from SCORERefineLib import training_job as tj
from SCORERefineLib.errors import InputError

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group tests are POSIX")

FAKE = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time
    mode, ckpt, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def emit(**kw):
        print(json.dumps(kw), flush=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    emit(event="child", pid=child.pid)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(signum, frame):
            open(ckpt, "w").write("checkpoint")
            print("cancelled; checkpoint saved", file=sys.stderr, flush=True)
            os._exit(130)
        signal.signal(signal.SIGTERM, on_term)
    emit(stage="train", step=0, total=total, event="start")
    print("plain log line", flush=True)
    for step in range(1, total + 1):
        time.sleep(0.02 if mode in ("ok", "fail") else 0.2)
        emit(stage="train", step=step, total=total, loss=1.0 / step, eta=0.1 * (total - step), event="progress")
        if mode == "fail" and step == 2:
            print("scorerefine train: error: no rated region in dataset", file=sys.stderr, flush=True)
            child.kill()
            sys.exit(2)
    emit(stage="train", step=total, total=total, event="end")
    child.kill()
''')


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE)
    return script


def _job(fake, tmp_path, mode, total=5, **kw):
    ckpt = tmp_path / "model.pt"
    cmd = [sys.executable, str(fake), mode, str(ckpt), str(total)]
    return tj.TrainingJob(cmd, tmp_path / "train.log", checkpoint=ckpt, **kw)


def _wait_for_child(job, timeout=20.0):
    """Poll until the fake trainer reported its child's PID and one step; returns the PID."""
    end, pid = time.monotonic() + timeout, None
    while time.monotonic() < end:
        for rec in job.poll():
            if rec.get("event") == "child":
                pid = rec["pid"]
        if pid is not None and job.progress.step >= 1:
            return pid
        time.sleep(0.02)
    return None


def test_parse_progress_line():
    rec = tj.parse_progress_line('{"stage": "train", "step": 3, "total": 10, "loss": 0.5, "eta": 1.5, "event": "progress"}')
    assert rec["step"] == 3 and rec["loss"] == 0.5
    for line in ("plain text", "{not json}", "[1, 2]", '{"unrelated": 1}', ""):
        assert tj.parse_progress_line(line) is None


def test_train_command_and_environment(tmp_path):
    (tmp_path / "ds" / "cases").mkdir(parents=True)
    cmd = tj.train_command(tmp_path / "ds", tmp_path / "m.pt", "score", 20, "cpu", python=["py"])
    assert cmd[:4] == ["py", "-m", "SCORERefineLib.cli", "train"]
    assert cmd[cmd.index("--progress") + 1] == "json" and cmd[cmd.index("--steps") + 1] == "20"
    assert cmd[cmd.index("--device") + 1] == "cpu" and cmd[cmd.index("--mode") + 1] == "score"
    assert tj.python_command() == [sys.executable]          # outside Slicer
    env = tj.engine_environment({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tj._LIB_ROOT) and "/x" in env["PYTHONPATH"]
    with pytest.raises(InputError, match="not a SCORERefine dataset"):
        tj.train_command(tmp_path / "nowhere", tmp_path / "m.pt")
    with pytest.raises(InputError, match="mode"):
        tj.train_command(tmp_path / "ds", tmp_path / "m.pt", mode="fast")
    with pytest.raises(InputError, match="at least 1"):
        tj.train_command(tmp_path / "ds", tmp_path / "m.pt", steps=0)


def test_progress_is_parsed_and_job_finishes(fake, tmp_path):
    job = _job(fake, tmp_path, "ok", total=5)
    assert job.state == tj.IDLE
    job.start()
    assert job.state == tj.RUNNING
    seen = []
    end = time.monotonic() + 30
    while job.running and time.monotonic() < end:
        seen += job.poll()
        time.sleep(0.02)
    assert job.state == tj.FINISHED and job.returncode == 0
    steps = [r["step"] for r in seen if r.get("event") == "progress"]
    assert steps == [1, 2, 3, 4, 5]
    assert job.progress.fraction == 1.0 and job.progress.loss == pytest.approx(0.2)
    assert "step 5/5" in job.status_text()
    log = (tmp_path / "train.log").read_text()
    assert "plain log line" in log and '"step": 3' in log and "finished" in log


def test_failure_goes_to_failed_with_the_error_and_the_log(fake, tmp_path):
    job = _job(fake, tmp_path, "fail", total=10).start()
    assert job.wait(timeout=30) == tj.FAILED
    assert job.returncode == 2
    assert "no rated region" in job.error_message and str(tmp_path / "train.log") in job.error_message
    assert "no rated region" in (tmp_path / "train.log").read_text()
    assert job.progress.step == 2


@pytest.mark.parametrize("mode", ["cooperative", "stubborn"])
def test_cancel_ends_the_whole_process_tree(fake, tmp_path, mode, request):
    job = _job(fake, tmp_path, mode, total=500, kill_timeout=1.0).start()
    child = {"pid": _wait_for_child(job)}
    assert child["pid"] is not None, "the fake trainer did not start"
    parent = job.pid
    request.addfinalizer(lambda: [os.kill(p, 9) for p in (parent, child["pid"]) if tj.pid_alive(p)])
    assert tj.pid_alive(parent) and tj.pid_alive(child["pid"])
    t0 = time.monotonic()
    job.cancel()
    assert job.cancel_requested and job.status_text() == "stopping..."
    assert job.wait(timeout=20) == tj.CANCELLED
    assert time.monotonic() - t0 < 15
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (tj.pid_alive(parent) or tj.pid_alive(child["pid"])):
        time.sleep(0.05)
    assert not tj.pid_alive(parent), "the training process survived cancel"
    assert not tj.pid_alive(child["pid"]), "the trainer's child process survived cancel"
    log = (tmp_path / "train.log").read_text()
    assert "cancel requested" in log and "cancelled" in log
    if mode == "cooperative":   # SIGTERM first: the trainer saved its checkpoint
        assert (tmp_path / "model.pt").read_text() == "checkpoint"
        assert job.returncode == tj.EXIT_CANCELLED and "checkpoint is kept" in job.error_message
    else:                       # SIGTERM ignored: SIGKILL after the timeout
        assert job.returncode == -9


class FakeProcess:
    """An injected runner's process: scripted output, no real process (like SlicerNNUnet's tests)."""

    def __init__(self, lines, code):
        self.stdout = io.StringIO("".join(line + "\n" for line in lines))
        self.pid = 999999
        self.code = code

    def wait(self):
        return self.code


def test_injected_runner_drives_the_job_without_a_process(tmp_path):
    lines = [json.dumps({"stage": "train", "step": s, "total": 3, "loss": 0.1 * s, "event": "progress"})
             for s in (1, 2, 3)]
    calls = []

    def runner(cmd, env=None, cwd=None):
        calls.append((cmd, env))
        return FakeProcess(lines + ["done"], 0)
    job = tj.TrainingJob(["scorerefine", "train", "ds", "--out", str(tmp_path / "m.pt")],
                         tmp_path / "log.txt", runner=runner, env={"A": "1"})
    assert job.checkpoint == tmp_path / "m.pt"
    job.start()
    assert job.wait(timeout=5) == tj.FINISHED
    assert calls[0][1] == {"A": "1"} and job.progress.step == 3 and job.progress.percent == 100

    def broken(cmd, env=None, cwd=None):
        raise FileNotFoundError("PythonSlicer not found")
    bad = tj.TrainingJob(["x"], tmp_path / "log2.txt", runner=broken).start()
    assert bad.state == tj.FAILED and "could not start" in bad.error_message


def test_cancel_of_the_real_trainer_keeps_its_checkpoint(tmp_path):
    """Against the real `scorerefine train`: SIGTERM makes it save a checkpoint and exit 130."""
    import numpy as np

    from SCORERefineLib.case import write_case
    from SCORERefineLib.imageio import Geometry, Volume
    from SCORERefineLib.regions import RegionParams, make_regions
    from SCORERefineLib.session import RatingSession

    from conftest import ellipsoid

    geom = Geometry.isotropic((20, 24, 24), (2.0, 1.0, 1.0))
    mask = Volume(ellipsoid((20, 24, 24), (6, 8, 8)), geom)
    image = mask.with_array(np.where(np.roll(mask.array, 1, axis=2) == 1, 900, -50).astype(np.int16))
    regions = make_regions(mask, RegionParams("slabs", 3, 3.0))
    case = write_case(tmp_path / "ds", "c0", image, mask, regions)
    sess = RatingSession("c0", regions, rater="dr_a")
    for _ in sess.labels:
        for key in ("2", "U", "N"):
            sess.handle_key(key)
    sess.save_to_case(case.folder)
    out = tmp_path / "model.pt"
    job = tj.start_training(tmp_path / "ds", out, steps=100000, device="cpu",
                            extra=["--network", "tiny", "--patch", "16", "16", "16", "--batch", "1",
                                   "--checkpoint-every", "0"])
    end = time.monotonic() + 120
    while job.running and job.progress.step < 2 and time.monotonic() < end:
        job.poll()
        time.sleep(0.05)
    assert job.running and job.progress.step >= 2, job.error_message or job.tail
    pid = job.pid
    job.cancel()
    assert job.wait(timeout=60) == tj.CANCELLED
    assert job.returncode == tj.EXIT_CANCELLED and out.exists() and not tj.pid_alive(pid)
    assert "checkpoint is kept" in job.error_message and "SIGTERM" in job.log_path.read_text()


def test_device_shown_in_the_panel():
    """The panel's device line: CUDA device names when there are GPUs, else the CPU."""
    import types

    from SCORERefineLib import device_info as di

    def fake_torch(names):
        cuda = types.SimpleNamespace(is_available=lambda: bool(names), device_count=lambda: len(names),
                                     get_device_name=lambda i: names[i])
        return types.SimpleNamespace(cuda=cuda, __version__="2.9.0", get_num_threads=lambda: 8)

    gpu = di.probe(fake_torch(["NVIDIA H100", "NVIDIA A100"]))
    assert di.describe("auto", gpu) == "CUDA 0: NVIDIA H100 (torch 2.9.0)"
    assert di.describe("cuda:1", gpu).startswith("CUDA 1: NVIDIA A100")
    assert "does not exist" in di.describe("cuda:5", gpu)
    assert di.describe("cpu", gpu).startswith("CPU (8 threads")
    assert di.choices(gpu) == ["auto", "cpu", "cuda:0", "cuda:1"]
    cpu = di.probe(fake_torch([]))
    assert di.describe("auto", cpu).startswith("CPU") and "not available" in di.describe("cuda", cpu)
    assert "PyTorch extension" in di.describe("auto", di.DeviceInfo(False))
    real = di.probe()                                   # this machine's torch
    assert real.torch_installed and di.describe("auto", real)
