"""Planted worker bugs (WORKER_BUG) against a private RabbitMQ node: each visibly misbehaves."""

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


def worker_env(broker: PrivateBroker, queue: str, bug: str, **extra: str) -> dict[str, str]:
    env = {
        "RABBITMQ_HOST": "127.0.0.1",
        "RABBITMQ_PORT": str(broker.port),
        "RABBITMQ_QUEUE": queue,
        "WORKER_CONCURRENCY": "2",
        "WORKER_ID": f"w-{bug or 'ok'}-{uuid.uuid4().hex[:6]}",
        "HEALTH_PORT": "0",
        "WORKER_RETRY_BASE_MS": "100",
        "WORKER_MAX_ATTEMPTS": "2",
        "WORKER_RECONNECT_MAX_S": "1",
        "RABBITMQ_HEARTBEAT_S": "5",
        "WORKER_SHUTDOWN_GRACE_S": "0.5",
        "WORKER_BUG": bug,
    }
    env.update(extra)
    return env


def new_queue() -> str:
    return f"b.{uuid.uuid4().hex[:8]}"


def slow_tasks(prefix: str, n: int, sleep_ms: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{i}", task_body(f"{prefix}-{i}", sleep_ms=sleep_ms)) for i in range(n)]


def test_unlimited_prefetch_holds_more_than_concurrency(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    q_bad, q_ok = new_queue(), new_queue()
    bad = start_ready(worker_env(broker, q_bad, "unlimited-prefetch"), tmp_path)
    ok = start_ready(worker_env(broker, q_ok, ""), tmp_path)
    try:
        broker.publish(q_bad, slow_tasks("up", 30, 5000))
        broker.publish(q_ok, slow_tasks("ok", 30, 5000))
        # Before the first task finishes (5 s), the buggy worker holds the whole backlog.
        assert bad.wait_event("received", 4, count=30), len(bad.of("received"))
        time.sleep(1.0)
        assert not bad.of("acked") and not ok.of("acked")
        assert len(ok.of("received")) == 2  # prefetch = concurrency
        assert broker.depth(q_bad) == 0 and broker.depth(q_ok) == 28
    finally:
        bad.stop()
        ok.stop()
    broker.drain_queue(q_bad)
    broker.drain_queue(q_ok)


def test_requeue_on_failure_loops_a_poison_message(broker: PrivateBroker, tmp_path: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, "requeue-on-failure"), tmp_path)
    try:
        broker.publish(q, [("poison", b"{not json")])
        t0 = time.monotonic()
        assert w.wait_event("received", 10, "poison", count=50), len(w.of("received"))
        rate = 50 / (time.monotonic() - t0)
        rec = w.of("received", "poison")
        assert rec[0]["redelivered"] is False and all(r["redelivered"] for r in rec[1:])
        assert broker.depth(f"{q}.dlq") == 0
        print(f"requeue-on-failure: poison redelivered at ~{rate:.0f}/s")
    finally:
        w.stop()
    assert broker.depth(f"{q}.dlq") == 0
    assert [mid for mid, _ in broker.drain_queue(q)] == ["poison"]  # still looping


def test_no_dead_letter_exchange_drops_failed_tasks(broker: PrivateBroker, tmp_path: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, "no-dead-letter-exchange"), tmp_path)
    try:
        broker.publish(q, [("fa", task_body("fa", fail_always=True)),
                           ("mx", task_body("mx", fail_times=5))])
        assert w.wait_event("dead_lettered", 10, count=2), w.lines[-5:]
        time.sleep(0.5)
        # The worker believes it dead-lettered them; the broker dropped them.
        assert broker.depth(q) == 0 and broker.depth(f"{q}.dlq") == 0
        assert not w.of("processed")
    finally:
        assert w.stop() == 0


