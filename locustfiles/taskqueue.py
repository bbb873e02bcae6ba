"""A load run against a staging broker: publish tasks at a steady rate, or as
fast as the broker confirms them, while the workers under test consume them;
then check that they kept up and lost nothing.

    TASKQUEUE_AMQP_PASSWORD=... locust -f locustfiles/taskqueue.py --headless \\
        -u 10 -r 10 -t 60s --amqp-url amqp://user@staging:5672/%2F --queue tasks \\
        --rate-per-user 10 --sleep-ms 100

Each Locust user holds one AMQP connection (pika's gevent adapter) with publisher
confirms and up to ``--confirm-window`` publishes awaiting their confirm, and
publishes persistent, mandatory tasks (contract v1 bodies: ``{"id", "task",
"payload", "directives"}``, with ``reply_to``) to the queue through the default
exchange, at ``--rate-per-user`` tasks a second, or, with 0, as fast as the
window allows, until ``--max-tasks`` (all users together). Every confirm is a
Locust request ``publish / confirmed`` with its latency; a nack, an unroutable
task (no such queue) or a lost connection is a failure. A worker that sends
completions (docs/worker-contract.md) gives each task a request ``task /
completed`` with its publish-to-processed latency; a second completion of a
task is a failure.

When the run stops, the check (this process, or the master in distributed mode)
waits up to ``--drain-timeout-s`` for the queue to be empty, its acks to cover
the confirmed tasks, and every confirmed task to have its completion; then it
reads the queue's counters from the management API. Exit codes, as the
harness's: **0** PASS; **1** FAIL: the queue did not drain (the workers did not
keep up), a task was processed twice, a confirmed task never completed while the
queue is empty (lost, by id), a task reached the dead-letter queue (``--dlq``;
the tasks only sleep, so none can fail), fewer acks than confirmed tasks (plus
those queued before the run) reached the broker, or a publish failed (Locust's
own rule); **2** undecided: the broker or its management API did not answer, the
queue does not exist, or the broker keeps no statistics to count acks by. More
acks than confirms is not a failure: a publish cut off by the stop has no
counted confirm. Without completions the check counts by the broker alone and
says so. The queue and its topology belong to the workers: this file declares
only its own completion queue (server-named, exclusive).

The password: in ``--amqp-url``, or better in ``--amqp-password`` (a masked
field in Locust's web UI) or ``$TASKQUEUE_AMQP_PASSWORD``, which replace the
URL's; it never appears in the output. Every option is in the web UI.

This is the staging-broker companion of ``harness run``: no faults and no
worker events; the broker's counters decide, the completions name ids and
measure latency. Bounds: ``--max-tasks`` (all users of all Locust workers),
``--confirm-window``, and Locust's ``--run-time``, which a headless run must
give.
"""

# Locust's event-hook decorators carry no types.
# mypy: disallow-untyped-decorators=False
from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from typing import Any

import gevent
import pika
import pika.exceptions
from gevent.event import AsyncResult, Event
from locust import User, constant_throughput, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner
from pika.adapters.gevent_connection import GeventConnection

from harness import credentials
from harness.broker import BrokerAdmin, QueueInfo, parse_broker_url
from harness.cluster.base import BrokerEndpoint, ClusterError
from harness.loadgen import (
    MAX_WINDOW,
    Completed,
    ConfirmWindow,
    Ledger,
    Settled,
    quote_ids,
)
from harness.tasks import task_body
from harness.vocab import EXIT_OK, EXIT_UNDECIDED, EXIT_VIOLATED

