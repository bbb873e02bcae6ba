"""The reference worker against a private RabbitMQ node (no Docker)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest
from private_broker import PrivateBroker
from waiting import wait_until
from worker_proc import (
    WorkerProc,
    free_port,
    health,
    running_worker,
    start_ready,
    task_body,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def worker_env(broker: PrivateBroker, queue: str, **extra: str) -> dict[str, str]:
    env = {
        "RABBITMQ_HOST": "127.0.0.1",
        "RABBITMQ_PORT": str(broker.port),
        "RABBITMQ_USER": "guest",
        "RABBITMQ_PASSWORD": "guest",
        "RABBITMQ_VHOST": "/",
        "RABBITMQ_QUEUE": queue,
        "WORKER_CONCURRENCY": "5",
        "WORKER_ID": f"w-{uuid.uuid4().hex[:6]}",
        "HEALTH_PORT": "0",
        "WORKER_RETRY_BASE_MS": "200",
        "WORKER_RECONNECT_MAX_S": "1",
        "RABBITMQ_HEARTBEAT_S": "5",
    }
    env.update(extra)
    return env


def new_queue() -> str:
    return f"t.{uuid.uuid4().hex[:8]}"


def test_processes_and_acks(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    env = worker_env(broker, q)
    w = start_ready(env, log_dir)
    try:
        ids = [f"ok-{i}" for i in range(20)]
        broker.publish(q, [(i, task_body(i, sleep_ms=50)) for i in ids])
        assert w.wait_event("acked", 30, count=len(ids)), w.lines[-5:]
        for i in ids:
            assert len(w.of("processed", i)) == 1
            acks = w.of("acked", i)
            assert [a["reason"] for a in acks] == ["processed"]
            rec = w.of("received", i)[0]
            assert rec["redelivered"] is False and rec["attempt"] == 1
            p = w.of("processed", i)[0]
            assert p["attempt"] == 1 and p["started_ts"] <= p["ts"]
        assert wait_until(lambda: broker.depth(q) == 0, 5)
        assert not w.of("ack_failed")
    finally:
        assert w.stop() == 0
    shutdown = w.of("shutdown")
    assert len(shutdown) == 1 and shutdown[0]["in_flight"] == 0
    assert all(set(e) >= {"event", "worker", "ts"} for e in w.events)
    assert {e["worker"] for e in w.events} == {env["WORKER_ID"]}
    assert len(w.lines) == len(w.events)  # nothing but events on stdout


def test_completion_goes_to_reply_to_before_the_ack(broker: PrivateBroker,
                                                    log_dir: Path) -> None:
    """The optional completion (docs/worker-contract.md): one message per processed
    task to its reply_to, none for a task without one, none for a failed attempt."""
    import json

    import pika

    q = new_queue()
    w = start_ready(worker_env(broker, q, WORKER_MAX_ATTEMPTS="2"), log_dir)
    conn = broker.connect()
    try:
        ch = conn.channel()
        replies = ch.queue_declare("", exclusive=True).method.queue
        props = pika.BasicProperties(reply_to=replies, message_id="c-1", delivery_mode=2)
        ch.basic_publish("", q, task_body("c-1", sleep_ms=10), props)
        ch.basic_publish("", q, task_body("c-retry", fail_times=1),
                         pika.BasicProperties(reply_to=replies, message_id="c-retry"))
        ch.basic_publish("", q, task_body("c-none"), pika.BasicProperties(message_id="c-none"))
        assert w.wait_event("acked", 30, count=4), w.lines[-5:]  # c-retry: retry + done
        got = []
        for _ in range(3):
            _m, _p, body = ch.basic_get(replies, auto_ack=True)
            if body is not None:
                got.append(json.loads(body))
        assert sorted(c["id"] for c in got) == ["c-1", "c-retry"]
        for c in got:
            processed = w.of("processed", c["id"])[-1]
            assert c["worker"] == processed["worker"]
            assert processed["ts"] - 1 <= c["processed_ts"] <= w.of("acked", c["id"])[-1]["ts"]
        assert [c["attempt"] for c in got if c["id"] == "c-retry"] == [2]
    finally:
        conn.close()
        assert w.stop() == 0


def test_connection_closed_mid_task_gives_ack_failed_not_stale_ack(
    broker: PrivateBroker, log_dir: Path
) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q), log_dir)
    try:
        # Long enough that the close lands mid-task on a loaded machine.
        broker.publish(q, [("cut", task_body("cut", sleep_ms=8000))])
        assert w.wait_event("received", 10, "cut")
        assert broker.close_all_connections("test: cut the worker off") >= 1
        assert w.wait_event("connection_lost", 10)
        assert not w.of("acked", "cut"), "the task finished before the close: no test"
        assert w.wait_event("ready", 10, count=2)
        # The old copy finishes: its tag belongs to the dead connection -> ack_failed.
        assert w.wait_event("ack_failed", 20, "cut"), w.lines[-10:]
        # The broker requeued it at the close; the new connection gets and acks it.
        assert w.wait_event("acked", 20, "cut")
        rec = w.of("received", "cut")
        assert len(rec) == 2 and rec[1]["redelivered"] is True
        assert len(w.of("acked", "cut")) == 1
        assert len(w.of("processed", "cut")) == 2  # at-least-once: processed twice
        assert wait_until(lambda: broker.depth(q) == 0, 5)
    finally:
        assert w.stop() == 0


def test_fail_times_retries_with_backoff(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q), log_dir)
    try:
        broker.publish(q, [("ft", task_body("ft", fail_times=2))])
        assert w.wait_event("processed", 20, "ft"), w.lines[-10:]
        assert w.wait_event("acked", 5, "ft", count=3)
        retries = w.of("retry_scheduled", "ft")
        assert [(r["attempt"], r["delay_ms"]) for r in retries] == [(2, 200), (3, 400)]
        assert [f["attempt"] for f in w.of("failed", "ft")] == [1, 2]
        assert all(f["permanent"] is False for f in w.of("failed", "ft"))
        rec = w.of("received", "ft")
        assert [r["attempt"] for r in rec] == [1, 2, 3]
        # The broker held each copy for its delay (TTL tier), with some slack below.
        assert rec[1]["ts"] - rec[0]["ts"] >= 0.2 * 0.9
        assert rec[2]["ts"] - rec[1]["ts"] >= 0.4 * 0.9
        assert w.of("processed", "ft")[0]["attempt"] == 3
        assert [a["reason"] for a in w.of("acked", "ft")] == ["retry", "retry", "processed"]
    finally:
        assert w.stop() == 0


def test_fail_always_poison_and_max_attempts_dead_letter_once(
    broker: PrivateBroker, log_dir: Path
) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, WORKER_MAX_ATTEMPTS="3", WORKER_RETRY_BASE_MS="100"),
                    log_dir)
    try:
        broker.publish(q, [
            ("fa", task_body("fa", fail_always=True)),
            ("poison-1", b"{not json"),
            ("mx", task_body("mx", fail_times=10)),
        ])
        assert w.wait_event("dead_lettered", 20, count=3), w.lines[-10:]
        time.sleep(0.5)  # nothing more may arrive
        reasons = {e["id"]: e["reason"] for e in w.of("dead_lettered")}
        assert reasons == {"fa": "permanent", "poison-1": "poison", "mx": "max_attempts"}
        assert len(w.of("dead_lettered")) == 3
        assert [f["permanent"] for f in w.of("failed", "poison-1")] == [True]
        assert [f["attempt"] for f in w.of("failed", "mx")] == [1, 2, 3]
        assert not w.of("processed")
    finally:
        assert w.stop() == 0
    dlq = broker.drain_queue(f"{q}.dlq")
    assert sorted(mid or "" for mid, _ in dlq) == ["fa", "mx", "poison-1"]
    assert broker.depth(q) == 0


def test_sigterm_mid_task_finishes_and_acks(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, WORKER_SHUTDOWN_GRACE_S="10"), log_dir)
    broker.publish(q, [("slow", task_body("slow", sleep_ms=1500))])
    assert w.wait_event("received", 10, "slow")
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    code = w.proc.wait(timeout=20)
    w.stop()
    assert code == 0
    assert time.monotonic() - t0 >= 1.0  # it waited for the task
    assert w.of("processed", "slow") and [a["reason"] for a in w.of("acked", "slow")] == [
        "processed"
    ]
    sd = w.of("shutdown")
    assert len(sd) == 1 and sd[0]["reason"] == "SIGTERM" and sd[0]["in_flight"] == 0
    assert broker.depth(q) == 0


def test_sigterm_grace_exceeded_leaves_task_unacked(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, WORKER_SHUTDOWN_GRACE_S="0.5"), log_dir)
    broker.publish(q, [("long", task_body("long", sleep_ms=5000))])
    assert w.wait_event("received", 10, "long")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=10) == 0
    w.stop()
    assert w.of("shutdown")[0]["in_flight"] == 1
    assert not w.of("acked", "long")
    assert wait_until(lambda: broker.depth(q) == 1, 10)  # requeued, not lost
    broker.drain_queue(q)


def test_crash_after_process_then_redelivered(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q), log_dir)
    broker.publish(q, [("boom", task_body("boom", crash="after_process", sleep_ms=50))])
    code = w.proc.wait(timeout=20)
    w.stop()
    assert code == -signal.SIGKILL
    assert len(w.of("processed", "boom")) == 1
    assert not w.of("acked", "boom")
    # Another worker gets it back as a redelivery, processes it and does not crash.
    w2 = start_ready(worker_env(broker, q), log_dir)
    try:
        assert w2.wait_event("acked", 20, "boom")
        rec = w2.of("received", "boom")[0]
        assert rec["redelivered"] is True
        assert len(w2.of("processed", "boom")) == 1
    finally:
        assert w2.stop() == 0


def test_crash_during_dies_before_processed(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q), log_dir)
    broker.publish(q, [("mid", task_body("mid", crash="during", sleep_ms=400))])
    code = w.proc.wait(timeout=20)
    w.stop()
    assert code == -signal.SIGKILL
    assert w.of("received", "mid") and not w.of("processed", "mid")
    assert wait_until(lambda: broker.depth(q) == 1, 10)
    broker.drain_queue(q)


def test_bad_topology_exits_2(broker: PrivateBroker, log_dir: Path) -> None:
    q = new_queue()
    conn = broker.connect()
    conn.channel().queue_declare(q, durable=False)  # conflicts with the worker's durable queue
    conn.close()
    w = WorkerProc(worker_env(broker, q), log_dir)
    code = w.proc.wait(timeout=20)
    w.stop()
    assert code == 2
    lines = [ln for ln in w.stderr().splitlines() if ln.startswith("worker:")]
    assert len(lines) == 1 and "PRECONDITION_FAILED" in lines[0]


def test_health_and_reconnect_through_broker_restart(log_dir: Path) -> None:
    b = PrivateBroker()
    try:
        b.start()
        port = free_port()
        q = new_queue()
        with running_worker(worker_env(b, q, HEALTH_PORT=str(port)), log_dir) as w:
            assert w.wait_event("ready", 20), w.stderr()[-2000:]
            assert wait_until(lambda: health(port) == 200, 5)
            b.stop_node()
            assert wait_until(lambda: health(port) == 503, 20)
            assert w.wait_event("connection_lost", 10)
            lost_before = len(w.of("connection_lost"))
            time.sleep(2.0)  # a few failed reconnects: one connection_lost each
            assert len(w.of("connection_lost")) > lost_before
            assert health(port) == 503
            b.start_node()
            assert w.wait_event("ready", 30, count=2), w.lines[-5:]
            assert wait_until(lambda: health(port) == 200, 5)
            b.publish(q, [("after", task_body("after"))])
            assert w.wait_event("acked", 10, "after")
            w.proc.send_signal(signal.SIGTERM)
            assert w.proc.wait(timeout=20) == 0
        assert health(port) == -1
    finally:
        b.stop()


def test_queue_deleted_consumer_cancelled_reconnects_and_redeclares(
    broker: PrivateBroker, log_dir: Path
) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q), log_dir)
    try:
        conn = broker.connect()
        conn.channel().queue_delete(q)
        conn.close()
        assert w.wait_event("ready", 15, count=2), w.lines[-5:]
        assert any("cancel" in e["reason"] for e in w.of("connection_lost"))
        broker.publish(q, [("back", task_body("back"))])
        assert w.wait_event("acked", 10, "back")
    finally:
        assert w.stop() == 0


def test_quorum_queue_processes_retries_and_dead_letters(
    broker: PrivateBroker, log_dir: Path
) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, RABBITMQ_QUEUE_TYPE="quorum",
                               WORKER_MAX_ATTEMPTS="2", WORKER_RETRY_BASE_MS="100"), log_dir)
    try:
        broker.publish(q, [("qa", task_body("qa")), ("qb", task_body("qb", fail_times=1)),
                           ("qc", task_body("qc", fail_always=True))])
        assert w.wait_event("acked", 15, "qa")
        assert w.wait_event("processed", 15, "qb")
        assert w.wait_event("dead_lettered", 15, "qc")
    finally:
        assert w.stop() == 0
    assert [mid for mid, _ in broker.drain_queue(f"{q}.dlq")] == ["qc"]


@pytest.mark.parametrize("bug", ["", "ignore-delivery-limit"])
def test_a_poison_crash_loop_ends_in_the_dlq_by_the_delivery_limit(
    broker: PrivateBroker, log_dir: Path, bug: str
) -> None:
    """A crash_always task kills every worker process that takes it. With
    RABBITMQ_DELIVERY_LIMIT=2 on a quorum queue the broker dead-letters it after
    its third delivery, so a fourth worker finds nothing; with the planted bug
    ignore-delivery-limit the queue has no limit and the loop goes on."""
    q = new_queue()
    env = worker_env(broker, q, RABBITMQ_QUEUE_TYPE="quorum", RABBITMQ_DELIVERY_LIMIT="2",
                     WORKER_BUG=bug)
    crashes = 0
    for n in range(4):
        w = start_ready(env, log_dir)  # the first one declares the queue
        if n == 0:
            broker.publish(q, [("px", task_body("px", crash_always=True, sleep_ms=200))])
        try:
            died = wait_until(lambda w=w: w.proc.poll() is not None, 5)  # type: ignore[misc]
        finally:
            w.stop()
        crashes += died
        if not died:
            break
    if bug:
        assert crashes == 4 and broker.depth(f"{q}.dlq") == 0
    else:
        assert crashes == 3
        assert [mid for mid, _ in broker.drain_queue(f"{q}.dlq")] == ["px"]
