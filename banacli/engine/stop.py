"""Stopping a training run by signal: SIGTERM / SIGINT set a flag that the loop checks at each
iteration boundary, and the loop then raises :class:`Stopped` after writing a checkpoint.
No torch here: the host checks for :class:`Stopped` without importing the engine."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from banacli.errors import BanaError


class Stopped(BanaError):
    """Training stopped by SIGTERM / SIGINT after writing a resumable checkpoint.
    Exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT), as a shell reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopSignals:
    """SIGTERM/SIGINT set ``signum``; a second signal of the same kind acts at once
    (SIGINT -> KeyboardInterrupt, SIGTERM -> default). Handlers are installed only in the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
