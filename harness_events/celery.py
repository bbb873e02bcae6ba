"""Contract events from Celery's signals: ``install(app)`` in the app module.

| contract event | Celery signal | fields |
|---|---|---|
| ``ready`` | ``worker_ready`` | |
| ``received`` | ``task_received`` (ETA: ``task_prerun``) | ``redelivered``, ``attempt`` |
| ``processed`` | ``task_success`` | ``attempt``, ``started_ts`` (``task_prerun``) |
| ``failed`` (``permanent: false``) | ``before_task_publish`` of a retry | ``attempt`` |
| ``retry_scheduled`` | ``task_retry`` | ``attempt`` (the next), ``delay_ms`` when the retry says |
| ``failed`` | ``task_failure`` (no retry follows) | ``attempt``, ``permanent: true`` |
| ``shutdown`` | ``worker_shutting_down`` | |

A retried attempt ends when the task asks for the retry: Celery republishes the
task then, and the ``failed`` of that attempt is written just before the
republish (``before_task_publish``, in the process running the task), so the
retry's gap does not lose the publish's time (``task_retry`` comes after it).
Its ``ts`` is when Celery composed the retry's message, which is when it fixed
the retry's ETA (``now + countdown``): Celery acquires its producer's connection
between the two, and a pool child's first publish opens one (measured at up to
60 ms, which made a 200 ms countdown read as 140 ms). The composing time comes
from a wrapper of the app's ``amqp.create_task_message`` (written by hand: no
signal fires there); it only moves the ``failed`` earlier, never later.

A task with an ETA, which is what a countdown retry is, reaches the worker at
once and waits in the worker until it is due: its receipt is written when it
starts, so the gap before a retry is the time the task really waited (and a
worker killed while it holds such a task is not said to hold it: less evidence,
never more).

No ``acked``: Celery acknowledges in its consumer, with no signal (early by
default, after the task with ``acks_late``), so exactly-once-ack is not
observable from these events. The task id is Celery's, which the harness
chooses when it publishes (``send_task(task_id=...)``).
"""

from __future__ import annotations

import time
from typing import Any

from harness_events import Emitter

_started: dict[str, float] = {}  # task id -> task_prerun time, in the process that runs it
# task id -> when its message was composed (the ETA fixed), for a task that runs here.
_composed: dict[str, float] = {}


def _retries(request: Any) -> int:
    value = getattr(request, "retries", None)
    if value is None and isinstance(getattr(request, "request_dict", None), dict):
        value = request.request_dict.get("retries")
    return int(value or 0)


def install(app: Any = None, emitter: Emitter | None = None) -> Emitter:
    """Connect the signals (for every app in the process: Celery's signals are
    global; ``app`` is accepted to read as ``install(app)``). Returns the emitter."""
    from celery import signals

    out = emitter or Emitter()
    if app is not None:
        _wrap_compose(app)

    def on_ready(**_: Any) -> None:
        out.emit("ready")

    def received(request: Any) -> None:
        info = getattr(request, "delivery_info", None) or {}
        redelivered = info.get("redelivered") if isinstance(info, dict) else None
        out.emit("received", id=request.id, redelivered=redelivered,
                 attempt=_retries(request) + 1)

    def on_received(request: Any = None, **_: Any) -> None:
        if request is None or getattr(request, "eta", None):
            return  # an ETA task: written when it starts (on_prerun)
        received(request)

    def on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id is None:
            return
        _started[task_id] = time.time()
        # The task's request here is the one that runs, in the process that runs it
        # (a prefork child too): its eta says it waited in the worker.
        request = getattr(task, "request", None)
        if getattr(request, "eta", None) and getattr(request, "id", None) == task_id:
            received(request)

    def on_before_publish(headers: Any = None, **_: Any) -> None:
        # A publish of a task that runs in this process, with a retry count: its own
        # retry (Celery's Task.retry republishes it before raising Retry).
        if not isinstance(headers, dict):
            return
        task_id, retries = headers.get("id"), headers.get("retries")
        composed = _composed.pop(task_id, None) if isinstance(task_id, str) else None
        if task_id in _started and isinstance(retries, int) and retries >= 1:
            now = time.time()
            out.emit("failed", id=task_id, attempt=retries, permanent=False,
                     ts=min(composed, now) if composed is not None else now)

    def on_success(sender: Any = None, **_: Any) -> None:
        request = getattr(sender, "request", None)
        task_id = getattr(request, "id", None)
        if task_id is None:
            return
        out.emit("processed", id=task_id, attempt=_retries(request) + 1,
                 started_ts=_started.pop(task_id, None))

    def on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
        if request is None:
            return
        when = getattr(reason, "when", None)
        delay_ms = int(when * 1000) if isinstance(when, int | float) else None
        _started.pop(request.id, None)
        out.emit("retry_scheduled", id=request.id, attempt=_retries(request) + 2,
                 delay_ms=delay_ms)

    def on_failure(task_id: str | None = None, sender: Any = None, **_: Any) -> None:
        if task_id is None:
            return
        request = getattr(sender, "request", None)
        _started.pop(task_id, None)
        out.emit("failed", id=task_id, attempt=_retries(request) + 1, permanent=True)

    def on_shutdown(**_: Any) -> None:
        out.emit("shutdown")

    # weak=False: the handlers are closures; Celery keeps weak references by default.
    signals.worker_ready.connect(on_ready, weak=False)
    signals.task_received.connect(on_received, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.before_task_publish.connect(on_before_publish, weak=False)
    signals.task_success.connect(on_success, weak=False)
    signals.task_retry.connect(on_retry, weak=False)
    signals.task_failure.connect(on_failure, weak=False)
    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    return out


def _wrap_compose(app: Any) -> None:
    """Note when the app composes a message of a task running in this process (the
    moment Celery fixes a retry's ETA). Idempotent; a Celery without the method is
    left alone (the ``failed`` is then stamped at the publish)."""
    amqp = app.amqp
    compose = getattr(amqp, "create_task_message", None)
    if compose is None or getattr(compose, "_harness_events", False):
        return

    def create_task_message(task_id: Any, *args: Any, **kwargs: Any) -> Any:
        if task_id in _started:
            _composed[task_id] = time.time()
        return compose(task_id, *args, **kwargs)

    create_task_message._harness_events = True  # type: ignore[attr-defined]
    amqp.create_task_message = create_task_message
