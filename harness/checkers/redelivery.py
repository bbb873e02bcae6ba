"""redelivery-after-crash: "If pod crashes, message is redelivered to another pod".

Kills are ``fault`` invocations (ok) of ``kill`` (or ``crash``) on a worker, and
``worker_exited`` events with ``requested`` False (the worker died on its own).
A kill and a crash report of the same worker within ``merge_s`` (default 5 s),
with no ``worker_started`` between, are one kill.

For a kill of worker W at ts_k, the in-flight ids are those whose latest receipt
by W (since W's previous kill or the last cut of its connection that the
harness saw, ``Index.last_cut_before``, which requeued everything W held then;
not a worker's own ``connection_lost``) is before ts_k, that no worker received
again before ts_k (``Index.superseded``), and that W did not settle (ack, retry, dead-letter)
after that receipt and before W started again (a kill takes effect a few ms
after it is issued; what W settled meanwhile was not in flight). Each must
afterwards be received with ``redelivered`` true (or not reported) by another worker, or by W's
new incarnation after a ``worker_started``, at or after ts_k - ``slack_s``
(default 0.5 s: the nemesis records the kill's ts around the signal), and then be
completed: *processed* by a worker after that redelivery. A redelivered task
that ends in the DLQ is complete only if the harness asked it to fail (poison,
``fail_always``, ``crash_always``, retries past the limit): a worker that
dead-letters what comes back with ``redelivered=true`` (a "poison guard") has not
redelivered the work, it has dropped it. A ``crash_always`` task (it crashes every
worker that takes it) that the DLQ holds needs no redelivery after the kill it
caused last: the queue's delivery limit dead-letters it instead.

Which facts come from the worker, and why they are safe: ``received`` (which
deliveries a worker held, and their ``redelivered`` flag) and ``processed``.
Receipts can only add tasks to the in-flight set that must come back, and a
task a worker does not report receiving cannot be judged here (unknown when
there are none at all); ``redelivered`` false excludes a receipt from counting
as the redelivery, so a worker that misreports it makes the claim harder, not
easier. A worker's ``acked``/``dead_lettered`` reports only decide what was not
in flight (settled before the kill), never that a task was completed.

Read from a preset whose lines a kill can drop (Dramatiq's pipe, ``base.LINES_CUT``),
a task not redelivered that no worker reported processing is undecided
(``facts.cut_by_kill``): it may have been processed and acked in the dropped lines.
A FAIL on the other ids stands.

Evidence per kill: in-flight count, redelivered and completed counts, redelivery
latency (receipt ts - ts_k; max and median), ids not redelivered/not completed.
Unknown when there was no kill, when no killed worker held anything in flight,
when the worker reports no ``received`` events, or when the only failures are
tasks still queued after an incomplete drain.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import LINES_CUT, ClaimResult, first, unknown
from harness.history import History

CLAIM: Final = "redelivery-after-crash"
MERGE_S: Final = 5.0
SLACK_S: Final = 0.5


@dataclass(frozen=True)
class Kill:
    worker: str
    ts: float
    how: str  # "fault:kill", "crash"


def find_kills(idx: ix.Index, merge_s: float = MERGE_S) -> list[Kill]:
    raw: list[Kill] = []
    for ev in idx.faults:
        name = str(ev.get("fault", ""))
        target = ix.fault_target(ev)
        if name in ix.KILL_FAULTS and ix.is_fault_invoke(ev) and target not in (None, "broker"):
            raw.append(Kill(str(target), ev.ts, f"fault:{name}"))
    for ev in idx.worker_exited:
        w = ix.worker_of(ev)
        if w is not None and not ev.get("requested", False):
            raw.append(Kill(w, ev.ts, "crash"))
    starts = facts.worker_starts(idx)
    raw.sort(key=lambda k: (k.worker, k.ts))
    kills: list[Kill] = []
    for k in raw:
        prev = kills[-1] if kills else None
        if (prev is not None and prev.worker == k.worker and k.ts - prev.ts <= merge_s
                and not _started_between(starts, k.worker, prev.ts, k.ts)):
            continue
        kills.append(k)
    kills.sort(key=lambda k: k.ts)
    return kills


def _next_start(starts: dict[str, list[float]], worker: str, after: float) -> float:
    lst = starts.get(worker)
    if not lst:
        return float("inf")
    i = bisect.bisect_right(lst, after)
    return lst[i] if i < len(lst) else float("inf")


def _started_between(starts: dict[str, list[float]], worker: str, lo: float,
                     hi: float) -> bool:
    lst = starts.get(worker)
    if not lst:
        return False
    i = bisect.bisect_right(lst, lo)
    return i < len(lst) and lst[i] <= hi


# A lasting fault (a pause, a partition) cuts a connection up to two heartbeat
# timeouts after it begins: a cut of another worker this long before a publish
# may still explain a later redelivery.
CUT_LAG_S: Final = 30.0


def _held_unreported(history: History, idx: ix.Index, kills: list[Kill],
                     in_flight_by_kill: list[list[str]], slack_s: float
                     ) -> list[tuple[int, str]]:
    """(kill index, id) of the tasks a killed worker held without a report: a
    worker that reports a receipt only when it starts a task (a serial consumer
    with a prefetch) holds more than it says. Such an id's first receipt, by
    another worker (or the killed one restarted) after the kill, says
    ``redelivered`` (the broker handed it out before, to a connection that died),
    and between its publish and that receipt nothing but this kill could have cut a
    connection: no other kill, no fault of the harness's on another worker or the
    broker (a lasting one counted from its invoke to its heal and ``CUT_LAG_S``
    more), no other worker's own ``connection_lost``. Only then is the killed
    worker the one that held it, and it must come back and be completed.

    The ``redelivered`` flag is the worker's word: such ids can turn the claim
    false (their redelivery was not completed), never true (``check`` keeps a
    claim whose reported in-flight set is empty undecided)."""
    if not kills:
        return []
    published: dict[str, float] = {}
    for ev in history.events:
        if ev.type == "publish" and ev.id is not None:
            published.setdefault(ev.id, ev.ts)
    known = {i for lst in in_flight_by_kill for i in lst}
    starts = facts.worker_starts(idx)
    # (from, to, worker or None for the broker) of everything that may have cut a
    # connection: the index's cuts, and the harness's faults from invoke to heal.
    spans = [(f.ts, max(f.ts, f.end) + CUT_LAG_S, f.worker)
             for fs in idx.conn_faults.values() for f in fs]
    spans += [(f.ts, max(f.ts, f.end) + CUT_LAG_S, None) for f in idx.broker_faults]
    healed: dict[tuple[str, str], list[float]] = {}
    for ev in idx.faults:
        if ev.get("phase") == "heal":
            healed.setdefault((str(ev.get("fault")), str(ix.fault_target(ev))), []).append(ev.ts)
    for ev in idx.faults:
        if not ix.is_fault_invoke(ev):
            continue
        target = ix.fault_target(ev)
        key = (str(ev.get("fault")), str(target))
        heal = min((t for t in healed.get(key, ()) if t >= ev.ts), default=float("inf"))
        spans.append((ev.ts, heal + CUT_LAG_S,
                      None if target in (None, "broker", "cluster") else str(target)))
    out: list[tuple[int, str]] = []
    for ident, p_ts in published.items():
        recs = idx.received.of(ident)
        if ident in known or not recs:
            continue
        first_r = min(recs, key=lambda e: e.ts)
        if first_r.get("redelivered") is not True:
            continue
        hits = [n for n, k in enumerate(kills) if p_ts <= k.ts <= first_r.ts + slack_s]
        if len(hits) != 1:
            continue
        k = kills[hits[0]]
        if first_r.worker == k.worker and not _started_between(starts, k.worker, k.ts,
                                                                first_r.ts):
            continue  # the killed worker's own receipt: the reported path judges it
        causes = {w for lo, hi, w in spans if lo <= first_r.ts and hi >= p_ts}
        if causes <= {k.worker}:
            out.append((hits[0], ident))
    return out


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    slack_s = float(params.get("slack_s", SLACK_S))
    kills = find_kills(idx, float(params.get("merge_s", MERGE_S)))
    if not kills:
        return unknown(CLAIM, "no worker was killed and none crashed: nothing to redeliver",
                       kills=0)
    if idx.count("received") == 0:
        return unknown(CLAIM, "the worker reports no received events: in-flight tasks unknown",
                       kills=len(kills))

    killed = {k.worker for k in kills}
    # Receipts by killed workers, sorted by ts: worker -> [(ts, id)].
    by_worker: dict[str, list[tuple[float, str]]] = {}
    for w in killed:
        recs = [(e.ts, e.id) for e in idx.received.lists.get(w, ()) if e.id is not None]
        recs.sort()
        by_worker[w] = recs
    settlements = {w: _settlements_by(idx, w) for w in killed}
    starts = facts.worker_starts(idx)
    dlq = idx.final.ids["dlq"]
    asked = facts.asked_to_fail(idx, params)
    remaining = idx.final.remaining

    per_kill: list[dict[str, Any]] = []
    in_flight_by_kill: list[list[str]] = []
    all_not_redelivered: set[str] = set()
    all_not_completed: set[str] = set()
    latencies: list[float] = []
    prev_kill: dict[str, float] = {}
    total_in_flight = 0
    for k in kills:
        # Deliveries older than W's previous kill or connection fault were already
        # requeued by the broker then: only those since are in flight at this kill.
        lo = max(prev_kill.get(k.worker, float("-inf")), idx.last_cut_before(k.worker, k.ts))
        prev_kill[k.worker] = k.ts
        latest: dict[str, float] = {}
        for ts, ident in by_worker[k.worker]:
            if lo <= ts < k.ts:
                latest[ident] = ts  # sorted by ts: the last one wins
        settled = settlements[k.worker]
        # A kill takes effect some ms after it is issued (the docker API's path),
        # and a settlement the dying worker still got out in that window counts:
        # anything W settled before its next start was not in flight.
        end = _next_start(starts, k.worker, k.ts)
        in_flight = [i for i, r_ts in latest.items()
                     if not idx.superseded(i, r_ts, k.ts)
                     and not any(r_ts <= ts < end for ts in settled.get(i, ()))]
        in_flight_by_kill.append(in_flight)
    unreported: set[str] = set()
    for n, ident in _held_unreported(history, idx, kills, in_flight_by_kill, slack_s):
        in_flight_by_kill[n].append(ident)
        unreported.add(ident)
    # The events of the in-flight ids, gathered in one pass each.
    all_in_flight = {i for lst in in_flight_by_kill for i in lst}
    received_ev = idx.received.events(all_in_flight)
    idx.acked_final.events(all_in_flight)
    processed_ev = idx.processed.events(all_in_flight)
    # A task the killed worker had processed, that nobody received again and no
    # queue holds, was acked: the worker died before it could write "acked" (the
    # ack is on the wire within milliseconds of the side effect). Not in flight.
    acked_unobserved: set[str] = set()
    for k, in_flight in zip(kills, in_flight_by_kill, strict=True):
        for ident in list(in_flight):
            reborn = _next_start(starts, k.worker, k.ts)
            done_by_w = [e.ts for e in processed_ev.get(ident, ())
                         if e.worker == k.worker and e.ts <= min(k.ts + slack_s, reborn)]
            again = done_by_w and any(e.ts > min(done_by_w)
                                      for e in received_ev.get(ident, ()))
            if done_by_w and not again and ident not in remaining and ident not in dlq:
                in_flight.remove(ident)
                acked_unobserved.add(ident)
    for k, in_flight in zip(kills, in_flight_by_kill, strict=True):
        total_in_flight += len(in_flight)
        not_redelivered: list[str] = []
        not_completed: list[str] = []
        ended_in_dlq: list[str] = []
        lat: list[float] = []
        for ident in in_flight:
            red_ts = _redelivery(idx, starts, ident, k, slack_s)
            if (red_ts is None and ident in dlq
                    and idx.crash_directives.get(ident) == ix.CRASH_ALWAYS):
                # The crash loop's end: the queue's delivery limit dead-lettered the
                # message that crashes every worker instead of redelivering it (the
                # DLQ listing is the broker's word; dead-letter judges how it got there).
                ended_in_dlq.append(ident)
                continue
            if red_ts is None:
                not_redelivered.append(ident)
                continue
            lat.append(max(0.0, red_ts - k.ts))
            if not _completed(idx, ident, red_ts, dlq & asked):
                not_completed.append(ident)
        latencies.extend(lat)
        all_not_redelivered.update(not_redelivered)
        all_not_completed.update(not_completed)
        per_kill.append({
            "worker": k.worker, "ts": k.ts, "how": k.how,
            "in_flight": len(in_flight), "redelivered": len(lat),
            "completed": len(lat) - len(not_completed),
            "latency_max_s": round(max(lat), 6) if lat else None,
            "latency_median_s": round(statistics.median(lat), 6) if lat else None,
            "not_redelivered_ids": first(not_redelivered),
            "not_completed_ids": first(not_completed),
            **({"dead_lettered_by_limit_ids": first(ended_in_dlq)} if ended_in_dlq else {}),
        })

    # An event preset whose lines a kill can drop (Dramatiq's pipe): a task not
    # redelivered may have been processed and acked in the lines the kill dropped.
    cut: dict[str, dict[str, Any]] = {}
    if all_not_redelivered and params.get(LINES_CUT):
        cut = facts.cut_by_kill(idx, all_not_redelivered)
        all_not_redelivered -= cut.keys()
    evidence: dict[str, Any] = {
        "kills": len(kills),
        "in_flight": total_in_flight,
        "redelivered": len(latencies),
        "not_redelivered": len(all_not_redelivered),
        "not_completed": len(all_not_completed),
        "acked_unobserved": len(acked_unobserved),
        "latency_max_s": round(max(latencies), 6) if latencies else None,
        "latency_median_s": round(statistics.median(latencies), 6) if latencies else None,
        "per_kill": per_kill[:20],
    }
    if cut:
        evidence["lines_cut"] = len(cut)
    if total_in_flight == 0:
        return unknown(CLAIM, f"{len(kills)} kill(s), but the killed worker(s) held no task in "
                       "flight: nothing to redeliver", **evidence)
    # Tasks held without a report (``_held_unreported``) are found by the worker's
    # ``redelivered`` flag: they can fail the claim, not pass it alone.
    still = {i for lst in in_flight_by_kill for i in lst}
    unreported_only = still <= unreported
    if unreported & still:
        evidence["held_unreported"] = len(unreported & still)
    if all_not_redelivered:
        return ClaimResult(
            CLAIM, False,
            f"{len(all_not_redelivered)} of {total_in_flight} task(s) in flight on a killed "
            "worker were never redelivered to another worker",
            {**evidence, "not_redelivered_ids": first(all_not_redelivered)})
    if all_not_completed:
        if idx.drain_complete is not True and all_not_completed <= remaining:
            return unknown(
                CLAIM,
                f"{len(all_not_completed)} redelivered task(s) not completed, still queued "
                "after an incomplete drain", **evidence,
                not_completed_ids=first(all_not_completed))
        return ClaimResult(
            CLAIM, False,
            f"{len(all_not_completed)} of {total_in_flight} redelivered task(s) were never "
            "completed", {**evidence, "not_completed_ids": first(all_not_completed)})
    if cut:
        ids = first(cut)
        return unknown(CLAIM, f"{len(cut)} task(s) in flight on a killed worker were never "
                       "received again and show neither processing nor ack, and the kill may "
                       f"have dropped those lines: {params[LINES_CUT]}",
                       **evidence, lines_cut_ids=ids, lines_cut_by={i: cut[i] for i in ids})
    if unreported_only:
        return unknown(CLAIM, f"{len(kills)} kill(s): the killed worker(s) reported no task in "
                       f"flight; {total_in_flight} it held unreported came back and were "
                       "completed, which the worker's redelivered flags alone say",
                       **evidence)
    return ClaimResult(
        CLAIM, True,
        f"all {total_in_flight} task(s) in flight on {len(kills)} killed worker(s) redelivered "
        f"and completed; latency median {evidence['latency_median_s']} s, "
        f"max {evidence['latency_max_s']} s",
        evidence)


def _settlements_by(idx: ix.Index, worker: str) -> dict[str, list[float]]:
    """id -> ts of each settlement (ack, retry, dead-letter) by ``worker``."""
    out: dict[str, list[float]] = {}
    for e in idx.acked_final.lists.get(worker, ()):
        if e.id is not None:
            out.setdefault(e.id, []).append(e.ts)
    for per in (idx.acked_retry, idx.dead_lettered, idx.retry_scheduled):
        for ident, e in per.first.items():
            if e.worker == worker:
                out.setdefault(ident, []).append(e.ts)
        for ident, lst in per.more.items():
            for e in lst:
                if e.worker == worker:
                    out.setdefault(ident, []).append(e.ts)
    return out


def _redelivery(idx: ix.Index, starts: dict[str, list[float]], ident: str, k: Kill,
                slack_s: float) -> float | None:
    best: float | None = None
    for r in idx.received.of(ident):
        if r.ts < k.ts - slack_s or r.get("redelivered", True) is False:
            continue
        if r.worker == k.worker and not _started_between(starts, k.worker, k.ts, r.ts):
            continue
        if best is None or r.ts < best:
            best = r.ts
    return best


def _completed(idx: ix.Index, ident: str, after: float, dlq_asked: set[str]) -> bool:
    """Processed after the redelivery, or (asked to fail) found in the DLQ."""
    return ident in dlq_asked or facts.processed_by_after(idx, ident, None, after)
