"""worker.tasks directives and parsing, plus the consumer's settlement logic (no broker)."""

from __future__ import annotations

import io
import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from pika.spec import BasicProperties

from worker.config import load_config
from worker.consumer import Completion, Delivery, Worker, attempt_of, reconnect_delays
from worker.events import EventEmitter
from worker.health import HealthServer, HealthState
from worker.tasks import (
    Directives,
    PermanentError,
    PoisonError,
    Task,
    TaskContext,
    TransientError,
    message_task_id,
    parse_directives,
    parse_message,
    run_task,
)


class Killed(Exception):
    pass


class Fake:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def sleep(self, s: float) -> None:
        self.calls.append(("sleep", s))

    def kill(self) -> None:
        self.calls.append(("kill", 0))
        raise Killed

    def processed(self, started_ts: float) -> None:
        self.calls.append(("processed", started_ts))

    def ctx(self) -> TaskContext:
        return TaskContext(emit_processed=self.processed, sleep=self.sleep, kill=self.kill,
                           clock=lambda: 100.0)


def task(**directives: Any) -> Task:
    return Task(id="t1", task="logger", directives=parse_directives(directives))


def test_plain_task_sleeps_then_processes() -> None:
    f = Fake()
    run_task(task(sleep_ms=250), 1, True, f.ctx())
    assert f.calls == [("sleep", 0.25), ("processed", 100.0)]


def test_fail_times_fails_attempts_up_to_n() -> None:
    for attempt in (1, 2):
        with pytest.raises(TransientError):
            run_task(task(fail_times=2), attempt, attempt == 1, Fake().ctx())
    f = Fake()
    run_task(task(fail_times=2), 3, False, f.ctx())
    assert ("processed", 100.0) in f.calls


def test_fail_always_is_permanent_on_every_attempt() -> None:
    for attempt in (1, 5):
        with pytest.raises(PermanentError):
            run_task(task(fail_always=True), attempt, False, Fake().ctx())


def test_crash_during_kills_halfway_without_processed() -> None:
    f = Fake()
    with pytest.raises(Killed):
        run_task(task(crash="during", sleep_ms=1000), 1, True, f.ctx())
    assert f.calls == [("sleep", 0.5), ("kill", 0)]


def test_crash_after_process_kills_after_processed() -> None:
    f = Fake()
    with pytest.raises(Killed):
        run_task(task(crash="after_process"), 1, True, f.ctx())
    assert [c[0] for c in f.calls] == ["processed", "kill"]


@pytest.mark.parametrize("crash", ["during", "after_process"])
def test_crash_only_on_first_delivery(crash: str) -> None:
    # Redelivered (first=False), or a retry (attempt 2): processed normally.
    f = Fake()
    run_task(task(crash=crash, sleep_ms=10), 1, False, f.ctx())
    assert [c[0] for c in f.calls] == ["sleep", "processed"]


@pytest.mark.parametrize("first,attempt", [(True, 1), (False, 1), (False, 3)])
def test_crash_always_kills_on_every_delivery(first: bool, attempt: int) -> None:
    f = Fake()
    with pytest.raises(Killed):
        run_task(task(crash_always=True, sleep_ms=1000), attempt, first, f.ctx())
    assert f.calls == [("sleep", 0.5), ("kill", 0)]


@pytest.mark.parametrize(
    "bad",
    [{"crash_always": "yes"}, {"sleep_ms": -1}, {"sleep_ms": 10**9}, {"sleep_ms": "5"},
     {"sleep_ms": True},
     {"fail_times": 1.5}, {"fail_always": "yes"}, {"crash": "before"}, ["sleep_ms"]],
)
def test_bad_directives_are_permanent(bad: Any) -> None:
    with pytest.raises(PermanentError):
        parse_directives(bad)


def test_directives_defaults() -> None:
    assert parse_directives(None) == Directives()
    assert parse_directives({}) == Directives()
    assert parse_directives({"sleep_ms": 5, "fail_times": 2, "fail_always": False,
                             "crash": None}) == Directives(sleep_ms=5, fail_times=2,
                                                         fail_always=False, crash=None)


