"""The parts an :class:`~harness.checkers.index.Index` is made of: per-id rare
events, a connection fault, the final queue contents, per-worker hot events."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from harness.history import Event


@dataclass
class PerId:
    """Events of one type grouped by task id: ``first`` plus ``more``."""

    first: dict[str, Event] = field(default_factory=dict)
    more: dict[str, list[Event]] = field(default_factory=dict)

    def add(self, ident: str, ev: Event) -> None:
        prev = self.first.setdefault(ident, ev)
        if prev is not ev:
            lst = self.more.get(ident)
            if lst is None:
                self.more[ident] = [ev]
            else:
                lst.append(ev)

    def all(self, ident: str) -> list[Event]:
        ev = self.first.get(ident)
        if ev is None:
            return []
        more = self.more.get(ident)
        return [ev] if more is None else [ev, *more]

    def count(self, ident: str) -> int:
        if ident not in self.first:
            return 0
        more = self.more.get(ident)
        return 1 if more is None else 1 + len(more)

    def __len__(self) -> int:
        """Number of events (not ids)."""
        return len(self.first) + sum(len(v) for v in self.more.values())

    def __contains__(self, ident: object) -> bool:
        return ident in self.first


# ``ConnFault.kind`` of a channel the broker closed for its consumer_timeout (read
# from its log). Not a ``broker:`` kind: the broker lost nothing, so an ack that
# reached it before the close still stands (``no_duplicate._acked_before``).
CONSUMER_TIMEOUT_KIND: Final = "timeout:consumer"
# Kinds of faults issued at a known moment (the harness's nemesis, a broker fault,
# the broker's own close): a copy they handed out is received after ``ts``.
ISSUED_PREFIXES: Final = ("fault:", "broker:", "timeout:")


@dataclass(frozen=True)
class ConnFault:
    """One event that cut a worker from the broker (see :func:`connection_fault`)."""

    ts: float
    kind: str  # "fault:kill", "broker:broker-restart", "timeout:consumer", "crash", "exit",
    # "connection_lost"
    worker: str | None  # None for a broker fault
    # When the fault had taken effect: a fault is issued at ``ts`` and the backend's
    # call returns at ``completed_ts`` (a docker pause or kill takes ~40-150 ms), so
    # a delivery received in [ts, end] may still have been caught by it.
    end: float = 0.0
    # Only faults the harness caused explain a duplicate or a second settlement:
    # nemesis faults, broker faults, exits it asked for, and a crash of a worker
    # that had been handed a task with a ``crash`` directive. A worker's own
    # ``connection_lost`` report, or an exit nobody asked for, explain nothing (a
    # worker that acks a delivery tag twice gets its channel closed by the broker,
    # 406 PRECONDITION_FAILED, and everything it held redelivered).
    injected: bool = True
    # False: the connection was cut at some moment in [ts, end], not known when (a
    # crash seen only by its process's exit: a framework's pool child dies first and
    # the worker exits up to a second later). It explains what overlaps the span;
    # it is no known cut for ``Index.last_cut_before``.
    cut: bool = True

    def describe(self) -> dict[str, Any]:
        return {"fault": self.kind, "worker": self.worker, "ts": self.ts}


@dataclass
class FinalQueues:
    """What the harness saw in the queues after the workers stopped."""

    ids: dict[str, set[str]] = field(default_factory=lambda: {"main": set(), "dlq": set(),
                                                               "retry": set()})
    captured: dict[str, bool] = field(default_factory=lambda: {"main": False, "dlq": False,
                                                                "retry": False})
    failed: dict[str, bool] = field(default_factory=lambda: {"main": False, "dlq": False,
                                                              "retry": False})
    # A listing shorter than the queue's depth: ids may be missing from ``ids``.
    partial: dict[str, bool] = field(default_factory=lambda: {"main": False, "dlq": False,
                                                               "retry": False})
    depth: dict[str, int] = field(default_factory=lambda: {"main": 0, "dlq": 0, "retry": 0})

    @property
    def remaining(self) -> set[str]:
        return self.ids["main"] | self.ids["retry"]



@dataclass
class ByWorker:
    """Events of one type by worker (recording order), grouped by id on demand.

    Grouping 1,000,000 ids up front costs a cache miss per event; the checkers
    need the events of a few ids only (duplicates, kills), gathered in one
    sequential pass per request and cached.
    """

    lists: dict[str | None, list[Event]] = field(default_factory=dict)
    _by_id: dict[str, list[Event]] = field(default_factory=dict)

    def events(self, ids: Iterable[str]) -> dict[str, list[Event]]:
        """id -> its events sorted by ts, for every id in ``ids`` (and earlier ones)."""
        cache = self._by_id
        wanted = {i for i in ids if i not in cache}
        if wanted:
            found: dict[str, list[Event]] = {i: [] for i in wanted}
            hits = [e for lst in self.lists.values() for e in lst if e.id in wanted]
            for e in hits:
                found[e.id].append(e)  # type: ignore[index]  # e.id is in wanted: a str
            for evs in found.values():
                evs.sort(key=lambda e: e.ts)
            cache.update(found)
        return cache

    def of(self, ident: str) -> list[Event]:
        return self.events((ident,)).get(ident, [])

    def __len__(self) -> int:
        return sum(len(v) for v in self.lists.values())
