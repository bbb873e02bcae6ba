"""Event presets for apps the user cannot change: ``--events celery`` and
``--events dramatiq`` read the contract's events from a framework's standard log
lines.

A preset is a regular expression over one log line (a named group ``id``, and
``event`` whose text ``words`` maps to a contract v1 event type, or a translator
of its own that keeps state per worker) and the claims
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

Dramatiq (``dramatiq --verbose``: its debug lines, ``dramatiq.worker`` and the
Retries middleware):

    [...] [dramatiq.worker.WorkerThread] [DEBUG] Received message harness_task(...) with id '<id>'.
    [...] [dramatiq.middleware.retries.Retries] [INFO] Retrying message '<id>' in 812 milliseconds.
    [...] [dramatiq.middleware.retries.Retries] [WARNING] Retries exceeded for message '<id>'.
    [...] [dramatiq.worker.ConsumerThread(go.logger)] [DEBUG] Acknowledging message '<id>'.
    [...] [dramatiq.worker.ConsumerThread(go.logger)] [DEBUG] Rejecting message '<id>'.

Dramatiq writes no line of its own for a success: an attempt's ack line is
``processed`` and ``acked`` unless a retry or failure line of that id came
first (then only ``acked``: the retry's copy waits in ``<queue>.DQ``); the
delay queue's own ack (``ConsumerThread(<queue>.DQ)``) is no settlement and is
not read. Its receipt line is written when a worker thread starts the message,
after the delay queue held it, so retry gaps can be timed.

Both frameworks write their success line after the task's side effect: a
process that dies in between leaves none. In a run where a worker process died
(a kill, a crash, any exit before the drain), a processing may be missing from
the lines, so ``no-duplicate-processing`` is not observable (a duplicate cannot
be counted), and a task with an ``after_process`` crash that the lines show
unprocessed is undecided, not lost (``unobservable_after_death``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from harness import vocab

# A line's ``event`` text and id -> contract events with their fields
# (``harness.cluster.lines.LineReader`` calls it).
Translate: TypeAlias = Callable[[str, str], Sequence[tuple[str, Mapping[str, Any]]]]
_NONE: Final[Mapping[str, Any]] = {}


@dataclass(frozen=True)
class Preset:
    name: str
    pattern: str
    words: Mapping[str, str]  # the ``event`` group's text -> contract v1 event type
    # Claims the lines cannot show (claim -> why): unknown, not observable.
    unobservable: Mapping[str, str] = field(default_factory=dict)
    # What the worker must be run with for the lines to appear.
    needs: str = ""
    # Claims a process's death can distort (claim -> why): in a run where a worker
    # process died, unknown and not observable (no-loss: only its crash tasks).
    unobservable_after_death: Mapping[str, str] = field(default_factory=dict)
    # A translator of its own (state per worker) instead of ``words``.
    sequencer: Callable[[], Translate] | None = None

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)

    def translator(self) -> Translate:
        """A new translation of this preset's ``event`` text (and id) into contract
        event types, for one worker."""
        if self.sequencer is not None:
            return self.sequencer()
        words = self.words
        return lambda said, _ident: ((words.get(said, said), _NONE),)


# Both frameworks log success after the side effect (see the module doc).
_AFTER_DEATH: Final = {
    "no-duplicate-processing": "a worker process died in this run, and a processing whose "
                               "process died between its side effect and its log line "
                               "leaves no line: duplicates cannot be counted from the log",
    "no-loss": "a task whose process died by its after_process crash did its side effect "
               "but wrote no success line",
}


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
    unobservable_after_death=_AFTER_DEATH,
)

class DramatiqLines:
    """Dramatiq's lines of one worker as contract events (see the module doc). An
    ack line is a success unless a retry or failure line of the same id came
    before it and has not been matched by an ack yet (one worker thread writes an
    attempt's failure, then its ack). Written by hand: Dramatiq has no success
    line to match. State of a worker that died with a failure unmatched can only
    turn its next success of that id into a plain ``acked`` (a missing
    ``processed``: a loss reported, never one hidden)."""

    # At most this many ids with a failure waiting for its ack (a bound on memory).
    MAX_PENDING: Final = 100_000

    def __init__(self) -> None:
        self._failed: dict[str, int] = {}

    def __call__(self, said: str, ident: str) -> Sequence[tuple[str, Mapping[str, Any]]]:
        said = said.split(" message", 1)[0]  # the verb: the receipt line quotes the message
        if said == "Received":
            return ((vocab.RECEIVED, _NONE),)
        if said in ("Retrying", "Retries exceeded for", "Aborting"):
            if len(self._failed) < self.MAX_PENDING or ident in self._failed:
                self._failed[ident] = self._failed.get(ident, 0) + 1
            failed = (vocab.FAILED, _NONE)
            return (failed, (vocab.RETRY_SCHEDULED, _NONE)) if said == "Retrying" else (failed,)
        if said in ("Acknowledging", "Rejecting"):
            pending = self._failed.pop(ident, 0)
            if pending > 1:
                self._failed[ident] = pending - 1
            if said == "Rejecting":
                return ((vocab.DEAD_LETTERED, {"reason": "rejected"}),)
            if pending:  # the ack of an attempt that failed: its retry waits in the DQ
                return ((vocab.ACKED, {"reason": "retry"}),)
            return ((vocab.PROCESSED, _NONE), (vocab.ACKED, {"reason": "processed"}))
        return ((said, _NONE),)


DRAMATIQ: Final = Preset(
    name="dramatiq",
    # The ack and reject lines of the work queue's consumer only: a consumer of a
    # delay queue (``ConsumerThread(<queue>.DQ)``) acks a copy it moved when due.
    # Not the lines of a delay queue's consumer (``ConsumerThread(<queue>.DQ)``): it
    # acks the copy it moved to the work queue when due, which settles nothing.
    pattern=(r"^(?!.*ConsumerThread\([^)]*\.DQ\)).*?(?P<event>Received message .* with id"
             r"|Retrying message|Retries exceeded for message|Aborting message"
             r"|Acknowledging message|Rejecting message) '(?P<id>[^']+)'"),
    words={},
    needs="dramatiq --verbose (the receipt and ack lines are at debug level)",
    sequencer=DramatiqLines,
    unobservable_after_death=_AFTER_DEATH,
)

PRESETS: Final[Mapping[str, Preset]] = {CELERY.name: CELERY, DRAMATIQ.name: DRAMATIQ}


def preset(events: str) -> Preset | None:
    """The preset ``--events`` names, or None for ``json`` / ``regex:...``."""
    return PRESETS.get(events)
