"""Contract events from a Dramatiq middleware:
``broker.add_middleware(HarnessEvents())`` where the app makes its broker.

| contract event | Dramatiq hook | fields |
|---|---|---|
| ``ready`` | ``after_worker_boot`` | |
| ``received`` | ``before_process_message`` | ``redelivered`` (RabbitMQ's flag), ``attempt`` |
| ``processed`` | ``after_process_message`` without an exception | ``attempt``, ``started_ts`` |
| ``failed`` | ``after_process_message`` with one | ``attempt`` |
| ``retry_scheduled`` | ``after_enqueue`` of a delayed retry | ``attempt`` (next), ``delay_ms`` |
| ``acked`` | ``after_ack`` | ``reason``: ``processed``, or ``retry`` after a failure |
| ``dead_lettered`` | ``after_nack`` (rejected to ``<queue>.XQ``) | ``reason`` |
| ``shutdown`` | ``before_worker_shutdown`` | |

The task id is the message's ``message_id``, which the harness chooses when it
enqueues. Dramatiq keeps a delayed retry in ``<queue>.DQ`` until it is due.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq

from harness_events import Emitter


def _attempt(message: Any) -> int:
    options = getattr(message, "options", None) or {}
    return int(options.get("retries", 0) or 0) + 1


class HarnessEvents(dramatiq.Middleware):
    """Writes worker contract v1 events for every message the worker handles."""

    def __init__(self, emitter: Emitter | None = None) -> None:
        self.out = emitter or Emitter()
        self._started: dict[str, tuple[float, int]] = {}

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.out.emit("ready")

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.out.emit("shutdown")

    def before_process_message(self, broker: Any, message: Any) -> None:
        attempt = _attempt(message)
        self._started[message.message_id] = (time.time(), attempt)
        redelivered = getattr(message, "redelivered", None)
        self.out.emit("received", id=message.message_id,
                      redelivered=redelivered if isinstance(redelivered, bool) else None,
                      attempt=attempt)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        # The attempt as it was when processing began: the Retries middleware counts
        # the failure in this same hook, before or after this one.
        started, attempt = self._started.pop(message.message_id, (None, _attempt(message)))
        if exception is None:
            self.out.emit("processed", id=message.message_id, attempt=attempt,
                          started_ts=started)
        else:
            self.out.emit("failed", id=message.message_id, attempt=attempt,
                          error=type(exception).__name__)

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        if delay and (message.options or {}).get("retries"):
            self.out.emit("retry_scheduled", id=message.message_id,
                          attempt=_attempt(message), delay_ms=int(delay))

    def after_ack(self, broker: Any, message: Any) -> None:
        if str(getattr(message, "queue_name", "")).endswith(".DQ"):
            return  # the delay queue's copy, moved to the work queue when due: no settlement
        failed = getattr(message, "_exception", None) is not None
        self.out.emit("acked", id=message.message_id, reason="retry" if failed else "processed")

    def after_nack(self, broker: Any, message: Any) -> None:
        self.out.emit("dead_lettered", id=message.message_id, reason="rejected")