@pytest.mark.parametrize("bug", ["auto-ack", "ack-before-process"])
def test_kill_loses_held_tasks(bug: str, broker: PrivateBroker, tmp_path: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, bug), tmp_path)
    broker.publish(q, slow_tasks("k", 10, 5000))
    # With the ack gone (or early) the prefetch window never fills: it takes all 10.
    assert w.wait_event("received", 5, count=10), len(w.of("received"))
    if bug == "ack-before-process":
        # Its acks go out on the connection thread just after each receipt: let the
        # last one reach the broker before the kill, or it is (rightly) requeued.
        assert w.wait_event("acked", 5, count=10), len(w.of("acked"))
        time.sleep(0.5)
    w.proc.send_signal(signal.SIGKILL)
    w.proc.wait(timeout=10)
    w.stop()
    time.sleep(0.5)
    assert broker.depth(q) == 0  # a correct worker's 10 unacked tasks would be back
    assert not w.of("processed")


def test_sigterm_acks_inflight_loses_them(broker: PrivateBroker, tmp_path: Path) -> None:
    q = new_queue()
    w = start_ready(worker_env(broker, q, "sigterm-acks-inflight",
                               WORKER_SHUTDOWN_GRACE_S="30"), tmp_path)
    broker.publish(q, slow_tasks("s", 2, 5000))
    assert w.wait_event("received", 5, count=2)
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 3.0  # did not wait for the 5 s tasks
    w.stop()
    assert w.of("shutdown")[0]["in_flight"] == 2
    assert not w.of("processed")
    time.sleep(0.5)
    assert broker.depth(q) == 0  # acked, not requeued


def test_exclusive_consumer_second_worker_never_ready(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    q = new_queue()
    first = start_ready(worker_env(broker, q, "exclusive-consumer"), tmp_path)
    second = WorkerProc(worker_env(broker, q, "exclusive-consumer"), tmp_path)
    try:
        assert second.wait_event("connection_lost", 10, count=3), second.lines[-5:]
        assert not second.of("ready") and second.proc.poll() is None
        assert any("ACCESS_REFUSED" in e["reason"] for e in second.of("connection_lost"))
        # Only once the first one is gone does the second get the queue (a hot standby).
        assert first.stop() == 0
        assert second.wait_event("ready", 10), second.lines[-5:]
    finally:
        first.stop()
        assert second.stop() == 0


def test_health_always_ok_and_no_reconnect_through_broker_outage(tmp_path: Path) -> None:
    b = PrivateBroker()
    try:
        b.start()
        q = new_queue()
        ports = {name: free_port() for name in ("always-ok", "no-reconnect", "ok")}
        envs = {
            "always-ok": worker_env(b, q, "health-always-ok",
                                    HEALTH_PORT=str(ports["always-ok"])),
            "no-reconnect": worker_env(b, q, "no-reconnect",
                                       HEALTH_PORT=str(ports["no-reconnect"])),
            "ok": worker_env(b, q, "", HEALTH_PORT=str(ports["ok"])),
        }
        with running_worker(envs["always-ok"], tmp_path) as always_ok, \
                running_worker(envs["no-reconnect"], tmp_path) as no_reconnect, \
                running_worker(envs["ok"], tmp_path) as ok:
            workers = {"always-ok": always_ok, "no-reconnect": no_reconnect, "ok": ok}
            for w in workers.values():
                assert w.wait_event("ready", 20), w.stderr()[-2000:]
            assert wait_until(lambda: all(health(p) == 200 for p in ports.values()), 5)
            b.stop_node()
            for w in workers.values():
                assert w.wait_event("connection_lost", 15)
            assert wait_until(lambda: health(ports["ok"]) == 503, 10)
            assert health(ports["no-reconnect"]) == 503
            time.sleep(1.5)  # the broker is down, the buggy probe still says yes
            assert health(ports["always-ok"]) == 200
            assert len(no_reconnect.of("connection_lost")) == 1  # no reconnect attempts
            b.start_node()
            assert ok.wait_event("ready", 30, count=2), ok.lines[-5:]
            assert always_ok.wait_event("ready", 10, count=2)
            time.sleep(3.0)  # WORKER_RECONNECT_MAX_S=1: a reconnecting worker is back by now
            assert len(no_reconnect.of("ready")) == 1 and len(no_reconnect.of("connected")) == 1
            assert no_reconnect.proc.poll() is None and health(ports["no-reconnect"]) == 503
            no_reconnect.proc.send_signal(signal.SIGTERM)
            assert no_reconnect.proc.wait(timeout=20) == 0
    finally:
        b.stop()
