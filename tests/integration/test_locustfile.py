"""``locustfiles/taskqueue.py`` against a real broker (the local backend's, with
the management API), the reference worker (which sends completions) and a brought
consumer that does not: a run that keeps up passes with publish-to-processed
latencies, one whose tasks nobody consumes fails, one whose worker acks and drops
tasks fails by id, and a missing queue or management API is undecided (exit 2)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from harness.cluster.base import WorkerSpec
from harness.cluster.local import LocalCluster
from harness.cluster.local.node import free_port

# Not importorskip: importing locust monkey-patches the whole test process with gevent.
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                 reason="locust is not installed: pip install -e '.[load]'")]

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "locustfiles" / "taskqueue.py"


def locust(cluster: LocalCluster, queue: str, *extra: str,
           management_url: str | None = None) -> subprocess.CompletedProcess[str]:
    assert cluster.endpoint is not None
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2",
         "-r", "2", "-t", "3s", "--only-summary", "--amqp-url", cluster.endpoint.amqp_url,
         "--management-url", management_url or cluster.endpoint.management_url,
         "--queue", queue, "--rate-per-user", "20", "--sleep-ms", "5", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def check_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if ln.startswith("taskqueue check:")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


def confirmed_of(line: str) -> int:
    return int(line.split("confirmed ")[1].split(" ")[0])


def test_workers_that_keep_up_pass_with_end_to_end_latency(cluster: LocalCluster,
                                                           tmp_path: Path) -> None:
    cluster.start_worker("w1", WorkerSpec(env={"RABBITMQ_QUEUE": "load.ok",
                                               "WORKER_CONCURRENCY": "10"}))
    assert _wait_queue(cluster, "load.ok")
    proc = locust(cluster, "load.ok", "--drain-timeout-s", "30", "--csv", str(tmp_path / "s"))
    line = check_line(proc)
    assert proc.returncode == 0, line
    assert line.startswith("taskqueue check: PASS: confirmed ")
    confirmed = confirmed_of(line)
    assert confirmed >= 20  # 2 users x 20/s x 3 s, less the ramp-up
    assert f"by id: {confirmed} of {confirmed} confirmed completed, 0 never completed" in line
    with (tmp_path / "s_stats.csv").open(newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    done = rows[("task", "completed")]  # publish-to-processed, in Locust's own stats
    assert int(done["Request Count"]) == confirmed and int(done["Failure Count"]) == 0
    assert 5 <= float(done["50%"]) < 5000  # at least the task's 5 ms sleep


def test_full_speed_stops_at_max_tasks_without_waiting_for_the_run_time(
        cluster: LocalCluster) -> None:
    cluster.start_worker("w2", WorkerSpec(env={"RABBITMQ_QUEUE": "load.fast",
                                               "WORKER_CONCURRENCY": "10"}))
    assert _wait_queue(cluster, "load.fast")
    t0 = time.monotonic()
    proc = locust(cluster, "load.fast", "-t", "120s", "--rate-per-user", "0",
                  "--confirm-window", "50", "--max-tasks", "500", "--sleep-ms", "0",
                  "--drain-timeout-s", "30")
    line = check_line(proc)
    assert proc.returncode == 0, line
    assert confirmed_of(line) == 500
    assert time.monotonic() - t0 < 60, "the run waited for --run-time"


def test_a_worker_that_acks_and_drops_fails_by_id(cluster: LocalCluster) -> None:
    # The broker's counters cannot see it (every task acked); the completions can.
    cluster.start_worker("w3", WorkerSpec(env={"RABBITMQ_QUEUE": "load.drop",
                                               "WORKER_CONCURRENCY": "2",
                                               "WORKER_BUG": "ack-and-drop-when-busy"}))
    assert _wait_queue(cluster, "load.drop")
    proc = locust(cluster, "load.drop", "--sleep-ms", "200", "--drain-timeout-s", "10")
    line = check_line(proc)
    assert proc.returncode == 1, line
    assert "confirmed task(s) never completed, the queue empty (load-" in line


def test_a_consumer_without_completions_is_judged_by_the_broker(cluster: LocalCluster) -> None:
    """A brought consumer that acks and never replies: the check says it fell back."""
    assert cluster.endpoint is not None
    stop = threading.Event()
    conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
    ch = conn.channel()
    ch.queue_declare("load.plain", durable=True)
    ch.basic_consume("load.plain", lambda c, m, _p, _b: c.basic_ack(m.delivery_tag))

    def consume() -> None:
        while not stop.is_set():
            conn.process_data_events(time_limit=0.2)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        proc = locust(cluster, "load.plain", "--drain-timeout-s", "30")
    finally:
        stop.set()
        t.join(5)
        conn.close()
    line = check_line(proc)
    assert proc.returncode == 0, line
    assert "the workers sent no completions" in line and "broker's counters only" in line


def test_a_missing_queue_is_undecided_and_says_so(cluster: LocalCluster) -> None:
    proc = locust(cluster, "load.absent", "--drain-timeout-s", "1")
    assert proc.returncode == 2
    assert "queue 'load.absent' does not exist" in check_line(proc)


def distributed(cluster: LocalCluster, queue: str, csv_prefix: Path, *extra: str,
                management_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """One master and two Locust workers on this machine, the check on the master."""
    assert cluster.endpoint is not None
    port = free_port()
    common = ["--amqp-url", cluster.endpoint.amqp_url]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
         "--master-port", str(port), *common],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        return subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--master", "--headless",
             "--master-bind-port", str(port), "--expect-workers", "2",
             "--expect-workers-max-wait", "60", "-u", "4", "-r", "4", "-t", "5s",
             "--only-summary", "--csv", str(csv_prefix), *common,
             "--management-url", management_url or cluster.endpoint.management_url,
             "--queue", queue, "--rate-per-user", "20", "--sleep-ms", "5", *extra],
            cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    finally:
        for w in workers:
            try:
                w.wait(timeout=30)  # they quit with the master
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(timeout=10)


def test_distributed_run_checks_on_the_master_over_all_workers(cluster: LocalCluster,
                                                               tmp_path: Path) -> None:
    cluster.start_worker("w4", WorkerSpec(env={"RABBITMQ_QUEUE": "load.dist",
                                               "WORKER_CONCURRENCY": "10"}))
    assert _wait_queue(cluster, "load.dist")
    proc = distributed(cluster, "load.dist", tmp_path / "d", "--max-tasks", "150",
                       "--drain-timeout-s", "30")
    line = check_line(proc)
    assert proc.returncode == 0, line
    confirmed = confirmed_of(line)
    # --max-tasks holds for all users of both workers together; 4 users x 20/s x 5 s
    # would publish up to 400.
    assert 100 <= confirmed <= 150, line
    assert "never completed" in line and "0 completed twice" in line
    with (tmp_path / "d_stats.csv").open(newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    assert int(rows[("task", "completed")]["Request Count"]) >= 100
    assert int(rows[("task", "completed")]["Failure Count"]) == 0


def test_distributed_run_fails_when_nobody_consumes(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    assert cluster.endpoint is not None
    conn = pika.BlockingConnection(pika.URLParameters(cluster.endpoint.amqp_url))
    try:
        conn.channel().queue_declare("load.dist.idle", durable=True)
    finally:
        conn.close()
    t0 = time.monotonic()
    proc = distributed(cluster, "load.dist.idle", tmp_path / "i", "--drain-timeout-s", "3")
    assert proc.returncode == 1, check_line(proc)
    assert "did not drain within 3 s" in check_line(proc)
    assert time.monotonic() - t0 < 90


def test_distributed_run_with_the_management_api_unreachable_is_undecided(
        cluster: LocalCluster, tmp_path: Path) -> None:
    proc = distributed(cluster, "load.dist", tmp_path / "u", "--drain-timeout-s", "1",
                       management_url="http://127.0.0.1:9")
    assert proc.returncode == 2, check_line(proc)
    assert "UNKNOWN: the management API did not answer" in check_line(proc)


def test_a_headless_run_must_be_bounded_in_time(cluster: LocalCluster) -> None:
    assert cluster.endpoint is not None
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1",
         "--amqp-url", cluster.endpoint.amqp_url, "--queue", "q"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "give --run-time" in proc.stderr


def test_black_friday_ramps_up_holds_ramps_down_and_plots_the_queue(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """locustfiles/blackfriday.py: the shape ends the run by itself; the queue is
    sampled through the run and its drain, and the users follow the ramp."""
    assert cluster.endpoint is not None
    cluster.start_worker("w5", WorkerSpec(env={"RABBITMQ_QUEUE": "load.bf",
                                               "WORKER_CONCURRENCY": "10"}))
    assert _wait_queue(cluster, "load.bf")
    report = tmp_path / "bf.html"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "blackfriday.py"),
         "--headless", "--only-summary", "--amqp-url", cluster.endpoint.amqp_url,
         "--management-url", cluster.endpoint.management_url, "--queue", "load.bf",
         "--peak-users", "4", "--ramp-s", "3", "--hold-s", "2", "--rate-per-user", "10",
         "--sleep-ms", "5", "--drain-timeout-s", "30", "--queue-sample-s", "0.5",
         "--queue-report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    line = check_line(proc)
    assert proc.returncode == 0, line
    assert report.is_file() and "plot-queue" in report.read_text()
    with report.with_suffix(".csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    users = [int(r["users"]) for r in rows]
    peak_at = users.index(max(users))
    assert max(users) == 4 and users[0] <= 2, users  # ramped up from the start...
    assert min(users[peak_at:]) < 4, users  # ...and back down before the end
    assert {r["consumers"] for r in rows if r["consumers"]} == {"1"}, rows
    assert "taskqueue queue: " in proc.stdout + proc.stderr


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
