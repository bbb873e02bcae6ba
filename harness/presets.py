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
    [...: ERROR/MainProcess] Process 'ForkPoolWorker-1' pid:42 exited with 'signal 9 (SIGKILL)'

The last is a pool child that died on its own (an OOM kill, a segfault): a
``process_died`` event, so the run counts as one where a worker process died
(below), though the worker's main process lives on and no exit shows it.

Dramatiq (``dramatiq --verbose``: its debug lines, ``dramatiq.worker`` and the
Retries middleware):

    [...] [dramatiq.worker.WorkerThread] [DEBUG] Received message harness_task(...) with id '<id>'.
    [...] [dramatiq.middleware.retries.Retries] [INFO] Retrying message '<id>' in 812 milliseconds.
    [...] [dramatiq.middleware.retries.Retries] [WARNING] Retries exceeded for message '<id>'.
    [...] [dramatiq.worker.ConsumerThread(go.logger)] [DEBUG] Acknowledging message '<id>'.
    [...] [dramatiq.worker.ConsumerThread(go.logger)] [DEBUG] Rejecting message '<id>'.

Dramatiq writes no line of its own for a success: each worker thread writes an
attempt's receipt, any failure of it, then its ack or reject, so an ack line is
read against its thread's current attempt (process id and thread name are in
Dramatiq's own log format, which the pattern requires): ``processed`` and
``acked`` only after a receipt of that id with no failure line since (``Failed
to process``, ``was skipped``, ``Retrying``, ``Retries exceeded``, ``Aborting``);
after one, ``acked`` (``retry`` when a retry was scheduled, else ``failed``: the
message is gone unprocessed); a second ack line of one attempt, or one of no
attempt seen, is no event. The delay queue's own ack
(``ConsumerThread(<queue>.DQ)``) is no settlement and is not read. Its receipt
line is written when a thread starts the message, after the delay queue held
it, so retry gaps can be timed. An ack line is written just before the ack is
sent: a kill in between shows a settlement the broker then undoes by
redelivering (a second settlement the kill explains).

Both frameworks write their success line after the task's side effect: a
process that dies in between leaves none. In a run where a worker process died
(a kill, a crash, any exit before the drain), a processing may be missing from
the lines, so ``no-duplicate-processing`` is not observable (a duplicate cannot
be counted), and a task with an ``after_process`` crash that the lines show
unprocessed is undecided, not lost (``unobservable_after_death``).

Dramatiq's worker processes write their lines into a pipe its main process
copies to stderr: a kill of the container drops what is still in the pipe, and
an ack line can be lost though the ack reached the broker. So under
``--events dramatiq`` a task the killed process held, that its lines show
neither processed nor settled and that nobody received again, is undecided
(``lines_cut_by_kill``), never lost: it may have been processed and acked just
before the kill. Every other task is judged as always.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from harness import vocab

# A matching line's named groups -> the contract events it means, each as (type, id,
# fields); none for a line that only tells the translator something
# (``harness.cluster.lines.LineReader`` calls it, one translator per worker).
Translate: TypeAlias = Callable[[Mapping[str, str | None]],
                                Sequence[tuple[str, str | None, Mapping[str, Any]]]]
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
    # Why a kill can drop lines the process had already written (empty: it cannot).
    # Then a task the killed process held, that the lines show neither processed nor
    # settled and that nobody received again, is undecided, never lost
    # (``checkers.base.LINES_CUT``): its processing and ack may be in the lost lines.
    lines_cut_by_kill: str = ""
    # A translator of its own (state per worker) instead of ``words``.
    sequencer: Callable[[], Translate] | None = None

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)

    def translator(self) -> Translate:
        """A new translation of this preset's lines into contract events, for one
        worker: ``words`` maps the ``event`` group's text (a line without an id is
        no event), or the preset's own ``sequencer``."""
        if self.sequencer is not None:
            return self.sequencer()
        words = self.words

        def by_words(groups: Mapping[str, str | None]) -> Sequence[tuple[
                str, str | None, Mapping[str, Any]]]:
            process = groups.get("process")
            if process:  # a child process's death, logged by its supervisor
                return ((vocab.PROCESS_DIED, None,
                         {"process": process[:64], "pid": groups.get("pid"),
                          "status": (groups.get("status") or "")[:64]}),)
            said, ident = groups.get("event"), groups.get("id")
            if not said or not ident:
                return ()
            return ((words.get(said, said), ident, _NONE),)

        return by_words


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
    # The second branch is billiard's supervisor (``Pool._join_exited_workers``,
    # logged at ERROR by the main process): a pool child that died on its own, not
    # by the pool's own controlled termination. Anchored to Celery's line format and
    # the main process: a task's own print (Celery logs it as a WARNING of the pool
    # child) cannot write it.
    pattern=(r"Task (?P<task>[^\s\[]+)\[(?P<id>[^\]\s]+)\] "
             r"(?P<event>received|succeeded(?= in )|retry|raised)"
             r"|^\[[^\]]*: ERROR/MainProcess\] Process '(?P<process>[^']+)' pid:(?P<pid>\d+) "
             r"exited with '(?P<status>[^']*)'"),
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

@dataclass
class _Attempt:
    """What one Dramatiq worker thread is doing: the message it received last."""

    ident: str
    failed: bool = False
    retried: bool = False  # a retry scheduled: its copy waits in the delay queue
    settled: bool = False


