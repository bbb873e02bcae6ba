"""Event presets for apps the user cannot change: ``--events celery`` reads the
contract's events from a framework's standard log lines.

A preset is a regular expression over one log line (a named group ``id``, and
``event`` whose text ``words`` maps to a contract v1 event type) and the claims
its lines distort, each with the reason: those are ``unknown`` and not
observable (out of a default gate), never ``true`` and never ``false`` on
evidence the lines distort; a checker that can judge the rest of its claim does
(retry-backoff still counts attempts from the receipts). A claim whose events
are merely missing (Celery logs no ack) is left to its checker, which says so
and still judges the broker's evidence. The preset is the harness's knowledge of
the framework, not the worker's word. A preset run in which no line matched is
undecided ("is the worker logging at the preset's level?"), not a loss.

Celery (``celery worker -l info``; its own formats, ``celery.app.trace``):

    [...: INFO/MainProcess] Task harness.task[<id>] received
    [...: INFO/ForkPoolWorker-1] Task harness.task[<id>] succeeded in 0.05s: ...
    [...: INFO/ForkPoolWorker-1] Task harness.task[<id>] retry: Retry in 1s
    [...: ERROR/ForkPoolWorker-1] Task harness.task[<id>] raised unexpected: ...

Dramatiq has no preset: at any log level it writes no line for a message that
succeeded (only receipt, retry, ack and reject, at debug level), so a run read
from its logs could not show what was processed. Use ``harness_events.dramatiq``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from harness import vocab


@dataclass(frozen=True)
class Preset:
    name: str
    pattern: str
    words: Mapping[str, str]  # the ``event`` group's text -> contract v1 event type
    # Claims the lines cannot show (claim -> why): unknown, not observable.
    unobservable: Mapping[str, str] = field(default_factory=dict)
    # What the worker must be run with for the lines to appear.
    needs: str = ""

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


CELERY: Final = Preset(
    name="celery",
    pattern=(r"Task (?P<task>[^\s\[]+)\[(?P<id>[^\]\s]+)\] "
             r"(?P<event>received|succeeded(?= in )|retry|raised)"),
    words={"received": vocab.RECEIVED, "succeeded": vocab.PROCESSED,
           "retry": vocab.RETRY_SCHEDULED, "raised": vocab.FAILED},
    unobservable={
        "retry-backoff": "Celery logs a countdown retry's receipt when it reaches the worker, "
                         "not when it runs (the worker holds it until due): the log cannot time "
                         "a backoff (the attempt counts are still judged); use "
                         "harness_events.celery",
    },
    needs="celery worker -l info (the default log level, warning, writes none of these)",
)

PRESETS: Final[Mapping[str, Preset]] = {CELERY.name: CELERY}


def preset(events: str) -> Preset | None:
    """The preset ``--events`` names, or None for ``json`` / ``regex:...``."""
    return PRESETS.get(events)
