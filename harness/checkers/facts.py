"""Facts the checkers derive from the index (``harness.checkers.index``): when a
processing began, what the harness asked to fail, the lineage of a second
message, and small helpers over event lists. Pure functions of the index."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any, Final

from harness.checkers.index import (
    CRASH_ALWAYS,
    EFFECT_MAX_S,
    ISSUED_PREFIXES,
    KILL_FAULTS,
    ConnFault,
    Index,
    fault_target,
    is_fault_invoke,
    worker_of,
)
from harness.history import Event, History


def start_ts(idx: Index, ev: Event) -> float:
    """When the processing reported by a ``processed`` (or settlement) event began.

    ``started_ts`` when the worker reports it, clamped to [the latest ``received``
    of the same id by the same worker at or before the event, the event's ts];
    else that receipt; else the event's own ts.
    """
    best: float | None = None
    if ev.id is not None:
        for r in idx.received.of(ev.id):
            if r.worker == ev.worker and r.ts <= ev.ts and (best is None or r.ts > best):
                best = r.ts
    st = as_float(ev.get("started_ts"))
    if st is not None:
        # The worker's word, kept inside what the harness saw: not before the
        # receipt it processed (without one: not before the longest processing
        # the run asked for, plus the longest stall a fault put on that worker),
        # not after the report itself.
        lo = best if best is not None else start_floor(idx, ev)
        return min(max(st, lo), ev.ts)
    return best if best is not None else ev.ts


def start_floor(idx: Index, ev: Event) -> float:
    """The earliest a processing reported by ``ev`` can have begun without a receipt
    to bound it: the run's longest asked processing plus the longest stall a fault
    put on the worker, plus ``START_SLACK_S``, before the report."""
    return ev.ts - (idx.max_sleep_s + _longest_stall_s(idx, ev.worker) + START_SLACK_S)


# Without a receipt, a reported start may lie this much before what the run's
# longest task and longest fault on the worker allow (scheduling, prefetch).
START_SLACK_S: Final = 5.0


def _longest_stall_s(idx: Index, worker: str | None) -> float:
    """The longest lasting fault (a pause, a partition) on ``worker``: invoke to heal."""
    longest = 0.0
    open_ts: dict[str, float] = {}
    for f in idx.faults:
        if worker is None or str(f.get("target")) != worker or not f.get("ok", False):
            continue
        name = str(f.get("fault"))
        if f.get("phase", "invoke") == "invoke":
            open_ts[name] = f.ts
        elif name in open_ts:
            longest = max(longest, f.ts - open_ts.pop(name))
    return longest


def events_by_worker(events: Iterable[Event]) -> dict[str, list[Event]]:
    """worker -> its events (of the given list) sorted by ts."""
    out: dict[str, list[Event]] = {}
    for ev in events:
        w = worker_of(ev)
        if w is not None:
            out.setdefault(w, []).append(ev)
    for lst in out.values():
        lst.sort(key=lambda e: e.ts)
    return out


def first_after(events: list[Event], ts: float) -> Event | None:
    """The first event of ``events`` (sorted by ts) with ts >= ``ts``."""
    i = bisect.bisect_left([e.ts for e in events], ts)
    return events[i] if i < len(events) else None


def horizon(history: History) -> float:
    """ts of the latest event of the history: how far the record reaches."""
    return max((e.ts for e in history.events), default=float("-inf"))


def as_float(value: Any, default: float | None = None) -> float | None:
    """``value`` as a float when it is a number (not a bool), else ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def asked_to_fail(idx: Index, params: Mapping[str, Any] | None = None) -> set[str]:
    """Ids the harness asked to fail for good, so the DLQ is where they belong:
    poison bodies, ``fail_always``, ``crash_always`` (it crashes every worker that
    takes it: the queue's delivery limit dead-letters it) and ``fail_times`` >=
    ``max_attempts``. The harness's own publish records decide, never a worker's
    report."""
    out = set(idx.poison)
    out.update(i for i, crash in idx.crash_directives.items() if crash == CRASH_ALWAYS)
    max_attempts = idx.setting(params or {}, "max_attempts")
    for ident, d in idx.fail_directives.items():
        k = d.get("fail_times")
        if d.get("fail_always") or (
                isinstance(max_attempts, int) and isinstance(k, int)
                and not isinstance(k, bool) and k >= max_attempts):
            out.add(ident)
    return out


def reported_attempt(ev: Event) -> bool:
    """Does the event report an attempt (an int, not a bool)?"""
    a = ev.get("attempt")
    return isinstance(a, int) and not isinstance(a, bool)


def attempt_of(ev: Event) -> int:
    """The attempt an event reports (1 when it reports none)."""
    return int(ev.get("attempt")) if reported_attempt(ev) else 1


def fresh_receipts(receipts: list[Event]) -> list[Event]:
    """The receipts of one id that are deliveries of a *new* message: reported with
    ``redelivered`` false, other than the original publish's (the lowest attempt,
    then the earliest). The broker marks every later delivery of one message as
    redelivered, so a second first delivery is a second message: a republish."""
    first_deliveries = sorted((e for e in receipts if e.get("redelivered") is False),
                              key=lambda e: (attempt_of(e), e.ts))
    return first_deliveries[1:]


def lineage_fault(idx: Index, ident: str, fresh: Event,
                  receipts: list[Event]) -> ConnFault | None:
    """The injected fault that explains why a second message of ``ident`` exists.

    The guide's retry pattern republishes a failed task and then acks it; a fault
    between the two leaves both the requeued original and the republished copy.
    So the fresh copy is explained by an injected fault F that hit the worker of
    an earlier delivery d0 of the id when all of these hold:

    - d0 was not settled by its worker before F (a final or retry ack, a
      dead-letter) and not processed by it;
    - d0 came back: a receipt of d0's attempt, not reported as a first delivery,
      after F (``redelivery_slack_s``), which is what failed again and made the
      second copy;
    - d0 had been republished: a non-permanent ``failed``, a ``retry_scheduled``
      or a retry ack of d0's worker after its receipt and before F took effect;
      or, from a worker that reports no failures, a fresh copy whose attempt is
      later than d0's;
    - there are no more messages of the copy's attempt than failed deliveries of
      the attempt before (``_copies_within_failures``): one fault explains one
      more copy per delivery it made fail again, not any number.

    Every fault of d0's worker (or the broker) in the window is tried. Only for a
    task the harness asked to fail (``fail_times``, ``fail_always``, poison: the
    only ones a correct worker republishes). Anything else (a worker
    republishing what it processed, a nack with requeue beside a republish) is
    the worker's own doing, whatever faults happened around it."""
    if ident not in idx.fail_directives and ident not in idx.poison:
        return None
    if not _copies_within_failures(idx, ident, attempt_of(fresh), receipts):
        return None
    for d0 in receipts:
        w0 = d0.worker
        if w0 is None or d0 is fresh or d0.ts >= fresh.ts:
            continue
        near: list[ConnFault] = [*idx.conn_faults.get(w0, []), *idx.broker_faults]
        faults = sorted((f for f in near if f.injected and f.cut and f.ts <= fresh.ts
                         and max(f.ts, f.end) >= d0.ts), key=lambda f: f.ts)
        for fault in faults:
            if _republished_and_requeued(idx, ident, d0, fault, fresh, receipts):
                return fault
    return None


# A redelivery caused by a fault is received after the fault was issued; the
# receipt's ``ts`` is the worker's clock (the harness's when later), so allow this
# much for two clocks of one host or an NTP-synced pair.
RECEIPT_CLOCK_SLACK_S: Final = 1.0


def redelivery_slack_s(fault: ConnFault) -> float:
    """How much earlier than ``fault.ts`` a copy the fault handed out may be logged:
    ``RECEIPT_CLOCK_SLACK_S`` for a fault the harness issued (before it took effect);
    up to ``EFFECT_MAX_S`` more for an exit, which the harness learns of after the
    process died."""
    if fault.kind.startswith(ISSUED_PREFIXES):
        return RECEIPT_CLOCK_SLACK_S
    return RECEIPT_CLOCK_SLACK_S + EFFECT_MAX_S


def _reports_failures(idx: Index) -> bool:
    """Does the worker write ``failed`` or ``retry_scheduled`` at all?"""
    return bool(idx.count("failed") or idx.count("retry_scheduled"))


def _copies_within_failures(idx: Index, ident: str, attempt: int,
                            receipts: list[Event]) -> bool:
    """Are there no more messages of ``attempt`` (first deliveries of it) than the
    original (attempt 1) plus the deliveries of ``attempt - 1`` that failed? A worker
    that reports failures: its non-permanent ``failed`` of that attempt (or its
    ``retry_scheduled`` of this one, whichever is more); one that does not: every
    receipt of that attempt may have failed. Without attempts on every receipt the
    count says nothing (True)."""
    if not receipts or not all(reported_attempt(r) for r in receipts):
        return True
    copies = sum(1 for r in receipts
                 if r.get("redelivered") is False and attempt_of(r) == attempt)
    if _reports_failures(idx):
        failures = max(
            sum(1 for e in idx.failed.all(ident)
                if attempt_of(e) == attempt - 1 and e.get("permanent") is not True),
            sum(1 for e in idx.retry_scheduled.all(ident) if attempt_of(e) == attempt))
    else:
        failures = sum(1 for r in receipts if attempt_of(r) == attempt - 1)
    return copies <= failures + (1 if attempt == 1 else 0)


def _republished_and_requeued(idx: Index, ident: str, d0: Event, fault: ConnFault,
                              fresh: Event, receipts: list[Event]) -> bool:
    """Did ``fault`` requeue ``d0`` after its worker had republished it?"""
    w0 = d0.worker
    effect = max(fault.ts, fault.end)
    # A settlement of d0 before the fault was issued reached the broker: the fault
    # did not requeue d0.
    settled = any(a.worker == w0 and d0.ts <= a.ts < fault.ts
                  for a in (*idx.acked_final.of(ident), *idx.acked_retry.all(ident),
                            *idx.dead_lettered.all(ident)))
    processed = any(p.worker == w0 and d0.ts <= p.ts <= fault.ts
                    for p in idx.processed.of(ident))
    if settled or processed:
        return False
    came_back = any(r is not d0 and r.ts > d0.ts and r.get("redelivered") is not False
                    and attempt_of(r) == attempt_of(d0)
                    and r.ts >= fault.ts - redelivery_slack_s(fault) for r in receipts)
    if not came_back:
        return False
    failed = any(e.worker == w0 and d0.ts <= e.ts <= effect
                 and not (per is idx.failed and e.get("permanent") is True)
                 for per in (idx.failed, idx.retry_scheduled, idx.acked_retry)
                 for e in per.all(ident))
    if failed:
        return True
    # No word of d0's failure: the fresh copy's later attempt says some delivery of
    # the id failed; d0's, only if the worker reports no failures at all.
    return attempt_of(fresh) > attempt_of(d0) and not _reports_failures(idx)


# A receipt line read up to this long after a kill was issued was written before
# the kill took effect (the docker API's path, the log reader's lag).
CUT_AFTER_KILL_S: Final = 2.0
# Only a task that could have ended just before the kill can have its lines in the
# pipe then: received at most (the run's longest task, observed or asked, plus the
# longest stall a fault put on the worker) plus this before the kill.
CUT_SLACK_S: Final = 2.0


def worker_starts(idx: Index) -> dict[str, list[float]]:
    """worker -> the ts of each of its ``worker_started`` (the harness's record), sorted."""
    out: dict[str, list[float]] = {}
    for ev in idx.worker_started:
        w = worker_of(ev)
        if w is not None:
            out.setdefault(w, []).append(ev.ts)
    for lst in out.values():
        lst.sort()
    return out


def sudden_deaths(idx: Index) -> list[tuple[str, float]]:
    """(worker, ts) of every sudden death of a worker process in the run proper, from
    the harness's own record: a ``kill`` or ``crash`` fault it invoked (ok), or an exit
    it did not ask for that a signal ended (a clean exit, or one after the drain,
    flushes its lines: it is not one)."""
    out: list[tuple[str, float]] = []
    for ev in idx.faults:
        target = fault_target(ev)
        if (str(ev.get("fault", "")) in KILL_FAULTS and is_fault_invoke(ev)
                and target not in (None, "broker")):
            out.append((str(target), ev.ts))
    end = idx.end_ts
    for ev in idx.worker_exited:
        w = worker_of(ev)
        code = ev.get("code")
        signalled = ev.get("signal") is not None or (
            isinstance(code, int) and not isinstance(code, bool) and (code < 0 or code >= 128))
        if (w is not None and ev.get("requested") is False and signalled
                and (end is None or ev.ts < end)):
            out.append((w, ev.ts))
    return out


def longest_task_s(idx: Index) -> float:
    """The longest processing of the run: asked (``sleep_ms``) or seen (a worker's
    receipt of an id to its next ``processed`` of it). Only ever widens a window of
    doubt. One pass over the receipts and processings."""
    longest = idx.max_sleep_s
    for w, done in idx.processed.lists.items():
        last: dict[str, float] = {}
        recs = sorted(idx.received.lists.get(w, ()), key=lambda e: e.ts)
        j = 0
        for p in sorted(done, key=lambda e: e.ts):
            while j < len(recs) and recs[j].ts <= p.ts:
                rid = recs[j].id
                if rid is not None:
                    last[rid] = recs[j].ts
                j += 1
            r = last.get(p.id) if p.id is not None else None
            if r is not None:
                longest = max(longest, p.ts - r)
    return longest


def cut_by_kill(idx: Index, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ids of ``ids`` whose fate a kill may have cut from the worker's lines
    (only for an event preset whose lines a kill can drop: ``checkers.base.LINES_CUT``).
    All from the harness's and the broker's record, the lines only narrowing it:

    - the id's latest receipt is by a worker W, read before a sudden death of W
      (``sudden_deaths``) took effect (up to ``CUT_AFTER_KILL_S`` after it was
      issued), and no more than the run's longest task plus W's longest stall plus
      ``CUT_SLACK_S`` before it: only a task that could have ended just before the
      kill can have lines still in the pipe then;
    - W did not start again in between (the receipt's process is the one killed);
    - nobody received the id again, no line shows it processed, failed, retried,
      acked or dead-lettered after that receipt;
    - the broker's final read does not hold it (in a queue or the DLQ: not acked).

    Not a verdict: the caller makes such an id undecided instead of lost or
    unsettled, never processed."""
    by_worker: dict[str, list[float]] = {}
    for w, ts in sudden_deaths(idx):
        by_worker.setdefault(w, []).append(ts)
    if not by_worker:
        return {}
    for lst in by_worker.values():
        lst.sort()
    starts = worker_starts(idx)
    held = idx.final.remaining | idx.final.ids["dlq"]
    wanted = [i for i in ids if i not in held and not idx.processed.of(i)]
    if not wanted:
        return {}
    task_s = longest_task_s(idx)
    receipts = idx.received.events(wanted)
    out: dict[str, dict[str, Any]] = {}
    for ident in wanted:
        recs = receipts.get(ident)
        if not recs:
            continue
        last = max(recs, key=lambda e: e.ts)
        w = last.worker or ""
        kill_ts = by_worker.get(w)
        if not kill_ts:
            continue
        i = bisect.bisect_left(kill_ts, last.ts - CUT_AFTER_KILL_S)
        if i >= len(kill_ts):
            continue
        kill = kill_ts[i]
        window_s = task_s + _longest_stall_s(idx, w) + CUT_SLACK_S
        if last.ts < kill - window_s:
            continue
        lo, hi = min(last.ts, kill), max(last.ts, kill)
        if any(lo < t < hi for t in starts.get(w, ())):
            continue  # the receipt is of another process of W than the one killed
        later = any(e.ts >= last.ts for per in (idx.failed, idx.retry_scheduled,
                                                idx.acked_retry, idx.dead_lettered)
                    for e in per.all(ident)) or any(e.ts >= last.ts
                                                    for e in idx.acked_final.of(ident))
        if later:
            continue
        out[ident] = {"received_by": w, "received_ts": last.ts, "killed_ts": kill}
    return out


def processed_by_after(idx: Index, ident: str, worker: str | None, after: float) -> bool:
    """Did ``worker`` (any worker when None) report ``processed`` of ``ident`` at or
    after ``after``?"""
    return any(e.ts >= after and (worker is None or e.worker == worker)
               for e in idx.processed.of(ident))
