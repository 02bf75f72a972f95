"""Run an engine command in the background and follow it: training, refinement, TotalSegmentator.

The Slicer panel must stay responsive while the refiner trains, refines or TotalSegmentator runs,
so each runs in its own process (``scorerefine train|refine ... --progress json``, or the
TotalSegmentator command). A :class:`BackgroundJob` starts it (through an injectable *runner*, so tests can drive it),
reads its output on a thread into a queue, and :meth:`BackgroundJob.poll` (called by the panel's
QTimer, or by a loop) drains that queue: JSON lines update the progress, every line goes to the
log file. :meth:`BackgroundJob.cancel` ends the whole process tree: SIGTERM to the process group
first (the trainer then saves a checkpoint and exits), SIGKILL after a timeout; on Windows
``taskkill /T`` (or psutil when installed).

States: ``idle`` -> ``running`` -> ``finished`` | ``failed`` | ``cancelled``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import InputError, TrainingError

IDLE, RUNNING, FINISHED, FAILED, CANCELLED = "idle", "running", "finished", "failed", "cancelled"
STATES = (IDLE, RUNNING, FINISHED, FAILED, CANCELLED)
#: exit status of ``scorerefine`` after a cancel (SIGINT/SIGTERM): the checkpoint was saved
EXIT_CANCELLED = 130

_LIB_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- commands

def python_command() -> list[str]:
    """The Python to run the engine with: PythonSlicer inside the Slicer application (found on
    its PATH, beside the executable), else this interpreter."""
    in_slicer = hasattr(sys.modules.get("slicer"), "app")
    if in_slicer:
        exe = Path(sys.executable)
        for cand in (exe.parent / "PythonSlicer", exe.parent / "PythonSlicer.exe"):
            if cand.exists():
                return [str(cand)]
        found = shutil.which("PythonSlicer")
        if found:
            return [found]
    return [sys.executable]


def engine_command(*args: str, python: Optional[Sequence[str]] = None) -> list[str]:
    """``python -m SCORERefineLib.cli <args>`` with the engine's Python."""
    return [*(python or python_command()), "-m", "SCORERefineLib.cli", *[str(a) for a in args]]


def refine_command(image: str | os.PathLike, mask: str | os.PathLike, out: str | os.PathLike,
                   model: str | os.PathLike, device: str = "auto",
                   python: Optional[Sequence[str]] = None,
                   also: Sequence[str | os.PathLike] = (), tta: bool = True) -> list[str]:
    """``scorerefine refine --image CT --mask MASK --out OUT --model M [--also-model A ...]
    [--no-tta] --progress json``; ``also``: more checkpoints to average with ``model`` (an
    ensemble); ``tta=False``: one network pass per window instead of the mean over its 16 views
    (faster, ``--no-tta``)."""
    extra = [a for path in also for a in ("--also-model", str(path))]
    if not tta:
        extra.append("--no-tta")
    return engine_command("refine", "--image", str(image), "--mask", str(mask), "--out", str(out),
                          "--model", str(model), *extra, "--device", str(device or "auto"),
                          "--progress", "json", python=python)


