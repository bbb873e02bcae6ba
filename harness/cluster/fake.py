"""The ``fake`` backend: an in-memory cluster for unit tests of the roles that
drive a cluster (schedule, nemesis, supervisor), deterministic and instant.

Workers are entries in a table (running, paused, stopped); faults change the
table and record what a real backend records (``worker_started``,
``worker_exited`` with ``requested``), so the roles above it see the same
history shapes. It has every fault of both real backends, network ones
included; ``fail`` makes a named primitive raise ``ClusterError`` (a backend
call that did not take effect), and ``calls`` lists every primitive called, in
order. Its broker is in memory too (``FakeBroker``, with an admin and a
publisher that speak to it): a queue, deliveries held per worker and requeued
when the worker's "connection" dies (a kill, a crash, a terminate), so the
runner can be driven end to end in a unit test. Workers (``FakeWorker``, a
thread each) take a task, report ``received``, ``processed``, ``acked`` the way
a contract v1 worker's lines would be recorded; ``bug="ack-without-processing"``
makes them lose work (a run that must FAIL).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import vocab
from harness.broker import BrokerAdmin, ConnectionInfo, QueueInfo
from harness.cluster.base import BrokerEndpoint, Cluster, ClusterError, WorkerSpec
from harness.history import Recorder
from harness.tasks import Task
from harness.workload import Publisher, PublishStats

FAKE_ENDPOINT = BrokerEndpoint(amqp_url="amqp://guest:guest@fake:5672/%2F",
                               management_url="http://fake:15672")
TASK_S = 0.002  # how long a fake worker "processes" a task
POLL_S = 0.005


class FakeBroker:
    """One queue in memory: ready ids (with a redelivered flag) and, per worker,
    the ids it holds unacked. Thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready: collections.deque[tuple[str, bool]] = collections.deque()
        self.held: dict[str, set[str]] = {}

    def publish(self, ident: str) -> None:
        with self.lock:
            self.ready.append((ident, False))

    def take(self, worker: str) -> tuple[str, bool] | None:
        with self.lock:
            if not self.ready:
                return None
            item = self.ready.popleft()
            self.held.setdefault(worker, set()).add(item[0])
            return item

    def ack(self, worker: str, ident: str) -> None:
        with self.lock:
            self.held.get(worker, set()).discard(ident)

    def connection_died(self, worker: str) -> None:
        """What RabbitMQ does: requeue everything the connection held, redelivered."""
        with self.lock:
            for ident in sorted(self.held.pop(worker, set())):
                self.ready.appendleft((ident, True))

    def unacked(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.held.values())


class FakeAdmin(BrokerAdmin):
    """The harness's observer of a ``FakeBroker`` (what ``BrokerAdmin`` asks the
    management API and AMQP, answered from memory)."""

    def __init__(self, broker: FakeBroker, cluster: FakeCluster) -> None:
        super().__init__(FAKE_ENDPOINT)
        self.broker = broker
        self.cluster = cluster

    def probe(self, timeout_s: float = 3.0, amqp: bool = True) -> str | None:
        return None

    def queue_info(self, name: str) -> QueueInfo | None:
        b = self.broker
        if name != self.cluster.queue:
            return None
        with b.lock:
            ready, unacked = len(b.ready), sum(len(v) for v in b.held.values())
        consumers = sum(1 for w in self.cluster.workers() if self.cluster.is_running(w))
        return QueueInfo(name, ready + unacked, ready, unacked, consumers)

    def list_queues(self, prefix: str = "") -> list[QueueInfo]:
        info = self.queue_info(self.cluster.queue)
        return [info] if info is not None and info.name.startswith(prefix) else []

    def connections(self) -> list[ConnectionInfo]:
        with self.broker.lock:
            held = {w: len(v) for w, v in self.broker.held.items()}
        return [ConnectionInfo(w, "127.0.0.1", 1000 + i, held.get(w, 0), f"fake {w}")
                for i, w in enumerate(self.cluster.workers()) if self.cluster.is_running(w)]

    def semantics(self, queues: Sequence[str]) -> dict[str, Any]:
        return {"rabbitmq_version": "fake", "erlang_version": "fake", "product": "FakeBroker",
                "queues": {q: ({"type": "classic", "durable": True, "arguments": {},
                                "policy": None, "operator_policy": None,
                                "effective_policy_definition": {}, "delivery_limit": None,
                                "dead_letter_strategy": "at-most-once",
                                "dead_letter_exchange": None,
                                "consumer_timeout_ms": "broker default"}
                               if q == self.cluster.queue else None) for q in queues}}

    def passive_depth(self, name: str) -> int | None:
        if name != self.cluster.queue:
            return None
        with self.broker.lock:
            return len(self.broker.ready)

    def drain_ids(self, queue: str, limit: int = 100_000, timeout_s: float = 60.0,
                  reasons: dict[str, str] | None = None) -> list[str]:
        if queue != self.cluster.queue:
            return []
        with self.broker.lock:
            ids = [i for i, _ in list(self.broker.ready)[:limit]]
            for _ in ids:
                self.broker.ready.popleft()
        return ids

    def close(self) -> None:
        pass


