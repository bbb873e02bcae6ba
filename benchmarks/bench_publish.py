"""Publish throughput: raw pika without confirms vs the harness Publisher with confirms.

    python3 benchmarks/bench_publish.py [--tasks 20000] [--broker-url amqp://...]

Without --broker-url it starts a private RabbitMQ node on free ports (the tests'
``tests/helpers/private_broker.py``, the local backend's starter; always
stopped). Both measurements run in the same run against the same broker, each to a
fresh durable queue with persistent ~100-byte messages; the queues are deleted
afterwards. Prints both rates and their ratio (the target is >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000, help="messages per measurement")
    ap.add_argument("--broker-url", default=None, help="amqp:// URL of a broker to use")
    ap.add_argument("--window", type=int, default=1000, help="Publisher confirm window")
    args = ap.parse_args(argv)
    if not 1 <= args.tasks <= MAX_TASKS:
        print(f"--tasks must be between 1 and {MAX_TASKS}", file=sys.stderr)
        return 2
    tasks = make_bench_tasks(args.tasks)
    broker: PrivateBroker | None = None
    try:
        if args.broker_url:
            url = args.broker_url
        else:
            broker = PrivateBroker("benchpub").start()
            url = broker.url
            print(f"private broker (harness.cluster.local) on port {broker.port}")
        raw = bench_raw(url, tasks)
        confirmed = bench_publisher(url, tasks, args.window)
        ratio = confirmed / raw if raw else 0.0
        print(f"ratio confirmed/raw = {ratio:.2f} (target >= 0.50)")
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (pika.exceptions.AMQPError, OSError) as e:
        print(f"error: broker unreachable or failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if broker is not None:
            broker.stop()

if __name__ == "__main__":
    sys.exit(main())
