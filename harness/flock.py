"""File locks every harness process on the host shares: ``FileLock`` (one
``flock(2)`` with a bounded wait) and ``turnstile`` (shared and exclusive holders,
an exclusive one never starved by a stream of shared ones).

Written by hand: the standard library has ``fcntl.flock`` but no bounded wait, and
no maintained library here does a reader-writer lock across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from harness.cluster.base import ClusterError

LOCK_POLL_S: Final = 0.1


class FileLock:
    """A ``flock(2)`` on a file every harness process on the host opens (mode 0666:
    another user's harness shares it), taken with a bounded wait. The kernel drops
    it when the process dies, so a SIGKILLed harness never holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def take(self, mode: int, timeout_s: float) -> bool:
        """``fcntl.LOCK_SH`` or ``LOCK_EX``, waiting at most ``timeout_s`` (0: one
        try). False if another process holds it too long. A lock held is converted,
        and a conversion that fails has let go of the lock held (flock(2))."""
        if self._fh is None:
            try:
                self._fh = self.path.open("a+", encoding="utf-8")
            except OSError as exc:  # another user's file where /tmp protects it
                raise ClusterError(f"cannot open the harness's lock file {self.path} "
                                   f"({exc.strerror}): remove it, or run as its owner") from exc
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o666)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._fh, mode | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(LOCK_POLL_S)

    def unlock(self) -> None:
        """Let go of the lock, keep the file open. Never raises."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go of the lock and close the file. Idempotent, never raises."""
        self.unlock()
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


@contextlib.contextmanager
def turnstile(base: str, *, exclusive: bool, timeout_s: float,
              waiting_for: str) -> Iterator[None]:
    """Hold ``{base}.lock`` shared or exclusively, through ``{base}.turnstile``: every
    taker passes the turnstile, and an exclusive one holds it while it waits, so no
    new shared holder gets in before it. TimeoutError (one line, naming
    ``waiting_for``) after ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    gate, main = FileLock(Path(f"{base}.turnstile")), FileLock(Path(f"{base}.lock"))
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not (gate.take(fcntl.LOCK_EX, timeout_s)
                and main.take(mode, max(0.0, deadline - time.monotonic()))):
            raise TimeoutError(f"waited {timeout_s:.0f} s for {waiting_for}")
        gate.close()
        yield
    finally:
        gate.close()
        main.close()
