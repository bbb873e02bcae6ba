"""Integration test of a shared broker for the ``docker`` backend (real engine).

One ``SharedDockerBroker``; two ``DockerCluster`` runs in sequence against it, each
with its own vhost and a reference worker (``rmq-harness/worker:latest``). Needs a
Docker engine and the harness images (``harness images build --offline``); skipped
otherwise. Other harness runs may use the engine meanwhile: every leak check is by
this test's own session and run labels.
"""

from __future__ import annotations

import random
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from waiting import wait_until

from harness.broker import BrokerAdmin, parse_broker_url
from harness.cluster.base import BrokerEndpoint, ClusterError, WorkerSpec
from harness.cluster.docker import (
    BROKER_IMAGE,
    LABEL_RUN,
    LABEL_SHARED,
    WORKER_IMAGE,
    DockerCluster,
    SharedDockerBroker,
    connect,
    sweep_stale,
)
from harness.history import Recorder
from harness.model import Workload
from harness.netfault import SIDECAR_IMAGE
from harness.tasks import make_tasks
from harness.workload import Publisher

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.xdist_group("docker")]

QUEUE = "shared.tasks"
TASKS = 40


def worker_spec() -> WorkerSpec:
    """The reference worker with the env ``runner.worker_env`` gives (short retries)."""
    return WorkerSpec(env={
        "RABBITMQ_QUEUE": QUEUE,
        "WORKER_CONCURRENCY": "4",
        "WORKER_RETRY_BASE_MS": "200",
        "WORKER_MAX_ATTEMPTS": "3",
        "RABBITMQ_HEARTBEAT_S": "5",
        "WORKER_SHUTDOWN_GRACE_S": "3",
        "RABBITMQ_DLQ": f"{QUEUE}.dlq",
        "RABBITMQ_QUEUE_TYPE": "classic",
        "WORKER_RECONNECT_MAX_S": "1",
    })


def wait_for(pred: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    return wait_until(pred, timeout_s, 0.2)


def ids_of(rec: Recorder, type: str) -> set[str]:
    return {e.id for e in rec.snapshot() if e.type == type and e.id is not None}


def count(rec: Recorder, type: str, source: str | None = None) -> int:
    return sum(1 for e in rec.snapshot()
               if e.type == type and (source is None or e.source == source))


def labelled(client: Any, label: str) -> tuple[list[str], list[str]]:
    """Names of containers and networks with ``label`` (``key=value``), via the CLI."""
    ps = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter",
                         f"label={label}"], capture_output=True, text=True, timeout=30)
    ls = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}", "--filter",
                         f"label={label}"], capture_output=True, text=True, timeout=30)
    assert ps.returncode == 0 and ls.returncode == 0, ps.stderr + ls.stderr
    return ps.stdout.split(), ls.stdout.split()


def publish(ep: BrokerEndpoint, rec: Recorder, prefix: str) -> set[str]:
    tasks = make_tasks(Workload(tasks=TASKS), random.Random(7), id_prefix=prefix)
    stats = Publisher(ep.amqp_url, QUEUE, rec, timeout_s=30).publish(tasks)
    assert stats.ok == TASKS, stats
    return {t.id for t in tasks}


@pytest.fixture(scope="module")
def client() -> Any:
    try:
        c = connect(timeout_s=10)
    except ClusterError as exc:
        pytest.skip(str(exc))
    for image in (BROKER_IMAGE, WORKER_IMAGE, SIDECAR_IMAGE):
        try:
            c.images.get(image)
        except Exception:
            pytest.skip(f"image {image} missing: run `harness images build --offline`")
    return c


