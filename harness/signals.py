"""Signals during a run: Ctrl-C and SIGTERM (CI cancelling a job) interrupt the
run where it is; its cleanup then runs with both ignored, so a second Ctrl-C
cannot leave processes, containers or vhosts behind."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during a run.

    A BaseException, like KeyboardInterrupt: the signal handler raises it in
    whatever frame runs, and library code with ``except Exception`` (pika's
    callbacks among them) must not swallow it and carry on publishing.
    """


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM (CI cancelling a job) interrupts like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C must not leave processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
