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

import dataclasses
import json
import math
import os
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
from pika.adapters.utils import io_services_utils

from harness import credentials
from harness.broker import BrokerAdmin, QueueInfo, parse_broker_url
from harness.cluster.base import BrokerEndpoint, ClusterError
from harness.loadgen import (
    MAX_WINDOW,
    QUEUE_SAMPLES_MAX,
    Completed,
    ConfirmWindow,
    Ledger,
    LoadFacts,
    QueueSample,
    Settled,
    body_maker,
    coalescing_produce,
    judge_load,
    queue_samples_csv,
    queue_summary,
)
from harness.vocab import EXIT_UNDECIDED, run_word

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
# A queue found drained at the deadline gets this long more for the management
# API's counters to catch up (collect_statistics_interval is 5 s by default).
STATS_LAG_S = 12.0
# The master waits this long for each Locust worker's final report.
FINAL_REPORT_TIMEOUT_S = CONFIRM_TIMEOUT_S + 10.0
# Read here, not as the options' env_var: Locust's web UI would serve their values.
URL_ENV, PASSWORD_ENV = "TASKQUEUE_AMQP_URL", "TASKQUEUE_AMQP_PASSWORD"
DEFAULT_URL = "amqp://guest@127.0.0.1:5672/%2F"
SETUP_MESSAGE = "taskqueue_setup"  # master -> worker: its share, the completion queue
FLUSH_MESSAGE = "taskqueue_flush"  # master -> worker: stop, settle, send the final report
FINAL_MESSAGE = "taskqueue_final"  # worker -> master: the final report
REPORT_KEY = "taskqueue_confirmed"  # in Locust's periodic stats reports


# pika's transports send each buffered frame with its own send(): a task is three
# frames, so three system calls, the largest cost of a publish. Joined into one
# send here (``harness.loadgen.coalescing_produce``; 0.73-0.93 of the Publisher
# before, 0.90-1.06 after, benchmarks/bench_publish.py).
io_services_utils._AsyncTransportBase._produce = coalescing_produce


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    # Top-level arguments, not a group: Locust's web UI shows only those.
    parser.add_argument("--amqp-url", default="",
                        help=f"the broker under load (default ${URL_ENV}, else {DEFAULT_URL}; "
                             "management API on port 15672 of the same host, or "
                             "?management_port=N, or --management-url)")
    parser.add_argument("--amqp-password", default="", is_secret=True,
                        help=f"replaces the password of --amqp-url (default ${PASSWORD_ENV}, "
                             "else the URL's, else guest)")
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
                        help="stop publishing after this many tasks (all users of all "
                             "processes)")
    parser.add_argument("--queue-sample-s", type=float, default=1.0,
                        help="sample the queue's depth, unacked and consumers this often "
                        "(0: never); written beside --queue-report as CSV")
    parser.add_argument("--queue-report", default="",
                        help="write the queue over time here: a plot (HTML, offline) and "
                        "the samples beside it (.csv)")
    parser.add_argument("--drain-timeout-s", type=float, default=60.0,
                        help="after the run, how long the queue may take to empty")