class FakePublisher(Publisher):
    """Publishes into a ``FakeBroker``; every task confirmed."""

    def __init__(self, broker: FakeBroker, recorder: Recorder) -> None:
        super().__init__(FAKE_ENDPOINT.amqp_url, "fake", recorder)
        self.broker = broker
        self.fake_recorder = recorder

    def publish(self, tasks: Sequence[Task], rate_per_s: float | None = None,
                stop: threading.Event | None = None) -> PublishStats:
        t0 = time.monotonic()
        for task in tasks:
            self.fake_recorder.record(vocab.PUBLISH, "workload", id=task.id, outcome="ok",
                                      directives=task.directives, poison=task.poison)
            self.broker.publish(task.id)
        took = max(time.monotonic() - t0, 1e-6)
        return PublishStats(len(tasks), 0, 0, took, len(tasks) / took)


@dataclass
class FakeWorker:
    name: str
    spec: WorkerSpec
    state: str = "running"  # running | paused | stopped
    incarnation: int = 1
    cut_off: bool = False  # a network fault is active
    thread: threading.Thread | None = None


@dataclass
class FakeCluster(Cluster):
    """See the module doc. Thread-safe (the schedule runs in a thread of its own)."""

    run_id: str = "fake"
    run_dir: Path = Path(".")
    recorder: Recorder = field(default_factory=lambda: Recorder(None))
    backend: str = "fake"
    fail: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    table: dict[str, FakeWorker] = field(default_factory=dict)
    broker_restarts: int = 0
    stopped: bool = False
    queue: str = "go.logger"
    bug: str | None = None  # "ack-without-processing": the worker loses what it takes
    broker: FakeBroker = field(default_factory=FakeBroker)
    notices: list[str] = field(default_factory=list)  # Cluster.__init__'s (not called)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # -- the in-memory broker's clients -----------------------------------------------
    def broker_admin(self, endpoint: BrokerEndpoint) -> BrokerAdmin:
        return FakeAdmin(self.broker, self)

    def publisher(self, endpoint: BrokerEndpoint, queue: str, recorder: Recorder,
                  timeout_s: float, task_format: str = vocab.FORMAT_CONTRACT_V1) -> Publisher:
        self.queue = queue
        return FakePublisher(self.broker, recorder)

    def _consume(self, w: FakeWorker, incarnation: int) -> None:
        """A worker's loop: while it runs (and is not cut off), take, process, ack."""
        rec, name = self.recorder, w.name
        rec.record(vocab.READY, name, worker=name, queue=self.queue)
        while w.state != "stopped" and w.incarnation == incarnation:
            if w.state == "paused" or w.cut_off:
                time.sleep(POLL_S)
                continue
            item = self.broker.take(name)
            if item is None:
                time.sleep(POLL_S)
                continue
            ident, redelivered = item
            rec.record(vocab.RECEIVED, name, id=ident, worker=name, redelivered=redelivered,
                       attempt=1)
            time.sleep(TASK_S)
            if w.state == "stopped" or w.incarnation != incarnation:
                return  # died holding it: the broker requeues it
            if self.bug != "ack-without-processing":
                rec.record(vocab.PROCESSED, name, id=ident, worker=name, attempt=1)
            self.broker.ack(name, ident)
            rec.record(vocab.ACKED, name, id=ident, worker=name, reason="processed")

    def _run(self, w: FakeWorker) -> None:
        w.thread = threading.Thread(target=self._consume, args=(w, w.incarnation), daemon=True)
        w.thread.start()

    # -- plumbing -------------------------------------------------------------------
    def _call(self, what: str, name: str = "") -> None:
        with self._lock:
            self.calls.append((what, name))
        if what in self.fail:
            raise ClusterError(f"fake: {what} {name} failed (as asked)")

    def _worker(self, name: str) -> FakeWorker:
        w = self.table.get(name)
        if w is None:
            raise ClusterError(f"no worker named {name!r}")
        return w

    def _exit(self, w: FakeWorker, code: int, signal: int | None) -> None:
        w.state = "stopped"
        if w.thread is not None:
            w.thread.join(1.0)
        self.broker.connection_died(w.name)
        self.recorder.record(vocab.WORKER_EXITED, "cluster", worker=w.name, code=code,
                             signal=signal, requested=True)

    # -- lifecycle ------------------------------------------------------------------
    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Callable[[], None] | None = None) -> BrokerEndpoint:
        self._call("start_broker")
        ep = external or FAKE_ENDPOINT
        if while_booting is not None:
            while_booting()
        self.recorder.record(vocab.BROKER_STARTED, "cluster", owned=external is None,
                             backend=self.backend)
        return ep

    def start_worker(self, name: str, spec: WorkerSpec) -> None:
        self._call("start_worker", name)
        with self._lock:
            if name in self.table and self.table[name].state != "stopped":
                raise ClusterError(f"worker {name!r} is already running")
            self.table[name] = FakeWorker(name, spec)
        self.recorder.record(vocab.WORKER_STARTED, "cluster", worker=name, pid=1)
        self._run(self.table[name])

    def stop(self) -> None:
        self.stopped = True
        with self._lock:
            workers = [w for w in self.table.values() if w.state != "stopped"]
        for w in workers:
            self._exit(w, -9, 9)

    # -- what is there --------------------------------------------------------------
    def workers(self) -> list[str]:
        with self._lock:
            return list(self.table)

    def is_running(self, name: str) -> bool:
        w = self.table.get(name)
        return w is not None and w.state in ("running", "paused")

    # -- faults ---------------------------------------------------------------------
    def kill(self, name: str) -> None:
        self._call("kill", name)
        self._exit(self._worker(name), -9, 9)

    def terminate(self, name: str, grace_s: float) -> int | None:
        self._call("terminate", name)
        self._exit(self._worker(name), 0, None)
        return 0

    def pause(self, name: str) -> None:
        self._call("pause", name)
        w = self._worker(name)
        if w.state != "running":
            raise ClusterError(f"{name} is {w.state}: cannot pause it")
        w.state = "paused"

    def resume(self, name: str) -> None:
        self._call("resume", name)
        w = self._worker(name)
        if w.state == "paused":
            w.state = "running"

    def restart(self, name: str) -> None:
        self._call("restart", name)
        w = self._worker(name)
        if w.state != "stopped":
            self._exit(w, 0, None)
        w.state = "running"
        w.incarnation += 1
        self.recorder.record(vocab.WORKER_STARTED, "cluster", worker=name, pid=w.incarnation)
        self._run(w)

    def crash(self, name: str) -> None:
        """The worker dies on its own (an exit nobody asked for)."""
        w = self._worker(name)
        w.state = "stopped"
        self.broker.connection_died(name)
        self.recorder.record(vocab.WORKER_EXITED, "cluster", worker=name, code=1, signal=None,
                             requested=False)

    def restart_broker(self) -> None:
        self._call("restart_broker")
        self.broker_restarts += 1

    def partition(self, name: str) -> None:
        self._call("partition", name)
        self._worker(name).cut_off = True

    def blackhole(self, name: str) -> None:
        self._call("blackhole", name)
        self._worker(name).cut_off = True

    def reset_connections(self, name: str) -> None:
        self._call("reset", name)
        self._worker(name).cut_off = True

    def close_connections(self, name: str) -> int:
        self._call("close-connections", name)
        self._worker(name)
        return 1

    def heal_network(self, name: str) -> None:
        self._call("heal_network", name)
        w = self.table.get(name)
        if w is not None:
            w.cut_off = False

    def heal_all(self) -> None:
        self._call("heal_all")
        with self._lock:
            for w in self.table.values():
                w.cut_off = False
                if w.state == "paused":
                    w.state = "running"
