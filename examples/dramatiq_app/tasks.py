"""An example Dramatiq app under test: one actor, ``harness_task``, honouring the
harness's directives, and contract events from ``harness_events.dramatiq``.

The harness enqueues a message for ``harness_task`` with ``kwargs={"id": ...,
"directives": {...}}`` and ``message_id`` = the task id; the worker runs with
``dramatiq examples.dramatiq_app.tasks``. Without ``RABBITMQ_URL`` the app uses
Dramatiq's StubBroker (the unit tests).
"""

from __future__ import annotations

import os
from typing import Any, Final

import dramatiq
from dramatiq.middleware import CurrentMessage

from examples.directives import obey
from harness_events.dramatiq import HarnessEvents
from worker.tasks import TransientError, kill_self, parse_directives

QUEUE: Final = os.environ.get("RABBITMQ_QUEUE", "go.logger")
RETRY_BASE_MS: Final = int(os.environ.get("WORKER_RETRY_BASE_MS", "500"))
# The scenario's attempts (WORKER_MAX_ATTEMPTS) unless DRAMATIQ_MAX_RETRIES says
# otherwise ("default": Dramatiq's own, 20), as an app configured on its own would.
_RETRIES = os.environ.get("DRAMATIQ_MAX_RETRIES", "").strip()
MAX_RETRIES: Final = (20 if _RETRIES == "default" else int(_RETRIES) if _RETRIES
                      else max(int(os.environ.get("WORKER_MAX_ATTEMPTS", "4")) - 1, 0))


class CrashAfterProcess(dramatiq.Middleware):
    """Ends the process after the side effect is reported, before the ack (crash
    ``after_process``). Added before HarnessEvents: Dramatiq calls ``after_*``
    hooks in reverse order, so this one runs after HarnessEvents wrote
    ``processed``."""

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        if exception is None and result == ("crash-after", message.message_id):
            kill_self()


def make_broker() -> Any:
    url = os.environ.get("RABBITMQ_URL")
    if url:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker: Any = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        from dramatiq.brokers.stub import StubBroker

        broker = StubBroker()
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(CrashAfterProcess())
    # HARNESS_EVENTS=off: the app as it is without the integration, read from its
    # debug lines instead (``harness run --events dramatiq``, ``dramatiq --verbose``).
    if os.environ.get("HARNESS_EVENTS", "on") != "off":
        broker.add_middleware(HarnessEvents())
    return broker


broker = make_broker()
dramatiq.set_broker(broker)


def _transient(retries: int, exception: BaseException) -> bool:
    return isinstance(exception, TransientError) and retries < MAX_RETRIES


@dramatiq.actor(queue_name=QUEUE, max_retries=MAX_RETRIES, min_backoff=RETRY_BASE_MS,
                max_backoff=RETRY_BASE_MS * 2 ** max(MAX_RETRIES, 1), retry_when=_transient)
def harness_task(id: str, directives: Any = None, payload: Any = None) -> Any:
    d = parse_directives(directives)  # PermanentError: not retried, to the XQ
    current = CurrentMessage.get_current_message()  # the actor is not handed its message
    retries = int((current.options if current is not None else {}).get("retries", 0) or 0)
    redelivered = bool(getattr(current, "redelivered", False))
    first = retries == 0 and not redelivered
    step = obey(d, retries + 1, first)
    if step == "retry":
        raise TransientError(f"attempt {retries + 1} of {d.fail_times} failing")
    if step == "crash-after" and current is not None:
        return ("crash-after", current.message_id)
    return id
