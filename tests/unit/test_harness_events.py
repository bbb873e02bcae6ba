"""``harness_events``: contract v1 events from Celery's signals and from a
Dramatiq middleware, written by the frameworks themselves (Celery eager and a
real solo worker on kombu's in-memory transport; Dramatiq's own StubBroker and
Worker), read back through the harness's one line reader as contract events.
The RabbitMQ runs of these integrations are issue 13's integration tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery_signals import signals_kept

from harness.cluster.lines import LineReader
from harness.history import Recorder
from harness_events import LINE_MAX_BYTES, Emitter


class Pipe:
    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def lines(self) -> list[dict[str, Any]]:
        os.close(self.w)
        data = b""
        while True:
            try:
                chunk = os.read(self.r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        os.close(self.r)
        return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    yield Pipe()


@pytest.fixture
def celery_signals() -> Iterator[None]:
    with signals_kept():
        yield


def kinds(lines: list[dict[str, Any]], ident: str) -> list[str]:
    return [e["event"] for e in lines if e.get("id") == ident]


def test_celery_eager_success_failure_and_retry(pipe: Pipe, celery_signals: None) -> None:
    from celery import Celery

    from harness_events.celery import install

    app = Celery("t", broker="memory://")
    app.conf.task_always_eager = True
    install(app, Emitter(fd=pipe.w, worker="worker-1"))

    @app.task(bind=True, max_retries=1,  # type: ignore[untyped-decorator]
              name="harness_events_test.job")
    def job(self: Any, x: str) -> str:
        if x == "fail":
            raise ValueError("boom")
        if x == "retry" and self.request.retries == 0:
            raise self.retry(countdown=0.01)
        return x

    job.apply(args=("a",), task_id="t-ok")
    job.apply(args=("fail",), task_id="t-fail")
    job.apply(args=("retry",), task_id="t-retry")
    lines = pipe.lines()
    assert kinds(lines, "t-ok") == ["processed"]
    ok = next(e for e in lines if e["id"] == "t-ok")
    assert ok["attempt"] == 1 and ok["started_ts"] <= ok["ts"] and ok["worker"] == "worker-1"
    assert kinds(lines, "t-fail") == ["failed"]
    assert next(e for e in lines if e["id"] == "t-fail")["permanent"] is True
    assert kinds(lines, "t-retry") == ["retry_scheduled", "processed"]
    retry = next(e for e in lines if e["id"] == "t-retry")
    assert retry["attempt"] == 2 and retry["delay_ms"] == 10
    assert not any(e["event"] == "acked" for e in lines)  # Celery has no ack signal


def test_celery_worker_writes_received_with_the_delivery_flag(pipe: Pipe,
                                                             celery_signals: None) -> None:
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    from harness_events.celery import install

    app = Celery("t2", broker="memory://", backend="cache+memory://")
    install(app, Emitter(fd=pipe.w, worker="worker-2"))

    @app.task(name="harness_events_test.echo")  # type: ignore[untyped-decorator]
    def job(x: str) -> str:
        return x

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        job.apply_async(args=("a",), task_id="t-real").get(timeout=20)
    lines = pipe.lines()
    assert kinds(lines, "t-real") == ["received", "processed"]
    received = next(e for e in lines if e["event"] == "received")
    assert received["redelivered"] is False and received["attempt"] == 1


def test_dramatiq_middleware_on_its_stub_broker(pipe: Pipe) -> None:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from harness_events.dramatiq import HarnessEvents

    broker = StubBroker()
    broker.add_middleware(HarnessEvents(Emitter(fd=pipe.w, worker="worker-1")))

    @dramatiq.actor(max_retries=1, min_backoff=10, max_backoff=20, broker=broker)
    def job(x: str) -> str:
        if x == "fail":
            raise ValueError("boom")
        return x

    ok, bad = job.send("ok"), job.send("fail")
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join(job.queue_name, fail_fast=False, timeout=20_000)
        worker.join()
    finally:
        worker.stop()
    lines = pipe.lines()
    assert kinds(lines, ok.message_id) == ["received", "processed", "acked"]
    assert next(e for e in lines if e.get("id") == ok.message_id
                and e["event"] == "acked")["reason"] == "processed"
    # Attempt 1 fails, a delayed retry is scheduled and the delivery acked as a retry;
    # attempt 2 fails and, retries exhausted, is rejected to the dead-letter queue.
    # The delay queue's own ack (moving the retry to the work queue) is no settlement.
    assert kinds(lines, bad.message_id) == [
        "received", "failed", "retry_scheduled", "acked", "received", "failed",
        "dead_lettered"]
    failed = [e for e in lines if e.get("id") == bad.message_id and e["event"] == "failed"]
    assert [e["attempt"] for e in failed] == [1, 2]
    assert {"ready", "shutdown"} <= {e["event"] for e in lines}


def test_the_lines_are_contract_events_for_the_harness(pipe: Pipe) -> None:
    out = Emitter(fd=pipe.w, worker="worker-1")
    out.emit("received", id="t1", redelivered=False, attempt=1)
    out.emit("processed", id="t1", attempt=1, started_ts=1.0)
    out.emit("acked", id="t1", reason="processed")
    recorder = Recorder(None)
    seen: list[Any] = []
    recorder.add_listener(seen.append)
    reader = LineReader(recorder, "worker-1", None)
    for line in pipe.lines():
        reader.feed(json.dumps(line))
    assert [e.type for e in seen] == ["received", "processed", "acked"]
    assert reader.foreign == 0 and reader.mismatched_worker == 0


def test_a_line_stays_whole_and_a_closed_stdout_fails_nothing(pipe: Pipe) -> None:
    out = Emitter(fd=pipe.w, worker="w")
    out.emit("failed", id="x" * 10_000, attempt=1)
    line = pipe.lines()[0]
    assert len(json.dumps(line)) < LINE_MAX_BYTES and line["id"].startswith("xxx")
    Emitter(fd=pipe.w, worker="w").emit("ready")  # the fd is closed now: no exception


def test_celery_countdown_retry_is_received_when_it_starts(pipe: Pipe,
                                                          celery_signals: None) -> None:
    """A countdown retry reaches the worker at once and waits there: its receipt is
    written when it runs, so the retry's gap is the real wait (a real solo worker)."""
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    from harness_events.celery import install

    app = Celery("t3", broker="memory://", backend="cache+memory://")
    install(app, Emitter(fd=pipe.w, worker="worker-3"))

    @app.task(bind=True, max_retries=1,  # type: ignore[untyped-decorator]
              name="harness_events_test.later")
    def job(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=1.0)
        return "ok"

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        job.apply_async(task_id="t-later").get(timeout=30)
    lines = pipe.lines()
    assert kinds(lines, "t-later") == ["received", "failed", "retry_scheduled", "received",
                                       "processed"]
    failed = next(e for e in lines if e["event"] == "failed")
    assert (failed["attempt"], failed["permanent"]) == (1, False)  # before the republish
    second = [e for e in lines if e["event"] == "received"][1]
    assert second["attempt"] == 2
    assert second["ts"] - failed["ts"] >= 0.9  # the countdown, not the republish


