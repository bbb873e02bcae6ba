"""Integration tests of the ``docker`` backend (real engine, real containers).

Needs a running Docker engine and the images ``rmq-harness/base:bookworm`` and
``rmq-harness/rabbitmq:latest`` (``harness images build --offline``); skipped
otherwise. Test workers are tiny ``python3 -c`` programs on the base image, so the
backend is tested apart from the reference worker (one test uses the worker image
when it exists).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from harness.broker import parse_broker_url
from harness.cluster.base import ClusterError, WorkerSpec
from harness.cluster.docker import (
    BROKER_IMAGE,
    LABEL,
    LABEL_HOST,
    LABEL_PID,
    LABEL_RUN,
    WORKER_IMAGE,
    DockerCluster,
    connect,
    sweep_stale,
)
from harness.history import Event, Recorder
from harness.netfault import SIDECAR_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.integration]

BASE = SIDECAR_IMAGE

# A fake worker: JSON event lines every 0.2 s (bounded: 10 minutes), exit 0 on SIGTERM.
FAKE_WORKER = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
wid = os.environ["WORKER_ID"]
print(json.dumps({"event": "ready", "worker": wid, "ts": time.time(),
                  "host": os.environ["RABBITMQ_HOST"], "url": os.environ["RABBITMQ_URL"],
                  "queue": os.environ.get("RABBITMQ_QUEUE"),
                  "health_port": os.environ["HEALTH_PORT"]}), flush=True)
print("a plain line, not an event", flush=True)
print(json.dumps({"event": "connected", "id": "no-ts"}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
for i in range(3000):
    print(json.dumps({"event": "processed", "id": f"t{i}", "worker": wid, "ts": time.time()}),
          flush=True)
    time.sleep(0.2)
"""

REGEX_WORKER = r"""
import time
for i in range(3000):
    print(f"INFO done task=r{i} by=bob", flush=True)
    time.sleep(0.2)
"""


def _engine() -> Any:
    try:
        return connect(timeout_s=10)
    except ClusterError as exc:
        pytest.skip(str(exc))


def _need(client: Any, *images: str) -> None:
    for image in images:
        try:
            client.images.get(image)
        except Exception:
            pytest.skip(f"image {image} missing: run `harness images build --offline`")


def fake_spec(script: str = FAKE_WORKER, events: str = "json") -> WorkerSpec:
    return WorkerSpec(
        command=("python3", "-c", script), image=BASE,
        env={"RABBITMQ_QUEUE": "go.logger", "WORKER_CONCURRENCY": "2"}, events=events,
    )


