"""Ctrl-C and SIGTERM, one rule for every phase of a training command: the first only raises a flag, read after
each step and unit of work (which finish, and what can be resumed is written); a second stops at once (every file is
written atomically, so the last epoch's checkpoints stay whole)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class StopRequest:
    requested: bool = False


_active: StopRequest | None = None  # the request of the outermost stop_on_signals under way


@contextmanager
def stop_on_signals():
    """The signal rule while the block runs; a nested use shares the outer one's request."""
    global _active
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return

    def handle(signum, frame):
        request.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second stops at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    _active = request
    try:
        yield request
    finally:
        _active = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
