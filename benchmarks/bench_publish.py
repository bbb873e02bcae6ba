"""Publish throughput: raw pika without confirms, the harness Publisher with
confirms, and the Locust load file (``locustfiles/taskqueue.py``) at full speed.

    python3 benchmarks/bench_publish.py [--tasks 20000] [--broker-url amqp://...
        --management-url http://...] [--locust-users 2] [--confirm-window 500]

Without --broker-url it starts a private RabbitMQ node on free ports (the tests'
``tests/helpers/private_broker.py``, the local backend's starter; always
stopped). The measurements run in the same run against the same broker, each to a
fresh durable queue with persistent messages of about 100 bytes; the queues are
deleted afterwards. Prints the rates and two ratios: the Publisher against raw pika
(the target is >= 0.5), and the load file against the Publisher (>= 0.8), with the
load file's confirm latency percentiles at its rate.

The load file runs as Locust runs it (a ``locust --headless`` process, one
connection per user, ``--rate-per-user 0``, ``--max-tasks`` the same count); its
rate is the confirms of ``publish / confirmed`` in Locust's final statistics
(``--json-file``) over the time from the test's start to the last confirm,
connections included. Nothing consumes the queue, so its drain check says FAIL:
that is expected here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests" / "helpers"):  # the tests' private broker
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from private_broker import PrivateBroker  # noqa: E402

from harness.cluster.base import ClusterError  # noqa: E402
from harness.history import Recorder  # noqa: E402
from harness.tasks import Task  # noqa: E402
from harness.workload import Publisher  # noqa: E402

MAX_TASKS = 1_000_000
BODY_SIZE = 100
LOCUSTFILE = ROOT / "locustfiles" / "taskqueue.py"
# The load file stops by itself at --max-tasks; this only bounds a stuck run.
LOCUST_RUN_TIME_S = 120
MAX_USERS = 200


def make_bench_tasks(n: int) -> list[Task]:
    tasks = []
    for i in range(n):
        tid = f"bench-{i:06d}"
        body = json.dumps({"id": tid, "task": "logger", "payload": {"n": i}, "directives": {}})
        raw = body.encode().ljust(BODY_SIZE, b" ")
        tasks.append(Task(tid, raw, {}, False))
    return tasks


def _declare(url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
    finally:
        conn.close()


def _depth_and_delete(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        depth = int(ch.queue_declare(queue, passive=True).method.message_count)
        ch.queue_purge(queue)
        ch.queue_delete(queue)
        return depth
    finally:
        conn.close()


def bench_raw(url: str, tasks: list[Task]) -> float:
    queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
    _declare(url, queue)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        t0 = time.monotonic()
        for t in tasks:
            props = pika.BasicProperties(
                message_id=t.id, delivery_mode=2, content_type="application/json"
            )
            ch.basic_publish("", queue, t.body, props)
        # Make sure everything left the client: a round trip after the last publish.
        ch.queue_declare(queue, passive=True)
        elapsed = time.monotonic() - t0
    finally:
        conn.close()
    depth = _depth_and_delete(url, queue)
    print(f"raw pika (no confirms): {len(tasks)} msgs in {elapsed:.2f} s "
          f"= {len(tasks) / elapsed:,.0f} msg/s (queue depth afterwards {depth})")
    return len(tasks) / elapsed


def bench_publisher(url: str, tasks: list[Task], window: int) -> float:
    queue = f"bench.confirm.{uuid.uuid4().hex[:8]}"
    _declare(url, queue)
    rec = Recorder(None)
    stats = Publisher(url, queue, rec, window=window, timeout_s=300).publish(tasks)
    depth = _depth_and_delete(url, queue)
    print(f"harness Publisher (confirms, window {window}): {stats.ok} ok, {stats.fail} fail, "
          f"{stats.unknown} unknown in {stats.elapsed_s:.2f} s = {stats.rate:,.0f} confirmed msg/s "
          f"(queue depth afterwards {depth})")
    return stats.rate


def bench_locust(url: str, management_url: str, n: int, users: int,
                 window: int) -> tuple[float, dict[str, Any]]:
    """The load file's confirmed rate and its stats entry (Locust's final JSON)."""
    queue = f"bench.locust.{uuid.uuid4().hex[:8]}"
    _declare(url, queue)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
            stats_json = Path(tmp) / "stats.json"
            # The URL (and its password) through the environment, not argv.
            env = {**os.environ, "TASKQUEUE_AMQP_URL": url}
            proc = subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                 "-u", str(users), "-r", str(users), "-t", f"{LOCUST_RUN_TIME_S}s",
                 "--json-file", str(stats_json.with_suffix("")),
                 "--management-url", management_url, "--queue", queue,
                 "--rate-per-user", "0", "--confirm-window", str(window),
                 "--max-tasks", str(n), "--drain-timeout-s", "0"],
                cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=LOCUST_RUN_TIME_S + 60, check=False)
            if not stats_json.exists():
                tail = (proc.stdout + proc.stderr)[-1500:]
                raise RuntimeError(f"locust wrote no stats (exit {proc.returncode}): {tail}")
            entries = [e for e in json.loads(stats_json.read_text())
                       if (e["method"], e["name"]) == ("publish", "confirmed")]
    finally:
        depth = _depth_and_delete(url, queue)
    if not entries:
        raise RuntimeError("locust's stats have no 'publish / confirmed' entry")
    e = entries[0]
    ok = int(e["num_requests"]) - int(e["num_failures"])
    rate = ok / max(1e-9, float(e["last_request_timestamp"]) - float(e["start_time"]))
    p50, p95, p99 = (_percentile(e["response_times"], q) for q in (0.50, 0.95, 0.99))
    print(f"locust load file ({users} users, confirm window {window}, --rate-per-user 0): "
          f"{ok} confirmed, {e['num_failures']} failed = {rate:,.0f} confirmed msg/s (from "
          f"the test's start, connections included, to the last confirm); confirm latency "
          f"p50 {p50} ms, p95 {p95} ms, p99 {p99} ms, max {float(e['max_response_time']):.0f} "
          f"ms (queue depth afterwards {depth})")
    return rate, e


def _percentile(response_times: dict[str, int], q: float) -> int:
    """A percentile of Locust's rounded response-time histogram, as its reports give
    it (written here: importing locust would monkey-patch this process with gevent)."""
    times = sorted((float(k), n) for k, n in response_times.items())
    total = sum(n for _, n in times)
    seen = 0
    for ms, n in times:
        seen += n
        if seen >= q * total:
            return round(ms)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000, help="messages per measurement")
    ap.add_argument("--broker-url", default=None, help="amqp:// URL of a broker to use")
    ap.add_argument("--management-url", default=None,
                    help="with --broker-url: its management API (http://host:15672)")
    ap.add_argument("--window", type=int, default=1000, help="Publisher confirm window")
    ap.add_argument("--locust-users", type=int, default=2,
                    help="Locust users of the load file (0: skip it)")
    ap.add_argument("--confirm-window", type=int, default=500,
                    help="the load file's confirm window per user")
    args = ap.parse_args(argv)
    if not 1 <= args.tasks <= MAX_TASKS:
        print(f"--tasks must be between 1 and {MAX_TASKS}", file=sys.stderr)
        return 2
    if not 0 <= args.locust_users <= MAX_USERS:
        print(f"--locust-users must be between 0 and {MAX_USERS}", file=sys.stderr)
        return 2
    if args.broker_url and args.locust_users and not args.management_url:
        print("--broker-url needs --management-url for the load file's check "
              "(or --locust-users 0)", file=sys.stderr)
        return 2
    tasks = make_bench_tasks(args.tasks)
    broker: PrivateBroker | None = None
    try:
        if args.broker_url:
            url, management_url = args.broker_url, args.management_url
        else:
            broker = PrivateBroker("benchpub").start()
            url, management_url = broker.url, broker.management_url
            print(f"private broker (harness.cluster.local) on port {broker.port}")
        raw = bench_raw(url, tasks)
        confirmed = bench_publisher(url, tasks, args.window)
        ratio = confirmed / raw if raw else 0.0
        print(f"ratio confirmed/raw = {ratio:.2f} (target >= 0.50)")
        if args.locust_users:
            loaded, _row = bench_locust(url, management_url, args.tasks, args.locust_users,
                                        args.confirm_window)
            print(f"ratio load file/Publisher = {loaded / confirmed if confirmed else 0:.2f} "
                  f"(target >= 0.80); load file/raw = {loaded / raw if raw else 0:.2f}")
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (pika.exceptions.AMQPError, OSError) as e:
        print(f"error: broker unreachable or failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if broker is not None:
            broker.stop()

if __name__ == "__main__":
    sys.exit(main())
