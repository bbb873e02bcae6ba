"""A live view of the run, folded from history events as they are recorded.

The schedule fires on it ("after 10 processed", "when a worker holds unacked
tasks", target "busiest") and the runner uses it to know when the drain is
done. It never judges: verdicts come from checkers over the finished history.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from harness import vocab
from harness.history import Event

_SETTLE = frozenset({vocab.ACKED, vocab.ACK_FAILED, vocab.DEAD_LETTERED})


class LiveState:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.processed = 0
        self.published_ok = 0
        self.published = 0
        self.settled = 0  # final settlements: acked(processed) + dead_lettered
        self.ready: set[str] = set()
        self.in_flight: dict[str, set[str]] = {}
        self.exited: set[str] = set()
        self.events_by_type: Counter[str] = Counter()
        # time.monotonic() of the last activity event any worker wrote (the drain's
        # "workers quiet" rule, vocab.ACTIVITY_EVENT_TYPES: connection churn, such
        # as a worker refused over and over, holds no task and must not keep the
        # drain open); None before the first.
        self.last_worker_event: float | None = None

    # Called by the Recorder under its lock: keep it short.
    def on_event(self, ev: Event) -> None:
        with self._cond:
            self.events_by_type[ev.type] += 1
            if ev.type in vocab.ACTIVITY_EVENT_TYPES:
                self.last_worker_event = time.monotonic()
            w = ev.worker
            if ev.type == vocab.PROCESSED:
                self.processed += 1
            elif ev.type == vocab.PUBLISH:
                self.published += 1
                if ev.get("outcome") == "ok":
                    self.published_ok += 1
            elif ev.type == vocab.RECEIVED and w is not None and ev.id is not None:
                self.in_flight.setdefault(w, set()).add(ev.id)
            elif ev.type in _SETTLE and w is not None and ev.id is not None:
                self.in_flight.get(w, set()).discard(ev.id)
                if ev.type == vocab.DEAD_LETTERED or (
                    ev.type == vocab.ACKED and ev.get("reason", "processed") == "processed"
                ):
                    self.settled += 1
            elif ev.type == vocab.READY and w is not None:
                self.ready.add(w)
                self.exited.discard(w)
            elif ev.type in (vocab.CONNECTION_LOST, vocab.SHUTDOWN) and w is not None:
                # The broker requeues what an unclean connection held.
                self.ready.discard(w)
                if ev.type == vocab.CONNECTION_LOST:
                    self.in_flight.pop(w, None)
            elif ev.type == vocab.WORKER_EXITED and w is not None:
                self.ready.discard(w)
                self.in_flight.pop(w, None)
                self.exited.add(w)
            elif ev.type == vocab.WORKER_STARTED and w is not None:
                self.exited.discard(w)
            self._cond.notify_all()

    def unacked_by_worker(self) -> dict[str, int]:
        with self._cond:
            return {w: len(ids) for w, ids in self.in_flight.items()}

    def quiet_for(self) -> float:
        """Seconds since a worker's last activity event (infinite when none)."""
        with self._cond:
            last = self.last_worker_event
        return float("inf") if last is None else time.monotonic() - last

    def total_in_flight(self) -> int:
        with self._cond:
            return sum(len(ids) for ids in self.in_flight.values())

    def wait_for(self, pred: Callable[[LiveState], bool], timeout_s: float,
                 stop: threading.Event | None = None) -> bool:
        """Wait until ``pred(self)`` holds (checked on every event and every 0.2 s)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if pred(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(min(left, 0.2))
