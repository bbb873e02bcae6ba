"""The ``logger`` task, message parsing, and the test directives.

Directives (all optional, in the body's ``directives`` object):

``sleep_ms``     processing time in ms (0..600000);
``sleep_first_ms`` processing time of a *first* delivery instead of ``sleep_ms``: a
                 task slow once (a downstream hiccup), e.g. longer than the broker's
                 ``consumer_timeout``; its redelivery takes ``sleep_ms``;
``fail_times``   N: attempts 1..N fail transiently, attempt N+1 succeeds;
``fail_always``  true: fail permanently (dead-letter path);
``crash``        ``"during"``: SIGKILL this process halfway through the sleep;
                 ``"after_process"``: emit ``processed`` (the side effect), then
                 SIGKILL this process before the ack.
``crash_always`` true: SIGKILL this process halfway through the sleep on *every*
                 delivery: a poison message that crashes whichever worker takes it
                 (the crash-loop incident; only a delivery limit ends it).

``crash`` fires only on a *first* delivery (``redelivered`` false and attempt 1).
Otherwise a crashing task would be redelivered to the next worker and kill it
too, one worker after another; a redelivered copy is processed normally, which
is what lets a crash-recovery run finish. ``crash_always`` is that crash loop,
on purpose.

A body that is not a JSON object with a string ``id`` is poison: a permanent
failure whose id is taken from the ``message_id`` property. A body with an
unknown ``task`` or invalid directives is a permanent failure too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_SLEEP_MS: Final = 600_000
MAX_FAIL_TIMES: Final = 1000
CRASH_POINTS: Final = ("during", "after_process")
TASK_NAMES: Final = ("logger",)


class TaskError(Exception):
    permanent = False


class TransientError(TaskError):
    """The attempt failed; a later attempt may succeed (retry path)."""


class PermanentError(TaskError):
    """The task can never succeed (dead-letter path)."""

    permanent = True


class PoisonError(PermanentError):
    """The message body cannot be read as a task."""


@dataclass(frozen=True)
class Directives:
    sleep_ms: int = 0
    sleep_first_ms: int | None = None
    fail_times: int = 0
    fail_always: bool = False
    crash: str | None = None
    crash_always: bool = False


@dataclass(frozen=True)
class Task:
    id: str
    task: str
    payload: Any = None
    directives: Directives = field(default_factory=Directives)


def parse_directives(obj: Any) -> Directives:
    """Validate the ``directives`` object. Raises PermanentError on a bad value."""
    if obj is None:
        return Directives()
    if not isinstance(obj, Mapping):
        raise PermanentError("directives must be an object")

    def count(name: str, hi: int) -> int:
        value = obj.get(name, 0)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            raise PermanentError(f"directive {name} must be an integer 0..{hi}")
        return value

    sleep_ms = count("sleep_ms", MAX_SLEEP_MS)
    sleep_first_ms = count("sleep_first_ms", MAX_SLEEP_MS) if "sleep_first_ms" in obj else None
    fail_times = count("fail_times", MAX_FAIL_TIMES)
    def flag(name: str) -> bool:
        value = obj.get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise PermanentError(f"directive {name} must be true or false")
        return value

    fail_always = flag("fail_always")
    crash_always = flag("crash_always")
    crash = obj.get("crash")
    if crash is not None and crash not in CRASH_POINTS:
        raise PermanentError(f"directive crash must be one of {', '.join(CRASH_POINTS)}")
    return Directives(sleep_ms=sleep_ms, sleep_first_ms=sleep_first_ms, fail_times=fail_times,
                      fail_always=fail_always, crash=crash, crash_always=crash_always)


def parse_message(body: bytes, message_id: str | None) -> Task:
    """Parse a task body. Raises PoisonError (unreadable body) or PermanentError."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonError(f"body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PoisonError("body is not a JSON object")
    ident = obj.get("id")
    if not isinstance(ident, str | int) or isinstance(ident, bool) or str(ident) == "":
        raise PoisonError("body has no id")
    task_id = str(ident)
    name = obj.get("task", "logger")
    if name not in TASK_NAMES:
        # Readable, so not poison, but no worker here can run it.
        raise PermanentError(f"unknown task {name!r}")
    return Task(id=task_id, task=str(name), payload=obj.get("payload"),
                directives=parse_directives(obj.get("directives")))


def message_task_id(body: bytes, message_id: str | None) -> str | None:
    """The task id for events: the body's id if readable, else ``message_id``."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return message_id
    if isinstance(obj, dict):
        ident = obj.get("id")
        if isinstance(ident, str | int) and not isinstance(ident, bool) and str(ident) != "":
            return str(ident)
    return message_id


def kill_self() -> None:
    """Die like a crashed pod: SIGKILL, no cleanup, no ack.

    As PID 1 of a container (no init, as in a Kubernetes pod) the kernel ignores
    a SIGKILL the process sends itself, so there it leaves with ``os._exit(137)``:
    just as abrupt (no cleanup, no flush, the kernel closes its sockets) and the
    same exit status a SIGKILL gives.
    """
    if os.getpid() != 1:
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)


@dataclass
class TaskContext:
    """What a task may do besides computing; swapped for fakes in unit tests."""

    emit_processed: Callable[[float], None]  # argument: started_ts
    sleep: Callable[[float], None] = time.sleep
    kill: Callable[[], None] = kill_self
    clock: Callable[[], float] = time.time


def run_task(task: Task, attempt: int, first_delivery: bool, ctx: TaskContext) -> None:
    """Run one attempt of ``task``. Returns on success (``processed`` emitted).

    Raises TransientError or PermanentError on failure.
    """
    started_ts = ctx.clock()
    d = task.directives
    crash = "during" if d.crash_always else d.crash if first_delivery else None
    ms = d.sleep_first_ms if first_delivery and d.sleep_first_ms is not None else d.sleep_ms
    seconds = ms / 1000.0
    if crash == "during":
        ctx.sleep(seconds / 2)
        ctx.kill()
        ctx.sleep(seconds / 2)  # only reached when kill is a fake
        return
    if seconds > 0:
        ctx.sleep(seconds)
    if d.fail_always:
        raise PermanentError("fail_always directive")
    if attempt <= d.fail_times:
        raise TransientError(f"fail_times={d.fail_times} directive (attempt {attempt})")
    # The logger task's side effect is writing the processed line.
    ctx.emit_processed(started_ts)
    if crash == "after_process":
        ctx.kill()
