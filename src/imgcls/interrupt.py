"""Ctrl-C and SIGTERM during training: finish the step in flight, then stop cleanly.

The first signal only raises a flag that the loop reads after each step; a second Ctrl-C
falls back to Python's default and stops at once (the last epoch's checkpoint is still whole).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class StopRequest:
    requested: bool = False


@contextmanager
def stop_on_signals():
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return

    def handle(signum, frame):
        request.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
