"""``locustfiles/taskqueue.py`` against a real broker (the local backend's, with
the management API) and the reference worker: a run that keeps up passes, one
whose tasks nobody consumes fails, and so does one aimed at a missing queue."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pika
import pytest

from harness.cluster.base import WorkerSpec
from harness.cluster.local import LocalCluster

# Not importorskip: importing locust monkey-patches the whole test process with gevent.
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                 reason="locust is not installed: pip install -e '.[load]'")]

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "locustfiles" / "taskqueue.py"


def locust(cluster: LocalCluster, queue: str, *extra: str) -> subprocess.CompletedProcess[str]:
    assert cluster.endpoint is not None
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2",
         "-r", "2", "-t", "3s", "--only-summary", "--amqp-url", cluster.endpoint.amqp_url,
         "--management-url", cluster.endpoint.management_url, "--queue", queue,
         "--rate-per-user", "20", "--sleep-ms", "5", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def check_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if ln.startswith("taskqueue check:")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


def test_workers_that_keep_up_pass(cluster: LocalCluster) -> None:
    cluster.start_worker("w1", WorkerSpec(env={"RABBITMQ_QUEUE": "load.ok",
                                               "WORKER_CONCURRENCY": "10"}))
    assert cluster.admin is not None
    assert _wait_queue(cluster, "load.ok")
    proc = locust(cluster, "load.ok", "--drain-timeout-s", "30")
    line = check_line(proc)
    assert proc.returncode == 0, line
    assert line.startswith("taskqueue check: PASS: confirmed ")
    confirmed = int(line.split("confirmed ")[1].split(" ")[0])
    assert confirmed >= 20  # 2 users x 20/s x 3 s, less the ramp-up


def test_a_queue_nobody_consumes_fails_the_drain_check(cluster: LocalCluster) -> None:
    assert cluster.endpoint is not None
    conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
    try:
        conn.channel().queue_declare("load.idle", durable=True)
    finally:
        conn.close()
    proc = locust(cluster, "load.idle", "--drain-timeout-s", "1")
    assert proc.returncode == 1
    assert "did not drain within 1 s" in check_line(proc)


def test_a_missing_queue_fails_and_says_so(cluster: LocalCluster) -> None:
    proc = locust(cluster, "load.absent", "--drain-timeout-s", "1")
    assert proc.returncode == 1
    assert "queue 'load.absent' does not exist" in check_line(proc)


def test_a_headless_run_must_be_bounded_in_time(cluster: LocalCluster) -> None:
    assert cluster.endpoint is not None
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1",
         "--amqp-url", cluster.endpoint.amqp_url, "--queue", "q"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "give --run-time" in proc.stderr


def _wait_queue(cluster: LocalCluster, queue: str, timeout_s: float = 20.0) -> bool:
    import time

    assert cluster.admin is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = cluster.admin.queue_info(queue)
        if info is not None and info.consumers > 0:
            return True
        time.sleep(0.2)
    return False
