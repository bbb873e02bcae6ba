"""The ``local`` backend against a real private RabbitMQ node and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pika
import psutil
import pytest
from waiting import wait_until

from harness import procs
from harness.broker import parse_broker_url
from harness.cluster.base import ClusterError, WorkerSpec
from harness.cluster.local import LocalCluster, free_port
from harness.history import Event, Recorder
from harness.nemesis import Nemesis

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# A trivial worker: prints JSON events, then waits (and says so on SIGTERM).
TRIVIAL = textwrap.dedent("""
    import json, os, signal, sys, time
    me = os.environ["WORKER_ID"]
    def say(event, **kw):
        print(json.dumps({"event": event, "worker": me, "ts": time.time(), **kw}), flush=True)
    def on_term(*_):
        say("shutdown")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    say("ready", health_port=os.environ["HEALTH_PORT"], url=os.environ["RABBITMQ_URL"])
    for i in range(3):
        say("processed", id=f"{me}-{i}", attempt=1)
    print("not json", flush=True)
    print("oops", file=sys.stderr, flush=True)
    n = 0
    while n < 600:
        time.sleep(0.1)
        n += 1
        if n % 10 == 0:
            say("connected", generation=n)  # a heartbeat of contract events
""")


def trivial_spec(**kw: object) -> WorkerSpec:
    return WorkerSpec(command=(sys.executable, "-c", TRIVIAL), **kw)  # type: ignore[arg-type]


def wait_for(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    return wait_until(pred, timeout_s, 0.05)


def events(rec: Recorder, type: str, **match: object) -> list[Event]:
    out = []
    for e in rec.snapshot().of_type(type):
        d = e.to_dict()
        if all(d.get(k) == v for k, v in match.items()):
            out.append(e)
    return out


def test_private_broker_answers(cluster: LocalCluster) -> None:
    assert cluster.endpoint is not None and cluster.admin is not None
    started = events(cluster.recorder, "broker_started")
    assert started and started[0].get("owned") is True
    assert 0 < (cluster.broker_startup_s or 0) < 60
    req = urllib.request.Request(cluster.endpoint.management_url + "/api/overview",
                                 headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(req, timeout=5) as resp:
        overview = json.loads(resp.read())
    assert overview["node"].startswith("harness-it-")
    port = int(cluster.endpoint.amqp_url.rsplit(":", 1)[1].split("/")[0])
    assert port not in (5672, 15672, 25672)
    assert cluster.admin.queue_info("nope") is None
    assert cluster.admin.passive_depth("nope") is None


def test_admin_observes_queues_and_connections(cluster: LocalCluster) -> None:
    assert cluster.endpoint is not None and cluster.admin is not None
    admin = cluster.admin
    params = pika.URLParameters(cluster.endpoint.amqp_url)
    params.client_properties = {"connection_name": "holder"}
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.queue_declare("obs.q", durable=True)
        for i in range(5):
            props = pika.BasicProperties(message_id=f"m{i}", delivery_mode=2) if i < 3 else None
            body = json.dumps({"id": f"b{i}"}).encode() if i == 3 else b"\xffnot json"
            ch.basic_publish("", "obs.q", body, props)
        assert wait_for(lambda: admin.passive_depth("obs.q") == 5)
        ch.basic_qos(prefetch_count=2)
        got: list[int] = []
        ch.basic_consume("obs.q", lambda c, m, p, b: got.append(m.delivery_tag))
        conn.process_data_events(time_limit=1.0)
        assert len(got) == 2

        def holder_seen() -> bool:
            info = admin.queue_info("obs.q")
            held = [c for c in admin.connections() if c.name == "holder"]
            return (info is not None and info.unacked == 2 and info.consumers == 1
                    and bool(held) and held[0].unacked == 2)
        assert wait_for(holder_seen, 15)
        assert [q.name for q in admin.list_queues("obs.")] == ["obs.q"]
    finally:
        conn.close()
    assert wait_for(lambda: admin.passive_depth("obs.q") == 5)
    assert admin.drain_ids("obs.q", limit=4) == ["m0", "m1", "m2", "b3"]
    assert admin.drain_ids("obs.q") == ["<unparseable>"]
    assert admin.drain_ids("obs.q") == []
    assert admin.drain_ids("missing.q") == []


def test_worker_events_and_logs(cluster: LocalCluster) -> None:
    cluster.start_worker("w-ev", trivial_spec())
    rec = cluster.recorder
    assert wait_for(lambda: len(events(rec, "processed", source="w-ev")) == 3)
    assert events(rec, "worker_started", worker="w-ev")[0].get("pid") > 0
    ready = events(rec, "ready", source="w-ev")[0]
    port = cluster.health_url("w-ev")
    assert port is not None and port.endswith(f":{ready.get('health_port')}/healthcheck")
    assert ready.get("url") == cluster.endpoint.amqp_url  # type: ignore[union-attr]
    assert [e.id for e in events(rec, "processed", source="w-ev")] == [
        "w-ev-0", "w-ev-1", "w-ev-2"]
    log = cluster.run_dir / "logs" / "w-ev.log"
    assert wait_for(lambda: "[stderr] oops" in log.read_text())
    assert "not json" in log.read_text()
    cluster.kill("w-ev")


def test_kill_pause_resume_terminate(cluster: LocalCluster) -> None:
    rec = cluster.recorder
    for n in ("w-k", "w-p", "w-t"):
        cluster.start_worker(n, trivial_spec())
    assert wait_for(lambda: all(events(rec, "ready", source=n) for n in ("w-k", "w-p", "w-t")))
    assert {"w-k", "w-p", "w-t"} <= set(cluster.workers())

    cluster.kill("w-k")
    assert not cluster.is_running("w-k")
    ex = events(rec, "worker_exited", worker="w-k")
    assert len(ex) == 1 and ex[0].get("requested") is True and ex[0].get("signal") == "SIGKILL"

    cluster.pause("w-p")
    assert cluster.is_running("w-p")
    time.sleep(0.3)
    ticks = len(events(rec, "connected", source="w-p"))
    time.sleep(1.5)
    assert len(events(rec, "connected", source="w-p")) == ticks  # frozen
    cluster.heal_all()
    assert wait_for(lambda: len(events(rec, "connected", source="w-p")) > ticks, 5)
    cluster.pause("w-p")
    code = cluster.terminate("w-p", grace_s=5)  # a paused worker still gets its SIGTERM
    assert code == 0 and events(rec, "shutdown", source="w-p")

    code = cluster.terminate("w-t", grace_s=5)
    assert code == 0
    assert not cluster.is_running("w-t")
    ex = events(rec, "worker_exited", worker="w-t")
    assert ex[0].get("requested") is True and ex[0].get("code") == 0
    # The exit comes after the worker's last words.
    seq = [e.type for e in rec.snapshot() if e.worker == "w-t"]
    assert seq.index("shutdown") < seq.index("worker_exited")


def test_crash_is_not_requested_and_restart(cluster: LocalCluster) -> None:
    rec = cluster.recorder
    spec = WorkerSpec(command=(sys.executable, "-c",
                               "import json;print(json.dumps({'event':'ready'}));exit(3)"))
    cluster.start_worker("w-c", spec)
    assert wait_for(lambda: bool(events(rec, "worker_exited", worker="w-c")))
    ex = events(rec, "worker_exited", worker="w-c")[0]
    assert ex.get("requested") is False and ex.get("code") == 3 and ex.get("signal") is None
    cluster.restart("w-c")
    assert wait_for(lambda: len(events(rec, "worker_exited", worker="w-c")) == 2)
    assert len(events(rec, "worker_started", worker="w-c")) == 2

    cluster.start_worker("w-r", trivial_spec())
    pid1 = cluster.pid("w-r")
    cluster.restart("w-r")  # live: terminated first, then a new process
    assert cluster.is_running("w-r") and cluster.pid("w-r") != pid1
    assert events(rec, "worker_exited", worker="w-r")[0].get("requested") is True
    with pytest.raises(ClusterError):
        cluster.start_worker("w-r", trivial_spec())
    cluster.kill("w-r")


HOLDER = textwrap.dedent("""
    import json, os, time, pika
    conn = pika.BlockingConnection(pika.URLParameters(os.environ["RABBITMQ_URL"]))
    ch = conn.channel()
    ch.queue_declare("busy.q", durable=True)
    ch.basic_qos(prefetch_count=3)
    ch.basic_consume("busy.q", lambda c, m, p, b: None)  # never acks
    print(json.dumps({"event": "ready"}), flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
""")


def test_busiest_by_connection(cluster: LocalCluster) -> None:
    """Found by the peer port of the worker's own connection (no connection_name)."""
    assert cluster.endpoint is not None
    conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
    ch = conn.channel()
    ch.queue_declare("busy.q", durable=True)
    for i in range(5):
        ch.basic_publish("", "busy.q", f"{i}".encode())
    conn.close()
    cluster.start_worker("w-idle", trivial_spec())
    cluster.start_worker("w-busy", WorkerSpec(command=(sys.executable, "-c", HOLDER)))
    try:
        assert wait_for(lambda: bool(events(cluster.recorder, "ready", source="w-busy")), 15)
        assert wait_for(lambda: cluster.busiest_by_connection() == "w-busy", 15)
    finally:
        cluster.kill("w-busy")
        cluster.kill("w-idle")


def test_close_connections_is_the_brokers_doing(cluster: LocalCluster) -> None:
    """The fault close-connections: the broker closes the holder's connection
    (matched by its process's port, not by its word) and requeues what it held;
    the reference worker reconnects. A worker without a connection: refused."""
    assert cluster.endpoint is not None and cluster.admin is not None
    queue = "cc.tasks"
    cluster.start_worker("cc-1", WorkerSpec(env={"RABBITMQ_QUEUE": queue,
                                                  "WORKER_RECONNECT_MAX_S": "1"}))
    cluster.start_worker("cc-idle", trivial_spec())
    rec = cluster.recorder
    nemesis = Nemesis(cluster, rec, grace_s=5)
    try:
        assert wait_for(lambda: bool(events(rec, "ready", source="cc-1")), 30)
        assert wait_for(lambda: bool(cluster.worker_connections("cc-1")[1]), 10)
        assert nemesis.invoke("close-connections", "cc-1") is True
        assert wait_for(lambda: bool(events(rec, "connection_lost", source="cc-1")), 15)
        assert wait_for(lambda: len(events(rec, "ready", source="cc-1")) >= 2, 30)
        assert nemesis.invoke("close-connections", "cc-idle") is False  # it has none
        fault = [e for e in events(rec, "fault") if e.get("fault") == "close-connections"]
        assert [f.get("ok") for f in fault] == [True, False]
    finally:
        cluster.kill("cc-1")
        cluster.kill("cc-idle")


def test_regex_events(cluster: LocalCluster) -> None:
    script = ("import sys\nprint('done task=t1 by=a', flush=True)\n"
              "print('FAIL task=t2', flush=True)\nprint('nothing', flush=True)")
    spec = WorkerSpec(command=(sys.executable, "-c", script),
                      events=r"regex:(?:(?P<event>FAIL) )?(?:done )?task=(?P<id>\w+)"
                             r"(?: by=(?P<worker>\w+))?")
    cluster.start_worker("w-re", spec)
    rec = cluster.recorder
    assert wait_for(lambda: bool(events(rec, "worker_exited", worker="w-re")))
    got = [(e.type, e.id, e.worker, e.get("claimed_worker"), e.get("name"))
           for e in rec.snapshot() if e.source == "w-re"]
    # The source's name is the identity ("by=a" is kept as a claim); an event group
    # that names no contract v1 event is a foreign event, never interpreted.
    assert got == [("processed", "t1", "w-re", "a", None),
                   ("foreign_event", None, "w-re", None, "FAIL")]
    with pytest.raises(ValueError):
        cluster.start_worker("w-bad", WorkerSpec(command=("true",), events="regex:no-id"))


def test_restart_broker_keeps_persistent_messages(cluster: LocalCluster) -> None:
    assert cluster.endpoint is not None and cluster.admin is not None
    conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
    ch = conn.channel()
    ch.queue_declare("durable.q", durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "durable.q", json.dumps({"id": f"d{i}"}).encode(),
                         pika.BasicProperties(delivery_mode=2, message_id=f"d{i}"))
    conn.close()
    before = len(events(cluster.recorder, "broker_started"))
    cluster.restart_broker()
    assert len(events(cluster.recorder, "broker_stopped")) == 1
    assert len(events(cluster.recorder, "broker_started")) == before + 1
    assert cluster.admin.passive_depth("durable.q") == 20
    assert cluster.admin.drain_ids("durable.q") == [f"d{i}" for i in range(20)]


def test_unreachable_broker_url_fails_fast(tmp_path: Path) -> None:
    rec = Recorder(None)
    c = LocalCluster("it-unreachable", tmp_path, rec)
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as ei:
        c.start_broker(parse_broker_url(f"amqp://guest:guest@127.0.0.1:{port}/"))
    took = time.monotonic() - t0
    c.stop()
    assert took < 16.0
    msg = str(ei.value)
    assert "\n" not in msg and f"amqp://127.0.0.1:{port} not reachable after 15 s" in msg
    assert "fix --broker-url" in msg


def test_external_broker_url(cluster: LocalCluster, tmp_path: Path) -> None:
    """A second cluster uses the first one's node through --broker-url."""
    assert cluster.endpoint is not None
    mport = cluster.endpoint.management_url.rsplit(":", 1)[1]
    url = cluster.endpoint.amqp_url + f"?management_port={mport}"
    rec = Recorder(None)
    c = LocalCluster("it-external", tmp_path, rec)
    try:
        ep = c.start_broker(parse_broker_url(url))
        assert ep.management_url == cluster.endpoint.management_url
        assert "management_port" not in ep.amqp_url
        assert events(rec, "broker_started")[0].get("owned") is False
        with pytest.raises(ClusterError):
            c.restart_broker()
    finally:
        c.stop()


def _run_processes(marker: str) -> list[psutil.Process]:
    """The live processes of a run. A zombie is not one: it has exited and only waits
    for its parent to reap it (an orphaned Erlang port helper such as
    ``inet_gethost`` is reaped by init a moment later)."""
    out = []
    for p in psutil.process_iter(["cmdline", "environ", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            blob = " ".join(p.info["cmdline"] or []) + json.dumps(p.info["environ"] or {})
        except (psutil.Error, TypeError):
            continue
        if marker in blob:
            out.append(p)
    return out


def test_stop_leaves_nothing(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "history.jsonl")
    run_id = f"it-stop-{os.getpid()}"
    c = LocalCluster(run_id, tmp_path, rec)
    try:
        c.start_broker()
        for n in ("s1", "s2", "s3"):
            c.start_worker(n, trivial_spec())
        c.pause("s2")
        assert wait_for(lambda: bool(events(rec, "ready", source="s3")))
        pgids = [c._workers[n].pgid for n in ("s1", "s2", "s3")]
        node = c._node
        assert node is not None and node.proc is not None and node.epmd is not None
        pgids += [node.proc.pid, node.epmd.pid]
        state_file = c._state.path
        assert state_file.exists()
    finally:
        t0 = time.monotonic()
        c.stop()
        took = time.monotonic() - t0
    c.stop()  # idempotent
    assert c.stop_errors == []
    assert took < 40
    for g in pgids:
        assert not procs.group_alive(g), f"process group {g} still alive"
    assert _run_processes(f"harness-{run_id}@") == []
    assert not state_file.exists()
    exits = events(rec, "worker_exited")
    assert {e.worker for e in exits} == {"s1", "s2", "s3"}
    assert all(e.get("requested") is True for e in exits)
    assert events(rec, "broker_stopped")
    # The node ran under a temp dir (pytest's tmp_path is not reachable by rabbitmq)
    # and its log was kept in the run directory.
    assert list((tmp_path / "logs" / "broker").glob("*.log"))


def test_sweep_kills_groups_of_a_dead_harness(tmp_path: Path) -> None:
    """A harness killed with SIGKILL leaves a state file; the sweep ends its groups."""
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        from pathlib import Path
        from harness import procs
        st = procs.StateFile("sweep-test", Path({str(tmp_path)!r}))
        p = subprocess.Popen(["sleep", "300"], start_new_session=True)
        st.set_group("worker:x", p.pid, procs.start_time(p.pid))
        print(p.pid, flush=True)
        time.sleep(300)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    h = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert h.stdout is not None
        child = int(h.stdout.readline())
        assert procs.sweep_stale(tmp_path) == []  # harness alive: untouched
        assert psutil.pid_exists(child)
        h.send_signal(signal.SIGKILL)
        h.wait(timeout=5)
        assert procs.sweep_stale(tmp_path) == [child]
        assert not procs.group_alive(child)
        assert list(tmp_path.glob("*.json")) == []
    finally:
        h.kill()
        h.wait(timeout=5)


def test_reused_pgid_is_not_killed(tmp_path: Path) -> None:
    p = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        st = procs.StateFile("reuse-test", tmp_path)
        st._data["harness_pid"] = 2**22 + 7  # no such process
        st.set_group("worker:x", p.pid, (procs.start_time(p.pid) or 0) - 100.0)
        assert procs.sweep_stale(tmp_path) == []
        assert p.poll() is None
    finally:
        p.kill()
        p.wait(timeout=5)


@pytest.mark.skipif(not (REPO / "worker" / "__main__.py").exists(),
                    reason="reference worker not written yet")
def test_reference_worker_processes_a_task(cluster: LocalCluster) -> None:
    """Best effort: the reference worker consumes one task from the private node."""
    assert cluster.endpoint is not None and cluster.admin is not None
    queue = "ref.tasks"
    spec = WorkerSpec(env={"RABBITMQ_QUEUE": queue, "WORKER_CONCURRENCY": "2"})
    cluster.start_worker("ref-1", spec)
    rec = cluster.recorder
    try:
        ok = wait_for(lambda: cluster.admin.queue_info(queue) is not None  # type: ignore[union-attr]
                      and cluster.admin.queue_info(queue).consumers > 0,  # type: ignore[union-attr]
                      30)
        if not ok:
            pytest.skip("reference worker did not start consuming "
                        f"(see {cluster.run_dir / 'logs' / 'ref-1.log'})")
        conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
        ch = conn.channel()
        ch.confirm_delivery()
        body = {"id": "ref-task-1", "task": "logger", "payload": {}, "directives": {}}
        ch.basic_publish("", queue, json.dumps(body).encode(),
                         pika.BasicProperties(message_id="ref-task-1", delivery_mode=2,
                                              content_type="application/json"))
        conn.close()
        assert wait_for(lambda: bool(events(rec, "processed", id="ref-task-1")), 20)
        assert events(rec, "processed", id="ref-task-1")[0].worker == "ref-1"
    finally:
        cluster.terminate("ref-1", grace_s=10)


def test_node_that_cannot_start_fails_with_its_log(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The AMQP port is taken (both tries): a one-line ClusterError with the log tail."""
    import socket

    import harness.cluster.local.node as local_mod

    busy = socket.socket()
    for port in range(20000, 30000, 7):  # below the ephemeral range, so it sorts first
        try:
            busy.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    busy.listen(1)
    real = local_mod.free_port
    calls = [0]

    def fake_free_port(exclude: set[int] | None = None) -> int:
        calls[0] += 1
        return int(busy.getsockname()[1]) if calls[0] % 4 == 1 else real(exclude)

    monkeypatch.setattr(local_mod, "free_port", fake_free_port)
    rec = Recorder(None)
    c = LocalCluster(f"it-fail-{os.getpid()}", tmp_path, rec)
    t0 = time.monotonic()
    try:
        with pytest.raises(ClusterError) as ei:
            c.start_broker()
        took = time.monotonic() - t0
    finally:
        c.stop()
        busy.close()
    msg = str(ei.value)
    assert "\n" not in msg and "not ready after" in msg and "harness-it-fail-" in msg
    assert "eaddrinuse" in msg
    assert calls[0] == 8  # tried twice
    assert any("eaddrinuse" in ln.lower() for ln in ei.value.log_tail)  # type: ignore[attr-defined]
    assert took < 2 * 60
    assert _run_processes(f"harness-it-fail-{os.getpid()}@") == []
    assert events(rec, "broker_started") == []


def test_workers_die_with_the_harness(tmp_path: Path) -> None:
    """SIGKILL of the harness: workers (PDEATHSIG) and the node (watchdog) go too,
    also for a worker started from a thread that has ended since."""
    script = textwrap.dedent("""
        import json, sys, threading, time
        from pathlib import Path
        from harness.history import Recorder
        from harness.cluster.local import LocalCluster
        from harness.cluster.base import WorkerSpec
        c = LocalCluster(sys.argv[2], Path(sys.argv[1]), Recorder(None))
        c.start_broker()
        t = threading.Thread(target=c.start_worker,
                             args=("w", WorkerSpec(command=("sleep", "300"))))
        t.start(); t.join()
        time.sleep(1.0)
        node = c._node
        print(json.dumps({"groups": [c._workers["w"].pgid, node.proc.pid, node.epmd.pid],
                          "running": c.is_running("w")}), flush=True)
        time.sleep(300)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_id = f"it-orphan-{os.getpid()}"
    h = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), run_id],
                         stdout=subprocess.PIPE, env=env)
    try:
        assert h.stdout is not None
        line = h.stdout.readline()
        assert line, "the child harness did not start its cluster"
        info = json.loads(line)
        assert info["running"] is True
        h.send_signal(signal.SIGKILL)
        h.wait(timeout=5)
        assert wait_for(lambda: not any(procs.group_alive(g) for g in info["groups"]), 15)
        assert _run_processes(f"harness-{run_id}@") == []
    finally:
        h.kill()
        h.wait(timeout=5)
        procs.sweep_stale()
