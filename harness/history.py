"""The history: the append-only record of a run, and the only input to checkers.

One JSON object per line (``history.jsonl``). Every event has:

``t``       seconds since the run started, on the harness's monotonic clock, when
            the harness recorded the event;
``ts``      wall-clock seconds (Unix time) of the occurrence itself: the worker's
            own ``ts`` for worker events (same host clock for the local and the
            docker backend), the harness's ``time.time()`` for its own events.
            Checkers that order events of *different* sources use ``ts``;
``source``  who said it: ``workload``, ``nemesis``, ``cluster``, ``harness``, or the
            worker's name as the cluster knows it (``worker-1``);
``type``    what happened (see ``EventType``);
and, by type, ``id`` (task id), ``worker`` and further fields.

Event types (the vocabulary shared by workload, cluster, nemesis and checkers):

workload   ``publish``        id, outcome ok|fail|unknown, directives, poison
worker     ``received``       id, worker, redelivered, attempt
           ``processed``      id, worker, attempt, started_ts  (the side effect is done)
           ``acked``          id, worker, reason processed|retry
           ``failed``         id, worker, attempt, permanent
           ``retry_scheduled`` id, worker, attempt, delay_ms
           ``dead_lettered``  id, worker, reason permanent|max_attempts|poison, attempt
           ``ack_failed``     id, worker, reason, outcome ack|retry|dead_letter (the
                              delivery's connection died before its settlement went out)
           ``connected`` (generation) ``connection_lost`` (reason) ``ready`` (queue,
           generation) ``shutdown`` (reason, in_flight)   worker
           (every worker event may carry ``claimed_worker``, a ``worker`` field that
           named someone else, and ``ts_from: harness`` when the worker's ts was
           missing or in the future: see ``harness.cluster.lines``)
           ``foreign_event``  name (a line whose event is not of contract v1: counted,
                              never interpreted)
           ``process_died``   process, pid, status (a child process's death read by an
                              event preset from the framework's own supervisor line,
                              never from a worker's JSON: ``harness.presets``)
cluster    ``worker_started`` worker, pid/container
           ``worker_exited``  worker, code, signal, requested (True when the harness
                              asked for it: kill/terminate/stop; False for a crash)
           ``broker_started`` ``broker_stopped``
nemesis    ``fault``          fault, target, phase invoke|heal, ok, error
harness    ``run_started``    seed, scenario, backend, params
           ``publish_started`` ``publish_finished``
           ``drain``          complete, waited_s, reason
           ``final_queue``    queue, role main|dlq|retry, ids, depth, ok
           ``run_finished``
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

from harness import credentials, vocab

# Types a worker may emit (worker contract v1).
# Defined in ``harness.vocab``; here for the modules that read histories.
WORKER_EVENT_TYPES = vocab.WORKER_EVENT_TYPES
CONNECTION_FAULTS = vocab.CONNECTION_FAULTS
BROKER_FAULTS = vocab.BROKER_FAULTS

_BASE_KEYS: Final = ("t", "ts", "source", "type", "id", "worker")


class Event:
    """One history event.

    A slotted class rather than a dict: a history of 1,000,000 tasks has about
    4,000,000 events, and the common keys as attributes (with interned strings)
    keep that well under 2 GiB. Less common fields live in ``data``.
    """

    __slots__ = ("data", "id", "source", "t", "ts", "type", "worker")

    def __init__(
        self,
        type: str,
        source: str,
        t: float = 0.0,
        ts: float = 0.0,
        id: str | None = None,
        worker: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.type = sys.intern(type)
        self.source = sys.intern(source)
        self.t = t
        self.ts = ts
        self.id = id
        self.worker = sys.intern(worker) if worker is not None else None
        self.data = data

    def get(self, key: str, default: Any = None) -> Any:
        if self.data is None:
            return default
        return self.data.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(self.t, 6), "ts": self.ts, "source": self.source,
                               "type": self.type}
        if self.id is not None:
            out["id"] = self.id
        if self.worker is not None:
            out["worker"] = self.worker
        if self.data:
            out.update(self.data)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Event:
        data = {k: v for k, v in obj.items() if k not in _BASE_KEYS}
        ident = obj.get("id")
        worker = obj.get("worker")
        return cls(
            type=str(obj["type"]),
            source=str(obj.get("source", "")),
            t=float(obj.get("t", 0.0)),
            ts=float(obj.get("ts", 0.0)),
            id=sys.intern(str(ident)) if ident is not None else None,
            worker=str(worker) if worker is not None else None,
            data=data or None,
        )

    def __repr__(self) -> str:
        return f"Event({self.to_dict()!r})"


class History:
    """An ordered, in-memory list of events (recording order)."""

    __slots__ = ("_cache", "events")

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events: list[Event] = list(events)
        # Derived indexes that several checkers share (see ``harness.checkers.index``).
        self._cache: dict[str, Any] = {}

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def of_type(self, *types: str) -> Iterator[Event]:
        wanted = frozenset(types)
        return (e for e in self.events if e.type in wanted)

    @classmethod
    def from_dicts(cls, objs: Iterable[Mapping[str, Any]]) -> History:
        return cls(Event.from_dict(o) for o in objs)

    @classmethod
    def load(cls, path: Path) -> History:
        # The cyclic GC would walk every event object again and again while millions
        # are allocated (2-3x slower loads); events form no cycles, so pause it.
        enabled = gc.isenabled()
        gc.disable()
        try:
            with path.open("r", encoding="utf-8") as f:
                return cls(Event.from_dict(json.loads(line)) for line in f if line.strip())
        finally:
            if enabled:
                gc.enable()


class Recorder:
    """Thread-safe, append-only writer of the history.

    Every component (workload, cluster event collectors, nemesis, runner) records
    through one Recorder; it stamps ``t`` (monotonic, since the run started) and,
    when the caller has none, ``ts``. Listeners see each event as it is recorded
    (the schedule uses them to fire on event counts; the progress display too).
    """

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._file: IO[str] | None = path.open("w", encoding="utf-8") if path else None
        self._events: list[Event] = []
        self._listeners: list[Any] = []

    def now(self) -> float:
        return time.monotonic() - self._t0

    def add_listener(self, fn: Any) -> None:
        """``fn(event)`` is called under the recorder's lock: keep it short."""
        self._listeners.append(fn)

    def record(
        self,
        type: str,
        source: str,
        *,
        id: str | None = None,
        worker: str | None = None,
        ts: float | None = None,
        **data: Any,
    ) -> Event:
        with self._lock:
            ev = Event(
                type=type,
                source=source,
                t=self.now(),
                ts=ts if ts is not None else time.time(),
                id=id,
                worker=worker,
                data=data or None,
            )
            self._events.append(ev)
            if self._file is not None:
                line = json.dumps(ev.to_dict(), separators=(",", ":"))
                if credentials.active():  # a worker line that carries the broker password
                    line = credentials.redact(line)
                self._file.write(line + "\n")
            for fn in self._listeners:
                fn(ev)
            return ev

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def snapshot(self) -> History:
        with self._lock:
            return History(list(self._events))
