"""A per-task index of a history, built in one pass and shared by the checkers.

Built once per :class:`~harness.history.History` and cached in ``history._cache``
(checkers are pure, and a history is append-only: an index built from a history
that has since grown is rebuilt, keyed by the number of events).

Speed and memory matter: a run of 1,000,000 tasks has about 4,000,000 events,
and at that size every random access to a dict of 1,000,000 ids is a cache miss.
So the one pass touches a single id-keyed dict, ``state`` (id -> OR of bits:
published ok/unknown/fail, processed, processed twice, acked, acked twice,
dead-lettered), once per publish/processed/acked event; the hot events
themselves are appended to per-worker lists (sequential), and the checkers
group the events of the few ids they look at closely (duplicates, double
settlements, tasks in flight at a kill) on demand (:meth:`ByWorker.events`).
Counts come from ``Counter(state.values())`` (a handful of distinct values, C
speed); a Python loop over the ids runs only when offenders exist. Rare event
types (dead_lettered, retry_scheduled, failed, ...) are kept per id in
:class:`PerId` (a "first" dict plus a "more" dict for the second and later).
Building the index of 1,000,000 tasks takes about 2.5 s and 60 MiB.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from harness.checkers.indextypes import (
    CONSUMER_TIMEOUT_KIND,
    ISSUED_PREFIXES,
    ByWorker,
    ConnFault,
    FinalQueues,
    PerId,
)
from harness.history import BROKER_FAULTS, CONNECTION_FAULTS, Event, History
from harness.vocab import CONSUMER_TIMEOUT

__all__ = ["CONSUMER_TIMEOUT_KIND", "ISSUED_PREFIXES", "ByWorker", "ConnFault", "FinalQueues",
           "Index", "PerId", "build", "get"]

_CACHE_KEY: Final = "checkers.index"

# Per-id state bits (``Index.state``).
OK: Final = 1  # published, confirmed
UNK: Final = 2  # published, outcome unknown
FAIL: Final = 4  # published, nacked/returned
PUBLISHED: Final = OK | UNK | FAIL
PROC: Final = 8  # processed at least once
PROC2: Final = 16  # processed more than once
ACK: Final = 32  # acked (final) at least once
ACK2: Final = 64  # acked (final) more than once
DL: Final = 128  # dead_lettered by a worker at least once
DL2: Final = 256  # dead_lettered more than once


# Fault names that end a worker process abruptly (redelivery-after-crash).
KILL_FAULTS: Final = frozenset({"kill", "crash"})
# ``Index.crash_directives`` value of a ``crash_always`` task (a crash "during" it
# on every delivery, not only the first).
CRASH_ALWAYS: Final = "always"
# Evidence key of an ``unknown`` that a longer record would decide: the wall-clock
# ts the history must reach (the runner waits for it, bounded, before it ends).
NEEDED_UNTIL: Final = "record_needed_until_ts"
# A fault has taken effect at most this long after it was issued (backend latency).
EFFECT_MAX_S: Final = 5.0
# How long after the broker logged a channel's close for consumer_timeout a copy
# the worker received may still have come on that channel: the wire, the client's
# reading of frames, and the log line's clock against the worker's (one host, or
# two NTP-synced ones; the same allowance as ``facts.RECEIPT_CLOCK_SLACK_S``).
CLOSE_IN_FLIGHT_S: Final = 1.0


@dataclass
class Index:
    n_events: int
    # id -> OR of the state bits above: one dict, one cache miss per event.
    state: dict[str, int] = field(default_factory=dict)
    poison: set[str] = field(default_factory=set)
    received: ByWorker = field(default_factory=ByWorker)
    processed: ByWorker = field(default_factory=ByWorker)
    # acked with reason "processed" (or no reason): the final settlement.
    acked_final: ByWorker = field(default_factory=ByWorker)
    # Ids processed more than once, acked (final) more than once.
    processed_twice: set[str] = field(default_factory=set)
    acked_twice: set[str] = field(default_factory=set)
    # Per worker, the number of ids it processed first (duplicates not counted).
    first_processed: dict[str | None, int] = field(default_factory=dict)
    # acked with reason "retry": the message was re-published for a retry.
    acked_retry: PerId = field(default_factory=PerId)
    dead_lettered: PerId = field(default_factory=PerId)
    retry_scheduled: PerId = field(default_factory=PerId)
    failed: PerId = field(default_factory=PerId)
    ack_failed: PerId = field(default_factory=PerId)
    type_counts: dict[str, int] = field(default_factory=dict)
    faults: list[Event] = field(default_factory=list)
    worker_started: list[Event] = field(default_factory=list)
    worker_exited: list[Event] = field(default_factory=list)
    connection_lost: list[Event] = field(default_factory=list)
    # Channels the broker closed for consumer_timeout (its log, ``harness.brokerlog``).
    consumer_timeouts: list[Event] = field(default_factory=list)
    final: FinalQueues = field(default_factory=FinalQueues)
    drain: Event | None = None
    # ts of the first drain / final_queue event: the end of the run proper
    # (workers stopped after it are the harness's shutdown, not a fault).
    end_ts: float | None = None
    # Workers named by cluster events or by connected/ready/connection_lost (the
    # distribution checker adds those that processed something).
    workers: set[str] = field(default_factory=set)
    first_processed_ts: float | None = None
    last_processed_ts: float | None = None
    # Connection faults by worker, sorted by ts; broker faults apply to every worker.
    conn_faults: dict[str, list[ConnFault]] = field(default_factory=dict)
    conn_fault_ts: dict[str, list[float]] = field(default_factory=dict)
    broker_faults: list[ConnFault] = field(default_factory=list)
    broker_fault_ts: list[float] = field(default_factory=list)
    # The ``run_started`` event (cluster settings, capabilities), the first
    # ``publish_started``; ``health``, ``ready`` and ``shutdown`` events in order.
    run_started: Event | None = None
    publish_started: Event | None = None
    health: list[Event] = field(default_factory=list)
    ready: list[Event] = field(default_factory=list)
    shutdown: list[Event] = field(default_factory=list)
    # id -> publish directives, only for ids with fail_times > 0 or fail_always
    # (the retry and dead-letter paths: few ids, so memory stays small).
    fail_directives: dict[str, dict[str, Any]] = field(default_factory=dict)
    # id -> its ``crash`` directive ("during", "after_process"): few ids.
    crash_directives: dict[str, str] = field(default_factory=dict)
    # The ``sleep_ms`` directive of a crash task, in seconds (how long its
    # processing runs before an ``after_process`` crash).
    crash_sleep_s: dict[str, float] = field(default_factory=dict)
    # The longest ``sleep_ms`` directive of the run, in seconds: how long one
    # processing can take, faults aside.
    max_sleep_s: float = 0.0
    _value_counts: dict[int, int] | None = None

    @property
    def cluster(self) -> dict[str, Any]:
        """``run_started``'s ``cluster`` dict (empty when not recorded)."""
        c = self.run_started.get("cluster") if self.run_started is not None else None
        return c if isinstance(c, dict) else {}

    @property
    def capabilities(self) -> dict[str, Any]:
        """``run_started``'s ``capabilities`` dict (empty when not recorded)."""
        c = self.run_started.get("capabilities") if self.run_started is not None else None
        return c if isinstance(c, dict) else {}

    def setting(self, params: Mapping[str, Any], key: str, cluster_key: str | None = None
                ) -> Any:
        """``params[key]`` if given, else the cluster setting ``cluster_key`` (or ``key``)."""
        if key in params and params[key] is not None:
            return params[key]
        return self.cluster.get(cluster_key or key)

    @property
    def drain_complete(self) -> bool | None:
        if self.drain is None:
            return None
        return bool(self.drain.get("complete", False))

    def count(self, type_: str) -> int:
        return self.type_counts.get(type_, 0)

    # -- queries on the state bits (C-speed counting, a loop only for offenders) --
    @property
    def value_counts(self) -> dict[int, int]:
        if self._value_counts is None:
            self._value_counts = dict(Counter(self.state.values()))
        return self._value_counts

    def count_where(self, pred: Callable[[int], bool]) -> int:
        return sum(c for v, c in self.value_counts.items() if pred(v))

    def ids_where(self, pred: Callable[[int], bool]) -> set[str]:
        values = {v for v in self.value_counts if pred(v)}
        if not values:
            return set()
        return {i for i, v in self.state.items() if v in values}

    def has(self, ident: str, bits: int) -> bool:
        return bool(self.state.get(ident, 0) & bits)

    def connection_fault(self, worker: str | None, lo: float, hi: float,
                         injected_only: bool = True) -> ConnFault | None:
        """The first connection fault of ``worker`` (or of the broker) that overlaps
        [lo, hi]: issued at or before ``hi`` and not yet done taking effect before
        ``lo`` (``ts <= hi`` and ``max(ts, end) >= lo``). Only injected ones (see
        ``ConnFault.injected``) unless ``injected_only`` is False. A crash known
        only as a span (``ConnFault.cut`` False) is never one: see
        :meth:`crash_span`."""
        if hi < lo:
            return None
        best: ConnFault | None = None
        lists: list[tuple[list[ConnFault], list[float]]] = []
        if worker is not None and worker in self.conn_fault_ts:
            lists.append((self.conn_faults[worker], self.conn_fault_ts[worker]))
        if self.broker_fault_ts:
            lists.append((self.broker_faults, self.broker_fault_ts))
        for faults, ts_list in lists:
            # Faults take effect within EFFECT_MAX_S of being issued: start the scan
            # there, so the lookup stays logarithmic on long histories.
            i = bisect.bisect_left(ts_list, lo - EFFECT_MAX_S)
            while i < len(ts_list) and ts_list[i] <= hi:
                f = faults[i]
                if (max(f.ts, f.end) >= lo and (f.injected or not injected_only)
                        and f.cut):
                    if best is None or f.ts < best.ts:
                        best = f
                    break
                i += 1
        return best

    def crash_span(self, worker: str | None, first_receipt: float | None,
                   again_receipt: float | None) -> ConnFault | None:
        """An asked crash of ``worker`` known only as a span (the worker exited up to
        EFFECT_MAX_S after its process died), that explains a copy of a task the
        worker held: only when the copy is a later delivery, received at or after
        the span's start, of a delivery the worker received before the span ended.
        Two processings or settlements off one delivery are the worker's own doing,
        crash or not."""
        if worker is None or first_receipt is None or again_receipt is None:
            return None
        if again_receipt <= first_receipt:
            return None
        for f in self.conn_faults.get(worker, ()):
            if (not f.cut and f.injected and first_receipt <= f.end
                    and f.ts <= again_receipt <= f.end):
                return f
        return None

    def last_cut_before(self, worker: str, ts: float) -> float:
        """ts of the last time before ``ts`` that ``worker``'s connection was cut
        by something the harness saw (a fault it injected, a broker fault, an exit
        of the process), so the broker requeued what it held then. A worker's own
        ``connection_lost`` report is left out: it would shrink the set of
        deliveries the worker is held to (a delivery it really lost is superseded
        by the broker's next delivery of it, see :func:`superseded`)."""
        best = float("-inf")
        faults = self.conn_faults.get(worker, [])
        i = bisect.bisect_left(self.conn_fault_ts.get(worker, []), ts)
        while i > 0:
            i -= 1
            if faults[i].kind != "connection_lost" and faults[i].cut:
                best = faults[i].ts
                break
        j = bisect.bisect_left(self.broker_fault_ts, ts)
        if j > 0:
            best = max(best, self.broker_fault_ts[j - 1])
        return best

    def superseded(self, ident: str, after: float, before: float) -> bool:
        """Was ``ident`` delivered again (to anyone) in (``after``, ``before``)? The
        broker hands a message out again only once the earlier delivery ended
        (requeued by a lost connection, a nack, a reject), so that delivery was no
        longer held at ``before``."""
        return any(after < r.ts < before for r in self.received.of(ident))