REQUEST_TYPE = "publish"
REQUEST_NAME = "confirmed"
# A worker's completion (docs/worker-contract.md, optional): publish to processed.
COMPLETED_TYPE = "task"
COMPLETED_NAME = "completed"
DRAIN_POLL_S = 0.5
# A connection opens within this, and a full window gets a confirm within the
# confirm bound; a broker that does not answer is a failure.
CONNECT_TIMEOUT_S = 10.0
CONFIRM_TIMEOUT_S = 10.0
PASS, FAIL, UNDECIDED = "PASS", "FAIL", "UNDECIDED"
EXIT_CODES = {PASS: EXIT_OK, FAIL: EXIT_VIOLATED, UNDECIDED: EXIT_UNDECIDED}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    # Top-level arguments, not a group: Locust's web UI shows only those.
    parser.add_argument("--amqp-url", default="amqp://guest@127.0.0.1:5672/%2F",
                        env_var="TASKQUEUE_AMQP_URL",
                        help="the broker under load (management API on port 15672 of the same "
                             "host, or ?management_port=N, or --management-url)")
    parser.add_argument("--amqp-password", default="", is_secret=True,
                        env_var="TASKQUEUE_AMQP_PASSWORD",
                        help="replaces the password of --amqp-url (default: the URL's, "
                             "else guest)")
    parser.add_argument("--management-url", default="", help="http://host:15672")
    parser.add_argument("--queue", default="tasks",
                        help="the workers' queue (not declared here)")
    parser.add_argument("--rate-per-user", type=float, default=10.0,
                        help="tasks a second each user publishes; 0: as fast as the broker "
                             "confirms")
    parser.add_argument("--confirm-window", type=int, default=100,
                        help="publishes a user keeps awaiting their confirm")
    parser.add_argument("--sleep-ms", type=int, default=100,
                        help="directive for the reference worker: time each task takes")
    parser.add_argument("--dlq", default="",
                        help="the workers' dead-letter queue (default QUEUE.dlq; checked if "
                             "it exists)")
    parser.add_argument("--max-tasks", type=int, default=100_000,
                        help="stop publishing after this many tasks (all users of this "
                             "process)")
    parser.add_argument("--drain-timeout-s", type=float, default=60.0,
                        help="after the run, how long the queue may take to empty")


