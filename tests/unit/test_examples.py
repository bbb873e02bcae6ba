"""The example framework apps honour the directives, in the frameworks
themselves (Celery eager; Dramatiq's StubBroker and Worker): a transient
failure is retried with backoff and then processed, a permanent one fails for
good (Dramatiq: to the dead-letter side), and every step is a contract event."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from celery_signals import signals_kept

ROOT = Path(__file__).resolve().parents[2]


def read_all(fd: int) -> list[dict[str, Any]]:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines()]


def events(lines: list[dict[str, Any]], ident: str) -> list[str]:
    return [e["event"] for e in lines if e.get("id") == ident]


def test_celery_example_task(monkeypatch: pytest.MonkeyPatch) -> None:
    with signals_kept():
        run_celery_example(monkeypatch)


def run_celery_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("WORKER_RETRY_BASE_MS", "10")

    r, w = os.pipe()
    try:
        import harness_events

        monkeypatch.setattr(harness_events.Emitter.__init__, "__defaults__", (w, "worker-1"))
        tasks = importlib.import_module("examples.celery_app.tasks")
        tasks.app.conf.task_always_eager = True
        job = tasks.harness_task
        job.apply(kwargs={"id": "c-ok", "directives": {"sleep_ms": 5}}, task_id="c-ok")
        job.apply(kwargs={"id": "c-retry", "directives": {"fail_times": 2}}, task_id="c-retry")
        job.apply(kwargs={"id": "c-fail", "directives": {"fail_always": True}},
                  task_id="c-fail")
        job.apply(kwargs={"id": "c-bad", "directives": {"sleep_ms": -1}}, task_id="c-bad")
    finally:
        os.close(w)
    lines = read_all(r)
    os.close(r)
    assert events(lines, "c-ok") == ["processed"]
    assert events(lines, "c-retry") == ["retry_scheduled", "retry_scheduled", "processed"]
    delays = [e["delay_ms"] for e in lines if e["event"] == "retry_scheduled"]
    assert delays == [10, 20]  # exponential: base, 2 x base
    assert events(lines, "c-fail") == ["failed"]
    assert events(lines, "c-bad") == ["failed"]  # invalid directives: a permanent failure
    assert tasks.app.conf.task_acks_late is False  # Celery's default, unless asked


def test_dramatiq_example_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.setenv("WORKER_RETRY_BASE_MS", "10")
    monkeypatch.setenv("WORKER_MAX_ATTEMPTS", "3")
    r, w = os.pipe()
    import dramatiq

    import harness_events

    monkeypatch.setattr(harness_events.Emitter.__init__, "__defaults__", (w, "worker-1"))
    tasks = importlib.import_module("examples.dramatiq_app.tasks")
    ok = tasks.harness_task.send(id="d-ok", directives={"sleep_ms": 5})
    retry = tasks.harness_task.send(id="d-retry", directives={"fail_times": 2})
    fail = tasks.harness_task.send(id="d-fail", directives={"fail_always": True})
    worker = dramatiq.Worker(tasks.broker, worker_timeout=50)
    worker.start()
    try:
        tasks.broker.join(tasks.QUEUE, fail_fast=False, timeout=30_000)
        worker.join()
    finally:
        worker.stop()
        os.close(w)
    lines = read_all(r)
    os.close(r)
    assert events(lines, ok.message_id) == ["received", "processed", "acked"]
    assert events(lines, retry.message_id) == [
        "received", "failed", "retry_scheduled", "acked",
        "received", "failed", "retry_scheduled", "acked",
        "received", "processed", "acked"]
    # A permanent failure is not retried: rejected to the dead-letter side at once.
    assert events(lines, fail.message_id) == ["received", "failed", "dead_lettered"]
    assert [m.message_id for m in tasks.broker.dead_letters] == [fail.message_id]
