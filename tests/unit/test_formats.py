"""Task formats (harness.formats): the queues observed per format, the task id read
back from each framework's own encoding, and the one-send-one-event loop of the
framework publishers (on a stand-in client: the real ones are in
tests/integration/test_formats_rabbitmq.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pika
import pytest

from harness import vocab
from harness.broker import _message_id
from harness.cluster.base import ClusterError
from harness.formats import (
    MAX_CONSECUTIVE_ERRORS,
    CeleryPublisher,
    FrameworkPublisher,
    _Refused,
    task_kwargs,
)
from harness.history import Recorder
from harness.model import ClusterSpec
from harness.tasks import Task


def tasks(n: int, poison: bool = False) -> list[Task]:
    return [Task(f"t{i}", b"{}", {"sleep_ms": i}, poison) for i in range(n)]


# -- the queues observed per format ----------------------------------------------------

def test_queues_observed_per_format() -> None:
    def spec(fmt: str, dlq: str | None = None) -> ClusterSpec:
        return ClusterSpec(queue="q", dead_letter_queue=dlq, task_format=fmt)

    assert (spec(vocab.FORMAT_CONTRACT_V1).dlq, spec(vocab.FORMAT_CONTRACT_V1).retry_prefix) == (
        "q.dlq", "q.retry.")
    assert (spec(vocab.FORMAT_DRAMATIQ).dlq, spec(vocab.FORMAT_DRAMATIQ).retry_prefix) == (
        "q.XQ", "q.DQ")
    assert spec(vocab.FORMAT_DRAMATIQ, "mine").dlq == "mine"  # the scenario's or a flag's wins
    assert spec(vocab.FORMAT_CELERY).retry_prefix is None


# -- the id of a message, in each framework's own encoding -----------------------------

def test_celery_message_id_is_its_task_id() -> None:
    from celery import Celery

    app = Celery("t", broker="memory://", set_as_current=False)
    t = Task("abc-1", b"", {"fail_times": 1})
    msg = app.amqp.as_task_v2("abc-1", "harness.task", kwargs=task_kwargs(t))
    props = pika.BasicProperties(headers=msg.headers, correlation_id=msg.properties.get(
        "correlation_id"))
    body = json.dumps(msg.body).encode()
    assert _message_id(props, body) == "abc-1"
    app.close()


def test_dramatiq_message_id_is_read_from_its_body() -> None:
    from dramatiq import Message

    t = Task("abc-2", b"", {})
    msg: Any = Message(queue_name="q", actor_name="harness_task", args=(),
                       kwargs=task_kwargs(t), options={}, message_id="abc-2")
    assert _message_id(pika.BasicProperties(delivery_mode=2), msg.encode()) == "abc-2"


def test_a_header_named_id_without_a_task_is_not_celerys() -> None:
    props = pika.BasicProperties(headers={"id": "from-a-header"})
    assert _message_id(props, b'{"id": "from-the-body"}') == "from-the-body"
    assert _message_id(pika.BasicProperties(), b"[1, 2]") == "<unparseable>"


# -- one send, one publish event --------------------------------------------------------

class StandIn(FrameworkPublisher):
    """A client that confirms, refuses or raises per task id."""

    def __init__(self, script: dict[str, str], recorder: Recorder,
                 timeout_s: float = 10.0) -> None:
        super().__init__("amqp://127.0.0.1:1/%2F", "q", recorder, timeout_s)
        self.script = script
        self.sent: list[str] = []
        self.opened = self.closed = 0

    def _open(self) -> None:
        self.opened += 1

    def _send(self, task: Task) -> None:
        self.sent.append(task.id)
        what = self.script.get(task.id, "ok")
        if what == "nack":
            raise _Refused("nacked")
        if what == "raise":
            raise ConnectionResetError("peer went away")

    def _close(self) -> None:
        self.closed += 1


def outcomes(rec: Recorder) -> dict[str, str]:
    return {str(e.id): str(e.get("outcome")) for e in rec.snapshot().of_type(vocab.PUBLISH)}


def test_outcomes_ok_fail_unknown() -> None:
    rec = Recorder(None)
    p = StandIn({"t1": "nack", "t2": "raise"}, rec)
    stats = p.publish(tasks(4))
    assert outcomes(rec) == {"t0": "ok", "t1": "fail", "t2": "unknown", "t3": "ok"}
    assert (stats.ok, stats.fail, stats.unknown) == (2, 1, 1)
    # A new connection after each send that was not confirmed (a late confirm must not
    # be taken for the next task's).
    assert p.opened == p.closed == 3


def test_sends_stop_after_consecutive_errors_and_the_rest_is_not_sent() -> None:
    rec = Recorder(None)
    n = MAX_CONSECUTIVE_ERRORS + 3
    p = StandIn({f"t{i}": "raise" for i in range(n)}, rec)
    stats = p.publish(tasks(n))
    assert len(p.sent) == MAX_CONSECUTIVE_ERRORS
    assert stats.unknown == MAX_CONSECUTIVE_ERRORS and stats.fail == 3
    errors = [e.get("error") for e in rec.snapshot().of_type(vocab.PUBLISH)
              if e.get("outcome") == "fail"]
    assert all("not sent" in str(err) for err in errors)


def test_stop_ends_sending_and_the_rest_fails() -> None:
    rec = Recorder(None)
    stop = threading.Event()
    stop.set()
    stats = StandIn({}, rec).publish(tasks(3), stop=stop)
    assert (stats.ok, stats.fail) == (0, 3)


def test_bad_input_is_refused_before_anything_is_sent() -> None:
    p = StandIn({}, Recorder(None))
    with pytest.raises(ValueError, match="unique"):
        p.publish([*tasks(2), *tasks(1)])
    with pytest.raises(ValueError, match="poison"):
        p.publish(tasks(1, poison=True))
    with pytest.raises(ValueError, match="rate_per_s"):
        p.publish(tasks(1), rate_per_s=0)
    assert p.sent == [] and p.opened == 0


def test_celery_refuses_a_missing_queue_before_sending() -> None:
    p = CeleryPublisher("amqp://127.0.0.1:1/%2F", "nowhere", Recorder(None),
                        queue_exists=lambda q: False)
    with pytest.raises(ClusterError, match="does not exist"):
        p.publish(tasks(1))


# -- the options: a framework format needs a brought worker, no poison -------------------

def test_format_options_are_checked_before_the_run() -> None:
    from harness.options import OptionsError, build_options

    with pytest.raises(OptionsError, match="reference worker reads contract v1"):
        build_options(backend="local", task_format="celery")
    with pytest.raises(OptionsError, match="use contract-v1, celery, dramatiq"):
        build_options(backend="local", worker_cmd="w", task_format="kafka")
    opts = build_options(backend="local", worker_cmd="w", task_format="dramatiq")
    assert opts.task_format == "dramatiq"


def test_poison_is_refused_with_a_framework_format_and_the_rerun_keeps_the_format() -> None:
    from harness.options import OptionsError, apply_options, build_options, check_format
    from harness.scenario import scenario_from_dict

    sc = scenario_from_dict({"name": "p", "claims": ["no-loss"], "workload": {
        "tasks": 5, "groups": [{"count": 1, "poison": True}]}}, file="p.yaml")
    opts = build_options(backend="local", worker_cmd="w", task_format="celery")
    with pytest.raises(OptionsError, match=r"groups\[0\]\.poison"):
        check_format(sc, opts)
    check_format(sc, build_options(backend="local", worker_cmd="w"))  # contract v1: fine
    from harness.options import rerun_command

    assert "--format celery" in rerun_command(sc, opts, 1, "local")
    applied = apply_options(sc, build_options(backend="local", worker_cmd="w",
                                              task_format="dramatiq"))
    assert (applied.cluster.task_format, applied.cluster.dlq) == ("dramatiq", "go.logger.XQ")


def test_dramatiqs_connection_is_bounded_and_a_users_setting_kept() -> None:
    from harness.formats import bounded_url

    url = bounded_url("amqp://u:p@h:5672/%2F")
    assert "heartbeat=10" in url and "blocked_connection_timeout=10" in url
    assert url.startswith("amqp://u:p@h:5672/%2F?")
    assert "heartbeat=30" in bounded_url("amqp://h/%2F?heartbeat=30")
