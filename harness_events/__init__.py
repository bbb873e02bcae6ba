"""Worker contract v1 events from a framework's own hooks, for an app the harness
did not write: add one line to a Celery or Dramatiq app and its worker writes the
contract's JSON event lines (docs/worker-contract.md) that the harness reads.

- Celery: ``harness_events.celery.install(app)`` (signals);
- Dramatiq: ``broker.add_middleware(harness_events.dramatiq.HarnessEvents())``.

Lines go to file descriptor 1, the process's real stdout, one ``os.write`` per
line (atomic on a pipe below 4 KiB): Celery redirects ``sys.stdout`` into its
logger, and a pool's child processes share the descriptor. The worker's name is
``$WORKER_ID`` (the harness sets it; its own name for the source wins anyway).

This package imports nothing of the harness and nothing beyond the standard
library and the framework it hooks: it goes into the user's worker image with
``pip install --no-deps rmq-chaos-harness``. What a framework's hooks cannot
show is not written (Celery has no hook for an ack): the claim that needs it is
then ``unknown``, never ``true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any, Final

LINE_MAX_BYTES: Final = 4096  # one write below PIPE_BUF stays whole on a pipe


class Emitter:
    """Writes contract events as JSON lines to a file descriptor."""

    def __init__(self, fd: int = 1, worker: str | None = None) -> None:
        self.fd = fd
        self.worker = worker or os.environ.get("WORKER_ID") or f"pid-{os.getpid()}"
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = {"event": event, "worker": self.worker, "ts": time.time(),
                **{k: v for k, v in fields.items() if v is not None}}
        data = (json.dumps(line, default=str, separators=(",", ":")) + "\n").encode()
        if len(data) > LINE_MAX_BYTES:  # an id or reason that long: keep the line whole
            line = {k: (v[:256] if isinstance(v, str) else v) for k, v in line.items()}
            data = (json.dumps(line, default=str, separators=(",", ":")) + "\n").encode()
        # A closed stdout must not fail the task; the harness sees the gap.
        with self._lock, contextlib.suppress(OSError):
            os.write(self.fd, data)