def wait_for(pred: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    return wait_until(pred, timeout_s, 0.1)


def events(rec: Recorder, type: str, source: str | None = None,
           worker: str | None = None) -> list[Event]:
    return [
        e for e in rec.snapshot()
        if e.type == type and (source is None or e.source == source)
        and (worker is None or e.worker == worker)
    ]


def tcp_probe(container: Any, host: str, port: int = 5672, timeout_s: float = 2.0) -> str:
    """Connect from inside ``container``'s network namespace: 'ok' or the error name."""
    code = (
        "import socket,sys\n"
        f"try:\n socket.create_connection(({host!r},{port}),timeout={timeout_s}).close();"
        "print('ok')\n"
        "except Exception as e:\n print(type(e).__name__)\n"
    )
    res = container.exec_run(["python3", "-c", code])
    return str(res.output.decode().strip())


def rules_in_netns(client: Any, container_id: str) -> str:
    """``iptables -S`` in a container's namespace, from a throwaway NET_ADMIN sidecar."""
    out = client.containers.run(
        BASE, ["iptables", "-S"], network_mode=f"container:{container_id}",
        cap_add=["NET_ADMIN"], remove=True, labels={LABEL: "1", "rmq-harness.test": "1"},
    )
    return str(out.decode())


def run_objects(client: Any, run_id: str) -> tuple[list[Any], list[Any]]:
    flt = {"label": f"{LABEL_RUN}={run_id}"}
    return client.containers.list(all=True, filters=flt), client.networks.list(filters=flt)


@pytest.fixture(scope="module")
def client() -> Any:
    c = _engine()
    _need(c, BASE, BROKER_IMAGE)
    return c


@pytest.fixture(scope="module")
def cluster(client: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[DockerCluster, Recorder]]:
    run_dir = tmp_path_factory.mktemp("docker-run")
    rec = Recorder(run_dir / "history.jsonl")
    run_id = f"t{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    cl = DockerCluster(run_id, run_dir, rec, client=client)
    try:
        cl.start_broker()
        print(f"\n[figure] DockerCluster start -> broker ready: {time.monotonic() - t0:.2f} s")
        yield cl, rec
    finally:
        cl.stop()
        rec.close()


# -- broker -------------------------------------------------------------------------
def test_broker_reachable_from_host(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    import pika

    cl, rec = cluster
    ep = cl.endpoint
    assert ep is not None
    conn = pika.BlockingConnection(pika.URLParameters(ep.amqp_url))
    conn.channel().queue_declare("docker-backend-test", auto_delete=True)
    conn.close()
    req = urllib.request.Request(f"{ep.management_url}/api/overview",
                                 headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    net = client.networks.get(cl.network_name)
    assert net.attrs["Internal"] is True
    assert net.attrs["Labels"][LABEL] == "1" and net.attrs["Labels"][LABEL_RUN] == cl.run_id
    assert events(rec, "broker_started", "cluster")


def test_an_external_broker_needs_a_cluster_without_one(
        cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, _ = cluster  # started, with a broker of its own
    with pytest.raises(ClusterError, match="external"):
        cl.start_broker(parse_broker_url("amqp://guest:guest@127.0.0.1:5999/%2F"))


# -- workers and events --------------------------------------------------------------------
def test_worker_events_recorded(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    cl, rec = cluster
    t0 = time.monotonic()
    names = [f"ev-{i}" for i in range(3)]
    for n in names:
        cl.start_worker(n, fake_spec())
    print(f"\n[figure] start 3 worker containers: {time.monotonic() - t0:.2f} s")
    try:
        assert wait_for(lambda: all(
            len(events(rec, "processed", n)) >= 3 for n in names), 30)
        ready = events(rec, "ready", "ev-0")[0]
        assert ready.get("host") == "rabbitmq"
        assert ready.get("url") == "amqp://guest:guest@rabbitmq:5672/%2F"
        assert ready.get("queue") == "go.logger" and ready.get("health_port") == "8080"
        no_ts = events(rec, "connected", "ev-0")[0]
        assert no_ts.id == "no-ts" and abs(no_ts.ts - time.time()) < 60  # docker's timestamp
        started = events(rec, "worker_started", "cluster", "ev-0")
        assert started and started[0].get("container")
        log = (cl.run_dir / "logs" / "ev-0.log").read_text()
        assert "a plain line, not an event" in log and "to stderr" in log
        c = client.containers.get(cl.container_name("ev-0"))
        assert c.attrs["HostConfig"]["Privileged"] is False
        assert not c.attrs["HostConfig"]["CapAdd"]
        assert c.labels[LABEL_RUN] == cl.run_id
        url = cl.health_url("ev-0")
        assert url is not None and url.endswith(":8080/healthcheck")
        assert sorted(n for n in cl.workers() if n.startswith("ev-")) == names
    finally:
        for n in names:
            cl.remove_worker(n, grace_s=5)
    assert not any(n.startswith("ev-") for n in cl.workers())


def test_regex_events(cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, rec = cluster
    pattern = r"regex:done task=(?P<id>\S+) by=(?P<worker>\w+)"
    cl.start_worker("rx", fake_spec(REGEX_WORKER, pattern))
    try:
        assert wait_for(lambda: len(events(rec, "processed", "rx")) >= 2)
        e = events(rec, "processed", "rx")[0]
        # The source's name is the identity; the line's "by=bob" is kept as a claim.
        assert e.id == "r0" and e.worker == "rx" and e.get("claimed_worker") == "bob"
        assert e.ts > 0
    finally:
        cl.remove_worker("rx", grace_s=1)


def test_kill_pause_resume_restart_terminate(cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, rec = cluster
    n = "life"
    cl.start_worker(n, fake_spec())
    try:
        assert wait_for(lambda: len(events(rec, "processed", n)) >= 2)
        # pause: no events while frozen; resume: they come again.
        cl.pause(n)
        assert cl.is_running(n)
        time.sleep(0.5)
        before = len(events(rec, "processed", n))
        time.sleep(1.0)
        assert len(events(rec, "processed", n)) == before
        cl.resume(n)
        cl.resume(n)  # no-op
        assert wait_for(lambda: len(events(rec, "processed", n)) > before + 1)
        # kill
        cl.kill(n)
        assert wait_for(lambda: bool(events(rec, "worker_exited", "cluster", n)))
        ex = events(rec, "worker_exited", "cluster", n)[-1]
        assert ex.get("code") == 137 and ex.get("signal") == 9 and ex.get("requested") is True
        assert not cl.is_running(n)
        # restart after a kill: same container, events again, old lines not replayed
        cl.restart(n)
        assert cl.is_running(n)
        assert wait_for(lambda: len(events(rec, "ready", n)) == 2)
        time.sleep(1.0)
        ids = [e.id for e in events(rec, "processed", n)]
        assert ids.count("t0") == 2 and ids.count("t1") == 2  # two lives, no replay
        assert len(events(rec, "worker_started", "cluster", n)) == 2
        # restart of a live worker = terminate + start
        cl.restart(n, grace_s=5)
        assert wait_for(lambda: len(events(rec, "ready", n)) == 3)
        ex = events(rec, "worker_exited", "cluster", n)[-1]
        assert ex.get("code") == 0 and ex.get("requested") is True
        # terminate: SIGTERM handled -> 0
        assert cl.terminate(n, grace_s=5) == 0
        assert wait_for(lambda: len(events(rec, "worker_exited", "cluster", n)) == 3)
    finally:
        cl.remove_worker(n, grace_s=1)


def test_crash_is_not_requested(cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, rec = cluster
    script = "import time,sys; time.sleep(0.5); sys.exit(3)"
    cl.start_worker("crash", fake_spec(script))
    try:
        assert wait_for(lambda: bool(events(rec, "worker_exited", "cluster", "crash")))
        ex = events(rec, "worker_exited", "cluster", "crash")[0]
        assert ex.get("code") == 3 and ex.get("requested") is False and ex.get("signal") is None
    finally:
        cl.remove_worker("crash", grace_s=1)


def test_terminate_ignored_sigterm_kills_after_grace(
        cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, _ = cluster
    # PID 1 without a SIGTERM handler ignores SIGTERM (as in a Kubernetes pod).
    cl.start_worker("stubborn", fake_spec("import time; time.sleep(600)"))
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert cl.terminate("stubborn", grace_s=1.0) == 137
        assert 0.9 < time.monotonic() - t0 < 10
    finally:
        cl.remove_worker("stubborn", grace_s=1)


# -- network faults ---------------------------------------------------------------------
def _sidecars(client: Any, run_id: str) -> list[Any]:
    return list(client.containers.list(
        all=True, filters={"label": [f"{LABEL_RUN}={run_id}", "rmq-harness.role=sidecar"]}))


def test_blackhole_and_heal(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    cl, _ = cluster
    n = "bh"
    cl.start_worker(n, fake_spec())
    try:
        c = client.containers.get(cl.container_name(n))
        bip = cl.broker_ip
        assert bip is not None
        assert tcp_probe(c, bip) == "ok"
        cl.blackhole(n)
        assert cl.active_faults() == {n: ["blackhole"]}
        t0 = time.monotonic()
        assert tcp_probe(c, bip, timeout_s=2) == "TimeoutError"
        assert time.monotonic() - t0 >= 1.9
        assert tcp_probe(c, "rabbitmq", timeout_s=2) == "TimeoutError"
        assert bip in rules_in_netns(client, c.id)
        assert len(_sidecars(client, cl.run_id)) == 1
        assert not c.attrs["HostConfig"]["CapAdd"]  # the worker itself stays unprivileged
        cl.heal_network(n)
        cl.heal_network(n)  # idempotent
        assert cl.active_faults() == {}
        assert tcp_probe(c, bip) == "ok"
        assert bip not in rules_in_netns(client, c.id)
        assert _sidecars(client, cl.run_id) == []
    finally:
        cl.remove_worker(n, grace_s=1)


def test_reset_and_heal(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    cl, _ = cluster
    n = "rst"
    cl.start_worker(n, fake_spec())
    try:
        c = client.containers.get(cl.container_name(n))
        bip = cl.broker_ip
        assert bip is not None
        cl.reset_connections(n)
        cl.reset_connections(n)  # heals first, so still one set of rules
        t0 = time.monotonic()
        assert tcp_probe(c, bip) == "ConnectionRefusedError"
        assert time.monotonic() - t0 < 1.5  # a reset, not a timeout
        assert rules_in_netns(client, c.id).count("tcp-reset") == 2
        cl.heal_all()
        assert tcp_probe(c, bip) == "ok"
        assert bip not in rules_in_netns(client, c.id)
        assert _sidecars(client, cl.run_id) == []
    finally:
        cl.remove_worker(n, grace_s=1)


ESTABLISHED_PROBE = r"""
import socket, time
s = socket.create_connection(("rabbitmq", 5672), timeout=5)
s.sendall(b"AMQP\x00\x00\x09\x01")
assert s.recv(7)  # connection.start frame header
time.sleep(3)     # the fault is injected meanwhile
try:
    s.sendall(b"\x08\x00\x00\x00\x00\x00\x00\xce")  # a heartbeat frame
    time.sleep(0.5)
    s.sendall(b"\x08\x00\x00\x00\x00\x00\x00\xce")
    data = s.recv(4096)
    print("eof" if not data else "data")
except Exception as e:
    print(type(e).__name__)
"""


def test_reset_breaks_an_established_connection(
        cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    import threading

    cl, _ = cluster
    n = "rst2"
    cl.start_worker(n, fake_spec())
    try:
        c = client.containers.get(cl.container_name(n))
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(
            c.exec_run(["python3", "-c", ESTABLISHED_PROBE]).output.decode().strip()))
        t.start()
        time.sleep(1.5)
        cl.reset_connections(n)
        t.join(30)
        assert out and out[0].splitlines()[-1] in ("ConnectionResetError", "BrokenPipeError"), out
    finally:
        cl.heal_all()
        cl.remove_worker(n, grace_s=1)


def test_partition_and_heal(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    cl, _ = cluster
    n = "part"
    cl.start_worker(n, fake_spec())
    cl.start_worker("peer", fake_spec())
    try:
        c = client.containers.get(cl.container_name(n))
        peer = client.containers.get(cl.container_name("peer"))
        bip = cl.broker_ip
        assert bip is not None
        cl.partition(n)
        assert cl.health_url(n) is None
        assert tcp_probe(c, bip) in ("OSError", "TimeoutError")
        cl.heal_all()
        cl.heal_all()
        assert cl.health_url(n) is not None
        assert tcp_probe(c, "rabbitmq") == "ok"
        # reconnected with the same alias: the peer reaches it by name
        res = peer.exec_run(["getent", "hosts", n])
        assert res.exit_code == 0 and cl.container_ip(n) in res.output.decode()
    finally:
        cl.remove_worker(n, grace_s=1)
        cl.remove_worker("peer", grace_s=1)


def test_pause_healed_by_heal_all(cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, _ = cluster
    cl.start_worker("pz", fake_spec())
    try:
        cl.pause("pz")
        cl.heal_all()
        assert cl._status(cl._workers["pz"]) == "running"
    finally:
        cl.remove_worker("pz", grace_s=1)


def test_restart_broker(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    import pika

    cl, rec = cluster
    ep = cl.endpoint
    assert ep is not None
    conn = pika.BlockingConnection(pika.URLParameters(ep.amqp_url))
    conn.channel().queue_declare("durable-survives", durable=True)
    conn.close()
    cl.start_worker("bw", fake_spec())
    try:
        ip_before = cl.broker_ip
        t0 = time.monotonic()
        cl.restart_broker(stop_timeout_s=10)
        print(f"\n[figure] broker restart (stop + start + ready): {time.monotonic() - t0:.2f} s")
        assert cl.broker_ip == ip_before and cl.endpoint == ep
        conn = pika.BlockingConnection(pika.URLParameters(ep.amqp_url))
        ch = conn.channel()
        ch.queue_declare("durable-survives", passive=True)  # data persisted
        ch.queue_delete("durable-survives")
        conn.close()
        c = client.containers.get(cl.container_name("bw"))
        res = c.exec_run(["getent", "hosts", "rabbitmq"])
        assert res.exit_code == 0 and str(ip_before) in res.output.decode()
        assert tcp_probe(c, "rabbitmq") == "ok"
        assert len(events(rec, "broker_stopped", "cluster")) >= 1
    finally:
        cl.remove_worker("bw", grace_s=1)


def test_reference_worker_image(cluster: tuple[DockerCluster, Recorder], client: Any) -> None:
    _need(client, WORKER_IMAGE)
    cl, rec = cluster
    cl.start_worker("ref", WorkerSpec(env={"RABBITMQ_QUEUE": "docker-backend-ref"}))
    try:
        ok = wait_for(lambda: bool(events(rec, "connected", "ref") or events(rec, "ready", "ref")),
                      30)
        assert ok, (cl.run_dir / "logs" / "ref.log").read_text()[-2000:]
    finally:
        cl.remove_worker("ref", grace_s=5)


# -- teardown and sweeping ---------------------------------------------------------------
def test_stop_leaves_nothing(client: Any, tmp_path: Path) -> None:
    rec = Recorder(None)
    run_id = f"t{uuid.uuid4().hex[:8]}"
    cl = DockerCluster(run_id, tmp_path, rec, client=client)
    cl.stop()  # before anything started
    cl = DockerCluster(run_id, tmp_path, rec, client=client)
    cl.start_broker()
    cl.start_worker("w1", fake_spec())
    cl.start_worker("w2", fake_spec())
    cl.blackhole("w1")
    cl.partition("w2")
    cl.pause("w2")
    containers, nets = run_objects(client, run_id)
    assert len(containers) == 4 and len(nets) == 1  # broker, 2 workers, 1 sidecar
    cl.stop()
    cl.stop()
    containers, nets = run_objects(client, run_id)
    assert containers == [] and nets == []
    ps = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_RUN}={run_id}"],
                        capture_output=True, text=True, timeout=30)
    ls = subprocess.run(["docker", "network", "ls", "-q", "--filter",
                         f"label={LABEL_RUN}={run_id}"], capture_output=True, text=True, timeout=30)
    assert ps.stdout.strip() == "" and ls.stdout.strip() == ""
    assert (tmp_path / "logs" / "rabbitmq.log").stat().st_size > 0
    exits = [e for e in rec.snapshot() if e.type == "worker_exited"]
    assert len(exits) == 2 and all(e.get("requested") for e in exits)
    with pytest.raises(ClusterError):
        cl.start_worker("w3", fake_spec())


def test_sweep_stale_removes_dead_harness_objects(client: Any) -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    run_id = f"t{uuid.uuid4().hex[:8]}"
    live_id = f"t{uuid.uuid4().hex[:8]}"

    def labels(rid: str, pid: int) -> dict[str, str]:
        return {LABEL: "1", LABEL_RUN: rid, LABEL_PID: str(pid), LABEL_HOST: socket.gethostname()}

    containers: list[Any] = []
    net: Any = None
    try:
        net = client.networks.create(f"rmq-harness-{run_id}", internal=True,
                                     labels=labels(run_id, dead.pid))
        c1 = client.containers.create(BASE, ["true"], labels=labels(run_id, dead.pid),
                                      name=f"rmq-harness-{run_id}-w", network=net.name)
        other_host = {**labels(run_id, dead.pid), LABEL_HOST: "some-other-host"}
        c2 = client.containers.create(BASE, ["true"], labels=other_host)
        c3 = client.containers.create(BASE, ["true"], labels=labels(live_id, 1))  # pid 1 lives
        containers += [c1, c2, c3]
        sweep_stale(client)
        # Gone, whoever swept them: another test's DockerCluster (running in parallel)
        # sweeps on start-up too, so this call's own list may be empty.
        # The other sweeper may still be removing the network: poll, bounded.
        deadline = time.monotonic() + 15
        left, nets = run_objects(client, run_id)
        while nets and time.monotonic() < deadline:
            time.sleep(0.2)
            left, nets = run_objects(client, run_id)
        assert [c.id for c in left] == [c2.id] and nets == []
        assert run_objects(client, live_id)[0][0].id == c3.id
    finally:
        for c in containers:
            with contextlib.suppress(Exception):
                c.remove(force=True)
        if net is not None:
            with contextlib.suppress(Exception):
                net.remove()


def test_clear_errors(client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cl = DockerCluster(f"t{uuid.uuid4().hex[:8]}", tmp_path, Recorder(None), client=client,
                       broker_image="rmq-harness/nope:latest")
    try:
        with pytest.raises(ClusterError, match=r"image rmq-harness/nope:latest not found: run "):
            cl.start_broker()
    finally:
        cl.stop()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ClusterError, match="Docker engine not reachable at unix:///nonexistent"):
        DockerCluster("x", tmp_path, Recorder(None))


def test_broker_timeout_names_the_logs(client: Any, tmp_path: Path) -> None:
    run_id = f"t{uuid.uuid4().hex[:8]}"
    cl = DockerCluster(run_id, tmp_path, Recorder(None), client=client, broker_timeout_s=2.0)
    try:
        with pytest.raises(ClusterError, match=r"did not answer within 2 s .*last log lines: "):
            cl.start_broker()
    finally:
        cl.stop()
    assert run_objects(client, run_id) == ([], [])


def test_stop_during_start_up(client: Any, tmp_path: Path) -> None:
    import threading

    run_id = f"t{uuid.uuid4().hex[:8]}"
    cl = DockerCluster(run_id, tmp_path, Recorder(None), client=client)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            cl.start_broker()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=start)
    t.start()
    time.sleep(2.0)  # the broker container exists, RabbitMQ is still booting
    cl.stop()
    t.join(90)
    assert errors and isinstance(errors[0], ClusterError), errors
    assert run_objects(client, run_id) == ([], [])


def test_history_is_json_lines(cluster: tuple[DockerCluster, Recorder]) -> None:
    cl, rec = cluster
    rec.flush()
    lines = (cl.run_dir / "history.jsonl").read_text().splitlines()
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)
