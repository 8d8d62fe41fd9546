"""What a run shows on the terminal and how it takes Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading

from alexnet.progress import write

__all__ = ["GracefulStop", "say"]


def say(msg: str) -> None:
    """Print a line without tearing a progress bar."""
    write(msg, file=sys.stdout)


class GracefulStop:
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: stop at once.

    Installed only in the main thread (where Python delivers signals); elsewhere a plain
    KeyboardInterrupt is all there is. Calling the object asks whether to stop.
    """

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        say("\nstopping after this step and saving (Ctrl-C again to quit without saving)")

    def __call__(self) -> bool:
        return self.requested

    def __exit__(self, *exc) -> bool:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
