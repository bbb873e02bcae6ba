"""Contract events from Celery's signals: ``install(app)`` in the app module.

| contract event | Celery signal | fields |
|---|---|---|
| ``ready`` | ``worker_ready`` | |
| ``received`` | ``task_received`` (the consumer got it) | ``redelivered``, ``attempt`` |
| ``processed`` | ``task_success`` | ``attempt``, ``started_ts`` (``task_prerun``) |
| ``retry_scheduled`` | ``task_retry`` | ``attempt`` (the next), ``delay_ms`` when the retry says |
| ``failed`` | ``task_failure`` (no retry follows) | ``attempt``, ``permanent: true`` |
| ``shutdown`` | ``worker_shutting_down`` | |

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

    def on_ready(**_: Any) -> None:
        out.emit("ready")

    def on_received(request: Any = None, **_: Any) -> None:
        if request is None:
            return
        info = getattr(request, "delivery_info", None) or {}
        redelivered = info.get("redelivered") if isinstance(info, dict) else None
        out.emit("received", id=request.id, redelivered=redelivered,
                 attempt=_retries(request) + 1)

    def on_prerun(task_id: str | None = None, **_: Any) -> None:
        if task_id is not None:
            _started[task_id] = time.time()

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
    signals.task_success.connect(on_success, weak=False)
    signals.task_retry.connect(on_retry, weak=False)
    signals.task_failure.connect(on_failure, weak=False)
    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    return out
