"""Builders of hand-made histories for the checker tests.

``H()`` is a fluent builder: every call appends one event with the next
timestamp (or the ``ts`` given) and returns the builder; ``build()`` gives the
:class:`History`. ``clean(n, workers)`` is the history of a fault-free run.
"""

from __future__ import annotations

from typing import Any

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
