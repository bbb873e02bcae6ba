"""The ``fake`` backend: an in-memory cluster for unit tests of the roles that
drive a cluster (schedule, nemesis, supervisor), deterministic and instant.

Workers are entries in a table (running, paused, stopped); faults change the
table and record what a real backend records (``worker_started``,
``worker_exited`` with ``requested``), so the roles above it see the same
history shapes. It has every fault of both real backends, network ones
included; ``fail`` makes a named primitive raise ``ClusterError`` (a backend
call that did not take effect), and ``calls`` lists every primitive called, in
order. No broker: ``start_broker`` hands back an endpoint that nothing answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import vocab
from harness.cluster.base import BrokerEndpoint, Cluster, ClusterError, WorkerSpec
from harness.history import Recorder


@dataclass
class FakeWorker:
    name: str
    spec: WorkerSpec
    state: str = "running"  # running | paused | stopped
    incarnation: int = 1
    cut_off: bool = False  # a network fault is active


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

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

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
        self.recorder.record(vocab.WORKER_EXITED, "cluster", worker=w.name, code=code,
                             signal=signal, requested=True)

    # -- lifecycle ------------------------------------------------------------------
    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Callable[[], None] | None = None) -> BrokerEndpoint:
        self._call("start_broker")
        ep = external or BrokerEndpoint(amqp_url="amqp://guest:guest@fake:5672/%2F",
                                        management_url="http://fake:15672")
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

    def crash(self, name: str) -> None:
        """The worker dies on its own (an exit nobody asked for)."""
        w = self._worker(name)
        w.state = "stopped"
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
