"""Worker events: one JSON object per line on stdout (worker contract v1).

Every event has ``event``, ``worker`` (WORKER_ID) and ``ts`` (``time.time()``).
Writes are serialised by a lock and flushed per line, so lines of different
threads never interleave and a line is out before the process can be killed.
Everything else the worker says goes to stderr through ``logging``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

# WORKER_EVENTS=minimal: what a worker that reports the contract's minimum plus
# receipts writes; everything else is dropped here, in one place.
MINIMAL_EVENTS = frozenset({"received", "processed"})


class EventEmitter:
    def __init__(self, worker_id: str, stream: IO[str] | None = None,
                 mode: str = "full") -> None:
        self.worker_id = worker_id
        self.only = MINIMAL_EVENTS if mode == "minimal" else None
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def _line(self, event: str, fields: dict[str, Any]) -> str:
        obj: dict[str, Any] = {"event": event, "worker": self.worker_id, "ts": time.time()}
        obj.update(fields)
        return json.dumps(obj, separators=(",", ":"), default=str) + "\n"

    def emit_required(self, event: str, **fields: Any) -> None:
        """Write one event; raise OSError when it could not be written.

        Used where writing the line is the side effect itself (``processed``).
        """
        if self.only is not None and event not in self.only:
            return
        line = self._line(event, fields)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; a broken stdout is logged, not raised."""
        try:
            self.emit_required(event, **fields)
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            print(f"worker: could not write event {event}: {exc}", file=sys.stderr)