@pytest.fixture(scope="module")
def shared(client: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[SharedDockerBroker]:
    broker = SharedDockerBroker(client=client)
    t0 = time.monotonic()
    with broker:
        broker.start(tmp_path_factory.mktemp("shared"))
        print(f"\n[figure] shared broker start (= an owned start_broker): "
              f"{time.monotonic() - t0:.2f} s")
        yield broker


def run_once(shared: SharedDockerBroker, client: Any, run_dir: Path, run_id: str,
             restart: bool) -> tuple[Recorder, set[str], set[str]]:
    """One run: vhost, one worker, TASKS tasks processed; a broker restart if asked.
    Returns its recorder, the ids it published and the queue names it saw."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rec = Recorder(run_dir / "history.jsonl")
    cl = DockerCluster(run_id, run_dir, rec, client=client, shared=shared)
    try:
        t0 = time.monotonic()
        ep = cl.start_broker()
        took = time.monotonic() - t0
        print(f"\n[figure] {run_id}: start_broker on the shared broker: {took * 1000:.0f} ms")
        assert took < 1.0
        assert ep.vhost == run_id and ep.amqp_url.endswith(f"/{run_id}")
        assert cl.vhost == run_id and shared.attached_runs() == [run_id]
        started = [e for e in rec.snapshot() if e.type == "broker_started"]
        assert len(started) == 1 and started[0].get("shared") == shared.session_id

        admin = BrokerAdmin(ep)
        assert admin.list_queues() == []  # a fresh vhost: nothing of an earlier run
        cl.start_worker("w1", worker_spec())
        assert wait_for(lambda: count(rec, "ready", "w1") >= 1), \
            (run_dir / "logs" / "w1.log").read_text()[-2000:]
        c = client.containers.get(cl.container_name("w1"))
        env = dict(x.split("=", 1) for x in c.attrs["Config"]["Env"])
        assert env["RABBITMQ_VHOST"] == run_id
        assert env["RABBITMQ_URL"] == f"amqp://guest:guest@rabbitmq:5672/{run_id}"
        assert c.labels[LABEL_SHARED] == shared.session_id
        assert shared.network_name in c.attrs["NetworkSettings"]["Networks"]

        # The worker's health endpoint, reached at its address on the shared network.
        url = cl.health_url("w1")
        ip_w1 = cl.container_ip("w1")
        assert url is not None and ip_w1 is not None and ip_w1 in url
        assert wait_for(lambda: _http_ok(url), 15)

        ids = publish(ep, rec, prefix=f"{run_id[-4:]}a")
        published = set(ids)
        assert wait_for(lambda: ids <= ids_of(rec, "processed")), \
            sorted(ids - ids_of(rec, "processed"))[:5]

        if restart:
            ip = shared.broker_ip
            t0 = time.monotonic()
            cl.restart_broker(stop_timeout_s=10)
            print(f"\n[figure] {run_id}: shared broker restart: {time.monotonic() - t0:.2f} s")
            assert shared.broker_ip == ip
            assert count(rec, "broker_stopped", "cluster") == 1
            assert count(rec, "broker_started", "cluster") == 2
            # The worker reconnects (a second "ready") and processes what comes next.
            assert wait_for(lambda: count(rec, "ready", "w1") >= 2, 40), \
                (run_dir / "logs" / "w1.log").read_text()[-2000:]
            more = publish(ep, rec, prefix=f"{run_id[-4:]}b")
            published |= more
            assert wait_for(lambda: more <= ids_of(rec, "processed")), \
                sorted(more - ids_of(rec, "processed"))[:5]

        # A partition on the shared network: disconnect, then back with the same alias.
        cl.partition("w1")
        assert cl.container_ip("w1") is None
        cl.heal_network("w1")
        assert cl.container_ip("w1") is not None
        net = client.containers.get(cl.container_name("w1")).attrs["NetworkSettings"][
            "Networks"][shared.network_name]
        assert "w1" in (net.get("Aliases") or [])
        # A blackhole works against the shared broker's address too (sidecar, then heal).
        cl.blackhole("w1")
        assert cl.active_faults() == {"w1": ["blackhole"]}
        cl.heal_network("w1")

        # An in-use shared broker survives a sweep.
        sweep_stale(client)
        assert client.containers.get(str(shared.container_id)).status == "running"
        assert client.networks.get(shared.network_name) is not None
        queues = {q.name for q in admin.list_queues()}
        assert QUEUE in queues
        admin.close()
    finally:
        t0 = time.monotonic()
        cl.stop()
        print(f"\n[figure] {run_id}: stop (1 worker, vhost, log copy): "
              f"{time.monotonic() - t0:.2f} s")
        cl.stop()  # idempotent
        rec.close()
    return rec, published, queues


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except Exception:
        return False


def _vhosts(shared: SharedDockerBroker) -> set[str]:
    ip = shared.broker_ip
    req = urllib.request.Request(f"http://{ip}:15672/api/vhosts",
                                 headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    import json

    with urllib.request.urlopen(req, timeout=10) as resp:
        return {str(v["name"]) for v in json.loads(resp.read())}


def test_two_runs_share_one_broker(client: Any, shared: SharedDockerBroker,
                                   tmp_path: Path) -> None:
    sid = shared.session_id
    runs = [f"t{uuid.uuid4().hex[:8]}" for _ in range(2)]

    rec1, ids1, q1 = run_once(shared, client, tmp_path / "r1", runs[0], restart=True)
    assert labelled(client, f"{LABEL_RUN}={runs[0]}") == ([], [])
    assert runs[0] not in _vhosts(shared)
    assert shared.attached_runs() == []
    log1 = (tmp_path / "r1" / "logs" / "rabbitmq.log").read_text()
    assert f"Adding vhost '{runs[0]}'" in log1  # the broker's lines of the run's window
    assert "Server startup complete" in log1  # the restart inside the run

    # The second run's fresh vhost holds none of the first run's queues (run_once checks
    # it is empty before its worker declares anything).
    rec2, ids2, q2 = run_once(shared, client, tmp_path / "r2", runs[1], restart=False)
    assert q1 == q2  # same queue names, but each run saw only its own vhost's
    assert ids_of(rec1, "processed") == ids1 and ids_of(rec2, "processed") == ids2
    assert count(rec2, "broker_stopped") == 0
    log2 = (tmp_path / "r2" / "logs" / "rabbitmq.log").read_text()
    # The window starts at run 2's start_broker: run 1's vhost creation is not in it.
    assert f"Adding vhost '{runs[1]}'" in log2 and f"Adding vhost '{runs[0]}'" not in log2
    assert "Server startup complete" not in log2  # no boot, no restart in run 2's window
    assert labelled(client, f"{LABEL_RUN}={runs[1]}") == ([], [])

    # The shared broker and network stay until the shared stop.
    containers, nets = labelled(client, f"{LABEL_SHARED}={sid}")
    assert containers == [f"rmq-harness-{sid}-rabbitmq"] and nets == [shared.network_name]
    shared_dir = shared._owner.run_dir if shared._owner is not None else None
    shared.stop()
    shared.stop()
    assert labelled(client, f"{LABEL_SHARED}={sid}") == ([], [])
    assert labelled(client, f"{LABEL_RUN}={sid}") == ([], [])
    assert shared_dir is not None and (shared_dir / "logs" / "rabbitmq.log").stat().st_size > 0
    with pytest.raises(ClusterError):
        DockerCluster(f"t{uuid.uuid4().hex[:8]}", tmp_path / "r3", Recorder(None),
                      client=client, shared=shared).start_broker()


def test_restart_refused_while_another_run_attached(client: Any, tmp_path: Path) -> None:
    with SharedDockerBroker(client=client) as shared:
        shared.start(tmp_path / "s")
        a = DockerCluster(f"t{uuid.uuid4().hex[:8]}", tmp_path / "a", Recorder(None),
                          client=client, shared=shared)
        b = DockerCluster(f"t{uuid.uuid4().hex[:8]}", tmp_path / "b", Recorder(None),
                          client=client, shared=shared)
        try:
            ea, eb = a.start_broker(), b.start_broker()
            assert ea.vhost != eb.vhost
            conn = pika.BlockingConnection(pika.URLParameters(ea.amqp_url))
            conn.channel().queue_declare("only-in-a", durable=True)
            conn.close()
            assert BrokerAdmin(eb).queue_info("only-in-a") is None
            assert BrokerAdmin(ea).queue_info("only-in-a") is not None
            with pytest.raises(ClusterError, match="also in use"):
                a.restart_broker()
            with pytest.raises(ClusterError, match="external"):
                a.start_broker(parse_broker_url("amqp://elsewhere"))
        finally:
            a.stop()
            b.stop()
        assert shared.attached_runs() == []
        assert {a.run_id, b.run_id}.isdisjoint(_vhosts(shared))
    assert labelled(client, f"{LABEL_SHARED}={shared.session_id}") == ([], [])


def test_shared_broker_errors(client: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SharedDockerBroker("no-prefix", client=client)
    idle = SharedDockerBroker(client=client)
    cl = DockerCluster(f"t{uuid.uuid4().hex[:8]}", tmp_path, Recorder(None), client=client,
                       shared=idle)
    with pytest.raises(ClusterError, match="not started"):
        cl.start_broker()
    with pytest.raises(ClusterError, match="not started"):
        idle.new_vhost("x")
    cl.stop()
    idle.stop()  # never started: a no-op
    with pytest.raises(ValueError):
        DockerCluster("shared-x", tmp_path, Recorder(None), client=client, shared=idle)
