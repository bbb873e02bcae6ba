"""The harness's directives, as both example apps obey them (the reference
worker's own parsing and crash: ``worker.tasks``)."""

from __future__ import annotations

import time
from typing import Literal

from worker.tasks import Directives, PermanentError, kill_self


def obey(d: Directives, attempt: int, first: bool) -> Literal["retry", "crash-after", "done"]:
    """Sleep, crash during, fail for good (PermanentError); then ``retry`` for a
    transient failure, ``crash-after`` when the process must die once the side
    effect is reported (a first delivery only), else ``done``."""
    if d.crash == "during" and first:
        time.sleep(d.sleep_ms / 2000)
        kill_self()
    if d.sleep_ms:
        time.sleep(d.sleep_ms / 1000)
    if d.fail_always:
        raise PermanentError("fail_always")
    if attempt <= d.fail_times:
        return "retry"
    if d.crash == "after_process" and first:
        return "crash-after"
    return "done"