def test_parse_message() -> None:
    body = json.dumps({"id": "a", "task": "logger", "payload": {"x": 1},
                       "directives": {"sleep_ms": 3}}).encode()
    t = parse_message(body, "a")
    assert (t.id, t.task, t.payload, t.directives.sleep_ms) == ("a", "logger", {"x": 1}, 3)


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1,2]", b'"s"',
                                  b'{"task":"logger"}', b'{"id":""}', b'{"id":true}'])
def test_poison(body: bytes) -> None:
    with pytest.raises(PoisonError):
        parse_message(body, "mid")
    assert message_task_id(body, "mid") == "mid"


def test_unknown_task_is_permanent_not_poison() -> None:
    with pytest.raises(PermanentError) as info:
        parse_message(b'{"id":"a","task":"resize"}', "a")
    assert not isinstance(info.value, PoisonError)


def test_attempt_header() -> None:
    assert attempt_of(BasicProperties()) == 1
    assert attempt_of(BasicProperties(headers={"x-attempt": 3})) == 3
    assert attempt_of(BasicProperties(headers={"x-attempt": b"2"})) == 2
    assert attempt_of(BasicProperties(headers={"x-attempt": "junk"})) == 1
    assert attempt_of(BasicProperties(headers={"x-attempt": 0})) == 1


def test_reconnect_backoff_capped_with_jitter() -> None:
    delay = reconnect_delays(2.0, random.Random(1))
    values = [delay(n) for n in range(10)]
    assert 0.125 <= values[0] <= 0.25
    assert all(v <= 2.0 for v in values)
    assert all(v >= 1.0 for v in values[4:])


def test_emitter_lines_are_whole_json_objects() -> None:
    buf = io.StringIO()
    em = EventEmitter("w9", buf)

    def many() -> None:
        for i in range(200):
            em.emit("received", id=str(i), redelivered=False, attempt=1)

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 800
    objs = [json.loads(x) for x in lines]
    assert all(o["worker"] == "w9" and o["event"] == "received" and o["ts"] > 0 for o in objs)


def test_health_server_200_only_when_connected_and_consuming() -> None:
    state = HealthState("w")
    server = HealthServer(state, 0, bind="127.0.0.1")
    server.start()

    def get(path: str = "/healthcheck") -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}",
                                        timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    try:
        assert get() == 503
        state.set(connected=True)
        assert get() == 503
        state.set(consuming=True)
        assert get() == 200
        state.set(shutting_down=True)
        assert get() == 503
        assert get("/other") == 404
    finally:
        server.stop()


def test_livez_stays_200_through_a_broker_outage_and_503_once_the_loop_stops() -> None:
    """Liveness is not readiness: a worker that lost its broker is alive (a liveness
    probe on /healthcheck would restart every pod during an outage); one whose loop
    stopped turning for stale_s is stuck."""
    state = HealthState("w", stale_s=0.5)
    server = HealthServer(state, 0, bind="127.0.0.1")
    server.start()

    def get(path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}",
                                        timeout=2) as r:
                return int(r.status), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), json.loads(e.read())

    try:
        state.beat()
        assert get("/healthcheck")[0] == 503  # not connected: not ready
        code, body = get("/livez")
        assert code == 200 and body["status"] == "alive"
        time.sleep(0.7)  # no beat for longer than stale_s
        code, body = get("/livez")
        assert code == 503 and body["status"] == "stuck" and body["since_beat_s"] >= 0.5
        state.beat()
        assert get("/livez")[0] == 200
    finally:
        server.stop()


# -- settlement (connection-thread side) with a fake channel ------------------------------

class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def basic_ack(self, tag: int) -> None:
        self.calls.append(("ack", tag))

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.calls.append(("nack", tag, requeue))

    def basic_publish(self, exchange: str, key: str, body: bytes, props: BasicProperties,
                      mandatory: bool) -> None:
        self.calls.append(("publish", key, props.headers, props.message_id, props.delivery_mode))


