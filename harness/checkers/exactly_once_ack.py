"""exactly-once-ack: every confirmed task is settled exactly once.

A final settlement of an id is an ``acked`` event with reason ``processed`` (or no
reason), a worker's ``dead_lettered`` event, or, when no worker reported a
dead-lettering of that id, its presence in the DLQ's final contents (the broker
dead-lettered it: a nack without requeue, a TTL, a delivery limit).
An ``acked`` with reason ``retry`` is not final: the task was re-published.

Two settlements of one id mean the broker delivered it twice, which it does only
when the first delivery's ack never arrived. So a second settlement is
*explained* when the earlier settlement's worker (or the broker) had a connection
fault between the earlier delivery's receipt, or the earlier settlement minus
``ack_slack_s`` (default 1 s: an ack written just before a kill may never reach the
broker) if that is earlier, and the later delivery's receipt (the later
settlement's ts when no receipt was reported). Otherwise it is unexplained: a
violation. A confirmed id never settled and not left in any queue is a violation.
Multiple settlements are checked for every id, confirmed or not.

Held: when the drain ended with the broker's queues empty and deliveries held
unacked by idle consumers (``drain.held``, the broker's own counts), the tasks
the final read then found in the main queue (requeued when the harness stopped
the holders; the runner records ``held`` only when the retry queues were empty
too) were delivered and never settled: false, naming the holders. This needs no
worker event at all, and a worker's silence about a delivery excuses nothing.

Which facts come from the worker, and why they are safe: ``acked`` and
``dead_lettered`` reports. A second settlement makes the claim false unless an
injected fault explains it; a missing one is counted from the broker's side
(the final queues, the DLQ), and a reported ack never excuses a task the
broker still holds.

Unknown when the history has no ``acked`` event (the worker does not report acks;
``evidence.observable`` false) or nothing was confirmed. Even then a processed task
the DLQ holds, that nothing asked to fail, is false (settled twice, by the broker's
final read), except a task with an ``after_process`` crash directive for a worker
said to honour directives: the crash ended it before its ack, so the DLQ entry can
be its one settlement (at worst this turns a false into unknown, never into true).

Read from a preset whose lines a kill can drop (Dramatiq's pipe, ``base.LINES_CUT``),
a task never settled whose last receipt was by a process then killed, and that
nobody received again, is undecided (``facts.cut_by_kill``), not unsettled: its ack
line may be among the dropped ones. A FAIL on the other ids stands.

An asked crash seen only by a late exit (``Index.crash_span``) explains a second
settlement only when it is of a later delivery received in the span.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import LINES_CUT, ClaimResult, first, unknown
from harness.history import Event, History

CLAIM: Final = "exactly-once-ack"
# An ack is written to the socket within milliseconds of the side effect; a death
# this soon after it can have lost the "acked" line but not the ack.
ACK_UNOBSERVED_S: Final = 2.0
ACK_SLACK_S: Final = 1.0
# Settlements of one id judged pair by pair: a task looping through requeues is
# settled thousands of times, and each pair scans the id's receipts. The count of
# settlements is always complete; past this many, the first ones decide.
PAIRS_JUDGED_MAX: Final = 64


def _settlements(idx: ix.Index, ident: str) -> list[tuple[float, str | None, str]]:
    """(ts, worker, kind) of every final settlement of ``ident``, sorted by ts."""
    out: list[tuple[float, str | None, str]] = []
    for e in idx.acked_final.of(ident):
        out.append((e.ts, e.worker, "acked"))
    dls = idx.dead_lettered.all(ident)
    for e in dls:
        out.append((e.ts, e.worker, "dead_lettered"))
    if not dls and ident in idx.final.ids["dlq"]:
        perm = [f for f in idx.failed.all(ident) if f.get("permanent")]
        if perm:
            last = max(perm, key=lambda f: f.ts)
            out.append((last.ts, last.worker, "in_dlq"))
        else:
            out.append((math.inf, None, "in_dlq"))
    out.sort(key=lambda s: s[0])
    return out


def _receipt(received: list[Event], worker: str | None, before: float,
             after: float | None) -> float | None:
    """The latest receipt by ``worker`` at or before ``before`` (and after ``after``)."""
    best: float | None = None
    for r in received:
        if r.worker != worker or r.ts > before:
            continue
        if after is not None and r.ts <= after:
            continue
        if best is None or r.ts > best:
            best = r.ts
    return best


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    slack_s = float(params.get("ack_slack_s", ACK_SLACK_S))
    n_confirmed = idx.count_where(lambda v: bool(v & ix.OK))
    n_acked = idx.count("acked")
    held_raw = idx.drain.get("held") if idx.drain is not None else None
    held_by: list[Any] = list(held_raw) if isinstance(held_raw, list) else []
    held_ids = idx.final.ids["main"] if held_by else set()
    # Every id there: the main and retry queues were empty at the bound and
    # nothing was published after, so only the stopped holders' requeued
    # deliveries can be in the main queue (a worker's silence about one of them
    # excuses nothing).
    if held_ids:
        holders = ", ".join(str(h.get("connection") if isinstance(h, dict) else h)
                            for h in held_by[:5])
        return ClaimResult(
            CLAIM, False,
            f"{len(held_ids)} task(s) delivered and never settled: held unacked by idle "
            f"consumer(s) ({holders}) until "
            "the drain bound expired, requeued only when the harness stopped them",
            {"confirmed": n_confirmed, "acked_events": n_acked, "held": held_by[:20],
             "held_ids": first(held_ids), "never_settled": len(held_ids)})
    if n_acked == 0:
        # Per-task acks are not visible, but the broker's final read still is: a
        # task a worker processed that the DLQ also holds, and the harness did not
        # ask to fail, was settled twice (processed, then dead-lettered).
        dlq_ids = idx.final.ids["dlq"]
        twice = ({i for i in dlq_ids if idx.has(i, ix.PROC)} - facts.asked_to_fail(idx, params)
                 if dlq_ids else set())
        # A task whose own after_process crash ended its processing before the ack
        # (a worker that honours directives) was never acked: in the DLQ, it was
        # settled once (Celery rejects what a dead pool child ran, with
        # acks_on_failure_or_timeout=False, to the queue's dead-letter exchange).
        crashed = ({i for i in twice if idx.crash_directives.get(i) == "after_process"}
                   if twice and idx.capabilities.get("directives") else set())
        twice -= crashed
        if twice:
            return ClaimResult(
                CLAIM, False,
                f"{len(twice)} processed task(s) also found in the DLQ that the harness did "
                "not ask to fail: settled twice (the broker's final read; the worker "
                "reports no acks)",
                {"confirmed": n_confirmed, "acked_events": 0,
                 "processed_and_dead_lettered": len(twice), "unexplained_ids": first(twice)})
        return unknown(CLAIM, "no acked event in the history: the worker does not report acks",
                       confirmed=n_confirmed, observable=False,
                       **({"crashed_and_dead_lettered": len(crashed),
                           "crashed_and_dead_lettered_ids": first(crashed)} if crashed else {}))
    if not n_confirmed:
        return unknown(CLAIM, "no publish was confirmed: nothing to settle", acked=n_acked)

    fin = idx.final
    dlq = fin.ids["dlq"]
    # Ids in the DLQ that no worker reported dead-lettering: the broker did.
    dlq_pseudo = {i for i in dlq if not idx.has(i, ix.DL)}
    # More than one settlement, and none: from the state bits (C-speed counts; a
    # loop over the ids only when some exist).
    multi = set(idx.acked_twice) | set(idx.dead_lettered.more)
    multi |= idx.ids_where(lambda v: bool(v & ix.ACK) and bool(v & ix.DL))
    multi.update(i for i in dlq_pseudo if idx.has(i, ix.ACK))
    unsettled = idx.ids_where(lambda v: bool(v & ix.OK) and not v & (ix.ACK | ix.DL))
    if unsettled:
        unsettled -= dlq
    never = unsettled - fin.remaining if unsettled else unsettled
    # A worker killed right after it acked may die before it writes its "acked"
    # line: the broker has the ack (the task is in no queue and was never
    # redelivered), the history does not. Such a task, processed by a worker whose
    # connection died within ACK_UNOBSERVED_S after the side effect, counts as
    # settled once by an unobserved ack (shown as explained, not a violation).
    unobserved: dict[str, dict[str, Any]] = {}
    if never:
        done = idx.processed.events(never)
        again = idx.received.events(never)
        for ident in list(never):
            for ev in done.get(ident, ()):
                fault = idx.connection_fault(ev.worker, ev.ts, ev.ts + ACK_UNOBSERVED_S)
                later = [r for r in again.get(ident, ()) if r.ts > ev.ts]
                if fault is not None and not later:
                    unobserved[ident] = {"processed_by": ev.worker, "processed_ts": ev.ts,
                                         "died": fault.describe()}
                    break
        never = never - unobserved.keys()
    # An event preset whose lines a kill can drop (Dramatiq's pipe): the ack line of a
    # task the killed process held may be among them (``facts.cut_by_kill``).
    cut: dict[str, dict[str, Any]] = {}
    if never and params.get(LINES_CUT):
        cut = facts.cut_by_kill(idx, never)
        never = never - cut.keys()

    explained: dict[str, dict[str, Any]] = {}
    unexplained: dict[str, dict[str, Any]] = {}
    receipts = idx.received.events(multi)
    idx.acked_final.events(multi)
    for ident in multi:
        sets = _settlements(idx, ident)[:PAIRS_JUDGED_MAX + 1]
        received = receipts.get(ident, [])
        for (ts1, w1, k1), (ts2, w2, k2) in pairwise(sets):
            r1 = _receipt(received, w1, ts1, None)
            lo = ts1 - slack_s if r1 is None else min(r1, ts1 - slack_s)
            r2 = _receipt(received, w2, ts2, r1 if w2 == w1 else None)
            hi = r2 if r2 is not None else ts2
            # A DLQ entry nobody reported has no time: no fault can be placed
            # before it, so it explains nothing.
            fault = None if math.inf in (ts1, ts2) else (
                idx.connection_fault(w1, lo, hi) or idx.crash_span(w1, r1, r2))
            # The second settlement of a second message (a republish) is explained
            # by that message's lineage only (``facts.lineage_fault``).
            fresh = facts.fresh_receipts(sorted(received, key=lambda e: e.ts))
            copy = next((e for e in fresh if e.worker == w2 and e.ts == r2), None)
            if copy is not None:
                # Cut or not, only the lineage explains why a second message exists;
                # it can be another worker's fault (a kill right after that worker
                # republished a failed attempt).
                fault = facts.lineage_fault(idx, ident, copy, received)
            info: dict[str, Any] = {"settlements": [[k1, w1, ts1], [k2, w2, ts2]]}
            if fault is not None:
                info["explained_by"] = fault.describe()
                explained.setdefault(ident, info)
            else:
                unexplained.setdefault(ident, info)
    for ident in unexplained:
        explained.pop(ident, None)
    for ident, info in unobserved.items():
        explained.setdefault(ident, {"unobserved_ack": info})

    settled_once = (n_confirmed - len(unsettled) - sum(1 for i in multi if idx.has(i, ix.OK))
                    + len(unobserved))
    evidence: dict[str, Any] = {
        "confirmed": n_confirmed,
        "acked_events": n_acked,
        "final_acks": len(idx.acked_final),
        "dead_letter_settlements": len(idx.dead_lettered) + len(dlq_pseudo),
        "settled_once": settled_once,
        "settled_more_than_once": len(multi),
        "explained": len(explained),
        "unexplained": len(unexplained),
        "never_settled": len(never),
        "acked_unobserved": len(unobserved),
    }
    if cut:
        evidence["lines_cut"] = len(cut)
    expl = {}
    if explained:
        ids = first(explained)
        expl = {"count": len(explained), "ids": ids, "by": {i: explained[i] for i in ids}}
    if unexplained:
        ids = first(unexplained)
        return ClaimResult(
            CLAIM, False,
            f"{len(unexplained)} task(s) settled more than once with no connection fault "
            "to explain the lost ack",
            {**evidence, "unexplained_ids": ids, "detail": {i: unexplained[i] for i in ids},
             "never_settled_ids": first(never)},
            expl,
        )
    if never:
        holes = [r for r in ("main", "retry", "dlq") if fin.failed[r] or fin.partial[r]]
        if not fin.captured["main"] or holes:
            return unknown(
                CLAIM,
                f"{len(never)} confirmed task(s) never settled, but the final queue contents "
                "were not fully captured: they may still be queued",
                **evidence, never_settled_ids=first(never))
        return ClaimResult(
            CLAIM, False,
            f"{len(never)} confirmed task(s) never settled (not acked, not dead-lettered, "
            "not queued)",
            {**evidence, "never_settled_ids": first(never)},
            expl,
        )
    if cut:
        ids = first(cut)
        return unknown(CLAIM, f"{len(cut)} task(s) held by a killed worker show no settlement "
                       "and were never received again, and the kill may have dropped their "
                       f"ack lines: {params[LINES_CUT]}",
                       **evidence, lines_cut_ids=ids, lines_cut_by={i: cut[i] for i in ids})
    extra = f"; {len(explained)} settled twice after a connection fault" if explained else ""
    return ClaimResult(
        CLAIM, True,
        f"every confirmed task settled exactly once or still queued{extra}",
        evidence, expl,
    )
