"""An example Celery app under test: one task, ``harness.task``, honouring the
harness's directives, and contract events from ``harness_events.celery``.

The harness publishes ``send_task("harness.task", kwargs={"id": ..., "directives":
{...}}, task_id=<the task id>)``; the worker runs with
``celery -A examples.celery_app.tasks worker -Q $RABBITMQ_QUEUE``.
"""

from __future__ import annotations

import os
from typing import Any, Final

from celery import Celery, signals

import harness_events.celery
from examples.directives import obey
from worker.tasks import kill_self, parse_directives

TASK: Final = "harness.task"


def _flag(name: str, default: bool) -> bool:
    return os.environ.get(name, "true" if default else "false").strip().lower() in (
        "1", "true", "yes")


QUEUE: Final = os.environ.get("RABBITMQ_QUEUE", "go.logger")
RETRY_BASE_S: Final = int(os.environ.get("WORKER_RETRY_BASE_MS", "500")) / 1000
MAX_RETRIES: Final = max(int(os.environ.get("WORKER_MAX_ATTEMPTS", "4")) - 1, 0)

app = Celery("harness_example", broker=os.environ.get("RABBITMQ_URL", "memory://"))
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    # Celery's defaults unless the environment says otherwise: the verdict table's rows.
    task_acks_late=_flag("CELERY_ACKS_LATE", False),
    task_reject_on_worker_lost=_flag("CELERY_REJECT_ON_WORKER_LOST", False),
    worker_prefetch_multiplier=int(os.environ.get("CELERY_PREFETCH_MULTIPLIER", "4")),
    task_acks_on_failure_or_timeout=_flag("CELERY_ACKS_ON_FAILURE_OR_TIMEOUT", True),
    worker_concurrency=int(os.environ.get("WORKER_CONCURRENCY", "1")),
    # No remote control: its reply queue is exclusive per node name, and the workers
    # of a run share one host name (celery@host), so a second worker could not start.
    worker_enable_remote_control=False,
)
# CELERY_DLQ=<queue>: the app declares its work queue with a dead-letter queue of its
# own (RabbitMQ's x-dead-letter-* arguments), as the Celery docs' recipe does; a task
# Celery rejects (acks_on_failure_or_timeout=False) goes there. Unset: none (Celery
# has no DLQ of its own).
DLQ: Final = os.environ.get("CELERY_DLQ", "").strip()
if DLQ:
    from kombu import entity

    # kombu has no type hints.
    Exchange: Any = entity.Exchange
    Queue: Any = entity.Queue
    app.conf.task_queues = [Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE,
                                  queue_arguments={"x-dead-letter-exchange": "",
                                                   "x-dead-letter-routing-key": DLQ})]

    @signals.worker_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _declare_dlq(**_: Any) -> None:
        with app.connection_for_write() as conn:
            Queue(DLQ, routing_key=DLQ).bind(conn).declare()

# HARNESS_EVENTS=off: the app as it is without the integration, read from its log
# lines instead (``harness run --events celery``, with ``-l info``).
if os.environ.get("HARNESS_EVENTS", "on") != "off":
    harness_events.celery.install(app)

# Task ids whose process must die once its side effect is reported (crash
# "after_process"): after harness_events' own task_success handler, before the ack.
_crash_after: set[str] = set()


@app.task(name=TASK, bind=True, max_retries=MAX_RETRIES)  # type: ignore[untyped-decorator]
def harness_task(self: Any, id: str, directives: Any = None, payload: Any = None) -> str:
    d = parse_directives(directives)  # PermanentError: a final failure
    attempt = int(self.request.retries or 0) + 1
    info = self.request.delivery_info or {}
    first = attempt == 1 and not info.get("redelivered")
    step = obey(d, attempt, first)
    if step == "retry":
        raise self.retry(countdown=RETRY_BASE_S * 2 ** (attempt - 1))
    if step == "crash-after":
        _crash_after.add(self.request.id)
    return id


def _crash_after_success(sender: Any = None, **_: Any) -> None:
    task_id = getattr(getattr(sender, "request", None), "id", None)
    if task_id in _crash_after:
        kill_self()


# Connected after harness_events.celery.install: Celery calls receivers in order.
signals.task_success.connect(_crash_after_success, weak=False)
