"""A load run against a staging broker: publish tasks at a steady rate while the
workers under test consume them, then check that they kept up and lost nothing.

    locust -f locustfiles/taskqueue.py --headless -u 10 -r 10 -t 60s \\
        --amqp-url amqp://user:pass@staging:5672/%2F --queue tasks \\
        --rate-per-user 10 --sleep-ms 100

Each Locust user holds one AMQP connection with publisher confirms and publishes
persistent, mandatory tasks (contract v1 bodies: ``{"id", "task", "payload",
"directives"}``) to the queue through the default exchange. Every confirm is a
Locust request ``publish / confirmed`` with its latency; a nack, an unroutable
task (no such queue) or a lost connection is a failure.

When the run stops, the check (this process, or the master in distributed mode)
waits up to ``--drain-timeout-s`` for the queue to be empty, then reads the
queue's counters from the management API and compares them with the confirmed
count. It fails (exit code 1) when the queue did not drain (the workers did not
keep up), when a task reached the dead-letter queue (``--dlq``; the tasks only
sleep, so none can fail), or when fewer acks than confirmed tasks (plus those
queued before the run) reached the broker. Any failed publish also exits 1
(Locust's own rule). More acks than confirms is not a
failure: a publish cut off by the stop has no counted confirm, and a retried
task comes back through the queue. Redeliveries are reported, not failed:
RabbitMQ delivers at least once. The queue and its topology belong to the
workers: this file never declares anything.

This is the staging-broker companion of ``harness run``: no faults, no worker
events, only what the broker can tell. Bounds: ``--max-tasks`` (all users
together) and Locust's ``--run-time``, which a headless run must give.
"""

# Locust's event-hook decorators carry no types.
# mypy: disallow-untyped-decorators=False
from __future__ import annotations

import time
import uuid
from typing import Any

import pika
from locust import User, constant_throughput, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import WorkerRunner

from harness import credentials
from harness.broker import BrokerAdmin, QueueInfo, parse_broker_url
from harness.cluster.base import ClusterError
from harness.tasks import task_body

REQUEST_TYPE = "publish"
REQUEST_NAME = "confirmed"
DRAIN_POLL_S = 0.5
# Confirms wait at most this long; a broker that does not answer is a failure.
CONNECT_TIMEOUT_S = 10.0


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("task queue")
    g.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F",
                   help="the broker under load (management API on port 15672 of the same "
                        "host, or ?management_port=N, or --management-url)")
    g.add_argument("--management-url", default="", help="http://host:15672")
    g.add_argument("--queue", default="tasks", help="the workers' queue (not declared here)")
    g.add_argument("--rate-per-user", type=float, default=10.0,
                   help="tasks a second each user publishes")
    g.add_argument("--sleep-ms", type=int, default=100,
                   help="directive for the reference worker: time each task takes")
    g.add_argument("--dlq", default="",
                   help="the workers' dead-letter queue (default QUEUE.dlq; checked if it exists)")
    g.add_argument("--max-tasks", type=int, default=100_000,
                   help="stop publishing after this many tasks (all users of this process)")
    g.add_argument("--drain-timeout-s", type=float, default=60.0,
                   help="after the run, how long the queue may take to empty")