def _end(ev: Event) -> float:
    done = ev.get("completed_ts")
    return float(done) if isinstance(done, int | float) else ev.ts


def worker_of(ev: Event) -> str | None:
    """The worker an event is about: ``Event.worker``, or ``data["worker"]``."""
    if ev.worker is not None:
        return ev.worker
    w = ev.get("worker")
    return str(w) if w is not None else None


def fault_target(ev: Event) -> str | None:
    """The target of a ``fault`` event: ``data["target"]``, else ``Event.worker``."""
    target = ev.get("target")
    if target is None:
        return ev.worker
    return str(target)


def is_fault_invoke(ev: Event) -> bool:
    return ev.get("phase", "invoke") == "invoke" and bool(ev.get("ok", False))


def _sorted_faults(items: Iterable[ConnFault]) -> tuple[list[ConnFault], list[float]]:
    lst = sorted(items, key=lambda f: f.ts)
    return lst, [f.ts for f in lst]


def build(history: History) -> Index:
    idx = Index(n_events=len(history.events))
    state = idx.state
    state_get = state.get
    rec_lists = idx.received.lists
    proc_lists = idx.processed.lists
    ack_lists = idx.acked_final.lists
    first_proc = idx.first_processed
    proc_dups = idx.processed_twice
    ack_dups = idx.acked_twice
    acked_retry = idx.acked_retry
    counts: dict[str, int] = {}
    no_id: dict[str, int] = {}
    final_last: dict[tuple[str, str], Event] = {}
    first_processed_ts = float("inf")
    last_processed_ts = float("-inf")
    workers = idx.workers
    for ev in history.events:
        t = ev.type
        ident = ev.id
        # The hot types first, inlined: this loop sees ~4 events per task, and
        # touches one dict (``state``) once per event with an id.
        if t == "received":
            if ident is None:
                no_id[t] = no_id.get(t, 0) + 1
                continue
            w = ev.worker
            lst = rec_lists.get(w)
            if lst is None:
                rec_lists[w] = [ev]
            else:
                lst.append(ev)
        elif t == "processed":
            if ident is None:
                no_id[t] = no_id.get(t, 0) + 1
                continue
            w = ev.worker
            lst = proc_lists.get(w)
            if lst is None:
                proc_lists[w] = [ev]
            else:
                lst.append(ev)
            st = state_get(ident, 0)
            if st & PROC:
                state[ident] = st | PROC2
                proc_dups.add(ident)
            else:
                state[ident] = st | PROC
                first_proc[w] = first_proc.get(w, 0) + 1
            if ev.ts < first_processed_ts:
                first_processed_ts = ev.ts
            if ev.ts > last_processed_ts:
                last_processed_ts = ev.ts
        elif t == "acked":
            if ident is None:
                no_id[t] = no_id.get(t, 0) + 1
                continue
            data = ev.data
            if data is not None and data.get("reason") == "retry":
                acked_retry.add(ident, ev)
                continue
            w = ev.worker
            lst = ack_lists.get(w)
            if lst is None:
                ack_lists[w] = [ev]
            else:
                lst.append(ev)
            st = state_get(ident, 0)
            if st & ACK:
                state[ident] = st | ACK2
                ack_dups.add(ident)
            else:
                state[ident] = st | ACK
        elif t == "publish":
            counts[t] = counts.get(t, 0) + 1
            if ident is None:
                continue
            data = ev.data
            o = data.get("outcome", "unknown") if data is not None else "unknown"
            bit = OK if o == "ok" else FAIL if o == "fail" else UNK
            state[ident] = state_get(ident, 0) | bit
            if data is not None:
                if data.get("poison"):
                    idx.poison.add(ident)
                dirs = data.get("directives")
                for key in ("sleep_ms", "sleep_first_ms"):
                    sleep_ms = dirs.get(key) if isinstance(dirs, dict) else None
                    if isinstance(sleep_ms, int | float) and not isinstance(sleep_ms, bool) \
                            and sleep_ms / 1000.0 > idx.max_sleep_s:
                        idx.max_sleep_s = sleep_ms / 1000.0
                if dirs and isinstance(dirs, dict) and (dirs.get("crash")
                                                        or dirs.get("crash_always") is True):
                    # crash_always: "during", on every delivery (a poison crash loop).
                    idx.crash_directives[ident] = (CRASH_ALWAYS if dirs.get("crash_always")
                                                   is True else str(dirs.get("crash")))
                    sleep = dirs.get("sleep_ms")
                    if isinstance(sleep, int | float) and not isinstance(sleep, bool):
                        idx.crash_sleep_s[ident] = max(0.0, float(sleep) / 1000.0)
                if dirs and isinstance(dirs, dict) and (
                        dirs.get("fail_times") or dirs.get("fail_always")):
                    idx.fail_directives[ident] = dirs
        else:
            counts[t] = counts.get(t, 0) + 1
            if t == "dead_lettered":
                if ident is not None:
                    idx.dead_lettered.add(ident, ev)
                    st = state_get(ident, 0)
                    state[ident] = st | (DL2 if st & DL else DL)
            elif t == "retry_scheduled":
                if ident is not None:
                    idx.retry_scheduled.add(ident, ev)
            elif t == "failed":
                if ident is not None:
                    idx.failed.add(ident, ev)
            elif t == "ack_failed":
                if ident is not None:
                    idx.ack_failed.add(ident, ev)
            elif t == "fault":
                idx.faults.append(ev)
            elif t == "worker_started":
                idx.worker_started.append(ev)
                wk = worker_of(ev)
                if wk is not None:
                    workers.add(wk)
            elif t == "worker_exited":
                idx.worker_exited.append(ev)
            elif t == "connection_lost":
                idx.connection_lost.append(ev)
            elif t == CONSUMER_TIMEOUT:
                idx.consumer_timeouts.append(ev)
            elif t in ("connected", "ready"):
                if ev.worker is not None:
                    workers.add(ev.worker)
                if t == "ready":
                    idx.ready.append(ev)
            elif t == "health":
                idx.health.append(ev)
            elif t == "shutdown":
                idx.shutdown.append(ev)
            elif t == "run_started":
                if idx.run_started is None:
                    idx.run_started = ev
            elif t == "publish_started":
                if idx.publish_started is None:
                    idx.publish_started = ev
            elif t == "final_queue":
                role = str(ev.get("role", "main"))
                final_last[(role, str(ev.get("queue", "")))] = ev
                if idx.end_ts is None or ev.ts < idx.end_ts:
                    idx.end_ts = ev.ts
            elif t == "drain":
                idx.drain = ev
                if idx.end_ts is None or ev.ts < idx.end_ts:
                    idx.end_ts = ev.ts
    counts["received"] = len(idx.received) + no_id.get("received", 0)
    counts["processed"] = len(idx.processed) + no_id.get("processed", 0)
    counts["acked"] = len(idx.acked_final) + len(acked_retry) + no_id.get("acked", 0)
    idx.type_counts = {t: c for t, c in counts.items() if c}
    idx.first_processed_ts = None if first_processed_ts == float("inf") else first_processed_ts
    idx.last_processed_ts = None if last_processed_ts == float("-inf") else last_processed_ts

    workers.update(w for e in idx.connection_lost if (w := worker_of(e)) is not None)

    fin = idx.final
    for (role, _queue), ev in final_last.items():
        if role not in fin.ids:
            continue
        if not ev.get("ok", True):
            fin.failed[role] = True
            continue
        ids = ev.get("ids") or []
        fin.ids[role].update(str(i) for i in ids)
        fin.captured[role] = True
        depth = ev.get("depth")
        if isinstance(depth, int):
            fin.depth[role] += depth
            if depth > len(ids):
                fin.partial[role] = True

    per_worker: dict[str, list[ConnFault]] = {}
    broker: list[ConnFault] = []
    for ev in idx.faults:
        name = str(ev.get("fault", ""))
        if not is_fault_invoke(ev):
            continue
        target = fault_target(ev)
        if name in BROKER_FAULTS or target == "broker":
            if name in BROKER_FAULTS or name in CONNECTION_FAULTS:
                broker.append(ConnFault(ev.ts, f"broker:{name}", None, _end(ev)))
        elif name in CONNECTION_FAULTS and target is not None:
            per_worker.setdefault(str(target), []).append(
                ConnFault(ev.ts, f"fault:{name}", str(target), _end(ev)))
    crash_ids = {i for i, d in idx.crash_directives.items() if d}
    # worker -> [(from, until)]: when an exit of that worker is the crash the
    # harness asked for. The directive fires on the task's first delivery only
    # (before its ack), at most its processing time plus the exit's detection
    # later; nothing else the worker did makes an exit injected.
    crash_windows: dict[str, list[tuple[float, float, float]]] = {}
    if crash_ids:
        received = idx.received.events(crash_ids)
        acks = idx.acked_final.events(crash_ids)
        processed = idx.processed.events(crash_ids)
        for ident in crash_ids:
            recs = sorted(received.get(ident, ()), key=lambda e: e.ts)
            span = idx.crash_sleep_s.get(ident, 0.0) + EFFECT_MAX_S
            # The first delivery: reported as not redelivered; a worker that does
            # not report the flag gets only its earliest receipt counted.
            firsts = ([e for e in recs if e.get("redelivered") is False]
                      or ([recs[0]] if recs and "redelivered" not in (recs[0].data or {})
                          else []))
            # A crash_always task crashes whoever receives it, on every delivery.
            crashing = (_crash_loop(idx, recs) if idx.crash_directives[ident] == CRASH_ALWAYS
                        else firsts[:1])
            for e in crashing:
                if e.worker is None or any(a.worker == e.worker and a.ts >= e.ts
                                           for a in acks.get(ident, ())):
                    continue
                # When the crash came: after the task's processing (after_process),
                # or at least after its receipt.
                done = [p.ts for p in processed.get(ident, ())
                        if p.worker == e.worker and e.ts <= p.ts <= e.ts + span]
                after = (min(done) if done and idx.crash_directives[ident] == "after_process"
                         else e.ts)
                crash_windows.setdefault(e.worker, []).append((e.ts, e.ts + span, after))
            # A worker that reports no receipts: its first ``processed`` of an
            # ``after_process`` crash task, right before it died.
            procs = sorted(processed.get(ident, ()), key=lambda e: e.ts)
            if (not recs and procs and procs[0].worker is not None
                    and idx.crash_directives[ident] == "after_process"):
                p0 = procs[0]
                assert p0.worker is not None
                crash_windows.setdefault(p0.worker, []).append(
                    (p0.ts, p0.ts + EFFECT_MAX_S, p0.ts))
    last_start: dict[str, list[float]] = {}
    for ev in idx.worker_started:
        sw = worker_of(ev)
        if sw is not None:
            last_start.setdefault(sw, []).append(ev.ts)
    for ev in idx.worker_exited:
        w = worker_of(ev)
        if w is None:
            continue
        if ev.get("requested", False):
            per_worker.setdefault(w, []).append(ConnFault(ev.ts, "exit", w))
            continue
        # A crash the harness asked for: the worker received a crash-directive task
        # since it last started, before it died.
        since = max((t for t in last_start.get(w, ()) if t <= ev.ts), default=float("-inf"))
        afters = [after for lo, hi, after in crash_windows.get(w, ())
                  if since <= lo <= ev.ts <= hi]
        asked = bool(afters)
        per_worker.setdefault(w, []).append(
            ConnFault(ev.ts, "crash" if asked else "exit:unrequested", w, injected=asked))
        if asked:
            # The process the crash ended may have died before the worker exited (a
            # Dramatiq worker process: its main process notices about a second later,
            # while the broker has already requeued what the dead one held): the
            # crash cut the connection somewhere in [its task's processing (else
            # receipt), the exit], at most EFFECT_MAX_S back. Only ``crash_span``
            # finds it, and only for a pair whose second copy is a later delivery
            # received in the span (the worker's reported times; a worker that
            # reports them wrong narrows what the span explains, or leaves it
            # outside its own exit, which the harness saw).
            per_worker[w].append(ConnFault(max(min(afters), ev.ts - EFFECT_MAX_S), "crash", w,
                                           end=ev.ts, cut=False))
    for ev in idx.connection_lost:
        w = worker_of(ev)
        if w is not None:
            per_worker.setdefault(w, []).append(
                ConnFault(ev.ts, "connection_lost", w, injected=False))
    for ev in idx.consumer_timeouts:
        # The broker closed the worker's channel and requeued what it held: a cut the
        # scenario configured (consumer_timeout) and the broker's log records, of the
        # worker the harness saw holding that peer address (no worker: explains nothing).
        # A delivery sent on the channel just before the close reaches the worker
        # after the close's log line, and is requeued again when its ack fails (seen:
        # requeued by another worker's close, received 0.2 ms after this one's line).
        w = ev.worker
        if w is not None:
            per_worker.setdefault(w, []).append(
                ConnFault(ev.ts, CONSUMER_TIMEOUT_KIND, w, ev.ts + CLOSE_IN_FLIGHT_S))
    for w, faults in per_worker.items():
        idx.conn_faults[w], idx.conn_fault_ts[w] = _sorted_faults(faults)
    idx.broker_faults, idx.broker_fault_ts = _sorted_faults(broker)
    return idx