def _opts(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("taskqueue: run it with the locust command (it parses the options)")
    return environment.parsed_options


def _endpoint(o: Any) -> BrokerEndpoint:
    """The broker, with ``--amqp-password`` in place of the URL's password."""
    url = o.amqp_url
    if o.amqp_password:
        p = urllib.parse.urlsplit(url)
        user = p.username or "guest"
        netloc = (f"{user}:{urllib.parse.quote(o.amqp_password, safe='')}@"
                  f"{p.netloc.rpartition('@')[2]}")
        url = urllib.parse.urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return parse_broker_url(url, o.management_url or None)


class _Run:
    """What this process published, and the queue's counters before it did.

    Roles: a single process (``LocalRunner``) publishes, consumes completions and
    checks. Distributed, the master consumes completions, checks, and hands each
    Locust worker its share of ``--max-tasks`` and the completion queue's name
    (``SETUP_MESSAGE``, sent before the spawn on the same socket); a worker
    publishes and reports each confirmed id with its publish time to the master in
    Locust's own stats reports."""

    run_id = uuid.uuid4().hex[:8]
    published = 0
    quota: int | None = None  # tasks this process may publish (a worker: its share)
    reply_to: str | None = None  # where the workers send completions
    outbox: list[tuple[str, float]] = []  # a Locust worker's confirms, not yet reported
    connect_errors = 0
    baseline: QueueInfo | None = None
    base_depth = 0  # ready messages at the start (passive declare: exact)
    dlq_baseline: QueueInfo | None = None
    dlq_base_depth = 0
    admin: BrokerAdmin | None = None
    problem: str | None = None
    ledger: Ledger | None = None
    completions: _Completions | None = None


SETUP_MESSAGE = "taskqueue_setup"
REPORT_KEY = "taskqueue_confirmed"


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    o = _opts(environment)
    problems = []
    if not 0 <= o.rate_per_user <= 10_000:
        problems.append("--rate-per-user must be in [0, 10000] (0: as fast as confirmed)")
    if not 1 <= o.confirm_window <= MAX_WINDOW:
        problems.append(f"--confirm-window must be 1..{MAX_WINDOW}")
    if not 0 < o.max_tasks <= 10_000_000:
        problems.append("--max-tasks must be 1..10000000")
    if not 0 <= o.sleep_ms <= 600_000:
        problems.append("--sleep-ms must be 0..600000")
    if not 0 <= o.drain_timeout_s <= 3600:
        problems.append("--drain-timeout-s must be 0..3600")
    if o.headless and not o.run_time:
        problems.append("a headless load run must stop by itself: give --run-time (-t)")
    try:
        endpoint = _endpoint(o)
        credentials.register(endpoint.password, endpoint.user)  # never in its output
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise SystemExit(credentials.redact("taskqueue: " + "; ".join(problems)))
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message(SETUP_MESSAGE, _on_setup)
    else:
        _Run.admin = BrokerAdmin(endpoint)
        _Run.quota = o.max_tasks
        _Run.ledger = Ledger(o.max_tasks)


def _on_setup(environment: Environment, msg: Any, **_: Any) -> None:
    """A Locust worker: its share of --max-tasks and the completion queue."""
    _Run.quota = int(msg.data["max_tasks"])
    _Run.reply_to = msg.data["reply_to"] or None
    _Run.ledger = Ledger(max(1, _Run.quota))  # its publish times, for the reports


@events.report_to_master.add_listener
def _report_confirms(client_id: str, data: dict[str, Any], **_: Any) -> None:
    """A Locust worker: its confirms since the last report ride on Locust's stats."""
    data[REPORT_KEY], _Run.outbox = _Run.outbox, []


@events.worker_report.add_listener
def _take_confirms(client_id: str, data: dict[str, Any], **_: Any) -> None:
    """The master: a worker's confirms enter the ledger; completions that came
    before them are matched now."""
    ledger, completions = _Run.ledger, _Run.completions
    if ledger is None:
        return
    for task_id, ts in data.get(REPORT_KEY) or []:
        for done in ledger.published(str(task_id), float(ts)):
            if completions is not None:
                completions.fire(done, 0)
        ledger.confirmed(str(task_id))


@events.test_start.add_listener
def _listen_for_completions(environment: Environment, **_: Any) -> None:
    """Before any user publishes: the queue the workers send completions to."""
    if (_Run.ledger is None or _Run.completions is not None
            or isinstance(environment.runner, WorkerRunner)):
        return
    params = pika.URLParameters(_endpoint(_opts(environment)).amqp_url)
    params.socket_timeout = CONNECT_TIMEOUT_S
    try:
        _Run.completions = _Completions(params, _Run.ledger, environment)
    except (ConnectionError, pika.exceptions.AMQPError, gevent.Timeout) as exc:
        # The users' own connections fail the same way and say so; the check falls
        # back to the broker's counters.
        print(credentials.redact(f"taskqueue: no completion queue ({exc!r}): the check "
                                 "counts by the broker only"), flush=True)
    else:
        _Run.reply_to = _Run.completions.queue


@events.test_start.add_listener
def _setup_workers(environment: Environment, **_: Any) -> None:
    """The master, before it sends the spawn: each worker's share of --max-tasks
    (the remainder to the first ones) and the completion queue."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return
    workers = [c.id for c in runner.clients.ready + runner.clients.running
               + runner.clients.spawning]
    total = _opts(environment).max_tasks
    for i, client_id in enumerate(workers):
        share = total // len(workers) + (1 if i < total % len(workers) else 0)
        runner.send_message(SETUP_MESSAGE, {"max_tasks": share, "reply_to": _Run.reply_to},
                            client_id=client_id)


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
        word, text = _verdict(environment, _Run.admin)
    except ClusterError as exc:
        word, text = UNDECIDED, f"the broker did not answer the check: {exc}"
    finally:
        _Run.admin.close()
        if _Run.completions is not None:
            _Run.completions.close()
    stats = environment.stats.get(REQUEST_NAME, REQUEST_TYPE)
    if word == PASS and stats.num_failures:
        word, text = FAIL, f"{stats.num_failures} publish(es) failed; {text}"
    print(credentials.redact(f"taskqueue check: {word}: {text}"), flush=True)
    environment.process_exit_code = EXIT_CODES[word]


def _verdict(environment: Environment, admin: BrokerAdmin) -> tuple[str, str]:
    o = _opts(environment)
    if _Run.problem is not None:
        return UNDECIDED, f"the management API did not answer at the start: {_Run.problem}"
    if _Run.baseline is None:
        return UNDECIDED, (f"queue {o.queue!r} does not exist on "
                           f"{admin.endpoint.management_url}: start the workers first "
                           "(they declare it)")
    base = _Run.baseline
    stats = environment.stats.get(REQUEST_NAME, REQUEST_TYPE)
    confirmed = stats.num_requests - stats.num_failures
    if confirmed == 0 and _Run.connect_errors:
        return UNDECIDED, (f"the broker took no connection ({_Run.connect_errors} user(s) "
                           "could not connect): nothing was published")
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
            return UNDECIDED, f"queue {o.queue!r} disappeared during the run"
        left = max(depth, info.messages)
        pending = _Run.ledger.pending if _Run.ledger and _Run.ledger.any_completion else 0
        if ((left == 0 and info.unacked == 0 and info.acked - base.acked >= want_acks
             and pending == 0) or time.monotonic() >= deadline):
            break
        time.sleep(DRAIN_POLL_S)
    acked = info.acked - base.acked
    dead = _dead_lettered(admin, o.dlq or f"{o.queue}.dlq")
    summary = (f"confirmed {confirmed} (+{queued_before} queued before), acked {acked}, "
               f"redelivered {info.redelivered - base.redelivered}, dead-lettered {dead}, "
               f"left in the queue {left} ({info.unacked} unacked)")
    by_id = _Run.ledger.counts() if _Run.ledger and _Run.ledger.any_completion else None
    if by_id is not None:
        summary += (f"; by id: {by_id.completed} of {by_id.confirmed} confirmed completed, "
                    f"{len(by_id.lost)} never completed, {len(by_id.duplicated)} completed "
                    "twice" + (f", {by_id.skewed} stamped before their publish (clock skew)"
                               if by_id.skewed else ""))
    else:
        summary += ("; no completions from the workers (reply_to, an optional part of the "
                    "worker contract): judged by the broker's counters only")
    if by_id is not None and by_id.duplicated:
        return FAIL, (f"{len(by_id.duplicated)} task(s) processed twice "
                      f"({quote_ids(by_id.duplicated)}): {summary}")
    if left or info.unacked:
        return FAIL, (f"the queue did not drain within {o.drain_timeout_s:g} s (the workers "
                      f"did not keep up): {summary}")
    if by_id is not None and by_id.lost:
        return FAIL, (f"{len(by_id.lost)} confirmed task(s) never completed, the queue empty "
                      f"({quote_ids(by_id.lost)}): {summary}")
    if dead > 0:
        return FAIL, f"{dead} task(s) dead-lettered (the tasks cannot fail): {summary}"
    if not info.has_message_stats:
        return UNDECIDED, (f"the management API has no statistics for {o.queue!r}, so the "
                           f"acks cannot be counted (statistics disabled?): {summary}")
    if acked < want_acks:
        return FAIL, (f"{want_acks - acked} task(s) never acked (dropped, or the acks went "
                      f"unseen): {summary}")
    return PASS, summary


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


class _ConfirmingChannel:
    """One connection on pika's gevent adapter, one channel in confirm mode, up to
    ``window`` publishes awaiting their confirm (``harness.loadgen``): the
    connection's I/O runs in gevent's hub, so a user's greenlet publishes and
    waits for room while every other user's confirms come in."""

    def __init__(self, params: pika.URLParameters, window: int) -> None:
        self.window = ConfirmWindow(window)
        self.settled: list[Settled] = []
        self.room = Event()
        self.room.set()
        self.closed: str | None = None
        self.channel: Any = None
        opened: AsyncResult = AsyncResult()

        def on_channel(ch: Any) -> None:
            self.channel = ch
            ch.add_on_return_callback(self._on_return)
            ch.add_on_close_callback(self._on_channel_closed)
            ch.confirm_delivery(ack_nack_callback=self._on_confirm,
                                callback=lambda _frame: opened.set(True))

        def on_open_error(_conn: Any, err: BaseException) -> None:
            opened.set_exception(ConnectionError(f"cannot connect: {err!r}"))

        self.conn = GeventConnection(
            params, on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=on_open_error,
            on_close_callback=lambda _conn, reason: self._on_channel_closed(None, reason))
        opened.get(timeout=CONNECT_TIMEOUT_S)

    def publish(self, queue: str, task_id: str, body: bytes, reply_to: str | None) -> None:
        if self.closed is not None:
            raise ConnectionError(self.closed)
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=task_id, reply_to=reply_to)
        self.window.sent(task_id, len(body))
        self.channel.basic_publish("", queue, body, props, mandatory=True)
        if self.window.room <= 0:
            self.room.clear()

    def take_settled(self) -> list[Settled]:
        out, self.settled = self.settled, []
        return out

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    # The callbacks run in gevent's hub: they only record and wake, never block.
    def _on_confirm(self, frame: Any) -> None:
        m = frame.method
        self.settled += self.window.answer(int(m.delivery_tag), bool(m.multiple),
                                           isinstance(m, pika.spec.Basic.Ack))
        if self.window.room > 0:
            self.room.set()

    def _on_return(self, _ch: Any, method: Any, props: Any, _body: bytes) -> None:
        self.window.returned(str(props.message_id),
                             f"returned: {method.reply_code} {method.reply_text}")

    def _on_channel_closed(self, _ch: Any, reason: BaseException) -> None:
        if self.closed is None:
            self.closed = f"connection or channel closed: {reason!r}"
        self.settled += self.window.abandon(self.closed)
        self.room.set()  # wake the publisher: it stops


