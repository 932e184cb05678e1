"""SIGINT and SIGTERM during training: the first one asks the loop to finish its current step and
save `last.pt` (then exit 130 or 143); a second Ctrl-C exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


class SignalCatcher:
    def __init__(self, announce: bool = True):
        self.received: int | None = None  # the signal number, once one arrived
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            print("\nsecond Ctrl-C: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        self.received = signum
        if self.announce:
            print(
                f"\n{signal.Signals(signum).name} received: finishing the current step and saving last.pt "
                f"(Ctrl-C again to exit at once)",
                file=sys.stderr,
                flush=True,
            )
