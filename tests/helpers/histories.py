"""Builders of hand-made histories for the checker tests.

``H()`` is a fluent builder: every call appends one event with the next
timestamp (or the ``ts`` given) and returns the builder; ``build()`` gives the
:class:`History`. ``clean(n, workers)`` is the history of a fault-free run;
``start``/``start_ready`` the usual beginnings of the checker tests' runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from harness.checkers.base import ClaimResult
from harness.history import Event, History


class H:
    def __init__(self, t0: float = 1000.0, step: float = 0.01) -> None:
        self.events: list[Event] = []
        self.now = t0
        self.step = step

    # -- plumbing --------------------------------------------------------------
    def _ts(self, ts: float | None) -> float:
        if ts is None:
            self.now += self.step
            return self.now
        self.now = max(self.now, ts)
        return ts

    def add(self, type: str, source: str, *, ts: float | None = None, id: str | None = None,
            worker: str | None = None, **data: Any) -> H:
        t = self._ts(ts)
        self.events.append(Event(type, source, t=t - 1000.0, ts=t, id=id, worker=worker,
                                 data=data or None))
        return self

    def build(self) -> History:
        return History(self.events)

    # -- workload, worker, cluster, nemesis, harness ----------------------------
    def run_started(self, cluster: dict[str, Any] | None = None,
                    capabilities: dict[str, Any] | None = None) -> H:
        extra: dict[str, Any] = {}
        if cluster is not None:
            extra["cluster"] = cluster
        if capabilities is not None:
            extra["capabilities"] = capabilities
        return self.add("run_started", "harness", seed=1, scenario="test", **extra)

    def publish(self, id: str, outcome: str = "ok", poison: bool = False,
                ts: float | None = None, directives: dict[str, Any] | None = None) -> H:
        extra: dict[str, Any] = {} if directives is None else {"directives": directives}
        return self.add("publish", "workload", ts=ts, id=id, outcome=outcome, poison=poison,
                        **extra)

    def received(self, id: str, worker: str, redelivered: bool = False, attempt: int = 1,
                 ts: float | None = None) -> H:
        return self.add("received", worker, ts=ts, id=id, worker=worker,
                        redelivered=redelivered, attempt=attempt)

    def processed(self, id: str, worker: str, attempt: int = 1, ts: float | None = None,
                  started_ts: float | None = None) -> H:
        extra: dict[str, Any] = {} if started_ts is None else {"started_ts": started_ts}
        return self.add("processed", worker, ts=ts, id=id, worker=worker, attempt=attempt,
                        **extra)

    def acked(self, id: str, worker: str, reason: str = "processed",
              ts: float | None = None) -> H:
        return self.add("acked", worker, ts=ts, id=id, worker=worker, reason=reason)

    def failed(self, id: str, worker: str, attempt: int = 1, permanent: bool = False,
               ts: float | None = None) -> H:
        return self.add("failed", worker, ts=ts, id=id, worker=worker, attempt=attempt,
                        permanent=permanent)

    def dead_lettered(self, id: str, worker: str, reason: str = "permanent",
                      ts: float | None = None) -> H:
        return self.add("dead_lettered", worker, ts=ts, id=id, worker=worker, reason=reason)

    def retry_scheduled(self, id: str, worker: str, attempt: int = 1, delay_ms: int = 100,
                        ts: float | None = None) -> H:
        return self.add("retry_scheduled", worker, ts=ts, id=id, worker=worker,
                        attempt=attempt, delay_ms=delay_ms)

    def connection_lost(self, worker: str, ts: float | None = None) -> H:
        return self.add("connection_lost", worker, ts=ts, worker=worker)

    def task(self, id: str, worker: str, redelivered: bool = False) -> H:
        """The happy path of one delivery: received, processed, acked."""
        return self.received(id, worker, redelivered).processed(id, worker).acked(id, worker)

    def worker_started(self, worker: str, ts: float | None = None) -> H:
        return self.add("worker_started", "cluster", ts=ts, worker=worker, pid=1)

    def worker_exited(self, worker: str, requested: bool, ts: float | None = None,
                      code: int = -9, signal: int | None = 9) -> H:
        return self.add("worker_exited", "cluster", ts=ts, worker=worker, code=code,
                        signal=signal, requested=requested)

    def fault(self, fault: str, target: str, phase: str = "invoke", ok: bool = True,
              ts: float | None = None, **extra: Any) -> H:
        return self.add("fault", "nemesis", ts=ts, fault=fault, target=target, phase=phase,
                        ok=ok, **extra)

    def health(self, worker: str, ok: bool, ts: float | None = None) -> H:
        return self.add("health", "harness", ts=ts, worker=worker, status=200 if ok else 503,
                        ok=ok)

    def ready(self, worker: str, ts: float | None = None) -> H:
        return self.add("ready", worker, ts=ts, worker=worker, queue="q", generation=1)

    def ack_failed(self, id: str, worker: str, outcome: str = "ack",
                   ts: float | None = None) -> H:
        return self.add("ack_failed", worker, ts=ts, id=id, worker=worker,
                        reason="ConnectionClosed", outcome=outcome)

    def drain(self, complete: bool = True) -> H:
        return self.add("drain", "harness", complete=complete, waited_s=1.0, reason="empty")

    def final_queue(self, role: str, ids: list[str] | None = None, ok: bool = True,
                    queue: str | None = None, depth: int | None = None) -> H:
        ids = ids or []
        return self.add("final_queue", "harness", queue=queue or f"q.{role}", role=role,
                        ids=ids, depth=len(ids) if depth is None else depth, ok=ok)

    def finish(self, main: list[str] | None = None, dlq: list[str] | None = None,
               complete: bool = True) -> H:
        """Drain, final queues (main, dlq, retry) and run_finished."""
        return (self.drain(complete).final_queue("main", main).final_queue("dlq", dlq)
                .final_queue("retry").add("run_finished", "harness"))


def ids(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def clean(n: int = 10, workers: int = 2) -> H:
    """A fault-free run: n confirmed tasks, round-robin, each processed and acked once."""
    h = H().run_started()
    names = [f"worker-{w + 1}" for w in range(workers)]
    for w in names:
        h.worker_started(w)
    tasks = ids(n)
    for t in tasks:
        h.publish(t)
    for i, t in enumerate(tasks):
        h.task(t, names[i % workers])
    return h


# -- the checker tests' common starts -------------------------------------------------------

W1, W2, W3 = "worker-1", "worker-2", "worker-3"
CAPS: dict[str, Any] = {"directives": True, "health": True, "events": "json"}
CLUSTER: dict[str, Any] = {"workers": 2, "concurrency": 10, "queue": "q", "dlq": "q.dlq",
                           "retry_base_ms": 200, "max_attempts": 4, "heartbeat_s": 2,
                           "grace_s": 10, "queue_type": "classic"}


def start(caps: dict[str, Any] | None = None, **over: Any) -> H:
    """A run of W1..W3 started (not yet ready), with ``CLUSTER`` changed by ``over``."""
    h = H().run_started({**CLUSTER, **over}, CAPS if caps is None else caps)
    for w in (W1, W2, W3):
        h.worker_started(w, ts=1000.0)
    return h


def start_ready(**over: Any) -> H:
    """Three workers started and ready, five attempts before the DLQ."""
    h = H().run_started({**CLUSTER, "workers": 3, "max_attempts": 5, **over}, CAPS)
    for w in (W1, W2, W3):
        h.worker_started(w, ts=1000.0)
        h.ready(w, ts=1000.0)
    return h


def kill_run(new_holder: Callable[[H, str], None], ids: tuple[str, ...] = ("a", "b"),
             dlq: tuple[str, ...] = (), poison: tuple[str, ...] = ()) -> H:
    """W1 holds ``ids`` and is killed; ``new_holder`` says what W2 does with each."""
    h = start_ready()
    for i in ids:
        h.publish(i, poison=i in poison)
    for i in ids:
        h.received(i, W1)
    h.fault("kill", W1, ts=1001.0).worker_exited(W1, requested=True, ts=1001.05)
    for i in ids:
        h.received(i, W2, redelivered=True, ts=1001.5)
        new_holder(h, i)
    return h.finish(dlq=list(dlq))


def dead_letter_it(h: H, i: str) -> None:
    h.failed(i, W2, permanent=True).dead_lettered(i, W2, reason="poison")


def process_it(h: H, i: str) -> None:
    h.processed(i, W2).acked(i, W2)


def claim_names(results: Iterable[ClaimResult]) -> list[str]:
    return [r.claim for r in results]
