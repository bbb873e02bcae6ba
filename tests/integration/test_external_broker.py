"""A broker the harness does not own is left as it was, and no secret leaves a run.

The "team broker" is a real RabbitMQ node (the local backend's, started once for
the module) whose vhost ``/`` holds the scenario's queue and DLQ, declared as
the reference worker declares them, with 10 messages each, and a user with a
distinctive password. Every run goes through ``--broker-url`` as a user's would.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pika
import pytest

from harness.broker import BrokerAdmin
from harness.cluster.local import LocalCluster
from harness.scratch import VHOST_PREFIX, Lease

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 300
BACKENDS = [pytest.param("local"), pytest.param("docker", marks=pytest.mark.docker)]
USER = "team-ci"
PASSWORD = "Zq7:pa/ss w0rd-9f3e"  # characters that every encoding changes
QUEUE, DLX, DLQ = "go.logger", "go.logger.dlx", "go.logger.dlq"
TEAM_MESSAGES = 10


def secret_forms() -> list[str]:
    return [PASSWORD, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote_plus(PASSWORD),
            urllib.parse.quote(PASSWORD), base64.b64encode(PASSWORD.encode()).decode(),
            base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]


@pytest.fixture(scope="module")
def team(cluster: LocalCluster) -> dict[str, Any]:
    """The team's broker: a user of its own, the queue and DLQ in ``/`` with 10
    messages each."""
    assert cluster.endpoint is not None
    guest = BrokerAdmin(cluster.endpoint)
    guest.request("PUT", f"/api/users/{USER}", {"password": PASSWORD, "tags": "administrator"})
    guest.request("PUT", f"/api/permissions/%2F/{USER}",
                  {"configure": ".*", "write": ".*", "read": ".*"})
    port = urllib.parse.urlsplit(cluster.endpoint.amqp_url).port
    mport = urllib.parse.urlsplit(cluster.endpoint.management_url).port
    url = (f"amqp://{USER}:{urllib.parse.quote(PASSWORD, safe='')}@127.0.0.1:{port}/"
           f"?management_port={mport}")
    conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
    ch = conn.channel()
    ch.exchange_declare(DLX, exchange_type="direct", durable=True)
    ch.queue_declare(DLQ, durable=True)
    ch.queue_bind(DLQ, DLX, routing_key=QUEUE)
    ch.queue_declare(QUEUE, durable=True, arguments={"x-dead-letter-exchange": DLX})
    for q in (QUEUE, DLQ):
        for i in range(TEAM_MESSAGES):
            ch.basic_publish("", q, json.dumps({"id": f"team-{q}-{i}"}).encode(),
                             pika.BasicProperties(delivery_mode=2, message_id=f"team-{i}"))
    conn.close()
    return {"url": url, "admin": guest}


def team_depths(team: dict[str, Any]) -> dict[str, int]:
    admin: BrokerAdmin = team["admin"]
    return {q: admin.passive_depth(q) or 0 for q in (QUEUE, DLQ)}


def scratch_vhosts(team: dict[str, Any]) -> list[str]:
    admin: BrokerAdmin = team["admin"]
    return [v["name"] for v in admin.request("GET", "/api/vhosts?columns=name")
            if str(v["name"]).startswith(VHOST_PREFIX)]


def harness(team: dict[str, Any], command: str, *args: str, out: Path,
            env_url: bool = False, backend: str = "local") -> subprocess.CompletedProcess[str]:
    """``harness COMMAND ... --broker-url URL`` (or the URL in HARNESS_BROKER_URL)."""
    import os

    env = dict(os.environ)
    cmd = [sys.executable, "-m", "harness", command, *args, "--backend", backend,
           "--out", str(out), "--no-progress"]
    if env_url:
        env["HARNESS_BROKER_URL"] = team["url"]
    else:
        cmd += ["--broker-url", team["url"]]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False, env=env)


def assert_no_secret(out: Path, *texts: str) -> None:
    found = []
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {f!r}" for f in secret_forms() if f.encode() in data]
    for i, text in enumerate(texts):
        found += [f"output {i}: {f!r}" for f in secret_forms() if f in text]
    assert not found, found


def assert_team_whole(team: dict[str, Any]) -> None:
    assert team_depths(team) == {QUEUE: TEAM_MESSAGES, DLQ: TEAM_MESSAGES}
    assert scratch_vhosts(team) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_passing_run_leaves_the_team_broker_whole_and_no_secret(
        team: dict[str, Any], tmp_path: Path, backend: str) -> None:
    proc = harness(team, "run", str(SCENARIOS / "no-duplicates.yaml"), out=tmp_path,
                   backend=backend)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert_team_whole(team)
    assert "HARNESS_BROKER_URL" in proc.stdout  # the rerun refers to the variable
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)
    history = next(tmp_path.glob("*/history.jsonl")).read_text()
    assert '"type":"vhost"' in history and '"scratch":true' in history


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_run_leaves_it_whole(team: dict[str, Any], tmp_path: Path,
                                       backend: str) -> None:
    proc = harness(team, "mutants", "--bugs", "auto-ack", "--no-control", "--reporting", "full",
                   out=tmp_path, env_url=True, backend=backend)
    report = json.loads(next(tmp_path.glob("mutants-*.json")).read_text())
    assert report["caught"] == 1, proc.stdout[-3000:]
    assert_team_whole(team)
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_leaves_it_whole(team: dict[str, Any], tmp_path: Path, backend: str) -> None:
    cmd = [sys.executable, "-m", "harness", "run", str(SCENARIOS / "crash-recovery.yaml"),
           "--backend", backend, "--out", str(tmp_path), "--no-progress",
           "--broker-url", team["url"]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not scratch_vhosts(team):
            time.sleep(0.2)
        assert scratch_vhosts(team), "the run never made its vhost"
        time.sleep(2)  # workers consuming in it
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert_team_whole(team)
    assert_no_secret(tmp_path, out)
    if backend == "docker":
        import docker

        client = docker.from_env()
        mine = {"label": f"rmq-harness.pid={proc.pid}"}
        assert client.containers.list(all=True, filters=mine) == []
        assert client.networks.list(filters=mine) == []


def test_two_runs_at_once_and_an_expired_leftover(team: dict[str, Any],
                                                  tmp_path: Path) -> None:
    admin: BrokerAdmin = team["admin"]
    leftover = f"{VHOST_PREFIX}leftover-of-a-killed-job"
    live_other = f"{VHOST_PREFIX}another-jobs-live-run"
    now = time.time()
    admin.request("PUT", f"/api/vhosts/{leftover}",
                  {"description": Lease("gone", 1, "x", now - 900, now - 600).description()})
    admin.request("PUT", f"/api/vhosts/{live_other}",
                  {"description": Lease("ci-2", 2, "y", now, now + 600).description()})
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def go(key: str) -> None:
        results[key] = harness(team, "run", str(SCENARIOS / "no-duplicates.yaml"),
                               out=tmp_path / key)

    threads = [threading.Thread(target=go, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_TIMEOUT_S + 10)
    try:
        for key, proc in results.items():
            assert proc.returncode == 0, (key, proc.stdout[-3000:])
        assert len(results) == 2
        assert scratch_vhosts(team) == [live_other]  # the leftover swept, the live one kept
    finally:
        admin.request("DELETE", f"/api/vhosts/{live_other}")
    assert_team_whole(team)


def test_a_dedicated_vhost_must_hold_nothing_else(team: dict[str, Any],
                                                  tmp_path: Path) -> None:
    admin: BrokerAdmin = team["admin"]
    admin.request("PUT", "/api/vhosts/team-dedicated", {})
    admin.request("PUT", f"/api/permissions/team-dedicated/{USER}",
                  {"configure": ".*", "write": ".*", "read": ".*"})
    admin.request("PUT", "/api/queues/team-dedicated/billing", {"durable": True})
    try:
        proc = harness(team, "run", str(SCENARIOS / "no-duplicates.yaml"), "--vhost",
                       "team-dedicated", out=tmp_path / "refused")
        err = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(err) == 1, proc.stdout[-2000:]
        assert "billing" in err[0] and "not dedicated to the harness" in err[0], err
        admin.request("DELETE", "/api/queues/team-dedicated/billing")
        proc = harness(team, "run", str(SCENARIOS / "no-duplicates.yaml"), "--vhost",
                       "team-dedicated", out=tmp_path / "ok")
        assert proc.returncode == 0, proc.stdout[-3000:]
        left = admin.request("GET", "/api/queues/team-dedicated?columns=name")
        assert left == [], left  # its own queues deleted, the vhost kept
        assert "--vhost team-dedicated" in proc.stdout
    finally:
        admin.request("DELETE", "/api/vhosts/team-dedicated")
    assert_team_whole(team)
