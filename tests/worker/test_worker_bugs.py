"""Planted worker bugs (WORKER_BUG): the accepted names, and what each bug changes (no broker)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.spec import Basic, BasicProperties

from worker import bugs
from worker.bugs import BUG_CLAIMS, KNOWN_BUGS, ORCHESTRATOR_BUGS, SEARCH_BUGS
from worker.config import ConfigError, load_config
from worker.consumer import Completion, Delivery, Worker
from worker.events import EventEmitter
from worker.health import HealthServer, HealthState

REPO = Path(__file__).resolve().parents[2]


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", KNOWN_BUGS + SEARCH_BUGS + ORCHESTRATOR_BUGS)
def test_every_known_bug_is_accepted(name: str) -> None:
    assert load_config({"WORKER_BUG": name}).bug == name
    assert load_config({"WORKER_BUG": f"  {name} "}).bug == name


def test_known_bugs_is_the_public_tuple() -> None:
    from worker.config import KNOWN_BUGS as from_config

    assert from_config is KNOWN_BUGS
    assert len(KNOWN_BUGS) == 19 and len(set(KNOWN_BUGS)) == 19
    assert set(BUG_CLAIMS) == set(KNOWN_BUGS) | set(SEARCH_BUGS) | set(ORCHESTRATOR_BUGS)
    assert not set(KNOWN_BUGS) & set(SEARCH_BUGS)
    assert not (set(KNOWN_BUGS) | set(SEARCH_BUGS)) & set(ORCHESTRATOR_BUGS)
    assert all(isinstance(n, str) and n == n.strip().lower() for n in KNOWN_BUGS)


@pytest.mark.parametrize("bad", ["nope", "AUTO-ACK", "auto_ack", "auto-ack,no-backoff"])
def test_unknown_bug_is_a_one_line_error_listing_the_names(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"WORKER_BUG": bad})
    msg = str(info.value)
    assert "\n" not in msg and "WORKER_BUG" in msg
    assert all(name in msg for name in KNOWN_BUGS)


def test_empty_bug_is_the_correct_worker() -> None:
    assert load_config({}).bug == "" and load_config({"WORKER_BUG": " "}).bug == ""


def test_unknown_bug_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "WORKER_"))}
    env.update(WORKER_BUG="lose-everything", HEALTH_PORT="0", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "worker"], env=env, cwd=str(REPO),
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "WORKER_BUG='lose-everything'" in lines[0]
    assert "auto-ack" in lines[0] and r.stdout == ""


# -- fakes ----------------------------------------------------------------------------------

class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.durable: dict[str, bool] = {}

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self.calls.append(("ack", delivery_tag, multiple))

    def basic_nack(self, delivery_tag: int, requeue: bool) -> None:
        self.calls.append(("nack", delivery_tag, requeue))

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: BasicProperties | None = None,
                      mandatory: bool = False) -> None:
        self.calls.append(("publish", exchange, routing_key, mandatory))

    def basic_cancel(self, consumer_tag: str) -> list[Any]:
        self.calls.append(("cancel", consumer_tag))
        return []

    # topology and consume, for Worker._connect
    def add_on_cancel_callback(self, cb: Any) -> None:
        pass

    def confirm_delivery(self) -> None:
        self.calls.append(("confirm",))

    def exchange_declare(self, name: str, **kw: Any) -> None:
        self.calls.append(("exchange_declare", name))

    def queue_declare(self, name: str, durable: bool = False,
                      arguments: dict[str, Any] | None = None) -> None:
        self.calls.append(("queue_declare", name, dict(arguments or {})))
        self.durable[name] = durable

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.calls.append(("queue_bind", queue, exchange))

    def basic_qos(self, prefetch_count: int) -> None:
        self.calls.append(("qos", prefetch_count))

    def basic_consume(self, queue: str, cb: Any, auto_ack: bool = False,
                      exclusive: bool = False) -> str:
        self.calls.append(("consume", queue, auto_ack, exclusive))
        return "ctag"


class FakeConnection:
    is_open = True

    def __init__(self, params: Any = None) -> None:
        self.channels: list[FakeChannel] = []

    def channel(self) -> FakeChannel:
        ch = FakeChannel()
        self.channels.append(ch)
        return ch

    def process_data_events(self, time_limit: float = 0) -> None:
        raise AssertionError("the buggy shutdown must not wait for tasks")

    def close(self) -> None:
        self.is_open = False


def make_worker(bug: str = "", **env: str) -> tuple[Worker, FakeChannel, FakeChannel, io.StringIO]:
    cfg = load_config({"WORKER_ID": "w", "RABBITMQ_QUEUE": "q", "WORKER_RETRY_BASE_MS": "100",
                       "WORKER_MAX_ATTEMPTS": "3", "WORKER_CONCURRENCY": "4",
                       "WORKER_RECONNECT_MAX_S": "0.25", "WORKER_BUG": bug, **env})
    buf = io.StringIO()
    w = Worker(cfg, EventEmitter("w", buf), HealthState("w"))
    ch, pub = FakeChannel(), FakeChannel()
    w._generation = 2
    w._channel = ch
    w._pub = pub
    return w, ch, pub, buf


def delivery(attempt: int = 1, tag: int = 7, body: bytes = b'{"id":"t"}') -> Delivery:
    props = BasicProperties(message_id="t", headers={"x-attempt": attempt} if attempt > 1
                            else None)
    return Delivery(2, tag, False, props, body, "t", attempt)


def events(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def names(buf: io.StringIO) -> list[str]:
    return [e["event"] for e in events(buf)]


def connect_calls(bug: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The calls Worker._connect makes on its consumer channel."""
    return connected_channel(bug, monkeypatch).calls


