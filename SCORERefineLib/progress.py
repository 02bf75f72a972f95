"""Progress reporting and cancellation for long work.

A :class:`Progress` shows a tqdm bar on a terminal, or writes one JSON object per line
(``{"stage", "step", "total", "loss", "eta", ...}``) for programs such as the Slicer module,
or stays silent. A :class:`CancelToken` is set by a signal handler or another thread; long loops
check it and stop cleanly, keeping what was done.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import IO, Any, Optional

from .errors import Cancelled

MODES = ("bar", "json", "none")


class CancelToken:
    """A thread-safe flag that asks long work to stop at its next check."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason)

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM set the token instead of killing the process (main thread only)."""
        def handler(signum, _frame):
            self.cancel(f"received {signal.Signals(signum).name}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass


class Progress:
    """Report ``step`` of ``total`` for a named stage, as a bar, JSON lines or nothing."""

    def __init__(self, stage: str, total: int, mode: str = "bar", stream: Optional[IO[str]] = None):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.stage, self.total, self.mode = stage, int(total), mode
        self.stream = stream if stream is not None else (sys.stdout if mode == "json" else sys.stderr)
        self.step = 0
        self._t0 = time.monotonic()
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm
            # redraw at most once a second (a log file would otherwise get a line per step)
            self._bar = tqdm(total=self.total, desc=stage, file=self.stream, dynamic_ncols=True,
                             mininterval=1.0)
        elif mode == "json":
            self.emit(event="start")

    def emit(self, **fields: Any) -> None:
        """Write one JSON line (json mode only)."""
        if self.mode != "json":
            return
        record = {"stage": self.stage, "step": self.step, "total": self.total}
        record.update(fields)
        self.stream.write(json.dumps(record, default=float) + "\n")
        self.stream.flush()

    def update(self, step: Optional[int] = None, **metrics: Any) -> None:
        """Advance to ``step`` (default: one more) and report metrics such as ``loss``."""
        new = self.step + 1 if step is None else int(step)
        delta, self.step = new - self.step, new
        elapsed = time.monotonic() - self._t0
        eta = elapsed / self.step * (self.total - self.step) if self.step else None
        if self._bar is not None:
            self._bar.update(delta)
            if metrics:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                       for k, v in metrics.items()}, refresh=False)
        elif self.mode == "json":
            self.emit(event="progress", eta=None if eta is None else round(eta, 1),
                      elapsed=round(elapsed, 1), **metrics)

    def close(self, **fields: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "json":
            self.emit(event="end", elapsed=round(time.monotonic() - self._t0, 1), **fields)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
