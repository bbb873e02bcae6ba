"""The one polling wait of the tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``pred`` every ``interval_s`` until it holds or ``timeout_s`` passes; the
    last look is taken at the deadline, so a condition met just then still counts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return pred()