def _opts(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("taskqueue: run it with the locust command (it parses the options)")
    return environment.parsed_options


class _Run:
    """What this process published, and the queue's counters before it did."""

    published = 0
    baseline: QueueInfo | None = None
    base_depth = 0  # ready messages at the start (passive declare: exact)
    dlq_baseline: QueueInfo | None = None
    dlq_base_depth = 0
    admin: BrokerAdmin | None = None
    problem: str | None = None


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    o = _opts(environment)
    problems = []
    if not 0 < o.rate_per_user <= 10_000:
        problems.append("--rate-per-user must be in (0, 10000]")
    if not 0 < o.max_tasks <= 10_000_000:
        problems.append("--max-tasks must be 1..10000000")
    if not 0 <= o.sleep_ms <= 600_000:
        problems.append("--sleep-ms must be 0..600000")
    if not 0 <= o.drain_timeout_s <= 3600:
        problems.append("--drain-timeout-s must be 0..3600")
    if o.headless and not o.run_time:
        problems.append("a headless load run must stop by itself: give --run-time (-t)")
    try:
        endpoint = parse_broker_url(o.amqp_url, o.management_url or None)
        credentials.register(endpoint.password, endpoint.user)  # never in its output
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise SystemExit(credentials.redact("taskqueue: " + "; ".join(problems)))
    if not isinstance(environment.runner, WorkerRunner):
        _Run.admin = BrokerAdmin(endpoint)


@events.test_start.add_listener
def _baseline(environment: Environment, **_: Any) -> None:
    if _Run.admin is None:
        return
    o = _opts(environment)
    try:
        _Run.baseline = _Run.admin.queue_info(o.queue)
        _Run.base_depth = _Run.admin.passive_depth(o.queue) or 0
        _Run.dlq_baseline = _Run.admin.queue_info(o.dlq or f"{o.queue}.dlq")
        _Run.dlq_base_depth = _Run.admin.passive_depth(o.dlq or f"{o.queue}.dlq") or 0
    except ClusterError as exc:  # the check says so; publishing goes on and is measured
        _Run.problem = str(exc)


@events.quitting.add_listener
def _check(environment: Environment, **_: Any) -> None:
    """After the run: the queue drained, and every confirmed task was acked."""
    if _Run.admin is None:
        return
    if environment.runner is not None:
        environment.runner.stop()  # on Ctrl-C, quitting fires while users still publish
    try:
        verdict = _verdict(environment, _Run.admin)
    except ClusterError as exc:
        verdict = f"FAIL: {exc}"
    finally:
        _Run.admin.close()
    print(credentials.redact(f"taskqueue check: {verdict}"), flush=True)
    if verdict.startswith("FAIL"):
        environment.process_exit_code = 1


def _verdict(environment: Environment, admin: BrokerAdmin) -> str:
    o = _opts(environment)
    if _Run.problem is not None:
        return f"FAIL: {_Run.problem}"
    if _Run.baseline is None:
        return (f"FAIL: queue {o.queue!r} does not exist on {admin.endpoint.management_url}: "
                "start the workers first (they declare it)")
    base = _Run.baseline
    stats = environment.stats.get(REQUEST_NAME, REQUEST_TYPE)
    confirmed = stats.num_requests - stats.num_failures
    # Tasks already queued when the run began are acked too: they must not stand
    # in for ours.
    queued_before = max(base.messages, _Run.base_depth)
    want_acks = confirmed + queued_before
    deadline = time.monotonic() + o.drain_timeout_s
    # The depth from a passive declare (exact); the counters from the management
    # API, whose statistics lag (collect_statistics_interval) and may not exist
    # yet for a new queue: poll until both account for every confirm, or the
    # bound runs out.
    while True:
        depth, info = admin.passive_depth(o.queue), admin.queue_info(o.queue)
        if depth is None or info is None:
            return f"FAIL: queue {o.queue!r} disappeared during the run"
        left = max(depth, info.messages)
        if ((left == 0 and info.unacked == 0 and info.acked - base.acked >= want_acks)
                or time.monotonic() >= deadline):
            break
        time.sleep(DRAIN_POLL_S)
    acked = info.acked - base.acked
    dead = _dead_lettered(admin, o.dlq or f"{o.queue}.dlq")
    summary = (f"confirmed {confirmed} (+{queued_before} queued before), acked {acked}, "
               f"redelivered {info.redelivered - base.redelivered}, dead-lettered {dead}, "
               f"left in the queue {left} ({info.unacked} unacked)")
    if left or info.unacked:
        return (f"FAIL: the queue did not drain within {o.drain_timeout_s:g} s (the workers "
                f"did not keep up): {summary}")
    if not info.has_message_stats:
        return (f"FAIL: the management API has no statistics for {o.queue!r}, so the acks "
                f"cannot be counted (statistics disabled?): {summary}")
    if dead > 0:
        return f"FAIL: {dead} task(s) dead-lettered (the tasks cannot fail): {summary}"
    if acked < want_acks:
        return (f"FAIL: {want_acks - acked} task(s) never acked (dropped, or the acks went "
                f"unseen): {summary}")
    return f"PASS: {summary}"


def _dead_lettered(admin: BrokerAdmin, dlq: str) -> int:
    """Tasks that reached the dead-letter queue during the run: its depth's growth,
    or its publish counter's where both readings of that counter exist."""
    base = _Run.dlq_baseline
    now = admin.queue_info(dlq)
    if base is None or now is None:
        return 0  # no dead-letter queue: nothing to count
    grown = max(0, (admin.passive_depth(dlq) or 0) - _Run.dlq_base_depth)
    if base.has_message_stats and now.has_message_stats:
        grown = max(grown, now.published - base.published)
    return grown


class TaskPublisher(User):
    """One connection, confirms on, a steady rate of persistent tasks."""

    def wait_time(self) -> float:
        return float(constant_throughput(_opts(self.environment).rate_per_user)(self))

    def on_start(self) -> None:
        o = _opts(self.environment)
        params = pika.URLParameters(parse_broker_url(o.amqp_url, o.management_url or None)
                                    .amqp_url)
        params.socket_timeout = CONNECT_TIMEOUT_S
        params.blocked_connection_timeout = CONNECT_TIMEOUT_S
        params.client_properties = {"connection_name": f"locust-{uuid.uuid4().hex[:8]}"}
        self.conn = pika.BlockingConnection(params)
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()

    def on_stop(self) -> None:
        if getattr(self, "conn", None) is not None and self.conn.is_open:
            self.conn.close()

    @task
    def publish(self) -> None:
        o = _opts(self.environment)
        if _Run.published >= o.max_tasks:
            raise StopUser()
        _Run.published += 1
        task_id = f"load-{uuid.uuid4().hex}"
        body = task_body(task_id, _Run.published, {"sleep_ms": o.sleep_ms})
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=task_id)
        started = time.perf_counter()
        exc: BaseException | None = None
        try:
            self.channel.basic_publish("", o.queue, body, props, mandatory=True)
        except pika.exceptions.UnroutableError:
            exc = RuntimeError(f"unroutable: no queue {o.queue!r}")
        except pika.exceptions.NackError:
            exc = RuntimeError("nacked by the broker")
        except pika.exceptions.AMQPError as e:
            exc = e
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=REQUEST_NAME,
            response_time=(time.perf_counter() - started) * 1000, response_length=len(body),
            exception=exc, context={})
        if isinstance(exc, pika.exceptions.AMQPConnectionError):
            raise StopUser()

