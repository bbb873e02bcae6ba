"""The load generator's logic, free of any I/O library, so that unit tests drive
it by hand and the Locust load file (``locustfiles/taskqueue.py``) drives it from
pika's gevent adapter:

- ``ConfirmWindow``: one confirm-mode channel's outstanding publishes;
- ``Ledger``: what was published, confirmed and completed, by task id;
- ``judge_load``: the load run's verdict from ``LoadFacts`` (pure);
- ``body_maker``: task bodies on the publishing hot path;
- ``coalescing_produce``: pika's frames waiting joined into one send;
- ``ramp_users``, ``QueueSample``: the Black Friday shape, the queue over time.

A channel in confirm mode numbers its publishes 1, 2, 3, ...; the broker answers
``Basic.Ack`` or ``Basic.Nack`` for a tag, or for every tag up to it
(``multiple``), and a mandatory publish that no queue took comes back as
``Basic.Return`` before its ack. ``ConfirmWindow`` keeps at most ``window``
publishes unanswered, and turns each answer into ``Settled`` records with the
confirm latency. pika's own ``BlockingChannel`` waits for each confirm in turn
(one round trip a message); this is what keeps many in flight.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from harness.vocab import EXIT_OK, EXIT_UNDECIDED, EXIT_VIOLATED

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


MAX_LEDGER_IDS: Final = 10_000_000  # task ids one load process keeps (about 1 GiB)
MAX_LISTED_IDS: Final = 5  # ids quoted in a verdict; the rest are counted
MAX_EARLY_PER_ID: Final = 3  # completions kept for an id not known yet


@dataclass(frozen=True)
class Completed:
    """A completion taken into the ledger: the publish-to-processed latency (0 when
    the clocks disagree: ``skewed``), and whether it is a second one of the task."""

    task_id: str
    latency_s: float
    skewed: bool
    duplicate: bool


@dataclass(frozen=True)
class LedgerCounts:
    """The end of a load run, by task id."""

    published: int
    confirmed: int
    completed: int  # distinct confirmed ids with at least one completion
    lost: tuple[str, ...]  # confirmed, never completed
    duplicated: tuple[str, ...]  # completed more than once
    foreign: int  # completions of ids never published here, or unreadable
    skewed: int  # completions stamped before their publish (clock skew)


def quote_ids(ids: tuple[str, ...] | list[str]) -> str:
    """At most ``MAX_LISTED_IDS`` ids, then how many more."""
    shown = ", ".join(ids[:MAX_LISTED_IDS])
    more = len(ids) - MAX_LISTED_IDS
    return shown + (f" and {more} more" if more > 0 else "")


class Ledger:
    """What the load run published, what the broker confirmed, and what the workers
    said they processed (completions, an optional part of worker contract v1:
    docs/worker-contract.md), by task id.

    A completion is the worker's word that it processed a task. The load run uses it
    for latency and to name ids, and judges loss only together with the broker's
    counters: a confirmed id never completed is lost only if the workers send
    completions at all (else the check falls back to the counters and says so).
    In distributed mode the master's ledger learns publishes from the Locust
    workers' reports, which may come after the completion: a completion of an id
    not published yet waits (``early``) and is matched when the id arrives.
    Times are wall-clock seconds (``time.time()``): the publish time on the load
    generator, the processed time on the worker's host, so the two clocks must
    agree; a completion stamped before its publish is counted as skewed, with
    latency 0.
    """

    def __init__(self, max_ids: int = MAX_LEDGER_IDS) -> None:
        if not 1 <= max_ids <= MAX_LEDGER_IDS:
            raise ValueError(f"max_ids must be 1..{MAX_LEDGER_IDS}, not {max_ids}")
        self.max_ids = max_ids
        self._published_ts: dict[str, float] = {}
        self._confirmed: set[str] = set()
        self._completions: dict[str, int] = {}
        self._early: dict[str, list[float]] = {}
        self.unreadable = 0
        self.skewed = 0

    def published(self, task_id: str, ts: float) -> list[Completed]:
        """Record a publish; returns the completions of it that came first."""
        if task_id in self._published_ts:
            return []
        if len(self._published_ts) >= self.max_ids:
            raise OverflowError(f"more than {self.max_ids} tasks in one ledger")
        self._published_ts[task_id] = ts
        return [self._take(task_id, p) for p in self._early.pop(task_id, [])]

    def published_ts(self, task_id: str) -> float:
        return self._published_ts[task_id]

    def confirmed(self, task_id: str) -> None:
        if task_id in self._published_ts:
            self._confirmed.add(task_id)

    def completed(self, task_id: str, processed_ts: float) -> Completed | None:
        """Take a completion; None while its id is not known as published."""
        if task_id not in self._published_ts:
            early = self._early.setdefault(task_id, [])
            if len(early) < MAX_EARLY_PER_ID and len(self._early) <= self.max_ids:
                early.append(processed_ts)
            return None
        return self._take(task_id, processed_ts)

    def _take(self, task_id: str, processed_ts: float) -> Completed:
        t0 = self._published_ts[task_id]
        n = self._completions.get(task_id, 0) + 1
        self._completions[task_id] = n
        skewed = processed_ts < t0
        self.skewed += skewed
        return Completed(task_id, max(0.0, processed_ts - t0), skewed, n > 1)

    @property
    def any_completion(self) -> bool:
        """A completion came, matched or still waiting for its id."""
        return bool(self._completions or self._early)

    @property
    def confirmed_count(self) -> int:
        return len(self._confirmed)

    @property
    def pending(self) -> int:
        """Confirmed tasks not completed yet."""
        return sum(1 for t in self._confirmed if t not in self._completions)

    def counts(self) -> LedgerCounts:
        lost = tuple(sorted(t for t in self._confirmed if t not in self._completions))
        # An id completed twice before its publish was reported is a duplicate too:
        # the completion queue is this run's own, so every id in it is one of ours.
        dup = tuple(sorted({t for t, n in self._completions.items() if n > 1}
                           | {t for t, ts in self._early.items() if len(ts) > 1}))
        completed = sum(1 for t in self._confirmed if t in self._completions)
        return LedgerCounts(len(self._published_ts), len(self._confirmed), completed,
                            lost, dup, len(self._early) + self.unreadable, self.skewed)


@dataclass(frozen=True)
class LoadFacts:
    """What the check of a load run gathered when the run stopped.

    From the broker: ``left`` (ready messages: a passive declare, exact, and the
    management API's count, the larger), ``unacked``, and the management API's
    counters over the run (``acked``, ``entered``: messages that entered the
    queue; ``redelivered``; ``dead``: growth of the dead-letter queue); ``acked``
    and ``entered`` are None without statistics; ``entered`` counts what the queue
    held at the start with what entered it since, each from one management
    sample, so that the two agree whatever the statistics' lag. From this load
    generator:
    ``confirmed`` (the broker's own confirms), ``publish_failures``,
    ``connect_errors``, ``queued_before``. From the workers: ``by_id``, their
    completions; None when they send none (``no_by_id``: why). ``problems``: what
    went wrong on the harness's side (a management API that did not answer at the
    start, a Locust worker whose final report never came, a completion consumer
    that lost its connection).
    """

    queue: str
    drain_timeout_s: float
    confirmed: int
    publish_failures: int
    connect_errors: int
    queued_before: int
    left: int
    unacked: int
    acked: int | None
    entered: int | None
    redelivered: int
    dead: int
    by_id: LedgerCounts | None
    no_by_id: str = "the workers sent no completions"
    problems: tuple[str, ...] = ()


def judge_load(f: LoadFacts) -> tuple[int, str]:
    """The load run's exit code (``vocab``'s: 0 PASS, 1 FAIL, 2 undecided) and why.

    The broker decides: a queue not drained, a task in the dead-letter queue, fewer
    acks than confirmed tasks, or messages that entered the queue and left it
    without an ack, are failures. Completions (the workers' word) only accuse: a
    task completed twice, or a confirmed task never completed while the queue is
    empty and nothing is unacked, is a failure ("never completed": lost, or
    processed by a worker of the fleet that sends no completions, which the
    contract's option rules out); their absence never excuses anything, and the
    check then judges by the broker alone and says so. A problem on the
    harness's side, publishes that failed, or nothing confirmed at all make a run
    without such a failure undecided, never a PASS.
    """
    summary = (f"confirmed {f.confirmed} (+{f.queued_before} queued before), acked "
               f"{'?' if f.acked is None else f.acked}, redelivered {f.redelivered}, "
               f"dead-lettered {f.dead}, left in the queue {f.left} ({f.unacked} unacked)")
    b = f.by_id
    if b is not None:
        summary += (f"; by id: {b.completed} of {b.confirmed} confirmed completed, "
                    f"{len(b.lost)} never completed, {len(b.duplicated)} completed twice"
                    + (f", {b.skewed} stamped before their publish (clock skew)"
                       if b.skewed else "")
                    + (f", {b.foreign} completion(s) of unknown ids" if b.foreign else ""))
    else:
        summary += f"; {f.no_by_id}: judged by the broker's counters only"
    if f.publish_failures:
        summary += f"; {f.publish_failures} publish(es) failed"
    if b is not None and b.duplicated:
        return EXIT_VIOLATED, (f"{len(b.duplicated)} task(s) processed twice "
                               f"({quote_ids(b.duplicated)}): {summary}")
    if f.left or f.unacked:
        return EXIT_VIOLATED, (f"the queue did not drain within {f.drain_timeout_s:g} s (the "
                               f"workers did not keep up): {summary}")
    if b is not None and b.lost:
        return EXIT_VIOLATED, (f"{len(b.lost)} confirmed task(s) never completed, the queue "
                               f"empty ({quote_ids(b.lost)}): {summary}")
    if f.dead > 0:
        return EXIT_VIOLATED, (f"{f.dead} task(s) dead-lettered (the tasks cannot fail): "
                               f"{summary}")
    if f.acked is not None and f.acked < f.confirmed + f.queued_before:
        return EXIT_VIOLATED, (f"{f.confirmed + f.queued_before - f.acked} task(s) never "
                               f"acked (dropped, or the acks went unseen): {summary}")
    if f.acked is not None and f.entered is not None and f.acked < f.entered:
        # Acks of retried copies or of other publishers cannot hide these: every
        # message that entered must leave by an ack (a DLQ'd one is counted above).
        return EXIT_VIOLATED, (f"{f.entered - f.acked} message(s) entered the queue (or were "
                               f"in it at the start) and left it without an ack (nacked, "
                               f"rejected, expired or dropped): {summary}")
    if f.problems:
        return EXIT_UNDECIDED, "; ".join(f.problems) + f": {summary}"
    if b is None and f.redelivered > 0:
        return EXIT_UNDECIDED, (f"{f.redelivered} redelivery(ies): a task may have been "
                                "processed twice, and without completions nothing tells: "
                                f"{summary}")
    if f.confirmed == 0:
        why = (f"the broker took no connection ({f.connect_errors} user(s) could not "
               "connect)" if f.connect_errors else "no publish was confirmed")
        return EXIT_UNDECIDED, f"{why}: nothing to judge: {summary}"
    if f.publish_failures:
        return EXIT_UNDECIDED, (f"{f.publish_failures} publish(es) failed (nacked, returned, "
                                f"or their connection lost: the broker's side), so the load "
                                f"was not the one asked for: {summary}")
    if f.acked is None:
        return EXIT_UNDECIDED, (f"the management API has no statistics for {f.queue!r}, so "
                                f"the acks cannot be counted (statistics disabled?): {summary}")
    return EXIT_OK, summary


def body_maker(id_prefix: str,
               directives: dict[str, Any]) -> Callable[[int], tuple[str, bytes]]:
    """Task n's id (``id_prefix`` + n) and ``harness.tasks.task_body``'s bytes for
    it, for many tasks with the same directives: formatted instead of encoded each
    time (a load generator's hot path). The prefix is checked once: it must need
    no JSON escape."""
    if not id_prefix.isascii() or not id_prefix.isprintable() or '"' in id_prefix \
            or "\\" in id_prefix:
        raise ValueError(f"task id prefix {id_prefix!r} needs escaping: use task_body")
    tail = json.dumps(directives, separators=(",", ":"))

    def make(n: int) -> tuple[str, bytes]:
        task_id = f"{id_prefix}{int(n)}"
        return task_id, (f'{{"id":"{task_id}","task":"logger","payload":{{"n":{int(n)}}},'
                         f'"directives":{tail}}}').encode()

    return make


# -- the load's shape and the queue over time ------------------------------------------

@dataclass(frozen=True)
class QueueSample:
    """The queue as the management API showed it, ``t_s`` after the test started
    (None: that read failed), with the Locust users running then."""

    t_s: float
    users: int
    ready: int | None
    unacked: int | None
    consumers: int | None


QUEUE_SAMPLE_FIELDS: Final = ("t_s", "users", "ready", "unacked", "consumers")
# Samples kept per run: one a second for more than a day.
QUEUE_SAMPLES_MAX: Final = 100_000


def ramp_users(t_s: float, peak: int, ramp_s: float, hold_s: float) -> int | None:
    """The guide's Black Friday: users from 1 up to ``peak`` over ``ramp_s``, ``peak``
    for ``hold_s``, back down to 1 over ``ramp_s``; None once it is over."""
    if peak < 1 or ramp_s < 0 or hold_s < 0:
        raise ValueError("peak >= 1, ramp_s >= 0 and hold_s >= 0")
    if t_s < 0:
        return 1
    if t_s < ramp_s:
        return max(1, round(1 + (peak - 1) * t_s / ramp_s))
    if t_s < ramp_s + hold_s:
        return peak
    down = t_s - ramp_s - hold_s
    if down < ramp_s:
        return max(1, round(peak - (peak - 1) * down / ramp_s))
    return None


def queue_summary(samples: list[QueueSample]) -> str:
    """One line: how deep the queue got and when, and the consumers' range."""
    read = [s for s in samples if s.ready is not None]
    if not read:
        return f"{len(samples)} sample(s), none read (the management API did not answer)"
    top = max(read, key=lambda s: (s.ready or 0) + (s.unacked or 0))
    consumers = [s.consumers for s in read if s.consumers is not None]
    users = max(s.users for s in samples)
    return (f"{len(samples)} sample(s) over {samples[-1].t_s:g} s; deepest "
            f"{(top.ready or 0) + (top.unacked or 0)} (ready {top.ready}, unacked "
            f"{top.unacked}) at {top.t_s:g} s with {top.users} user(s); consumers "
            f"{min(consumers, default=0)}..{max(consumers, default=0)}; users up to {users}")


def queue_samples_csv(samples: list[QueueSample]) -> str:
    """The samples as CSV text (a header, then one row each; an unread value empty)."""
    rows = [",".join(QUEUE_SAMPLE_FIELDS)]
    for s in samples:
        rows.append(",".join("" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
                             for v in (s.t_s, s.users, s.ready, s.unacked, s.consumers)))
    return "\n".join(rows) + "\n"


# -- joined sends ------------------------------------------------------------------------

# At most this many bytes of waiting frames go out in one send.
SEND_COALESCE_BYTES: Final = 64 * 1024


def coalescing_produce(transport: Any) -> None:
    """pika's ``_AsyncTransportBase._produce`` with the frames waiting joined: pika
    sends each buffered frame with its own ``send()`` (a task is three frames: three
    system calls, measured as the largest cost of a publish: 2.9 s of 14 s for
    60,000 tasks under cProfile). Joins the leading frames, up to
    ``SEND_COALESCE_BYTES``, into one send, with pika's own bookkeeping (a partial
    send puts the rest back in front; ``_tx_buffered_byte_count`` drops by what was
    sent). Written by hand: no pika option does it. Uses the transport's
    ``_tx_buffers`` (a deque of bytes), ``_sock`` and ``_sigint_safe_send``."""
    buffers = transport._tx_buffers
    while buffers:
        if len(buffers) > 1 and len(buffers[0]) < SEND_COALESCE_BYTES:
            parts: list[bytes] = []
            size = 0
            while buffers and size + len(buffers[0]) <= SEND_COALESCE_BYTES:
                part = buffers.popleft()
                parts.append(part)
                size += len(part)
            buffers.appendleft(b"".join(parts))
        chunk = buffers[0]
        sent = transport._sigint_safe_send(transport._sock, chunk)
        buffers.popleft()
        if sent < len(chunk):
            buffers.appendleft(chunk[sent:])
        transport._tx_buffered_byte_count -= sent