class DramatiqLines:
    """Dramatiq's lines of one worker as contract events (see the module doc).
    Written by hand: Dramatiq has no success line to match, so an ack line is read
    against the attempt its worker thread is on. A worker thread writes an
    attempt's receipt, any failure of it (its own ``Failed to process``, the
    Retries middleware's ``Retrying`` / ``Retries exceeded`` / ``Aborting``, a
    middleware's ``was skipped``, a rate limiter's ``Rate limit exceeded``), then its
    ack or reject line (``post_process_message``
    runs in the worker thread; the thread and the process id are in Dramatiq's log
    format, which the pattern requires). So an ack line is a success, ``processed``
    and ``acked``, only when its thread's current attempt is of the same id, saw no
    failure and was not settled yet; after a failure it is ``acked`` (``retry`` when
    a retry was scheduled, else ``failed``: the message is gone unprocessed); a
    second ack line of one attempt (Dramatiq writes it again when the first ack met
    a closed connection) and an ack of no attempt seen (a restarted worker, a
    line lost) are no events: a processing is never invented, and one missed
    reads as a loss, never hides one."""

    # At most this many threads tracked (a bound on memory: Dramatiq runs a few).
    MAX_THREADS: Final = 10_000

    def __init__(self) -> None:
        self._threads: dict[tuple[str | None, str | None], _Attempt] = {}

    def __call__(self, groups: Mapping[str, str | None]
                 ) -> Sequence[tuple[str, str, Mapping[str, Any]]]:
        said, rest = groups.get("event") or "", groups.get("rest") or ""
        key = (groups.get("pid"), groups.get("thread"))
        now = self._threads.get(key)
        if said == "Received message":
            m = _RECEIVED_ID.search(rest)
            if m is None:
                return ()
            if now is not None or len(self._threads) < self.MAX_THREADS:
                self._threads[key] = _Attempt(m.group(1))
            return ((vocab.RECEIVED, m.group(1), _NONE),)
        if said in ("Failed to process message", "Message", "Rate limit exceeded in message"):
            if now is not None and (said != "Message" or rest.endswith(" was skipped.")):
                now.failed = True
            return ()
        m = _QUOTED_ID.match(rest)
        if m is None:
            return ()
        ident = m.group(1)
        if said in ("Retrying message", "Retries exceeded for message", "Aborting message"):
            if now is not None and now.ident == ident:
                now.failed = True
                now.retried = now.retried or said == "Retrying message"
            if said == "Retrying message":
                return ((vocab.FAILED, ident, _NONE), (vocab.RETRY_SCHEDULED, ident, _NONE))
            return ((vocab.FAILED, ident, _NONE),)
        if now is None or now.ident != ident or now.settled:
            return ()
        now.settled = True
        if said == "Rejecting message":
            return ((vocab.DEAD_LETTERED, ident, {"reason": "rejected"}),)
        if now.failed:  # gone unprocessed: retried (a copy waits in the DQ) or dropped
            return ((vocab.ACKED, ident, {"reason": "retry" if now.retried else "failed"}),)
        return ((vocab.PROCESSED, ident, _NONE), (vocab.ACKED, ident, {"reason": "processed"}))


_RECEIVED_ID: Final = re.compile(r" with id '([^']+)'\.$")
_QUOTED_ID: Final = re.compile(r" '([^']+)'")


DRAMATIQ: Final = Preset(
    name="dramatiq",
    # Dramatiq's own log format (dramatiq.cli.LOGFORMAT): the process, the thread and
    # the logger of every line are what pair an ack with its attempt; a line of
    # another format is no event (a run of none is undecided, never a loss). A delay
    # queue's consumer (``ConsumerThread(<queue>.DQ)``) acks the copy it moved to the
    # work queue when due, which settles nothing: its lines are not read.
    pattern=(r"^\[[^\]]*\] \[PID (?P<pid>\d+)\] \[(?P<thread>[^\]]+)\] "
             r"\[(?!dramatiq\.worker\.ConsumerThread\([^\]]*\.DQ\)\])(?P<logger>[^\]]+)\] "
             r"\[[A-Z]+\] (?P<event>Received message|Retrying message"
             r"|Retries exceeded for message|Aborting message|Acknowledging message"
             r"|Rejecting message|Failed to process message|Rate limit exceeded in message"
             r"|Message)(?P<rest>.*)$"),
    words={},
    needs="dramatiq --verbose, in Dramatiq's own log format (the receipt and ack lines "
          "are at debug level), with the Retries middleware (Dramatiq's default: a "
          "dramatiq.Retry raised without it is logged nowhere)",
    sequencer=DramatiqLines,
    unobservable_after_death=_AFTER_DEATH,
    # dramatiq.cli's worker processes log into a pipe that the main process's
    # ``watch_logs`` thread copies to stderr: a container kill ends both, and lines
    # still in the pipe are gone, though the ack they announce reached the broker.
    lines_cut_by_kill="Dramatiq's worker processes write their log lines into a pipe that "
                      "its main process copies out, so a kill drops the lines still in the "
                      "pipe: a processing and ack the broker got may show no line",
)

PRESETS: Final[Mapping[str, Preset]] = {CELERY.name: CELERY, DRAMATIQ.name: DRAMATIQ}


def preset(events: str) -> Preset | None:
    """The preset ``--events`` names, or None for ``json`` / ``regex:...``."""
    return PRESETS.get(events)