def test_celery_retry_gap_keeps_the_connection_time_before_the_publish(
        pipe: Pipe, celery_signals: None) -> None:
    """Celery fixes a retry's ETA when it composes the message, then acquires its
    producer's connection (a pool child's first publish opens one: up to 60 ms seen
    on docker), then publishes. The ``failed`` is stamped at the composing, so a
    slow connection does not shorten the measured backoff."""
    import contextlib

    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    from harness_events.celery import install

    app = Celery("t4", broker="memory://", backend="cache+memory://")
    install(app, Emitter(fd=pipe.w, worker="worker-4"))
    acquire = app.producer_or_acquire

    @contextlib.contextmanager
    def slow_acquire(producer: Any = None) -> Iterator[Any]:
        time.sleep(0.4)  # a connection being opened
        with acquire(producer) as p:
            yield p

    @app.task(bind=True, max_retries=1,  # type: ignore[untyped-decorator]
              name="harness_events_test.slow")
    def job(self: Any) -> str:
        if self.request.retries == 0:
            app.producer_or_acquire = slow_acquire  # the retry's publish only
            raise self.retry(countdown=1.0)
        return "ok"

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        job.apply_async(task_id="t-slow").get(timeout=30)
    lines = pipe.lines()
    failed = next(e for e in lines if e["event"] == "failed" and e.get("id") == "t-slow")
    second = [e for e in lines if e["event"] == "received" and e.get("id") == "t-slow"][1]
    assert second["ts"] - failed["ts"] >= 0.95  # 1.0 s, not 1.0 - 0.4