def _crash_loop(idx: Index, recs: list[Event]) -> list[Event]:
    """The receipts of a ``crash_always`` task (sorted by ts) that open crash windows:
    all of them when they form the chain a crash loop makes, none otherwise. The
    broker hands one message to one consumer at a time, so each receipt after the
    first follows the previous holder's exit (which the harness may learn of up to
    ``EFFECT_MAX_S`` after the broker did); and a queue with a delivery limit
    (``run_started``'s cluster) hands it out at most limit + 1 times, exactly that
    often when the DLQ holds it at the end. Receipts that
    break either rule are not the broker's doing (a worker's made-up line): then no
    exit is the crash the harness asked for, so a worker cannot make its own exit
    injected by reporting the poison. A worker that does not honour directives
    never crashes on it."""
    if idx.capabilities.get("directives") is False or not recs:
        return []
    limit = idx.cluster.get("delivery_limit")
    if isinstance(limit, int) and not isinstance(limit, bool):
        # Dead-lettered by the limit: delivered exactly limit + 1 times.
        in_dlq = recs[0].id in idx.final.ids["dlq"]
        if len(recs) > limit + 1 or (in_dlq and len(recs) != limit + 1):
            return []
    exits: dict[str, list[float]] = {}
    for ev in idx.worker_exited:  # a crash, or a kill the schedule made meanwhile
        w = worker_of(ev)
        if w is not None:
            exits.setdefault(w, []).append(ev.ts)
    for prev, nxt in pairwise(recs):
        if prev.worker is None or not any(prev.ts <= t <= nxt.ts + EFFECT_MAX_S
                                          for t in exits.get(prev.worker, ())):
            return []
    return recs


def get(history: History) -> Index:
    """The index of ``history``, built on first use and cached on the history."""
    cached = history._cache.get(_CACHE_KEY)
    if isinstance(cached, Index) and cached.n_events == len(history.events):
        return cached
    idx = build(history)
    history._cache[_CACHE_KEY] = idx
    return idx