def engine_environment(base: Optional[dict] = None) -> dict:
    """The environment for the child: the engine importable, output unbuffered."""
    env = dict(os.environ if base is None else base)
    paths = [str(_LIB_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_progress_line(line: str) -> Optional[dict]:
    """The JSON progress record of one output line, or None for plain log text."""
    text = line.strip()
    if not text.startswith("{") or not text.endswith("}"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not ({"event", "stage", "step"} & set(record)):
        return None
    return record


# ---------------------------------------------------------------------------- processes

def popen_runner(command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None):
    """Start ``command`` in its own process group/session, stdout+stderr merged, text lines."""
    kwargs: dict = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        text=True, bufsize=1, env=env, cwd=cwd, encoding="utf-8", errors="replace")
    if os.name == "nt":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(list(command), **kwargs)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            return state not in ("Z", "X")
        except (OSError, IndexError):
            return False
    if os.name == "nt":
        try:
            import psutil  # type: ignore
            return psutil.pid_exists(pid)
        except ImportError:
            out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True)
            return str(pid) in out.stdout
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` (recursive), psutil when available, else /proc."""
    try:
        import psutil  # type: ignore
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - process already gone
        return []
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def signal_tree(pid: int, sig: int, extra_pids: Sequence[int] = ()) -> None:
    """Send ``sig`` to the process group led by ``pid`` and to known descendants (POSIX)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    for p in extra_pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def kill_tree_windows(pid: int) -> None:
    try:
        import psutil  # type: ignore
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            child.kill()
        parent.kill()
    except ImportError:
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


# ---------------------------------------------------------------------------- the job

@dataclass
class Progress:
    """What the panel shows: the last progress record's values."""

    stage: str = ""
    step: int = 0
    total: int = 0
    loss: Optional[float] = None
    eta: Optional[float] = None
    records: int = 0
    last: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def percent(self) -> int:
        return int(round(100 * self.fraction))

    def text(self) -> str:
        if not self.total:
            return self.stage or "starting"
        parts = [f"{self.stage or 'training'}: step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.eta is not None:
            parts.append(f"about {int(self.eta)} s left")
        return ", ".join(parts)


Runner = Callable[..., object]


class BackgroundJob:
    """One background run (see the module docstring). ``what`` names it in messages."""

    def __init__(self, command: Sequence[str], log_path: str | os.PathLike,
                 checkpoint: Optional[str | os.PathLike] = None, runner: Runner = popen_runner,
                 env: Optional[dict] = None, cwd: Optional[str] = None,
                 kill_timeout: float = 15.0, clock: Callable[[], float] = time.monotonic,
                 what: str = "training"):
        self.what = str(what)
        self.command = [str(c) for c in command]
        self.log_path = Path(log_path)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else self._out_of(self.command)
        self.runner = runner
        self.env = engine_environment() if env is None else env
        self.cwd = cwd
        self.kill_timeout = float(kill_timeout)
        self._clock = clock
        self.state = IDLE
        self.progress = Progress()
        self.returncode: Optional[int] = None
        self.error_message = ""
        self.cancel_requested = False
        self.tail: list[str] = []            # last plain-text lines (for error messages)
        self._proc = None
        self._queue: "queue.Queue[tuple[str, object]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._log = None
        self._kill_deadline: Optional[float] = None
        self._known_children: list[int] = []
        self._exited_at: Optional[float] = None
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None

    @staticmethod
    def _out_of(command: Sequence[str]) -> Optional[Path]:
        if "--out" in command:
            i = list(command).index("--out")
            if i + 1 < len(command):
                return Path(command[i + 1])
        return None

    # ------------------------------------------------------------------ start / read
    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def pid(self) -> Optional[int]:
        return getattr(self._proc, "pid", None)

    def start(self) -> "BackgroundJob":
        if self.state == RUNNING:
            raise TrainingError(f"{self.what} is already running; cancel it or wait for it to end.")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._log.write(f"$ {' '.join(self.command)}\n")
        self._log.flush()
        try:
            self._proc = self.runner(self.command, env=self.env, cwd=self.cwd)
        except (OSError, ValueError) as exc:
            self._log.write(f"could not start: {exc}\n")
            self._log.close()
            self._log = None
            self.state = FAILED
            self.error_message = (f"could not start {self.what} ({exc}); the command was "
                                  f"{' '.join(self.command)}. Log: {self.log_path}")
            return self
        self.state = RUNNING
        self.started_at = self._clock()
        self._thread = threading.Thread(target=self._read, name=f"scorerefine-{self.what}-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        proc = self._proc
        try:
            for line in iter(proc.stdout.readline, ""):
                self._queue.put(("line", line.rstrip("\r\n")))
        except (ValueError, OSError):
            pass
        code = proc.wait()
        self._queue.put(("exit", code))

    def poll(self) -> list[dict]:
        """Drain the output queue (non-blocking): returns the new progress records."""
        records = []
        while True:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                records.extend(self._handle_line(str(value)))
            else:
                self._finish(int(value))
        if self.state == RUNNING and self.cancel_requested:
            self._escalate()
        if self.state == RUNNING:
            self._check_orphaned_pipe()
        return records

    def _check_orphaned_pipe(self, grace: float = 3.0) -> None:
        """The main process ended but a leftover child keeps the output pipe open: end anyway."""
        proc_poll = getattr(self._proc, "poll", None)
        code = proc_poll() if callable(proc_poll) else None
        if code is None:
            self._exited_at = None
            return
        if self._exited_at is None:
            self._exited_at = self._clock()
        elif self._clock() - self._exited_at >= grace:
            self._known_children = list(dict.fromkeys(self._known_children))
            self._finish(int(code))
            if self.state == FINISHED:
                self._sweep()

    def _handle_line(self, line: str) -> list[dict]:
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        record = parse_progress_line(line)
        if record is None:
            if line.strip():
                self.tail = (self.tail + [line])[-20:]
            return []
        p = self.progress
        p.records += 1
        p.last = record
        p.stage = str(record.get("stage", p.stage))
        for key in ("step", "total"):
            if isinstance(record.get(key), (int, float)):
                setattr(p, key, int(record[key]))
        if isinstance(record.get("loss"), (int, float)):
            p.loss = float(record["loss"])
        if "eta" in record:
            p.eta = float(record["eta"]) if isinstance(record["eta"], (int, float)) else None
        return [record]

    def _finish(self, code: int) -> None:
        if self.state != RUNNING:
            return
        self.returncode = code
        self.ended_at = self._clock()
        if self.cancel_requested or code == EXIT_CANCELLED:
            self.state = CANCELLED
            self._sweep()
            if self.what == "training":
                kept = (f"the last checkpoint is kept in {self.checkpoint}"
                        if self.checkpoint is not None and self.checkpoint.exists()
                        else "no checkpoint had been written yet")
                self.error_message = f"training cancelled; {kept}. Log: {self.log_path}"
            else:
                self.error_message = f"{self.what} cancelled; nothing was changed. Log: {self.log_path}"
        elif code == 0:
            self.state = FINISHED
            self.error_message = ""
        else:
            self.state = FAILED
            self._sweep()
            why = "\n".join(self.tail[-5:]) or f"exit status {code}"
            self.error_message = (f"{self.what} failed (exit status {code}): {why}\n"
                                  f"The full log is in {self.log_path}.")
        if self._log is not None:
            self._log.write(f"[scorerefine] {self.what} {self.state} (exit status {code})\n")
            self._log.close()
            self._log = None

    # ------------------------------------------------------------------ cancel
    def cancel(self, wait: bool = False, timeout: Optional[float] = None) -> None:
        """Ask the process tree to stop: SIGTERM now, SIGKILL after ``kill_timeout``.

        With ``wait`` it blocks (polling) until the job has ended; else :meth:`poll` escalates.
        """
        if self.state != RUNNING or self._proc is None:
            return
        if not self.cancel_requested:
            self.cancel_requested = True
            self._kill_deadline = self._clock() + self.kill_timeout
            self._known_children = _descendants(self._proc.pid)
            if self._log is not None:
                self._log.write(f"[scorerefine] cancel requested: stopping the {self.what} process tree\n")
                self._log.flush()
            if os.name == "nt":
                try:
                    self._proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
                except (OSError, ValueError):
                    kill_tree_windows(self._proc.pid)
            else:
                signal_tree(self._proc.pid, signal.SIGTERM, self._known_children)
        if wait:
            self.wait(timeout if timeout is not None else self.kill_timeout + 10.0)

    def _escalate(self) -> None:
        if self._kill_deadline is not None and self._clock() >= self._kill_deadline and self._proc:
            self._kill_now()
            self._kill_deadline = None

    def _kill_now(self) -> None:
        if os.name == "nt":
            kill_tree_windows(self._proc.pid)
        else:
            self._known_children = list(dict.fromkeys(self._known_children + _descendants(self._proc.pid)))
            signal_tree(self._proc.pid, signal.SIGKILL, self._known_children)

    def _sweep(self) -> None:
        """After the main process ended: kill what is left of its tree (workers, children)."""
        if self._proc is None or os.name == "nt":
            return
        leftovers = [p for p in self._known_children if pid_alive(p)]
        signal_tree(self._proc.pid, signal.SIGKILL, leftovers)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Poll until the job ends (or ``timeout`` s pass); returns the state."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.state == RUNNING:
            self.poll()
            if self.state != RUNNING:
                break
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(interval)
        return self.state

    # ------------------------------------------------------------------ for the panel
    def status_text(self) -> str:
        if self.state == IDLE:
            return "idle"
        if self.state == RUNNING:
            return ("stopping..." if self.cancel_requested else self.progress.text())
        if self.state == FINISHED:
            if self.what == "training":
                return f"finished: {self.progress.text()}; model saved to {self.checkpoint}"
            return f"{self.what} finished"
        return self.error_message
