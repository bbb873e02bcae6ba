"""Task formats: how a task travels on the wire and who publishes it (the queues the
checkers observe for each are ``model.ClusterSpec.dlq`` and ``retry_prefix``).

- ``contract-v1`` (the default): the body of worker contract v1
  (``harness.tasks.task_body``), published by the harness's own ``Publisher``
  (pipelined confirms); retry queues ``<queue>.retry.*``, the scenario's DLQ.
- ``celery``: Celery's own message (protocol 2), published by Celery's own client,
  ``send_task(name, kwargs={"id", "directives"}, task_id=<the harness's id>)``,
  with publisher confirms (``confirm_publish``); Celery's retries come back to the
  work queue (a countdown is held by the worker until it is due), and there is a
  DLQ only where the user's configuration declares one.
- ``dramatiq``: Dramatiq's own message, enqueued by Dramatiq's ``RabbitmqBroker``
  with ``confirm_delivery=True`` and ``message_id`` = the harness's id; delayed
  retries wait in ``<queue>.DQ``, dead letters go to ``<queue>.XQ``.

The directives travel as the task's keyword arguments in both frameworks. The
framework clients are imported only when their format is used (the ``frameworks``
extra); what no maintained library does here, and is written by hand, is only the
loop that turns each send into one ``publish`` event with its outcome.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Final

from harness import vocab
from harness.cluster.base import ClusterError
from harness.history import Recorder
from harness.tasks import Task
from harness.workload import SOURCE, PublishStats

# The task (Celery) and actor (Dramatiq) names the example apps register
# (examples/celery_app, examples/dramatiq_app); a user's app can be told another.
CELERY_TASK: Final = "harness.task"
DRAMATIQ_ACTOR: Final = "harness_task"
# One send may wait this long for its confirm before it is ``unknown`` (Celery's
# confirm_timeout; Dramatiq's connection heartbeat and blocked-connection timeout).
CONFIRM_TIMEOUT_S: Final = 10.0
SEND_BOUND_S: Final = 10.0
# Consecutive sends that raised before the publisher gives up on the rest (``fail``,
# "not sent"): a broker that went away must not cost one timeout per task.
MAX_CONSECUTIVE_ERRORS: Final = 5


def task_kwargs(task: Task) -> dict[str, Any]:
    """What a framework task receives: the id and the directives, by keyword."""
    return {"id": task.id, "directives": dict(task.directives)}


class _Refused(Exception):
    """The broker said no (a nack, an unroutable return): ``fail``, not ``unknown``."""


class FrameworkPublisher:
    """Publishes tasks one at a time through a framework's client, each confirmed
    before the next, and records one ``publish`` event per task (the outcomes of
    ``harness.workload``: ``ok`` confirmed, ``fail`` refused or never sent,
    ``unknown`` sent with no answer). Subclasses give ``_open``, ``_send`` (raise
    ``_Refused`` for a refusal, anything else is ``unknown``) and ``_close``.

    Poison tasks have no framework form (a framework's own decoder would reject
    them before any task code runs), so they are refused before the run.
    """

    def __init__(self, amqp_url: str, queue: str, recorder: Recorder,
                 timeout_s: float = 60.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.amqp_url = amqp_url
        self.queue = queue
        self.recorder = recorder
        self.timeout_s = timeout_s

    def _open(self) -> None:
        raise NotImplementedError

    def _send(self, task: Task) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _record(self, task: Task, outcome: str, error: str | None = None) -> None:
        extra: dict[str, Any] = {} if error is None else {"error": error}
        self.recorder.record(vocab.PUBLISH, SOURCE, id=task.id, outcome=outcome,
                             directives=task.directives, poison=task.poison, **extra)

    def publish(self, tasks: Sequence[Task], rate_per_s: float | None = None,
                stop: threading.Event | None = None) -> PublishStats:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0 or None, got {rate_per_s}")
        if len({t.id for t in tasks}) != len(tasks):
            raise ValueError("task ids must be unique")
        if any(t.poison for t in tasks):  # refused before the run (options.check_format)
            raise ValueError("poison tasks have no framework form; use the contract-v1 format")
        counts = {"ok": 0, "fail": 0, "unknown": 0}
        t0 = time.monotonic()
        deadline = t0 + self.timeout_s
        self._open()  # ClusterError (one line) when the broker cannot be reached at all
        errors = 0
        try:
            for i, task in enumerate(tasks):
                why = self._why_not(stop, deadline, errors)
                if not why and errors:
                    why = self._reopen()
                if why:
                    for rest in tasks[i:]:
                        self._record(rest, "fail", f"not sent: {why}")
                        counts["fail"] += 1
                    break
                if rate_per_s is not None:
                    time.sleep(max(0.0, t0 + i / rate_per_s - time.monotonic()))
                outcome, error = self._one(task)
                errors = errors + 1 if error else 0
                self._record(task, outcome, error)
                counts[outcome] += 1
        finally:
            self._close()
            self._done()
        elapsed = max(time.monotonic() - t0, 1e-9)
        return PublishStats(ok=counts["ok"], fail=counts["fail"], unknown=counts["unknown"],
                            elapsed_s=elapsed, rate=counts["ok"] / elapsed, connections=1)

    def _reopen(self) -> str:
        """A new connection after a send that was not confirmed (see the subclasses);
        the reason to stop when none can be opened."""
        self._close()
        try:
            self._open()
        except ClusterError as e:
            return str(e)
        return ""

    def _done(self) -> None:
        """After the last send and ``_close`` (a client to drop, if any)."""

    @staticmethod
    def _why_not(stop: threading.Event | None, deadline: float, errors: int) -> str:
        if stop is not None and stop.is_set():
            return "publishing was stopped"
        if time.monotonic() >= deadline:
            return "publish timeout"
        if errors >= MAX_CONSECUTIVE_ERRORS:
            return f"{errors} sends in a row failed"
        return ""

    def _one(self, task: Task) -> tuple[str, str | None]:
        try:
            self._send(task)
        except _Refused as e:
            return "fail", str(e) or "refused by the broker"
        except Exception as e:  # noqa: BLE001 - a framework raises many kinds; sent, no answer
            return "unknown", f"{type(e).__name__}: {e}"[:300]
        return "ok", None


class CeleryPublisher(FrameworkPublisher):
    """``send_task`` through a Celery app of its own on a connection of its own
    (``confirm_publish``; not kombu's process-wide pool, whose connections would
    outlive the run's vhost), no publish retries (a retried publish could enqueue a
    task twice). It declares nothing: the queue is the user's (Celery's worker
    declares it with the user's arguments), and a queue that does not exist is
    refused before the first send, because a publish to a missing queue through the
    default exchange is confirmed and dropped. After any send that was not
    confirmed the connection is replaced: py-amqp matches a confirm to no delivery
    tag, so a late confirm would otherwise be taken for the next task's."""

    def __init__(self, amqp_url: str, queue: str, recorder: Recorder,
                 timeout_s: float = 60.0, task_name: str = CELERY_TASK,
                 queue_exists: Callable[[str], bool] | None = None) -> None:
        super().__init__(amqp_url, queue, recorder, timeout_s)
        self.task_name = task_name
        self.queue_exists = queue_exists
        self._app: Any = None
        self._conn: Any = None
        self._producer: Any = None

    def _open(self) -> None:
        if self.queue_exists is not None and not self.queue_exists(self.queue):
            raise ClusterError(f"queue {self.queue!r} does not exist: Celery's worker declares "
                               "it when it starts; start the workers first")
        from celery import Celery

        if self._app is None:
            app = Celery("rmq-harness-publisher", broker=self.amqp_url, set_as_current=False)
            app.conf.update(broker_transport_options={"confirm_publish": True},
                            broker_connection_retry=False, task_publish_retry=False)
            self._app = app
        conn = self._app.connection_for_write()
        try:
            conn.ensure_connection(max_retries=1)
        except Exception as e:  # noqa: BLE001 - kombu raises the transport's own kinds
            conn.release()
            raise ClusterError(f"cannot open an AMQP connection for Celery's client: "
                               f"{type(e).__name__}; check that the broker runs") from None
        self._conn = conn
        self._producer = self._app.amqp.Producer(conn, auto_declare=False)

    def _send(self, task: Task) -> None:
        from amqp.exceptions import MessageNacked

        try:
            self._app.send_task(self.task_name, kwargs=task_kwargs(task), task_id=task.id,
                                queue=self.queue, routing_key=self.queue, exchange="",
                                declare=[], retry=False, confirm_timeout=CONFIRM_TIMEOUT_S,
                                producer=self._producer)
        except MessageNacked as e:
            raise _Refused(f"nacked: {e}") from None

    def _close(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def _done(self) -> None:
        app, self._app = self._app, None
        if app is not None:
            app.close()


class _ResendRefused(Exception):
    """Dramatiq tried a task's send again: refused, so no task is enqueued twice."""


class DramatiqPublisher(FrameworkPublisher):
    """``RabbitmqBroker.enqueue`` with ``confirm_delivery`` and ``message_id`` = the
    task id. Dramatiq declares the queue and its ``.DQ`` and ``.XQ`` as its worker
    does. Its ``enqueue`` sends again after a connection error, a nack or a return,
    so a message enqueued before the error could be enqueued twice: a second
    attempt for the same id is refused in its ``before_enqueue`` hook, and that
    send is ``unknown`` (it may have arrived once), as the harness's own publisher
    would say. The connection carries a heartbeat and a blocked-connection timeout
    (pika's URL parameters), so one send cannot wait for ever on a broker that
    stopped answering or blocks publishers."""

    def __init__(self, amqp_url: str, queue: str, recorder: Recorder,
                 timeout_s: float = 60.0, actor_name: str = DRAMATIQ_ACTOR) -> None:
        super().__init__(amqp_url, queue, recorder, timeout_s)
        self.actor_name = actor_name
        self._broker: Any = None

    def _open(self) -> None:
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        sent: set[str] = set()

        class OnceOnly(dramatiq.Middleware):
            def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
                if message.message_id in sent:
                    raise _ResendRefused(f"dramatiq tried {message.message_id} again")
                sent.add(message.message_id)

        # No default middleware: the publisher runs no actors.
        broker = RabbitmqBroker(url=bounded_url(self.amqp_url), confirm_delivery=True,
                                middleware=[OnceOnly()])
        try:
            broker.channel  # noqa: B018 - connects now: an unreachable broker is one error
        except Exception as e:  # noqa: BLE001 - pika raises many kinds
            broker.close()
            raise ClusterError(f"cannot open an AMQP connection for Dramatiq's client: "
                               f"{type(e).__name__}; check that the broker runs") from None
        self._broker = broker

    def _send(self, task: Task) -> None:
        from dramatiq import Message

        # pika's NackError and UnroutableError are AMQPChannelErrors, which Dramatiq's
        # enqueue answers by sending again; OnceOnly refuses that second send, so a
        # nacked or returned task ends ``unknown`` (it may be in the queue), never ``ok``.
        msg: Any = Message(queue_name=self.queue, actor_name=self.actor_name, args=(),
                           kwargs=task_kwargs(task), options={}, message_id=task.id)
        self._broker.enqueue(msg)

    def _close(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            with contextlib.suppress(Exception):
                broker.close()


def bounded_url(url: str) -> str:
    """``url`` with pika's ``heartbeat`` and ``blocked_connection_timeout`` set where
    it does not set them (``SEND_BOUND_S``)."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.setdefault("heartbeat", str(int(SEND_BOUND_S)))
    query.setdefault("blocked_connection_timeout", str(int(SEND_BOUND_S)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def publisher_for(fmt: str, amqp_url: str, queue: str, recorder: Recorder,
                  timeout_s: float,
                  queue_exists: Callable[[str], bool] | None = None) -> FrameworkPublisher:
    """The framework publisher of ``fmt`` (contract-v1 uses ``harness.workload``)."""
    if fmt == vocab.FORMAT_CELERY:
        return CeleryPublisher(amqp_url, queue, recorder, timeout_s, queue_exists=queue_exists)
    if fmt == vocab.FORMAT_DRAMATIQ:
        return DramatiqPublisher(amqp_url, queue, recorder, timeout_s)
    raise ValueError(f"no framework publisher for format {fmt!r}")