def connected_channel(bug: str, monkeypatch: pytest.MonkeyPatch) -> FakeChannel:
    """The consumer channel after Worker._connect (its calls, what it declared)."""
    conns: list[FakeConnection] = []

    def factory(params: Any) -> FakeConnection:
        conns.append(FakeConnection(params))
        return conns[-1]

    monkeypatch.setattr(pika, "BlockingConnection", factory)
    w, _, _, _ = make_worker(bug)
    try:
        w._connect()
    finally:
        w._pool.shutdown()
    return conns[0].channels[0]


# -- topology, qos, consume -------------------------------------------------------------------

def test_correct_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = connect_calls("", monkeypatch)
    assert ("qos", 4) in calls and ("consume", "q", False, False) in calls
    assert ("queue_declare", "q", {"x-dead-letter-exchange": "q.dlx"}) in calls


def test_transient_retry_queues_declares_only_the_retry_queues_transient(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The correct worker declares every queue durable; the bug only its retry queues
    (q.retry.100, q.retry.200: a broker restart deletes them and what waits there)."""
    def durable(bug: str) -> dict[str, bool]:
        return connected_channel(bug, monkeypatch).durable

    assert durable("") == {"q.dlq": True, "q": True, "q.retry.100": True,
                           "q.retry.200": True}
    assert durable(bugs.TRANSIENT_RETRY_QUEUES) == {"q.dlq": True, "q": True,
                                                    "q.retry.100": False,
                                                    "q.retry.200": False}


def test_auto_ack_consumes_with_auto_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ("consume", "q", True, False) in connect_calls(bugs.AUTO_ACK, monkeypatch)


def test_exclusive_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ("consume", "q", False, True) in connect_calls(bugs.EXCLUSIVE_CONSUMER, monkeypatch)


def test_unlimited_prefetch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = connect_calls(bugs.UNLIMITED_PREFETCH, monkeypatch)
    assert ("qos", 0) in calls and ("qos", 4) not in calls


def test_no_dead_letter_exchange_still_declares_dlx_and_dlq(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = connect_calls(bugs.NO_DEAD_LETTER_EXCHANGE, monkeypatch)
    assert ("queue_declare", "q", {}) in calls
    assert ("exchange_declare", "q.dlx") in calls and ("queue_bind", "q.dlq", "q.dlx") in calls


def test_ignore_concurrency_runs_a_pool_of_one_with_full_prefetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w, _, _, _ = make_worker(bugs.IGNORE_CONCURRENCY)
    good, _, _, _ = make_worker("")
    try:
        assert w._pool._max_workers == 1 and good._pool._max_workers == 4
        assert w.cfg.prefetch == 4
    finally:
        w._pool.shutdown()
        good._pool.shutdown()
    assert ("qos", 4) in connect_calls(bugs.IGNORE_CONCURRENCY, monkeypatch)


# -- delivery and settlement -----------------------------------------------------------------

def deliver(w: Worker, ch: FakeChannel, body: bytes = b'{"id":"t"}', tag: int = 7) -> None:
    """Deliver one message through _on_message, wait for the pool, settle."""
    method = Basic.Deliver(consumer_tag="ctag", delivery_tag=tag, redelivered=False,
                           exchange="", routing_key="q")
    w._on_message(ch, method, BasicProperties(message_id="t"), body)
    w._pool.shutdown(wait=True)
    w._drain()


def test_correct_worker_acks_after_processing() -> None:
    w, ch, _, buf = make_worker("")
    deliver(w, ch)
    assert ch.calls == [("ack", 7, False)]
    assert names(buf) == ["received", "processed", "acked"]


def test_ack_before_process_acks_on_receipt_and_never_again() -> None:
    w, ch, _, buf = make_worker(bugs.ACK_BEFORE_PROCESS)
    deliver(w, ch)
    assert ch.calls == [("ack", 7, False)]
    assert names(buf) == ["received", "acked", "processed"]  # acked before the side effect


def test_auto_ack_never_acks() -> None:
    w, ch, _, buf = make_worker(bugs.AUTO_ACK)
    deliver(w, ch)
    assert ch.calls == []
    assert names(buf) == ["received", "processed", "acked"]  # still logs "done"


@pytest.mark.parametrize("bug", [bugs.AUTO_ACK, bugs.ACK_BEFORE_PROCESS])
def test_early_settled_dead_letter_is_a_publish_to_the_dlx(bug: str) -> None:
    w, ch, pub, buf = make_worker(bug)
    deliver(w, ch, body=b'{"id":"t","directives":{"fail_always":true}}')
    assert pub.calls == [("publish", "q.dlx", "q", True)]
    assert not [c for c in ch.calls if c[0] == "nack"]
    assert names(buf)[-1] == "dead_lettered"


def test_requeue_on_failure_nacks_with_requeue() -> None:
    w, ch, _, _ = make_worker(bugs.REQUEUE_ON_FAILURE)
    w._settle(Completion(delivery(), "dead_letter", "poison"))
    assert ch.calls == [("nack", 7, True)]
    good, gch, _, _ = make_worker("")
    good._settle(Completion(delivery(), "dead_letter", "poison"))
    assert gch.calls == [("nack", 7, False)]
    for x in (w, good):
        x._pool.shutdown()


def test_no_backoff_republishes_to_the_work_queue() -> None:
    w, ch, pub, buf = make_worker(bugs.NO_BACKOFF)
    w._settle(Completion(delivery(attempt=2), "retry", "retry"))
    assert pub.calls == [("publish", "", "q", True)]  # correct: "q.retry.200"
    assert ch.calls == [("ack", 7, False)]
    ev = events(buf)[0]
    assert ev["event"] == "retry_scheduled" and ev["delay_ms"] == 200 and ev["queue"] == "q"
    w._pool.shutdown()


class _Later:
    """Stands in for BlockingConnection.call_later: runs the callback when told."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Any]] = []

    def call_later(self, delay_s: float, fn: Any) -> None:
        self.pending.append((delay_s, fn))


def test_ack_before_republish_acks_then_republishes_later_unconfirmed() -> None:
    w, ch, pub, buf = make_worker(bugs.ACK_BEFORE_REPUBLISH)
    later = _Later()
    w._conn = later
    w._settle(Completion(delivery(), "retry", "retry"))
    # Acked at once; the copy waits in the process for the backoff delay.
    assert ch.calls == [("ack", 7, False)]
    assert [d for d, _ in later.pending] == [0.1]
    later.pending[0][1]()
    assert ch.calls == [("ack", 7, False), ("publish", "", "q", False)]
    assert pub.calls == []
    assert names(buf) == ["acked", "retry_scheduled"]
    w._pool.shutdown()


def test_correct_retry_publishes_confirmed_then_acks() -> None:
    w, ch, pub, buf = make_worker("")
    w._settle(Completion(delivery(), "retry", "retry"))
    assert pub.calls == [("publish", "", "q.retry.100", True)]
    assert ch.calls == [("ack", 7, False)]
    assert names(buf) == ["retry_scheduled", "acked"]
    w._pool.shutdown()


# -- health ----------------------------------------------------------------------------------

def probe(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


def test_health_always_ok_answers_200_while_disconnected() -> None:
    state = HealthState("w")
    bad = HealthServer(state, 0, bind="127.0.0.1", always_ok=True)
    good = HealthServer(state, 0, bind="127.0.0.1")
    bad.start()
    good.start()
    try:
        code, body = probe(bad.port)
        assert code == 200 and body["status"] == "unavailable" and body["connected"] is False
        assert probe(good.port)[0] == 503
    finally:
        bad.stop()
        good.stop()


# -- run loop and shutdown --------------------------------------------------------------------

def count_connects(bug: str, run_s: float = 1.2) -> tuple[int, Worker]:
    """Run the worker loop with a connection that dies right away; count the connects."""
    w, _, _, _ = make_worker(bug)
    connects: list[int] = []

    def connect() -> None:
        connects.append(1)
        w._generation += 1

    def consume() -> None:
        raise pika.exceptions.AMQPConnectionError("gone")

    w._connect = connect  # type: ignore[method-assign]
    w._consume_loop = consume  # type: ignore[method-assign]
    timer = threading.Timer(run_s, w.request_stop, args=("SIGTERM",))
    timer.start()
    try:
        assert w.run() == 0
    finally:
        timer.cancel()
    return len(connects), w


def test_no_reconnect_connects_once_and_stays_up() -> None:
    n, w = count_connects(bugs.NO_RECONNECT)
    assert n == 1 and not w.health.healthy()
    n_good, _ = count_connects("")
    assert n_good >= 3  # backoff 0.125..0.25 s


def test_exclusive_consumer_refused_keeps_retrying_not_exit_2() -> None:
    w, _, _, buf = make_worker(bugs.EXCLUSIVE_CONSUMER)
    attempts: list[int] = []

    def connect() -> None:
        attempts.append(1)
        raise pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - queue 'q' in "
                                                    "exclusive use")

    w._connect = connect  # type: ignore[method-assign]
    timer = threading.Timer(1.2, w.request_stop, args=("SIGTERM",))
    timer.start()
    try:
        assert w.run() == 0
    finally:
        timer.cancel()
    assert len(attempts) >= 3
    assert names(buf).count("connection_lost") == len(attempts)
    assert "ready" not in names(buf)


def test_sigterm_acks_inflight_acks_everything_and_does_not_wait() -> None:
    w, ch, _, buf = make_worker(bugs.SIGTERM_ACKS_INFLIGHT, WORKER_SHUTDOWN_GRACE_S="30")
    conn = FakeConnection()
    w._conn = conn
    w._consumer_tag = "ctag"
    w._in_flight_add(3)
    w.request_stop("SIGTERM")
    assert w._shutdown() == 0  # FakeConnection.process_data_events would raise if it waited
    assert ch.calls == [("cancel", "ctag"), ("ack", 0, True)]
    sd = [e for e in events(buf) if e["event"] == "shutdown"]
    assert sd == [sd[0]] and sd[0]["in_flight"] == 3
    assert "processed" not in names(buf)


def test_correct_sigterm_waits_for_inflight() -> None:
    w, ch, _, _ = make_worker("", WORKER_SHUTDOWN_GRACE_S="30")
    conn = FakeConnection()
    w._conn = conn
    w._consumer_tag = "ctag"
    w._in_flight_add(1)
    w.request_stop("SIGTERM")
    with pytest.raises(AssertionError, match="must not wait"):
        w._shutdown()
    assert ("ack", 0, True) not in ch.calls
    w._pool.shutdown()


# -- the bugs of workers that keep the contract but not our habits -------------------------

def redelivered(tag: int = 7, body: bytes = b'{"id":"t"}') -> Delivery:
    return Delivery(2, tag, True, BasicProperties(message_id="t"), body, "t", 1)


def test_dead_letter_on_redelivery_dead_letters_only_redeliveries() -> None:
    w, _, _, buf = make_worker(bugs.DEAD_LETTER_ON_REDELIVERY)
    c = w._run(redelivered())
    assert (c.kind, c.reason) == ("dead_letter", "poison")
    assert "processed" not in names(buf)
    assert w._run(delivery()).kind == "ack"
    w._pool.shutdown()


def test_double_ack_acks_the_same_tag_twice_once_per_connection() -> None:
    w, ch, _, _ = make_worker(bugs.DOUBLE_ACK)
    w._settle(Completion(delivery(tag=7), "ack", "processed"))
    w._settle(Completion(delivery(tag=8), "ack", "processed"))
    assert ch.calls == [("ack", 7, False), ("ack", 7, False), ("ack", 8, False)]
    w._pool.shutdown()


@pytest.mark.parametrize(("bug", "acked_at"), [("", {3: False, 4: False}),
                                              (bugs.STALE_ACK_AFTER_TWO_RECONNECTS,
                                               {3: False, 4: True})])
def test_stale_ack_after_two_reconnects_acks_an_old_tag_on_the_new_channel(
        bug: str, acked_at: dict[int, bool]) -> None:
    """A delivery of connection 2 that ends on connection 3 is stale for both; on
    connection 4 the buggy worker takes it for current and acks its tag there."""
    for gen, acked in acked_at.items():
        w, ch, _, buf = make_worker(bug)
        w._generation = gen
        w._settle(Completion(delivery(tag=7), "ack", "processed"))
        assert (ch.calls == [("ack", 7, False)]) is acked
        assert names(buf) == (["acked"] if acked else ["ack_failed"])
        w._pool.shutdown()


def test_fixed_delay_retry_uses_the_first_tier_for_every_attempt() -> None:
    w, _, pub, buf = make_worker(bugs.FIXED_DELAY_RETRY)
    w._settle(Completion(delivery(attempt=2), "retry", "retry"))
    assert pub.calls == [("publish", "", "q.retry.100", True)]  # correct: q.retry.200
    assert events(buf)[0]["delay_ms"] == 100
    w._pool.shutdown()


def test_ack_and_drop_when_busy_acks_without_processing() -> None:
    w, ch, _, buf = make_worker(bugs.ACK_AND_DROP_WHEN_BUSY)
    w._in_flight_add(2)  # half of concurrency 4: "the buffer is full"
    method = Basic.Deliver(consumer_tag="ctag", delivery_tag=9, redelivered=False,
                           exchange="", routing_key="q")
    w._on_message(ch, method, BasicProperties(message_id="t"), b'{"id":"t"}')
    w._pool.shutdown(wait=True)
    w._drain()
    assert ch.calls == [("ack", 9, False)] and names(buf) == ["received", "acked"]


def test_never_ack_redelivered_processes_and_holds() -> None:
    w, ch, _, _ = make_worker(bugs.NEVER_ACK_REDELIVERED)
    w._settle(Completion(redelivered(), "ack", "processed"))
    w._settle(Completion(delivery(tag=8), "ack", "processed"))
    assert ch.calls == [("ack", 8, False)]
    w._pool.shutdown()


def test_side_effect_every_attempt_reports_processed_on_a_transient_failure() -> None:
    w, _, _, buf = make_worker(bugs.SIDE_EFFECT_EVERY_ATTEMPT)
    c = w._run(delivery(body=b'{"id":"t","directives":{"fail_times":1}}'))
    assert c.kind == "retry" and names(buf) == ["processed", "failed"]
    good, _, _, gbuf = make_worker("")
    assert good._run(delivery(body=b'{"id":"t","directives":{"fail_times":1}}')).kind == "retry"
    assert names(gbuf) == ["failed"]
    for x in (w, good):
        x._pool.shutdown()


def test_minimal_reporting_writes_only_received_and_processed() -> None:
    buf = io.StringIO()
    cfg = load_config({"WORKER_ID": "w", "RABBITMQ_QUEUE": "q", "WORKER_EVENTS": "minimal"})
    em = EventEmitter("w", buf, mode=cfg.events)
    for name in ("connected", "ready", "received", "processed", "acked", "failed"):
        em.emit(name, id="t")
    assert names(buf) == ["received", "processed"]


def test_unknown_reporting_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="WORKER_EVENTS"):
        load_config({"WORKER_ID": "w", "RABBITMQ_QUEUE": "q", "WORKER_EVENTS": "chatty"})