def make_worker(**env: str) -> tuple[Worker, FakeChannel, FakeChannel, io.StringIO]:
    cfg = load_config({"WORKER_ID": "w", "RABBITMQ_QUEUE": "q", "WORKER_RETRY_BASE_MS": "100",
                       "WORKER_MAX_ATTEMPTS": "3", **env})
    buf = io.StringIO()
    w = Worker(cfg, EventEmitter("w", buf), HealthState("w"))
    ch, pub = FakeChannel(), FakeChannel()
    w._generation = 2
    w._channel = ch
    w._pub = pub
    return w, ch, pub, buf


def delivery(gen: int = 2, attempt: int = 1, tag: int = 7) -> Delivery:
    props = BasicProperties(message_id="t", headers={"x-attempt": attempt} if attempt > 1
                            else None)
    return Delivery(gen, tag, False, props, b'{"id":"t"}', "t", attempt)


def events(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_settle_ack() -> None:
    w, ch, _, buf = make_worker()
    w._settle(Completion(delivery(), "ack", "processed"))
    assert ch.calls == [("ack", 7)]
    assert [(e["event"], e["reason"]) for e in events(buf)] == [("acked", "processed")]


def test_settle_retry_publishes_next_attempt_then_acks() -> None:
    w, ch, pub, buf = make_worker()
    w._settle(Completion(delivery(attempt=2), "retry", "retry"))
    assert pub.calls == [("publish", "q.retry.200", {"x-attempt": 3}, "t", 2)]
    assert ch.calls == [("ack", 7)]
    evs = events(buf)
    assert evs[0]["event"] == "retry_scheduled" and evs[0]["attempt"] == 3
    assert evs[0]["delay_ms"] == 200
    assert evs[1]["event"] == "acked" and evs[1]["reason"] == "retry"


def test_settle_retry_not_confirmed_requeues_original() -> None:
    import pika.exceptions

    w, ch, pub, buf = make_worker()

    def nacked(*a: Any, **k: Any) -> None:
        raise pika.exceptions.NackError([])

    pub.basic_publish = nacked  # type: ignore[method-assign]
    w._settle(Completion(delivery(), "retry", "retry"))
    assert ch.calls == [("nack", 7, True)]
    assert events(buf) == []


def test_settle_dead_letter() -> None:
    w, ch, _, buf = make_worker()
    w._settle(Completion(delivery(), "dead_letter", "poison"))
    assert ch.calls == [("nack", 7, False)]
    assert [(e["event"], e["reason"]) for e in events(buf)] == [("dead_lettered", "poison")]


def test_stale_generation_is_never_acked() -> None:
    w, ch, _, buf = make_worker()
    w._settle(Completion(delivery(gen=1), "ack", "processed"))
    assert ch.calls == []
    evs = events(buf)
    assert [e["event"] for e in evs] == ["ack_failed"] and evs[0]["id"] == "t"
    assert evs[0]["reason"]


def test_disconnected_settle_is_ack_failed() -> None:
    w, _, _, buf = make_worker()
    w._channel = None
    w._settle(Completion(delivery(), "retry", "retry"))
    assert [e["event"] for e in events(buf)] == ["ack_failed"]


def test_run_outcomes() -> None:
    w, _, _, buf = make_worker()
    ok = w._run(delivery())
    assert ok.kind == "ack"
    d = Delivery(2, 1, False, BasicProperties(message_id="p"), b"nope", "p", 1)
    assert (w._run(d).kind, w._run(d).reason) == ("dead_letter", "poison")
    body = json.dumps({"id": "f", "directives": {"fail_times": 5}}).encode()
    d1 = Delivery(2, 1, False, BasicProperties(message_id="f"), body, "f", 1)
    d3 = Delivery(2, 1, False, BasicProperties(message_id="f"), body, "f", 3)
    assert w._run(d1).kind == "retry"
    assert (w._run(d3).kind, w._run(d3).reason) == ("dead_letter", "max_attempts")
    failed = [e for e in events(buf) if e["event"] == "failed"]
    assert {(e["id"], e["permanent"]) for e in failed} == {("p", True), ("f", False)}
    w._pool.shutdown()