class _Completions:
    """One connection consuming this process's completion queue (server-named,
    exclusive: it goes with the connection), each completion a Locust request
    ``task / completed`` with the publish-to-processed latency; a second completion
    of a task is a failure."""

    def __init__(self, params: pika.URLParameters, ledger: Ledger,
                 environment: Environment) -> None:
        self.ledger = ledger
        self.environment: Any = environment  # Locust types its event hooks loosely
        self.queue = ""
        ready: AsyncResult = AsyncResult()

        def on_declared(frame: Any) -> None:
            self.queue = frame.method.queue
            self.channel.basic_consume(self.queue, self._on_completion, auto_ack=True,
                                       callback=lambda _f: ready.set(True))

        def on_channel(ch: Any) -> None:
            self.channel = ch
            ch.queue_declare("", exclusive=True, auto_delete=True, callback=on_declared)

        self.conn = GeventConnection(
            params, on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=lambda _c, err: ready.set_exception(
                ConnectionError(f"cannot connect: {err!r}")))
        ready.get(timeout=CONNECT_TIMEOUT_S)

    def _on_completion(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        try:
            data = json.loads(body)
            task_id, processed_ts = str(data["id"]), float(data["processed_ts"])
        except (ValueError, KeyError, TypeError):
            self.ledger.unreadable += 1  # not a completion this file can read
            return
        done = self.ledger.completed(task_id, processed_ts)
        if done is not None:
            self.fire(done, len(body))

    def fire(self, done: Completed, size: int) -> None:
        """One ``task / completed`` request: the publish-to-processed latency."""
        self.environment.events.request.fire(
            request_type=COMPLETED_TYPE, name=COMPLETED_NAME,
            response_time=done.latency_s * 1000, response_length=size,
            exception=RuntimeError("completed twice") if done.duplicate else None, context={})

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


class TaskPublisher(User):
    """One connection, confirms on, up to ``--confirm-window`` publishes in flight;
    at ``--rate-per-user`` tasks a second, or as fast as the window allows (0)."""

    def wait_time(self) -> float:
        rate = _opts(self.environment).rate_per_user
        return float(constant_throughput(rate)(self)) if rate > 0 else 0.0

    def on_start(self) -> None:
        o = _opts(self.environment)
        params = pika.URLParameters(_endpoint(o).amqp_url)
        params.socket_timeout = CONNECT_TIMEOUT_S
        params.blocked_connection_timeout = CONNECT_TIMEOUT_S
        params.client_properties = {"connection_name": f"locust-{uuid.uuid4().hex[:8]}"}
        try:
            self.pub = _ConfirmingChannel(params, o.confirm_window)
        except (ConnectionError, pika.exceptions.AMQPError, gevent.Timeout) as exc:
            _Run.connect_errors += 1
            self._fire_failure(f"cannot connect: {exc!r}")
            raise StopUser() from None

    def on_stop(self) -> None:
        pub = getattr(self, "pub", None)
        if pub is None:
            return
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while pub.window.outstanding and pub.closed is None and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if pub.window.outstanding:
            pub.settled += pub.window.abandon(
                f"no confirm within {CONFIRM_TIMEOUT_S:g} s of the stop")
        self._report(pub)
        pub.close()
        runner = self.environment.runner
        if (_Run.quota is not None and _Run.published >= _Run.quota
                and isinstance(runner, LocalRunner)
                and sum(not g.dead for g in runner.user_greenlets) <= 1):
            # --max-tasks reached and this is the last user: the run is over, the
            # check need not wait for --run-time. (Spawned: quit kills the users.)
            gevent.spawn(runner.quit)

    @task
    def publish(self) -> None:
        o = _opts(self.environment)
        pub = self.pub
        if not pub.room.wait(timeout=CONFIRM_TIMEOUT_S):
            pub.settled += pub.window.abandon(f"no confirm within {CONFIRM_TIMEOUT_S:g} s")
            pub.closed = "the broker stopped confirming"
        self._report(pub)
        if pub.closed is not None:
            raise StopUser()
        batch = 1 if o.rate_per_user > 0 else pub.window.room
        for _ in range(batch):
            if _Run.quota is None:
                self._fire_failure("no setup from the master (a worker that joined late)")
                raise StopUser()
            if _Run.published >= _Run.quota:
                raise StopUser()
            _Run.published += 1
            task_id = f"load-{_Run.run_id}-{_Run.published}"
            body = task_body(task_id, _Run.published, {"sleep_ms": o.sleep_ms})
            if _Run.ledger is not None:
                _Run.ledger.published(task_id, time.time())
            try:
                pub.publish(o.queue, task_id, body, _Run.reply_to)
            except (ConnectionError, pika.exceptions.AMQPError) as exc:
                self._fire_failure(repr(exc))
                raise StopUser() from None

    def _report(self, pub: _ConfirmingChannel) -> None:
        fire = self.environment.events.request.fire
        for s in pub.take_settled():
            if s.error is None and _Run.ledger is not None:
                _Run.ledger.confirmed(s.task_id)
                if isinstance(self.environment.runner, WorkerRunner):
                    _Run.outbox.append((s.task_id, _Run.ledger.published_ts(s.task_id)))
            fire(request_type=REQUEST_TYPE, name=REQUEST_NAME,
                 response_time=s.latency_s * 1000, response_length=s.size,
                 exception=None if s.error is None else RuntimeError(s.error), context={})

    def _fire_failure(self, error: str) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=REQUEST_NAME, response_time=0,
            response_length=0, exception=RuntimeError(error), context={})
