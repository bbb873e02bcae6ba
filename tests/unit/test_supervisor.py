"""The supervisor against the fake backend: names, the restart policy (a killed
or crashed worker comes back, a terminated one does not, nothing after the
end), scaling up and down through the nemesis, and stopping every worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import vocab
from harness.cluster.base import WorkerSpec
from harness.cluster.fake import FakeCluster
from harness.history import Event, Recorder
from harness.live import LiveState
from harness.model import ClusterSpec, Scenario
from harness.nemesis import Nemesis
from harness.supervisor import Supervisor


def make(policy: str = "never", workers: int = 2) -> tuple[FakeCluster, Supervisor, Nemesis]:
    rec = Recorder(None)
    live = LiveState()
    rec.add_listener(live.on_event)
    cluster = FakeCluster(recorder=rec)
    sc = Scenario(name="s", path="s.yaml", claims=("no-loss",),
                  cluster=ClusterSpec(workers=workers, restart_policy=policy, grace_s=1.0))
    sup = Supervisor(cluster, sc, WorkerSpec(), rec, live, Path("."), [])
    nemesis = Nemesis(cluster, rec, grace_s=1.0)
    sup.nemesis = nemesis
    sup.restart_delay_s = 0.05  # the policy, not the wait, is under test
    for _ in range(workers):
        sup.add_worker()
    return cluster, sup, nemesis


def restarted(cluster: FakeCluster, name: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if cluster.table[name].incarnation > 1 and cluster.is_running(name):
            return True
        time.sleep(0.05)
    return False


def test_names_are_numbered_in_order() -> None:
    cluster, _, _ = make(workers=3)
    assert cluster.workers() == ["worker-1", "worker-2", "worker-3"]


@pytest.mark.parametrize("how", ["kill", "crash"])
def test_restart_always_brings_back_a_killed_or_crashed_worker(how: str) -> None:
    cluster, _, nemesis = make("always")
    if how == "kill":
        assert nemesis.invoke("kill", "worker-1")
    else:
        cluster.crash("worker-1")
    assert restarted(cluster, "worker-1")


def test_a_terminated_worker_is_not_restarted() -> None:
    cluster, _, nemesis = make("always")
    assert nemesis.invoke("terminate", "worker-2")
    assert not restarted(cluster, "worker-2", within_s=0.4)


def test_never_means_never_and_nothing_restarts_after_the_end() -> None:
    cluster, _, nemesis = make("never")
    nemesis.invoke("kill", "worker-1")
    assert not restarted(cluster, "worker-1", within_s=0.4)
    cluster2, sup2, nemesis2 = make("always")
    sup2.stop_restarting()
    nemesis2.invoke("kill", "worker-1")
    assert not restarted(cluster2, "worker-1", within_s=0.4)


def test_scale_up_then_down_terminates_the_newest_through_the_nemesis() -> None:
    cluster, sup, _ = make(workers=2)
    assert sup.scale(4) == ["worker-3", "worker-4"]
    changed = sup.scale(1)
    assert sorted(changed) == ["worker-2", "worker-3", "worker-4"]
    assert [w for w in cluster.workers() if cluster.is_running(w)] == ["worker-1"]
    faults = [e for e in cluster.recorder.snapshot().of_type(vocab.FAULT)
              if e.get("fault") == "terminate"]
    assert sorted(str(f.get("target")) for f in faults) == ["worker-2", "worker-3", "worker-4"]


def test_stop_all_terminates_every_running_worker() -> None:
    cluster, sup, _ = make("always", workers=3)
    sup.stop_all()
    assert not any(cluster.is_running(w) for w in cluster.workers())
    assert sorted(c for c in cluster.calls if c[0] == "terminate") == [
        ("terminate", w) for w in ("worker-1", "worker-2", "worker-3")]
    assert not restarted(cluster, "worker-1", within_s=0.4)


def test_connection_churn_does_not_keep_the_workers_busy() -> None:
    """The drain's "workers quiet" rule counts task events only: a worker refused
    over and over (an exclusive consumer elsewhere) reconnects forever and holds
    no task."""
    live = LiveState()
    assert live.quiet_for() == float("inf")
    for kind in ("connected", "connection_lost", "shutdown"):
        live.on_event(Event.from_dict({"t": 0.0, "ts": 0.0, "type": kind,
                                       "source": "worker", "worker": "w1"}))
    assert live.quiet_for() == float("inf")
    # Back and consuming after a fault: redeliveries may follow that no line shows.
    live.on_event(Event.from_dict({"t": 0.0, "ts": 0.0, "type": "ready",
                                   "source": "worker", "worker": "w1"}))
    assert live.quiet_for() < 1.0


class _Orchestrated(FakeCluster):
    """A backend whose orchestrator restarts and stops the workers (swarm)."""

    @property
    def restarts_itself(self) -> bool:
        return True

    def stop_workers(self, grace_s: float) -> bool:
        self.calls.append(("stop_workers", str(grace_s)))
        return True


def test_an_orchestrator_that_restarts_leaves_the_supervisor_out() -> None:
    rec = Recorder(None)
    cluster = _Orchestrated(recorder=rec)
    sc = Scenario(name="s", path="s.yaml", claims=("no-loss",),
                  cluster=ClusterSpec(workers=2, restart_policy="always", grace_s=1.0))
    sup = Supervisor(cluster, sc, WorkerSpec(), rec, LiveState(), Path("."), [])
    sup.nemesis = nemesis = Nemesis(cluster, rec, grace_s=1.0)
    sup.restart_delay_s = 0.05
    sup.add_worker()
    sup.add_worker()
    assert nemesis.invoke("kill", "worker-1")
    assert not restarted(cluster, "worker-1", within_s=0.4)  # swarm's job, not a second one
    sup.stop_all()
    assert ("stop_workers", "1.0") in cluster.calls
    assert not [c for c in cluster.calls if c[0] == "terminate"]
