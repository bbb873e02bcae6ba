"""The framework publishers against a real RabbitMQ node: every task confirmed, read
back by the harness's final read with the harness's id, and decoded by the
framework's own code as the task the harness meant (name, id, directives)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from private_broker import PrivateBroker
from waiting import wait_until

from harness import vocab
from harness.broker import BrokerAdmin
from harness.formats import CeleryPublisher, DramatiqPublisher, task_kwargs
from harness.history import Recorder
from harness.tasks import Task

pytestmark = pytest.mark.integration

N = 20


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker("fmt") as b:
        yield b


def tasks(prefix: str) -> list[Task]:
    return [Task(f"{prefix}-{i:03d}", b"", {"sleep_ms": i, "fail_times": i % 2})
            for i in range(N)]


def read_all(broker: PrivateBroker, queue: str) -> list[tuple[Any, bytes]]:
    conn = broker.connect()
    out: list[tuple[Any, bytes]] = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))
    finally:
        conn.close()


def test_celery_send_task_confirmed_and_read_back(broker: PrivateBroker) -> None:
    q = f"celery.{uuid.uuid4().hex[:6]}"
    conn = broker.connect()
    conn.channel().queue_declare(q, durable=True)  # as Celery's worker declares it
    conn.close()
    rec = Recorder(None)
    admin = broker.admin()
    sent = tasks("c")
    stats = CeleryPublisher(broker.url, q, rec, timeout_s=60,
                            queue_exists=lambda name: admin.passive_depth(name) is not None
                            ).publish(sent)
    assert (stats.ok, stats.fail, stats.unknown) == (N, 0, 0)
    assert {e.id for e in rec.snapshot().of_type(vocab.PUBLISH)} == {t.id for t in sent}
    # Its own connection, closed at the end (not left in kombu's process-wide pool).
    assert wait_until(lambda: not admin.connections(), 15), admin.connections()
    messages = read_all(broker, q)
    assert len(messages) == N
    for (props, body), t in zip(messages, sent, strict=True):
        assert props.headers["task"] == "harness.task" and props.headers["id"] == t.id
        args, kwargs, _embed = json.loads(body)
        assert args == [] and kwargs == task_kwargs(t)
        assert props.delivery_mode == 2  # persistent
    admin.close()


def test_dramatiq_enqueue_confirmed_read_back_and_decoded(broker: PrivateBroker) -> None:
    from dramatiq import Message

    q = f"dq{uuid.uuid4().hex[:6]}"
    rec = Recorder(None)
    sent = tasks("d")
    stats = DramatiqPublisher(broker.url, q, rec, timeout_s=60).publish(sent)
    assert (stats.ok, stats.fail, stats.unknown) == (N, 0, 0)
    publishes = list(rec.snapshot().of_type(vocab.PUBLISH))
    assert all(e.get("outcome") == "ok" for e in publishes)
    admin = BrokerAdmin(broker.endpoint)
    try:
        assert wait_until(lambda: not admin.connections(), 15), admin.connections()
        # Dramatiq declared its delay and dead-letter queues as its worker would.
        assert admin.passive_depth(f"{q}.DQ") == 0 and admin.passive_depth(f"{q}.XQ") == 0
        assert admin.drain_ids(q) == [t.id for t in sent]  # the harness's final read
    finally:
        admin.close()
    stats2 = DramatiqPublisher(broker.url, q, Recorder(None), timeout_s=60).publish(sent[:1])
    assert stats2.ok == 1
    [(props, body)] = read_all(broker, q)
    msg: Any = Message.decode(body)
    assert (msg.actor_name, msg.message_id, msg.kwargs) == (
        "harness_task", sent[0].id, task_kwargs(sent[0]))
    assert isinstance(props, pika.BasicProperties) and props.delivery_mode == 2
