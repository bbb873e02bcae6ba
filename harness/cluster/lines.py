"""The one reader that turns a worker's output lines into history events.

Both backends hand every stdout line of a worker to :meth:`LineReader.feed`,
with the time the harness saw it (``seen_ts``: the docker engine's log
timestamp, or the local reader's clock). The rules live here only:

- a line longer than ``MAX_LINE_CHARS`` is not an event (kept in the log);
- JSON lines: an object with a string ``event``. Only worker contract v1 event
  types (``history.WORKER_EVENT_TYPES``) are recorded as themselves; any other
  name is counted and recorded as one ``foreign_event`` (its name, nothing
  else): a structured logger that prints ``{"event": "health", ...}`` or
  ``{"event": "fault", ...}`` must never become a probe, a fault or a queue
  listing. Its fields are data, never the event's own keys (``t``, ``type``,
  ``source`` are dropped: a line could otherwise rename its event when the
  history is written and read back);
- regex lines: a match with a non-empty ``id`` group; its ``event`` group (if
  any) must name a contract v1 type, else the match is a ``foreign_event``;
  no ``event`` group means ``processed``. A preset (``harness.presets``) turns the
  ``event`` group's text into the contract events it means (none, one, or more:
  Dramatiq's ack line is ``processed`` and ``acked`` after a success), and may
  also record ``process_died`` (``vocab.PRESET_EVENT_TYPES``: a pool child's
  death that the framework's own supervisor logs), which no JSON line can;
- with an ``id_prefix`` (workers the harness does not own), an event of an id
  without it is another task's (the deployment's own traffic): not recorded;
- the worker's identity is the harness's name for the source. A ``worker``
  field that names someone else is kept as ``claimed_worker`` and counted;
- ``ts``: the worker's own ``ts`` when it is a number no later than the time
  the harness saw the line (plus ``FUTURE_SLACK_S``); a missing one, or one in
  the future (a worker cannot report what has not happened), becomes
  ``seen_ts`` and the event is marked ``ts_from="harness"``.

Why the worker's ``ts`` is kept at all: it is when the side effect happened,
and a worker may buffer its stdout, so the line can arrive much later. It can
only move an event earlier than the harness saw it, never later.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from harness import vocab
from harness.history import WORKER_EVENT_TYPES, Recorder
from harness.presets import Translate

MAX_LINE_CHARS: Final = 1 << 20
# Clocks of the harness and the worker are the same host clock (local processes,
# containers on this engine); this covers the rounding of the worker's ts.
FUTURE_SLACK_S: Final = 0.05
# Keys of a worker's JSON object that are the event's own, not data.
_RESERVED: Final = frozenset({"event", "id", "worker", "ts", "t", "type", "source"})
FOREIGN: Final = vocab.FOREIGN_EVENT


class LineReader:
    """Reads one worker's lines (thread-safe: stdout and stderr threads share it)."""

    def __init__(self, recorder: Recorder, name: str, pattern: re.Pattern[str] | None,
                 clock: Callable[[], float] = time.time,
                 translate: Translate | None = None, id_prefix: str | None = None) -> None:
        self.recorder = recorder
        self.name = name
        self.pattern = pattern
        # A preset's (``harness.presets``) translation of the ``event`` group's text
        # (and the id) into contract event types; without one, the text is the type
        # (so: foreign unless it names one). Called under the lock: it may keep state.
        self.translate = translate
        self.clock = clock
        # Workers the harness does not own (``--backend external``) also process the
        # deployment's own tasks: only ids of the run's tasks (this prefix) are events.
        self.id_prefix = id_prefix
        self.others = 0
        self._lock = threading.Lock()
        self.foreign = 0
        self.mismatched_worker = 0

    def feed(self, line: str, seen_ts: float | None = None) -> None:
        """Record the event ``line`` carries, if any. Never raises for bad input."""
        if len(line) > MAX_LINE_CHARS:
            return
        seen = seen_ts if seen_ts is not None else self.clock()
        if self.pattern is not None:
            self._feed_regex(line, seen)
            return
        s = line.strip()
        if not s.startswith("{"):
            return
        try:
            obj = json.loads(s)
        except ValueError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            self._record(obj["event"], obj.get("id"), obj.get("worker"), obj.get("ts"),
                         {k: v for k, v in obj.items() if k not in _RESERVED}, seen)

    def _feed_regex(self, line: str, seen: float) -> None:
        assert self.pattern is not None
        m = self.pattern.search(line)
        if m is None:
            return
        groups = m.groupdict()
        if self.translate is not None:
            with self._lock:
                events = self.translate(groups)
            for name, tid, fields in events:
                self._record(name, tid, groups.get("worker"), None, dict(fields), seen,
                             preset=True)
            return
        ident = groups.get("id")
        if not ident:
            return
        said = groups.get("event")
        self._record(said or vocab.PROCESSED, ident, groups.get("worker"), None, {}, seen)

    def _record(self, name: str, ident: Any, claimed: Any, ts: Any, data: dict[str, Any],
                seen: float, preset: bool = False) -> None:
        if (self.id_prefix is not None and ident is not None
                and not str(ident).startswith(self.id_prefix)):
            with self._lock:
                self.others += 1
            return
        if name not in WORKER_EVENT_TYPES and not (preset and name in vocab.PRESET_EVENT_TYPES):
            with self._lock:
                self.foreign += 1
            self.recorder.record(FOREIGN, self.name, worker=self.name, ts=seen,
                                 name=name[:64])
            return
        if claimed is not None and str(claimed) != self.name:
            data["claimed_worker"] = str(claimed)[:128]
            with self._lock:
                self.mismatched_worker += 1
        if isinstance(ts, int | float) and not isinstance(ts, bool) \
                and float(ts) <= seen + FUTURE_SLACK_S:
            when = float(ts)
        else:
            when = seen
            data["ts_from"] = "harness"
        self.recorder.record(name, self.name, id=str(ident) if ident is not None else None,
                             worker=self.name, ts=when, **data)
