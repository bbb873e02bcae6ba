"""The ``swarm`` backend on this machine's engine: real services, real tasks, swarm's
own restart policy and HEALTHCHECK.

Every test checks that the run left nothing: no service, network, volume, secret
or config of the harness, and the engine's swarm state as it was before.

``scripts/test.sh`` runs this module on its own, after the rest: Docker's ``swarm
leave`` drops the DNS names of every container running then (moby/moby#45144), so
the harness keeps its swarm while another run's containers are up, and the tests
that check it left the swarm need an engine with none.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cluster.base import ClusterError
from harness.cluster.docker import (
    BROKER_IMAGE,
    LABEL,
    LABEL_RUN,
    WORKER_IMAGE,
    connect,
    sweep_stale,
)
from harness.cluster.swarm_engine import (
    GWBRIDGE,
    SwarmLease,
    dns_dependents,
    leave_kept_swarm,
    made_by_harness,
    swarm_state,
    sweep_stale_swarm,
)
from harness.flock import turnstile

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.xdist_group("swarm")]
# ``xdist_group`` alone did not keep these tests on one worker in CI (pytest-xdist 3.8
# names groups through ``item._nodeid``, which pytest 9 no longer reads). A test
# that compares the engine's whole swarm state before and after holds this lock
# exclusively; a run that checks only its own objects holds it shared (the harness
# supports runs side by side on one swarm), so two of those overlap.
SERIAL_LOCK = "/tmp/rmq-harness-swarm-tests"  # .lock and .turnstile
SERIAL_WAIT_S = 1200.0

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    try:
        client = connect(timeout_s=10)
    except ClusterError as exc:
        pytest.skip(str(exc))
    for image in (BROKER_IMAGE, WORKER_IMAGE):
        try:
            client.images.get(image)
        except Exception:
            pytest.skip(f"image {image} missing: run `harness images build --offline`")
    yield client
    client.close()


def engine_state(client: Any) -> tuple[str, bool]:
    """The swarm state and whether ``docker_gwbridge`` exists."""
    names = {n.name for n in client.networks.list()}
    return swarm_state(client), GWBRIDGE in names


def leftovers(client: Any) -> list[str]:
    """Every swarm object of the harness on the engine (any run): services, secrets,
    configs, swarm networks, task containers and the brokers' volumes. Docker runs
    of the other xdist worker have none of these."""
    f = {"label": f"{LABEL}=1"}
    out = [f"container:{c.name}" for c in client.containers.list(all=True, filters=f)
           if "com.docker.swarm.task.id" in (c.labels or {})]
    out += [f"volume:{v.name}" for v in client.volumes.list(filters=f)
            if v.name.endswith("-rabbitmq-data")]
    if swarm_state(client) == "active":
        out += [f"network:{n.name}" for n in client.networks.list(filters=f)
                if n.attrs.get("Scope") == "swarm"]
        out += [f"service:{s.name}" for s in client.services.list(filters=f)]
        out += [f"secret:{s.name}" for s in client.secrets.list(filters=f)]
        out += [f"config:{c.name}" for c in client.configs.list(filters=f)]
    return out


@contextlib.contextmanager
def swarm_lock(*, exclusive: bool) -> Iterator[None]:
    """Hold the swarm tests' lock, bounded wait; an exclusive taker keeps new shared
    ones out while it waits (without that, the other xdist worker's runs followed
    one another and kept an exclusive test waiting 206 s)."""
    with turnstile(SERIAL_LOCK, exclusive=exclusive, timeout_s=SERIAL_WAIT_S,
                   waiting_for="another swarm test to leave the engine"):
        yield


@pytest.fixture
def serial() -> Iterator[None]:
    with swarm_lock(exclusive=True):
        yield


@pytest.fixture
def clean_engine(engine: Any, serial: None) -> Iterator[tuple[str, bool]]:
    """The engine's state before the test; after it, the same state and nothing left
    of any swarm run."""
    before = engine_state(engine)
    assert not leftovers(engine)
    yield before
    left = leftovers(engine)
    assert not left, left
    assert engine_state(engine) == before


@pytest.fixture
def own_run(engine: Any) -> Iterator[Path]:
    """A run beside other swarm runs: afterwards nothing of *its* own is left."""
    with swarm_lock(exclusive=False), tempfile.TemporaryDirectory(prefix="swarm-run-") as tmp:
        out = Path(tmp)
        yield out
        found = list(out.glob("runs/*/history.jsonl"))
        assert found, "no run"
        run_id = json.loads(found[0].read_text().splitlines()[0])["run_id"]
        f = {"label": f"{LABEL_RUN}={run_id}"}
        left = [c.name for c in engine.containers.list(all=True, filters=f)]
        left += [v.name for v in engine.volumes.list(filters=f)]
        left += [n.name for n in engine.networks.list(filters=f)]
        if swarm_state(engine) == "active":
            left += [x.name for x in engine.services.list(filters=f)]
        assert not left, left


def with_bug(scenario: str, bug: str, tmp: Path) -> str:
    """A copy of ``scenario`` whose workers run the planted ``bug`` (as mutants do)."""
    raw = yaml.safe_load((SCENARIOS / scenario).read_text(encoding="utf-8"))
    raw.setdefault("cluster", {}).setdefault("env", {})["WORKER_BUG"] = bug
    path = tmp / f"{bug}-{scenario}"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return str(path)


def run(scenario: str, out: Path, *extra: str, seed: int = 7) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any], list[dict[str, Any]]]:
    """``harness run`` on swarm: ``scenario`` is a bundled name or a path."""
    out = out / "runs"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(SCENARIOS / scenario), "--backend",
         "swarm", "--seed", str(seed), "--out", str(out), "--no-progress", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((dirs[0] / "result.json").read_text())
    with open(dirs[0] / "history.jsonl") as f:
        events = [json.loads(line) for line in f]
    return proc, {c["claim"]: c for c in result["claims"]}, events


def test_a_lease_makes_a_swarm_and_the_last_one_leaves_it(engine: Any, serial: None) -> None:
    before = engine_state(engine)
    if before[0] != "inactive":
        pytest.skip("the engine is a swarm already: the harness must not leave it")
    first, second = SwarmLease(engine), SwarmLease(engine)
    try:
        first.acquire()
        assert first.created and made_by_harness(engine)
        gw = engine.networks.get(GWBRIDGE)
        assert gw.attrs["Options"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
        second.acquire()
        assert not second.created  # joined the swarm the first one made
        assert first.release() is False  # the second still holds it
        assert swarm_state(engine) == "active"
        assert second.release() is True
    finally:
        first.release()
        second.release()
    assert engine_state(engine) == before


def test_a_container_that_would_lose_its_dns_name_keeps_the_swarm(
        engine: Any, serial: None) -> None:
    """While a container runs on a user network, the harness keeps the swarm it made
    (a leave would drop the container's DNS name) and says why; the container still
    resolves its peer; once it has stopped, a docker-backend run's end leaves it."""
    before = engine_state(engine)
    if before[0] != "inactive" or dns_dependents(engine):
        pytest.skip("needs an engine without a swarm and without running containers on "
                    "user networks")
    tag = f"it-dns-{os.getpid()}"
    net = engine.networks.create(tag, driver="bridge")
    boxes = [engine.containers.run(WORKER_IMAGE, entrypoint=["sleep", "120"], detach=True,
                                   name=f"{tag}-{n}", network=tag) for n in ("a", "b")]
    lease = SwarmLease(engine)
    try:
        lease.acquire()
        assert lease.created
        assert lease.release() is False
        assert f"{tag}-a" in lease.kept and "DNS" in lease.kept, lease.kept
        assert swarm_state(engine) == "active"
        code, out = boxes[0].exec_run(["getent", "hosts", f"{tag}-b"])
        assert code == 0, out  # its peer's name still resolves
        for box in boxes:
            box.remove(force=True)
        boxes = []
        assert leave_kept_swarm(engine), "the swarm nothing uses now was not left"
    finally:
        for box in boxes:
            box.remove(force=True)
        net.remove()
        lease.release()
    assert engine_state(engine) == before


def test_crash_recovery_on_swarm(own_run: Path) -> None:
    proc, claims, events = run("crash-recovery.yaml", own_run)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert {c: v["valid"] for c, v in claims.items()} == {
        "no-loss": "true", "exactly-once-ack": "true", "redelivery-after-crash": "true",
        "no-duplicate-processing": "true"}, proc.stdout[-3000:]
    started = [e for e in events if e["type"] == "worker_started"]
    # Three slots, one task each; restart_policy never: swarm replaces none.
    assert sorted(e["worker"] for e in started) == ["worker-1", "worker-2", "worker-3"]
    assert all(e["task"] and e["slot"] in (1, 2, 3) and e["replaces"] is None for e in started)
    kills = [e for e in events if e["type"] == "fault" and e.get("fault") == "kill"]
    assert len(kills) == 1
    target = kills[0]["target"]
    exits = [e for e in events if e["type"] == "worker_exited" and e["worker"] == target]
    assert exits[0]["requested"] is True and exits[0]["task_state"] == "failed"
    assert "--backend swarm" in proc.stdout  # the rerun command names the backend


def test_the_only_path_to_the_broker_is_the_internal_network(engine: Any,
                                                           tmp_path: Path) -> None:
    """A worker reaches the broker on the internal overlay only (on a network it
    shared with the broker, the broker's name resolved there too, and a blackhole
    named the wrong address): the broker sees the worker's internal address, and
    close-connections, which matches on it, closes its connection."""
    from harness.cluster.base import WorkerSpec
    from harness.cluster.swarm import SwarmCluster
    from harness.history import Recorder

    with swarm_lock(exclusive=False):
        rec = Recorder(tmp_path / "history.jsonl")
        c = SwarmCluster(f"it-path-{os.getpid()}", tmp_path, rec)
        try:
            c.start_broker()
            c.start_worker("worker-1", WorkerSpec(env={"RABBITMQ_QUEUE": "q.path"}))
            ip = c.container_ip("worker-1")
            assert ip is not None
            _, conns = c.worker_connections("worker-1")
            deadline = time.monotonic() + 30
            while not conns and time.monotonic() < deadline:
                time.sleep(0.5)
                _, conns = c.worker_connections("worker-1")
            assert conns, "the broker lists no connection from the worker's internal address"
            assert c.close_connections("worker-1") >= 1
        finally:
            c.stop()
            rec.close()
        f = {"label": f"{LABEL_RUN}=it-path-{os.getpid()}"}
        assert not engine.containers.list(all=True, filters=f)
        assert not engine.networks.list(filters=f)


def test_a_planted_bug_is_caught_on_swarm(own_run: Path) -> None:
    proc, claims, _ = run(with_bug("crash-recovery.yaml", "ack-before-process", own_run),
                          own_run)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert claims["no-loss"]["valid"] == "false", claims["no-loss"]


def test_swarm_replaces_a_task_whose_liveness_fails(own_run: Path) -> None:
    """The planted beat-when-idle bug: the long task's holder reads as hung, swarm's
    HEALTHCHECK (/livez) fails and swarm replaces the task; the history shows it."""
    proc, claims, events = run(with_bug("liveness-long-task.yaml", "beat-when-idle", own_run),
                               own_run)
    replaced = [e for e in events if e["type"] == "worker_started" and e.get("replaces")]
    assert replaced, proc.stdout[-3000:]
    assert all("unhealthy" in str(e["replaces"]["error"])
               or e["replaces"]["health"] == "unhealthy" for e in replaced), replaced
    unasked = [e for e in events if e["type"] == "worker_exited" and not e["requested"]]
    assert {e["worker"] for e in unasked} >= {e["worker"] for e in replaced}
    assert claims["no-loss"]["valid"] == "true", claims["no-loss"]


def test_no_replacement_of_a_correct_worker(own_run: Path) -> None:
    proc, claims, events = run("liveness-long-task.yaml", own_run)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not [e for e in events if e["type"] == "worker_started" and e.get("replaces")]
    assert not [e for e in events if e["type"] == "worker_exited" and not e["requested"]]
    assert all(v["valid"] == "true" for v in claims.values()), claims


def test_ctrl_c_leaves_nothing_and_the_swarm_as_found(clean_engine: tuple[str, bool],
                                                      tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(SCENARIOS / "crash-recovery.yaml"),
         "--backend", "swarm", "--seed", "7", "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    history = None
    while time.monotonic() < deadline:  # until a worker processed a task
        found = list(tmp_path.glob("*/history.jsonl"))
        if found and '"processed"' in found[0].read_text():
            history = found[0]
            break
        time.sleep(0.5)
    assert history is not None
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]


def test_a_killed_harness_is_swept_and_the_swarm_left_as_found(
        clean_engine: tuple[str, bool], tmp_path: Path, engine: Any) -> None:
    """SIGKILL leaves the run's services behind (nothing of the harness runs to
    remove them); the next swarm run's sweep removes them by label, and that run's
    end leaves the swarm the killed one made."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(SCENARIOS / "crash-recovery.yaml"),
         "--backend", "swarm", "--seed", "7", "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not leftovers(engine):
        time.sleep(0.5)
    time.sleep(2.0)  # its broker service and networks exist
    proc.kill()
    proc.wait(timeout=30)
    assert any(x.startswith("service:") for x in leftovers(engine))
    lease = SwarmLease(engine)
    lease.acquire()  # as the next swarm run does, then its sweep
    try:
        deadline = time.monotonic() + 60
        while leftovers(engine) and time.monotonic() < deadline:
            sweep_stale_swarm(engine)
            sweep_stale(engine)
            time.sleep(1.0)
    finally:
        lease.release()
