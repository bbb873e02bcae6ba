"""The bookkeeping of a load generator's publisher confirms, free of any I/O
library: the Locust load file (``locustfiles/taskqueue.py``) drives it from
pika's gevent adapter, and its unit tests drive it by hand.

A channel in confirm mode numbers its publishes 1, 2, 3, ...; the broker answers
``Basic.Ack`` or ``Basic.Nack`` for a tag, or for every tag up to it
(``multiple``), and a mandatory publish that no queue took comes back as
``Basic.Return`` before its ack. ``ConfirmWindow`` keeps at most ``window``
publishes unanswered, and turns each answer into ``Settled`` records with the
confirm latency. pika's own ``BlockingChannel`` waits for each confirm in turn
(one round trip a message); this is what keeps many in flight.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

MAX_WINDOW: Final = 10_000  # unconfirmed publishes per channel


@dataclass(frozen=True)
class Settled:
    """One publish answered: ``error`` is None when the broker confirmed it."""

    task_id: str
    latency_s: float
    size: int
    error: str | None


class ConfirmWindow:
    """Outstanding publishes of one confirm-mode channel, oldest first."""

    def __init__(self, window: int) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"the confirm window must be 1..{MAX_WINDOW}, not {window}")
        self.window = window
        self._next_tag = 1
        self._outstanding: OrderedDict[int, tuple[str, float, int]] = OrderedDict()
        self._returned: dict[str, str] = {}

    @property
    def room(self) -> int:
        """How many more publishes may go out before an answer comes."""
        return self.window - len(self._outstanding)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def sent(self, task_id: str, size: int, now_s: float | None = None) -> int:
        """Record a publish just handed to the channel; returns its delivery tag."""
        tag = self._next_tag
        self._next_tag += 1
        self._outstanding[tag] = (task_id, time.perf_counter() if now_s is None else now_s,
                                  size)
        return tag

    def returned(self, task_id: str, reason: str) -> None:
        """A ``Basic.Return`` for a task: its ack, which follows, is a failure."""
        self._returned[task_id] = reason

    def answer(self, tag: int, multiple: bool, ack: bool,
               now_s: float | None = None) -> list[Settled]:
        """The broker's ``Basic.Ack``/``Basic.Nack`` for ``tag`` (and every earlier
        tag when ``multiple``)."""
        now = time.perf_counter() if now_s is None else now_s
        done: list[tuple[str, float, int]] = []
        if multiple:
            while self._outstanding:
                first = next(iter(self._outstanding))
                if first > tag:
                    break
                done.append(self._outstanding.popitem(last=False)[1])
        elif tag in self._outstanding:
            done.append(self._outstanding.pop(tag))
        out = []
        for task_id, t0, size in done:
            error = "nacked by the broker" if not ack else self._returned.pop(task_id, None)
            self._returned.pop(task_id, None)
            out.append(Settled(task_id, now - t0, size, error))
        return out

    def abandon(self, reason: str, now_s: float | None = None) -> list[Settled]:
        """Every outstanding publish, failed: the channel or connection is gone, so
        whether the broker took them is unknown (the check counts by the broker)."""
        now = time.perf_counter() if now_s is None else now_s
        out = [Settled(task_id, now - t0, size, reason)
               for task_id, t0, size in self._outstanding.values()]
        self._outstanding.clear()
        self._returned.clear()
        return out