def _opts(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("taskqueue: run it with the locust command (it parses the options)")
    return environment.parsed_options


def _endpoint(o: Any) -> BrokerEndpoint:
    """The broker: ``--amqp-url`` or ``$TASKQUEUE_AMQP_URL``, with ``--amqp-password``
    or ``$TASKQUEUE_AMQP_PASSWORD`` in place of the URL's password; the password is
    registered so that no output of this process shows it."""
    url = o.amqp_url or os.environ.get(URL_ENV) or DEFAULT_URL
    password = o.amqp_password or os.environ.get(PASSWORD_ENV, "")
    if password:
        p = urllib.parse.urlsplit(url)
        user = p.username or "guest"
        netloc = (f"{user}:{urllib.parse.quote(password, safe='')}@"
                  f"{p.netloc.rpartition('@')[2]}")
        url = urllib.parse.urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    endpoint = parse_broker_url(url, o.management_url or None)
    credentials.register(endpoint.password, endpoint.user)
    return endpoint


class _Run:
    """The state of this process's load run.

    Roles: a single process (``LocalRunner``) publishes, consumes completions and
    checks. Distributed, the master consumes completions and checks, and hands
    each Locust worker its share of ``--max-tasks`` and the completion queue's name
    (``SETUP_MESSAGE``, sent before the spawn on the same socket); a worker
    publishes, sends each confirmed id with its publish time to the master in
    Locust's stats reports, and a final report (``FINAL_MESSAGE``) when the master
    asks before it stops (``FLUSH_MESSAGE``): the master waits for it, so the
    last seconds' confirms are not lost with Locust's final stats report."""

    run_id = uuid.uuid4().hex[:8]
    published = 0
    publish_failures = 0
    connect_errors = 0
    quota: int | None = None  # tasks this process may publish (a worker: its share)
    reply_to: str | None = None  # where the workers send completions
    outbox: list[tuple[str, float]] = []  # a Locust worker's confirms, not yet reported
    channels: list[_ConfirmingChannel] = []
    baseline: QueueInfo | None = None
    base_depth = 0  # ready messages at the start (passive declare: exact)
    dlq_baseline: QueueInfo | None = None
    dlq_base_depth = 0
    admin: BrokerAdmin | None = None
    problem: str | None = None
    ledger: Ledger | None = None
    completions: _Completions | None = None
    samples: list[QueueSample] = []  # the queue over time (the master, or alone)
    sampler: gevent.Greenlet | None = None
    finals: dict[str, dict[str, Any]] = {}  # the master: each worker's final report
    shared: set[str] = set()  # the master: the workers that got a share
    late_warned = False
    on_worker = False  # this process is a Locust worker

    @classmethod
    def reset(cls, quota: int | None) -> None:
        """A new test (the web UI can run several in one process)."""
        cls.published = cls.publish_failures = cls.connect_errors = 0
        cls.quota = quota
        cls.outbox, cls.channels, cls.finals, cls.shared = [], [], {}, set()
        cls.samples = []
        cls.run_id = uuid.uuid4().hex[:8]  # ids unique to each test
        cls.problem = None
        cls.ledger = Ledger(max(1, quota or 1))


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
    if o.headless and not o.run_time and environment.shape_class is None:
        problems.append("a headless load run must stop by itself: give --run-time (-t)")
    if not (o.queue_sample_s == 0 or 0.1 <= o.queue_sample_s <= 3600):
        problems.append("--queue-sample-s must be 0 (never) or 0.1..3600")
    try:
        endpoint = _endpoint(o)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise SystemExit(credentials.redact("taskqueue: " + "; ".join(problems)))
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        _Run.on_worker = True
        runner.register_message(SETUP_MESSAGE, _on_setup)
        runner.register_message(FLUSH_MESSAGE, _on_flush)
    else:
        _Run.admin = BrokerAdmin(endpoint)
    if isinstance(runner, MasterRunner):
        runner.register_message(FINAL_MESSAGE, _on_final)


# -- distributed mode --------------------------------------------------------------


def _on_setup(environment: Environment, msg: Any, **_: Any) -> None:
    """A Locust worker: its share of --max-tasks and the completion queue."""
    _Run.reset(int(msg.data["max_tasks"]))
    _Run.reply_to = msg.data["reply_to"] or None


def _on_flush(environment: Environment, msg: Any, **_: Any) -> None:
    """A Locust worker, asked by the master before it stops: stop the users, let
    the confirms of what they sent come in, and send everything not reported."""
    if environment.runner is not None:
        environment.runner.stop()
    _settle_channels()
    assert isinstance(environment.runner, WorkerRunner)
    environment.runner.send_message(FINAL_MESSAGE, {
        "confirmed": _Run.outbox, "publish_failures": _Run.publish_failures,
        "connect_errors": _Run.connect_errors,
    })
    _Run.outbox = []


@events.report_to_master.add_listener
def _report_confirms(client_id: str, data: dict[str, Any], **_: Any) -> None:
    """A Locust worker: its confirms since the last report ride on Locust's stats."""
    data[REPORT_KEY], _Run.outbox = _Run.outbox, []


@events.worker_report.add_listener
def _take_confirms(client_id: str, data: dict[str, Any], **_: Any) -> None:
    _ledger_takes(data.get(REPORT_KEY) or [])


def _on_final(environment: Environment, msg: Any, **_: Any) -> None:
    """The master: a worker's final report."""
    _ledger_takes(msg.data.get("confirmed") or [])
    _Run.finals[str(msg.node_id)] = msg.data


def _ledger_takes(confirmed: list[Any]) -> None:
    """The master: a worker's confirms enter the ledger; completions that came
    before them are matched now."""
    ledger, completions = _Run.ledger, _Run.completions
    if ledger is None:
        return
    for task_id, ts in confirmed:
        for done in ledger.published(str(task_id), float(ts)):
            if completions is not None:
                completions.fire(done, 0)
        ledger.confirmed(str(task_id))


@events.test_stopping.add_listener
def _collect_final_reports(environment: Environment, **_: Any) -> None:
    """The master, before it tells the workers to quit (then it listens no more):
    every worker's final report, or a problem naming those that sent none."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return
    # Those that got a share too: a worker that left (Ctrl-C, a lost heartbeat) is
    # no longer in Locust's list, and its last confirms are missing all the same.
    workers = sorted({c.id for c in runner.clients.all} | _Run.shared)
    for client_id in workers:
        runner.send_message(FLUSH_MESSAGE, None, client_id=client_id)
    deadline = time.monotonic() + FINAL_REPORT_TIMEOUT_S
    while time.monotonic() < deadline and any(w not in _Run.finals for w in workers):
        gevent.sleep(0.1)
    missing = [w for w in workers if w not in _Run.finals]
    if missing:
        _Run.problem = "; ".join(filter(None, [
            _Run.problem, f"{len(missing)} Locust worker(s) sent no final report within "
                          f"{FINAL_REPORT_TIMEOUT_S:g} s: their last confirms are unknown"]))


# -- the start of a test -----------------------------------------------------------


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    """Before any user publishes: fresh state, the completion queue (not on a
    Locust worker: the master's is used), and the queue's counters before."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    o = _opts(environment)
    _Run.reset(o.max_tasks)
    if _Run.completions is not None:
        _Run.completions.close()
    params = pika.URLParameters(_endpoint(o).amqp_url)
    params.socket_timeout = CONNECT_TIMEOUT_S
    try:
        _Run.completions = _Completions(params, environment)
    except (ConnectionError, pika.exceptions.AMQPError, gevent.Timeout) as exc:
        # The users' own connections fail the same way and say so; the check falls
        # back to the broker's counters.
        _Run.completions, _Run.reply_to = None, None
        print(credentials.redact(f"taskqueue: no completion queue ({exc!r}): the check "
                                 "counts by the broker only"), flush=True)
    else:
        _Run.reply_to = _Run.completions.queue
    _baseline(o)
    if _Run.sampler is not None:
        _Run.sampler.kill(block=False)
    _Run.sampler = (gevent.spawn(_sample_queue, environment, o.queue, o.queue_sample_s)
                    if o.queue_sample_s > 0 and _Run.admin is not None else None)
    if isinstance(runner, MasterRunner):
        _setup_workers(runner, o.max_tasks)


def _sample_queue(environment: Environment, queue: str, every_s: float) -> None:
    """The queue's depth, unacked and consumers over the run and its drain (the
    management API's counts, which lag by its statistics interval), with the users
    then: the load's shape against what the workers made of it."""
    t0 = time.monotonic()
    while len(_Run.samples) < QUEUE_SAMPLES_MAX:
        admin = _Run.admin
        if admin is None:
            return
        try:
            info = admin.queue_info(queue)
        except ClusterError:
            info = None
        runner = environment.runner
        _Run.samples.append(QueueSample(
            t_s=round(time.monotonic() - t0, 3),
            users=runner.user_count if runner is not None else 0,
            ready=info.ready if info is not None else None,
            unacked=info.unacked if info is not None else None,
            consumers=info.consumers if info is not None else None))
        gevent.sleep(every_s)


def _write_queue_report(o: Any) -> None:
    """The samples as CSV and a plot (``--queue-report``), paths printed."""
    if _Run.sampler is not None:
        _Run.sampler.kill(block=True, timeout=5)
        _Run.sampler = None
    if not _Run.samples:
        return
    print(f"taskqueue queue: {queue_summary(_Run.samples)}", flush=True)
    if not o.queue_report:
        return
    from pathlib import Path

    from harness.htmlreport import write_queue_report

    html_path = Path(o.queue_report)
    csv_path = html_path.with_suffix(".csv")
    try:
        csv_path.write_text(queue_samples_csv(_Run.samples), encoding="utf-8")
        write_queue_report(html_path, _Run.samples, f"queue {o.queue} under load")
    except OSError as exc:
        print(f"taskqueue: the queue report was not written: {exc}", flush=True)
        return
    print(f"taskqueue queue report: {html_path} ({len(_Run.samples)} samples; {csv_path})",
          flush=True)


def _baseline(o: Any) -> None:
    admin = _Run.admin
    if admin is None:
        return
    try:
        _Run.baseline = admin.queue_info(o.queue)
        _Run.base_depth = admin.passive_depth(o.queue) or 0
        _Run.dlq_baseline = admin.queue_info(o.dlq or f"{o.queue}.dlq")
        _Run.dlq_base_depth = admin.passive_depth(o.dlq or f"{o.queue}.dlq") or 0
    except ClusterError as exc:  # the check says so; publishing goes on and is measured
        _Run.problem = f"the management API did not answer at the start: {exc}"


def _setup_workers(runner: MasterRunner, total: int) -> None:
    """The master, before it sends the spawn: each worker's share of --max-tasks
    (the remainder to the first ones) and the completion queue."""
    workers = [c.id for c in runner.clients.ready + runner.clients.running
               + runner.clients.spawning]
    for i, client_id in enumerate(workers):
        _Run.shared.add(client_id)
        share = total // len(workers) + (1 if i < total % len(workers) else 0)
        runner.send_message(SETUP_MESSAGE, {"max_tasks": share, "reply_to": _Run.reply_to},
                            client_id=client_id)


# -- the check ---------------------------------------------------------------------


@events.quitting.add_listener
def _check(environment: Environment, **_: Any) -> None:
    """After the run: the queue drained, every confirmed task acked and completed."""
    if _Run.admin is None:
        return
    if environment.runner is not None:
        environment.runner.stop()  # on Ctrl-C, quitting fires while users still publish
    _settle_channels()
    try:
        code, text = judge_load(_facts(environment, _Run.admin))
    except _Undecided as exc:
        code, text = EXIT_UNDECIDED, str(exc)
    finally:
        _write_queue_report(_opts(environment))
        _Run.admin.close()
        if _Run.completions is not None:
            _Run.completions.close()
    print(credentials.redact(f"taskqueue check: {run_word(code)}: {text}"), flush=True)
    environment.process_exit_code = code


class _Undecided(Exception):
    """The check cannot gather its facts."""


def _facts(environment: Environment, admin: BrokerAdmin) -> LoadFacts:
    o = _opts(environment)
    ledger = _Run.ledger
    assert ledger is not None
    problems = [_Run.problem] if _Run.problem else []
    base = _Run.baseline
    if base is None and not problems:
        raise _Undecided(f"queue {o.queue!r} does not exist on "
                         f"{admin.endpoint.management_url}: start the workers first (they "
                         "declare it)")
    finals = _Run.finals.values()
    publish_failures = _Run.publish_failures + sum(int(f.get("publish_failures", 0))
                                                  for f in finals)
    connect_errors = _Run.connect_errors + sum(int(f.get("connect_errors", 0))
                                              for f in finals)
    confirmed = ledger.confirmed_count
    # Tasks already queued when the run began are acked too: they must not stand
    # in for ours.
    queued_before = max(base.messages, _Run.base_depth) if base else 0
    completions = _Run.completions
    deadline = time.monotonic() + o.drain_timeout_s
    lag_deadline: float | None = None
    # The depth from a passive declare (exact); the counters from the management
    # API, whose statistics lag (collect_statistics_interval) and may not exist
    # yet for a new queue: poll until they account for every message that entered
    # the queue and every completion came, or the bound runs out (plus, for a
    # queue found drained, time for the counters to catch up); an error is
    # retried until then. Waiting only costs time in a run that fails.
    last_error: str | None = None
    depth: int | None = None
    info: QueueInfo | None = None
    while True:
        try:
            depth, info = admin.passive_depth(o.queue), admin.queue_info(o.queue)
            last_error = None
        except ClusterError as exc:
            last_error = str(exc)
        if last_error is None and (depth is None or info is None):
            raise _Undecided(f"queue {o.queue!r} disappeared during the run")
        now = time.monotonic()
        if last_error is None and depth is not None and info is not None:
            drained = max(depth, info.messages) == 0 and info.unacked == 0
            counted = (base is not None and info.has_message_stats
                       and info.acked - base.acked >= max(
                           confirmed + queued_before,
                           info.published - base.published + base.messages))
            waiting = (completions is not None and completions.lost is None
                       and ledger.any_completion and ledger.pending > 0)
            if drained and counted and not waiting:
                break
            if drained and not counted and now >= deadline and lag_deadline is None:
                lag_deadline = now + STATS_LAG_S
        if now >= deadline and (lag_deadline is None or now >= lag_deadline):
            break
        time.sleep(DRAIN_POLL_S)
    if last_error is not None or depth is None or info is None:
        raise _Undecided("; ".join(
            [*problems, f"the broker did not answer the check: {last_error}"]))
    by_id = None
    no_by_id = "the workers sent no completions (reply_to, an optional part of the worker " \
               "contract)"
    if completions is None:
        no_by_id = "no completion queue"
    elif ledger.any_completion:
        by_id = ledger.counts()
        if completions.lost is not None:
            # What came before the loss still accuses (a duplicate is one); what
            # did not come proves nothing.
            by_id = dataclasses.replace(by_id, lost=())
            problems.append(f"the completion queue was lost ({completions.lost}): the "
                            "completions after it are unknown")
    elif completions.lost is not None:
        no_by_id = f"the completion queue was lost ({completions.lost})"
    stats = base is not None and info.has_message_stats
    return LoadFacts(
        queue=o.queue, drain_timeout_s=o.drain_timeout_s, confirmed=confirmed,
        publish_failures=publish_failures, connect_errors=connect_errors,
        queued_before=queued_before, left=max(depth, info.messages), unacked=info.unacked,
        acked=info.acked - base.acked if stats and base is not None else None,
        # Everything that entered the queue, with what it held at the baseline (one
        # management sample, so the two agree whatever the statistics' lag).
        entered=(info.published - base.published + base.messages
                 if stats and base is not None else None),
        redelivered=info.redelivered - base.redelivered if base is not None else 0,
        dead=_dead_lettered(admin, o.dlq or f"{o.queue}.dlq"),
        by_id=by_id, no_by_id=no_by_id, problems=tuple(problems))


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


def _settle_channels() -> None:
    """Every publishing channel of this process: wait (bounded) for the confirms of
    what it sent, fail the rest, close it. A user killed inside its ``on_stop``
    left its channel to this."""
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while (any(c.window.outstanding and c.closed is None for c in _Run.channels)
           and time.monotonic() < deadline):
        gevent.sleep(0.01)
    for c in _Run.channels:
        if c.window.outstanding:
            c.settled += c.window.abandon(
                f"no confirm within {CONFIRM_TIMEOUT_S:g} s of the stop")
        # What no user reported any more (a user killed inside its on_stop).
        _Run.publish_failures += sum(1 for x in c.take_settled() if x.error is not None)
        c.close()


# -- publishing --------------------------------------------------------------------


class _ConfirmingChannel:
    """One connection on pika's gevent adapter, one channel in confirm mode, up to
    ``window`` publishes awaiting their confirm (``harness.loadgen``): the
    connection's I/O runs in gevent's hub, so a user's greenlet publishes and
    waits for room while every other user's confirms come in. A confirm enters
    the ledger in the callback itself, so a user killed before it reports loses
    only its Locust request events, never the check's count."""

    def __init__(self, params: pika.URLParameters, window: int) -> None:
        self.window = ConfirmWindow(window)
        self.settled: list[Settled] = []
        self.room = Event()
        self.room.set()
        self.closed: str | None = None
        self.channel: Any = None
        self._props: pika.BasicProperties | None = None
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
        try:
            opened.get(timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def publish(self, queue: str, task_id: str, body: bytes, reply_to: str | None) -> None:
        if self.closed is not None:
            raise ConnectionError(self.closed)
        props = self._props
        if props is None or props.reply_to != reply_to:
            props = self._props = pika.BasicProperties(
                delivery_mode=2, content_type="application/json", reply_to=reply_to)
        # One properties object per channel, its id set per publish: pika encodes it
        # inside basic_publish, so reusing it is safe and spares an object a task.
        props.message_id = task_id
        self.channel.basic_publish("", queue, body, props, mandatory=True)
        self.window.sent(task_id, len(body))
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
        done = self.window.answer(int(m.delivery_tag), bool(m.multiple),
                                  isinstance(m, pika.spec.Basic.Ack))
        ledger = _Run.ledger
        for s in done:
            if s.error is None and ledger is not None:
                ledger.confirmed(s.task_id)
                if _Run.on_worker:  # for the next report to the master
                    _Run.outbox.append((s.task_id, ledger.published_ts(s.task_id)))
        self.settled += done
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
    """One connection consuming the completion queue (server-named, exclusive: it
    goes with the connection), each completion a Locust request ``task /
    completed`` with the publish-to-processed latency; a second completion of a
    task is a failure. If the connection is lost, so is the queue and whatever
    came to it after: ``lost`` says why, and the check counts by the broker."""

    def __init__(self, params: pika.URLParameters, environment: Environment) -> None:
        self.environment: Any = environment  # Locust types its event hooks loosely
        self.queue = ""
        self.lost: str | None = None
        ready: AsyncResult = AsyncResult()

        def on_declared(frame: Any) -> None:
            self.queue = frame.method.queue
            self.channel.basic_consume(self.queue, self._on_completion, auto_ack=True,
                                       callback=lambda _f: ready.set(True))

        def on_channel(ch: Any) -> None:
            self.channel = ch
            ch.add_on_close_callback(lambda _ch, reason: on_close(None, reason))
            ch.add_on_cancel_callback(lambda frame: on_close(None, RuntimeError(
                "the broker cancelled the consumer")))
            ch.queue_declare("", exclusive=True, auto_delete=True, callback=on_declared)

        def on_close(_conn: Any, reason: BaseException) -> None:
            if self.lost is None and not self._closing:
                self.lost = repr(reason)

        self._closing = False
        self.conn = GeventConnection(
            params, on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=lambda _c, err: ready.set_exception(
                ConnectionError(f"cannot connect: {err!r}")),
            on_close_callback=on_close)
        try:
            ready.get(timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _on_completion(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        ledger = _Run.ledger
        if ledger is None:
            return
        try:
            data = json.loads(body)
            task_id, processed_ts = str(data["id"]), float(data["processed_ts"])
            if not math.isfinite(processed_ts):
                raise ValueError("processed_ts is not finite")
        except (ValueError, KeyError, TypeError):
            ledger.unreadable += 1  # not a completion this file can read
            return
        done = ledger.completed(task_id, processed_ts)
        if done is not None:
            self.fire(done, len(body))

    def fire(self, done: Completed, size: int) -> None:
        """One ``task / completed`` request: the publish-to-processed latency."""
        self.environment.events.request.fire(
            request_type=COMPLETED_TYPE, name=COMPLETED_NAME,
            response_time=done.latency_s * 1000, response_length=size,
            exception=RuntimeError("completed twice") if done.duplicate else None, context={})

    def close(self) -> None:
        self._closing = True
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
        _Run.channels.append(self.pub)
        self.body = body_maker(f"load-{_Run.run_id}-", {"sleep_ms": o.sleep_ms})

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
        if _Run.quota is None:
            # A Locust worker that joined after the start got no share: it publishes
            # nothing (not a failure of the workers under test).
            if not _Run.late_warned:
                _Run.late_warned = True
                print("taskqueue: this Locust worker joined after the start and got no "
                      "share of --max-tasks: it publishes nothing", flush=True)
            raise StopUser()
        batch = 1 if o.rate_per_user > 0 else pub.window.room
        for _ in range(batch):
            if _Run.published >= _Run.quota:
                raise StopUser()
            _Run.published += 1
            task_id, body = self.body(_Run.published)
            if _Run.ledger is not None:
                _Run.ledger.published(task_id, time.time())
            try:
                pub.publish(o.queue, task_id, body, _Run.reply_to)
            except (ConnectionError, pika.exceptions.AMQPError) as exc:
                self._fire_failure(repr(exc))
                raise StopUser() from None

    def _report(self, pub: _ConfirmingChannel) -> None:
        """The settled publishes as Locust requests (the ledger has them already)."""
        fire = self.environment.events.request.fire
        for s in pub.take_settled():
            if s.error is not None:
                _Run.publish_failures += 1
            fire(request_type=REQUEST_TYPE, name=REQUEST_NAME,
                 response_time=s.latency_s * 1000, response_length=s.size,
                 exception=None if s.error is None else RuntimeError(s.error), context={})

    def _fire_failure(self, error: str) -> None:
        _Run.publish_failures += 1
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=REQUEST_NAME, response_time=0,
            response_length=0, exception=RuntimeError(error), context={})
