"""The Nemesis role: faults as small objects with ``invoke(cluster, target)`` and
``heal(cluster)``.

After Jepsen's nemesis: setup heals first, teardown always heals (also on
Ctrl-C and on a crash of the harness: the runner calls ``Nemesis.teardown`` in a
``finally``, and the cluster's own ``stop`` heals whatever a backend applied).
Every invocation and heal is recorded as a ``fault`` event with ``ok`` true or
false, so a checker can tell a fault that took effect from one that did not.
The Nemesis is the only writer of ``fault`` events (the Schedule decides when,
and asks it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Final

from harness import vocab
from harness.cluster.base import Cluster, ClusterError
from harness.history import Recorder

BROKER_TARGET: Final = "broker"


class Fault:
    """One kind of fault. ``heals`` is False for faults that are final (kill)."""

    name: str = "?"
    heals: bool = False

    def invoke(self, cluster: Cluster, target: str) -> None:
        raise NotImplementedError

    def heal(self, cluster: Cluster, target: str) -> None:
        """Undo the fault on ``target``; idempotent."""


class Kill(Fault):
    name = "kill"

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.kill(target)


class Terminate(Fault):
    name = "terminate"

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.terminate(target, self.grace_s)


class Pause(Fault):
    name = "pause"
    heals = True

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.pause(target)

    def heal(self, cluster: Cluster, target: str) -> None:
        cluster.resume(target)


class Resume(Fault):
    name = "resume"

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.resume(target)


class Restart(Fault):
    name = "restart"

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.restart(target)


class BrokerRestart(Fault):
    name = "broker-restart"

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.restart_broker()


class CloseConnections(Fault):
    name = "close-connections"

    def invoke(self, cluster: Cluster, target: str) -> None:
        cluster.close_connections(target)


class _NetworkFault(Fault):
    """Network faults exist only where the backend has the method (docker)."""

    heals = True
    method = "?"

    def invoke(self, cluster: Cluster, target: str) -> None:
        fn = getattr(cluster, self.method, None)
        if fn is None:
            raise ClusterError(
                f"the {cluster.backend} backend has no '{self.name}' fault: use --backend docker"
            )
        fn(target)

    def heal(self, cluster: Cluster, target: str) -> None:
        fn = getattr(cluster, "heal_network", None)
        if fn is not None:
            fn(target)


class Partition(_NetworkFault):
    name = "partition"
    method = "partition"


class Blackhole(_NetworkFault):
    name = "blackhole"
    method = "blackhole"


class Reset(_NetworkFault):
    name = "reset"
    method = "reset_connections"


def make_fault(name: str, grace_s: float) -> Fault:
    table: dict[str, Callable[[], Fault]] = {
        "kill": Kill,
        "terminate": lambda: Terminate(grace_s),
        "pause": Pause,
        "resume": Resume,
        "restart": Restart,
        "broker-restart": BrokerRestart,
        "close-connections": CloseConnections,
        "partition": Partition,
        "blackhole": Blackhole,
        "reset": Reset,
    }
    if name not in table:
        raise ValueError(f"unknown fault '{name}'")
    return table[name]()


class Nemesis:
    """Applies faults to a cluster, records them, and heals what is still active."""

    def __init__(self, cluster: Cluster, recorder: Recorder, grace_s: float) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._active: list[tuple[Fault, str]] = []

    def setup(self) -> None:
        """Heal first: a run never starts on top of a fault left by anything."""
        try:
            self.cluster.heal_all()
        except ClusterError as exc:
            self.recorder.record(vocab.FAULT, "nemesis", fault="heal-all", target="*",
                                 phase="heal", ok=False, error=str(exc))

    def invoke(self, fault_name: str, target: str) -> bool:
        fault = make_fault(fault_name, self.grace_s)
        # The fault's ts is when it was issued, not when the backend's call returned
        # (a docker kill returns ~100 ms after the signal, by when the broker may
        # already have requeued the worker's deliveries); completed_ts says when.
        issued_ts = time.time()
        try:
            fault.invoke(self.cluster, target)
        except (ClusterError, OSError, RuntimeError) as exc:
            self.recorder.record(vocab.FAULT, "nemesis", fault=fault_name, target=target,
                                 phase="invoke", ok=False, error=str(exc), ts=issued_ts,
                                 completed_ts=time.time())
            return False
        self.recorder.record(vocab.FAULT, "nemesis", fault=fault_name, target=target,
                             phase="invoke", ok=True, ts=issued_ts, completed_ts=time.time())
        if fault.heals:
            with self._lock:
                self._active.append((fault, target))
        return True

    def not_taken(self, fault_name: str, target: str, error: str, step: int) -> None:
        """Record a schedule step that did not take effect (its condition was not met,
        its target did not exist): the claims that needed it become unknown."""
        self.recorder.record(vocab.FAULT, "nemesis", fault=fault_name, target=target,
                             phase="invoke", ok=False, error=error, step=step)

    def scale(self, count: int | None, fn: Callable[[int], list[str]] | None,
              step: int) -> bool:
        """Scale the workers to ``count`` through the run's ``fn`` (the supervisor
        knows names and specs); recorded as a ``scale`` fault with the workers it
        started or terminated."""
        issued_ts = time.time()
        changed: list[str] = []
        ok = False
        error: str | None = None
        if fn is not None and count is not None:
            try:
                changed = fn(count)
                ok = True
            except (ClusterError, OSError) as exc:
                error = str(exc)
        self.recorder.record(vocab.FAULT, "nemesis", fault="scale", target="cluster",
                             phase="invoke", ok=ok, count=count, step=step, workers=changed,
                             ts=issued_ts, completed_ts=time.time(),
                             **({"error": error} if error else {}))
        return ok

    def observed(self, fault_name: str, target: str, issued_ts: float, via: str) -> None:
        """Record a fault that an orchestrator made at the harness's request (a
        scale-down's terminations, ``via`` "scale"): issued at ``issued_ts``, seen
        done by the harness (the cluster checked it against the broker)."""
        self.recorder.record(vocab.FAULT, "nemesis", fault=fault_name, target=target,
                             phase="invoke", ok=True, ts=issued_ts, completed_ts=time.time(),
                             via=via)

    def heal(self, target: str | None = None) -> None:
        """Heal the active faults on ``target`` (all targets when None)."""
        with self._lock:
            todo = [(f, t) for f, t in self._active if target is None or t == target]
            self._active = [(f, t) for f, t in self._active if (f, t) not in todo]
        for fault, tgt in todo:
            issued_ts = time.time()
            try:
                fault.heal(self.cluster, tgt)
                ok, error = True, None
            except (ClusterError, OSError, RuntimeError) as exc:
                ok, error = False, str(exc)
            self.recorder.record(vocab.FAULT, "nemesis", fault=fault.name, target=tgt,
                                 phase="heal", ok=ok, ts=issued_ts, completed_ts=time.time(),
                                 **({"error": error} if error else {}))

    def active(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(f.name, t) for f, t in self._active]

    def teardown(self) -> None:
        """Always heal: the recorded faults, then whatever the backend knows of."""
        self.heal(None)
        with contextlib.suppress(Exception):
            self.cluster.heal_all()
