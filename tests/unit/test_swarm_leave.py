"""When the harness leaves a swarm it made (``harness.cluster.swarm_engine``): never
while a running container would lose its DNS name (Docker's ``swarm leave`` drops
the embedded-DNS names of every container running then, moby/moby#45144) or a
docker-backend run holds the engine lock; otherwise it leaves and removes its own
``docker_gwbridge``. A fake engine; the real one is in tests/integration/test_swarm.py."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cluster.docker.engine import ENGINE_LOCK_PATH
from harness.cluster.swarm_engine import (
    GWBRIDGE,
    NODE_LABEL,
    SwarmLease,
    dns_dependents,
    leave_if_unused,
    leave_kept_swarm,
)
from harness.flock import FileLock
from harness.history import Recorder


@dataclass
class Obj:
    attrs: dict[str, Any]
    id: str = "c" * 64
    name: str = ""
    removed: bool = False

    def remove(self) -> None:
        self.removed = True

    def disconnect(self, name: str, force: bool = False) -> None:
        self.attrs["Containers"] = {}


def container(name: str, *nets: str, task: bool = False) -> Obj:
    labels = {"com.docker.swarm.task.id": "t1"} if task else {}
    return Obj({"Names": [f"/{name}"], "Labels": labels,
                "NetworkSettings": {"Networks": {n: {} for n in nets}}})


@dataclass
class FakeEngine:
    """The parts of ``docker.DockerClient`` the leave reads and calls."""

    state: str = "active"
    node_labels: dict[str, str] = field(default_factory=lambda: {NODE_LABEL: "1"})
    running: list[Obj] = field(default_factory=list)
    services_: list[Obj] = field(default_factory=list)
    gwbridge: Obj | None = field(default_factory=lambda: Obj(
        {"Labels": {NODE_LABEL: "1"}, "Containers": {"ingress-sbox": {}}}))
    leaves: int = 0

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"LocalNodeState": self.state, "NodeID": "n1"}}

    @property
    def nodes(self) -> Any:
        spec = {"Spec": {"Labels": self.node_labels}}
        return type("Nodes", (), {"get": lambda _s, _id: Obj(spec)})()

    @property
    def containers(self) -> Any:
        running = self.running
        return type("C", (), {"list": lambda _s, **_kw: list(running)})()

    @property
    def services(self) -> Any:
        svcs = self.services_
        return type("S", (), {"list": lambda _s, **_kw: list(svcs)})()

    # What a sweep of killed runs' objects lists: none here.
    secrets = configs = volumes = property(
        lambda _s: type("E", (), {"list": lambda _s, **_kw: []})())

    @property
    def networks(self) -> Any:
        import docker.errors

        engine = self

        class Nets:
            def list(self, **_kw: Any) -> list[Obj]:
                return []

            def get(self, name: str) -> Obj:
                assert name == GWBRIDGE
                if engine.gwbridge is None or engine.gwbridge.removed:
                    raise docker.errors.NotFound("no such network")
                return engine.gwbridge

        return Nets()

    @property
    def swarm(self) -> Any:
        engine = self

        class Swarm:
            def leave(self, force: bool = False) -> None:
                engine.leaves += 1
                engine.state = "inactive"

        return Swarm()


@pytest.fixture
def engine_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import harness.cluster.swarm_engine as swarm_engine

    monkeypatch.setattr(swarm_engine, "LEAVE_SETTLE_S", 0.0)  # a real engine's pause
    return tmp_path / "engine.lock"


def test_only_containers_on_a_network_with_embedded_dns_depend_on_it() -> None:
    engine = FakeEngine(running=[
        container("web", "shop_default"),  # a compose project's network: harmed
        container("plain", "bridge"),  # the default bridge has no embedded DNS
        container("hostnet", "host"),
        container("task", "ov", GWBRIDGE, task=True),  # goes with the swarm
        container("gw-only", GWBRIDGE),
        container("both", "bridge", "mynet"),
    ])
    assert dns_dependents(engine) == ["both", "web"]


def test_a_running_container_on_a_user_network_keeps_the_swarm(engine_lock: Path) -> None:
    engine = FakeEngine(running=[container("web-1", "shop_default")])
    left, why = leave_if_unused(engine, engine_lock)
    assert (left, engine.leaves, engine.state) == (False, 0, "active")
    assert "web-1" in why and "DNS" in why and "45144" in why


def test_a_docker_run_holding_the_engine_keeps_the_swarm(engine_lock: Path) -> None:
    """Its containers may be being created: the container check could miss them."""
    engine = FakeEngine()
    docker_run = FileLock(engine_lock)
    assert docker_run.take(fcntl.LOCK_SH, 0.0)
    try:
        left, why = leave_if_unused(engine, engine_lock)
    finally:
        docker_run.close()
    assert (left, engine.leaves) == (False, 0)
    assert "docker-backend run" in why
    assert leave_if_unused(engine, engine_lock) == (True, "")  # once it has ended


def test_nothing_in_the_way_leaves_and_removes_the_harness_gwbridge(engine_lock: Path) -> None:
    engine = FakeEngine(running=[container("plain", "bridge")])
    assert leave_if_unused(engine, engine_lock) == (True, "")
    assert engine.state == "inactive" and engine.gwbridge is not None
    assert engine.gwbridge.removed and engine.gwbridge.attrs["Containers"] == {}


@pytest.mark.parametrize("case", ["not-made-by-harness", "service-left"])
def test_a_swarm_in_use_or_not_the_harnesss_is_never_left(case: str, engine_lock: Path) -> None:
    engine = FakeEngine()
    if case == "not-made-by-harness":
        engine.node_labels = {}
    else:
        engine.services_ = [Obj({}, name="someone-elses")]
    assert leave_if_unused(engine, engine_lock) == (False, "")
    assert engine.leaves == 0 and engine.gwbridge is not None and not engine.gwbridge.removed


def test_a_gwbridge_an_earlier_leave_left_goes_the_next_time(engine_lock: Path) -> None:
    engine = FakeEngine(state="inactive")
    assert leave_if_unused(engine, engine_lock) == (False, "")
    assert engine.gwbridge is not None and engine.gwbridge.removed
    engine = FakeEngine(state="inactive", gwbridge=Obj({"Labels": {}, "Containers": {}}))
    leave_if_unused(engine, engine_lock)
    assert engine.gwbridge is not None and not engine.gwbridge.removed  # the engine's own


def test_release_says_why_it_kept_the_swarm(tmp_path: Path, engine_lock: Path) -> None:
    engine = FakeEngine(running=[container("db", "shop_default")])
    lease = SwarmLease(engine, lock_path=tmp_path / "swarm.lock", engine_lock_path=engine_lock)
    assert lease.release() is False and "db" in lease.kept
    engine.running.clear()
    assert lease.release() is True and lease.kept == ""


def test_release_while_another_run_uses_the_swarm_keeps_it_silently(
        tmp_path: Path, engine_lock: Path) -> None:
    engine = FakeEngine()
    other = FileLock(tmp_path / "swarm.lock")
    assert other.take(fcntl.LOCK_SH, 0.0)
    try:
        lease = SwarmLease(engine, lock_path=tmp_path / "swarm.lock",
                           engine_lock_path=engine_lock)
        assert lease.release() is False and lease.kept == ""
    finally:
        other.close()
    assert engine.leaves == 0


def test_a_file_lock_waits_a_bounded_time(tmp_path: Path) -> None:
    import time

    a, b = FileLock(tmp_path / "l"), FileLock(tmp_path / "l")
    assert a.take(fcntl.LOCK_SH, 0.0) and b.take(fcntl.LOCK_SH, 0.0)
    t0 = time.monotonic()
    assert b.take(fcntl.LOCK_EX, 0.3) is False  # a holds it shared
    assert 0.3 <= time.monotonic() - t0 < 2.0
    a.close()
    assert b.take(fcntl.LOCK_EX, 0.0) is True
    a.close()  # idempotent
    b.close()


def test_a_kept_swarm_is_left_by_a_later_run_when_nothing_uses_it(
        tmp_path: Path, engine_lock: Path) -> None:
    swarm_lock = tmp_path / "swarm.lock"
    engine = FakeEngine()
    docker_run, swarm_run = FileLock(engine_lock), FileLock(swarm_lock)
    assert docker_run.take(fcntl.LOCK_SH, 0.0) and swarm_run.take(fcntl.LOCK_SH, 0.0)
    assert leave_kept_swarm(engine, swarm_lock, engine_lock) == ""  # both in use
    swarm_run.close()
    assert leave_kept_swarm(engine, swarm_lock, engine_lock) == ""  # the docker run's
    docker_run.close()
    assert engine.leaves == 0
    assert "left the swarm" in leave_kept_swarm(engine, swarm_lock, engine_lock)
    assert engine.leaves == 1 and engine.state == "inactive"
    assert engine.gwbridge is not None and engine.gwbridge.removed
    engine = FakeEngine(node_labels={})  # a swarm the engine had: never left
    assert leave_kept_swarm(engine, swarm_lock, engine_lock) == "" and engine.leaves == 0


def test_the_docker_backend_takes_the_engine_lock_and_the_swarm_backend_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cluster.docker import cluster as docker_cluster
    from harness.cluster.swarm import SwarmCluster

    lock = tmp_path / "engine.lock"
    monkeypatch.setattr(docker_cluster, "ENGINE_LOCK_PATH", lock)
    free_at_stop: list[bool] = []

    def leave_kept(client: Any) -> str:
        probe = FileLock(lock)
        free_at_stop.append(probe.take(fcntl.LOCK_EX, 0.0))
        probe.close()
        return "left it"

    import harness.cluster.swarm_engine as swarm_engine

    monkeypatch.setattr(swarm_engine, "leave_kept_swarm", leave_kept)
    probe = FileLock(lock)
    docker_run = docker_cluster.DockerCluster("unit-d", tmp_path, Recorder(None),
                                              client=FakeEngine())
    assert probe.take(fcntl.LOCK_EX, 0.0) is False  # held shared by the docker run
    docker_run.stop()
    assert free_at_stop == [True] and docker_run.notices == ["left it"]
    assert probe.take(fcntl.LOCK_EX, 0.0) is True
    probe.close()
    swarm_run = SwarmCluster("unit-s", tmp_path, Recorder(None), client=FakeEngine())
    assert probe.take(fcntl.LOCK_EX, 0.0) is True  # its tasks go with its swarm
    probe.close()
    assert swarm_run.lease.engine_lock_path == ENGINE_LOCK_PATH


class ChangingService:
    """A service whose task list changes ``changes`` times (a scale-down's tasks
    stopping, then reaped), then stands still; or never leaves ``remove``."""

    def __init__(self, changes: int, stuck_remove: bool = False, broken: bool = False) -> None:
        self.changes = changes
        self.stuck_remove = stuck_remove
        self.broken = broken
        self.polls = 0
        self.removed_at_poll: int | None = None

    def tasks(self) -> list[dict[str, Any]]:
        if self.broken:
            raise RuntimeError("the engine said no")
        self.polls += 1
        n = min(self.polls, self.changes)
        desired = "remove" if self.stuck_remove else "shutdown"
        return [{"ID": f"t{i}", "DesiredState": desired, "Status": {"State": "shutdown"}}
                for i in range(n)]

    def remove(self) -> None:
        self.removed_at_poll = self.polls


def test_a_service_is_removed_only_once_its_tasks_stood_still(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker 20.10's manager crashed when a service was removed while the task
    reaper deleted its tasks (moby/swarmkit#3216): removal waits for a quiet task
    list, bounded; an unreadable list is no reason to keep the service."""
    import time

    from harness.cluster import swarm_engine

    monkeypatch.setattr(swarm_engine, "TASKS_POLL_S", 0.01)
    svc = ChangingService(changes=5)
    swarm_engine.remove_services_quietly([svc], quiet_s=0.1, timeout_s=5.0)
    assert svc.removed_at_poll is not None and svc.removed_at_poll >= 5 + 5  # 0.1 s still

    stuck = ChangingService(changes=1, stuck_remove=True)
    started = time.monotonic()
    swarm_engine.remove_services_quietly([stuck], quiet_s=0.05, timeout_s=0.5)
    took = time.monotonic() - started
    assert stuck.removed_at_poll is not None and 0.5 <= took < 3.0  # the bound, then removed

    broken = ChangingService(changes=1, broken=True)
    swarm_engine.remove_services_quietly([broken], quiet_s=5.0, timeout_s=10.0)
    assert broken.removed_at_poll == 0
