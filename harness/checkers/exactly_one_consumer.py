"""exactly-one-consumer: the guide's "Message is locked until acknowledged".

A delivery of id X to worker W is held over the interval [receipt ts, end],
where end is W's first settlement of X after the receipt (``acked``,
``dead_lettered``, ``retry_scheduled``, ``ack_failed``), else W's ``processed``
of X, else W's exit (a ``kill`` fault's ts when earlier: the process is gone
from then), else W's ``connection_lost``, else the end of the run. Only ids
received more than once can overlap.

Two intervals of X on different workers that overlap by more than
``overlap_tolerance_s`` (default 0.1 s: events of different processes are
stamped by the same host clock, but a worker's exit is recorded a little after
the process died) mean the broker gave X to a second consumer while the first
still worked on it: a zombie. The guide's claim is then false as worded, and
RabbitMQ does exactly that once it considers the first holder's connection dead
(missed heartbeats), so each overlap is *explained* when the earlier holder (or
the broker) had a connection fault (pause, partition, blackhole, reset, kill,
exit, connection_lost, broker restart) between its receipt and the later
receipt, and *unexplained* otherwise. ``evidence["invariant_holds"]`` is True
when no overlap is unexplained; the explained ones are listed in ``explained``
with the zombie's worker, how long it kept working after the other worker got
the task (``late_by_s``) and whether its settlement failed (``ack_failed``).

Unknown when no ``received`` event was recorded.

Which facts come from the worker, and why they are safe: processing intervals
(``started_ts``/``received`` to ``processed``). An overlap is explained only by
an injected fault (``index.ConnFault.injected``: nemesis, broker faults,
requested exits, a crash-directive crash), never by a worker's own
``connection_lost`` report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, first, unknown
from harness.history import Event, History

CLAIM: Final = "exactly-one-consumer"
OVERLAP_TOLERANCE_S: Final = 0.1


@dataclass(frozen=True)
class Hold:
    worker: str | None
    start: float
    end: float
    ended_by: str
    ack_failed: bool


def _settlement_events(idx: ix.Index, ident: str) -> list[Event]:
    out = list(idx.acked_final.of(ident))
    for per in (idx.acked_retry, idx.dead_lettered, idx.retry_scheduled, idx.ack_failed):
        out.extend(per.all(ident))
    return out


def _holds(idx: ix.Index, ident: str, exits: dict[str, list[float]],
           kills: dict[str, list[float]], losses: dict[str, list[float]],
           end_of_run: float) -> list[Hold]:
    recs = idx.received.of(ident)
    settles = _settlement_events(idx, ident)
    procs = idx.processed.of(ident)
    holds: list[Hold] = []
    for n, r in enumerate(recs):
        w = r.worker
        # The next receipt of X by the same worker ends this hold at the latest.
        nxt = next((q.ts for q in recs[n + 1:] if q.worker == w), float("inf"))
        cands = [e for e in settles if e.worker == w and r.ts <= e.ts < nxt]
        ack_failed = any(e.type == "ack_failed" for e in cands)
        if cands:
            e = min(cands, key=lambda e: e.ts)
            holds.append(Hold(w, r.ts, e.ts, e.type, ack_failed))
            continue
        p = [e.ts for e in procs if e.worker == w and r.ts <= e.ts < nxt]
        if p:
            holds.append(Hold(w, r.ts, min(p), "processed", False))
            continue
        best, how = end_of_run, "end_of_run"
        for what, table in (("exit", exits), ("kill", kills), ("connection_lost", losses)):
            t = next((x for x in table.get(w or "", ()) if x >= r.ts), None)
            if t is not None and t < best:
                best, how = t, what
        holds.append(Hold(w, r.ts, best, how, False))
    return holds


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    tol = float(params.get("overlap_tolerance_s", OVERLAP_TOLERANCE_S))
    n_received = idx.count("received")
    if n_received == 0:
        return unknown(CLAIM, "no received event in the history: delivery intervals unknown")

    counts = Counter(e.id for lst in idx.received.lists.values() for e in lst)
    multi = {i for i, c in counts.items() if c > 1 and i is not None}
    idx.received.events(multi)
    idx.processed.events(multi)
    idx.acked_final.events(multi)

    def by_worker(evs: list[Event]) -> dict[str, list[float]]:
        return {w: [e.ts for e in lst] for w, lst in facts.events_by_worker(evs).items()}

    exits = by_worker(idx.worker_exited)
    losses = by_worker(idx.connection_lost)
    kills: dict[str, list[float]] = {}
    for ev in idx.faults:
        target = ix.fault_target(ev)
        if ev.get("fault") in ix.KILL_FAULTS and ix.is_fault_invoke(ev) and target:
            kills.setdefault(target, []).append(ev.ts)
    for lst in kills.values():
        lst.sort()
    end_of_run = facts.horizon(history)

    explained: dict[str, list[dict[str, Any]]] = {}
    unexplained: dict[str, list[dict[str, Any]]] = {}
    overlaps = 0
    max_late = 0.0
    for ident in multi:
        holds = sorted(_holds(idx, ident, exits, kills, losses, end_of_run),
                       key=lambda h: h.start)
        for j, later in enumerate(holds):
            for earlier in holds[:j]:
                if earlier.worker == later.worker or earlier.end - later.start <= tol:
                    continue
                overlaps += 1
                late = earlier.end - later.start
                max_late = max(max_late, late)
                item: dict[str, Any] = {
                    "zombie": earlier.worker, "zombie_received_ts": earlier.start,
                    "zombie_end_ts": earlier.end, "zombie_ended_by": earlier.ended_by,
                    "ack_failed": earlier.ack_failed, "other": later.worker,
                    "other_received_ts": later.start, "late_by_s": round(late, 4)}
                fault = idx.connection_fault(earlier.worker, earlier.start, later.start)
                if fault is not None:
                    item["explained_by"] = fault.describe()
                    explained.setdefault(ident, []).append(item)
                else:
                    unexplained.setdefault(ident, []).append(item)

    explained_only = {i: v for i, v in explained.items() if i not in unexplained}
    evidence: dict[str, Any] = {
        "received_events": n_received, "ids_received_more_than_once": len(multi),
        "overlaps": overlaps, "overlapping_ids": len(explained_only) + len(unexplained),
        "explained": len(explained_only), "unexplained": len(unexplained),
        "max_late_by_s": round(max_late, 4), "overlap_tolerance_s": tol,
        "invariant_holds": not unexplained,
    }
    expl: dict[str, Any] = {}
    if explained_only:
        ids = first(explained_only)
        expl = {"count": len(explained_only), "ids": ids,
                "by": {i: explained_only[i] for i in ids},
                "zombies": sorted({str(x["zombie"]) for v in explained_only.values()
                                   for x in v}),
                "ack_failed_seen": any(x["ack_failed"] for v in explained_only.values()
                                       for x in v)}
    if unexplained:
        ids = first(unexplained)
        return ClaimResult(
            CLAIM, False,
            f"{len(unexplained)} task(s) held by two workers at once with no connection fault "
            f"of the first holder (invariant violated); {len(explained_only)} more explained",
            {**evidence, "unexplained_ids": ids, "detail": {i: unexplained[i] for i in ids}},
            expl)
    if explained_only:
        return ClaimResult(
            CLAIM, False,
            f"the guide's 'locked until acknowledged' is false as worded: {len(explained_only)} "
            "task(s) redelivered while the first holder still worked on them (zombie, up to "
            f"{max_late:.1f} s late), each after that holder's connection fault",
            evidence, expl)
    return ClaimResult(
        CLAIM, True,
        f"no task was held by two workers at once ({len(multi)} delivered more than once, "
        "each after the previous holder let go)", evidence)
