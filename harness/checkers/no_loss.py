"""no-loss: every confirmed task ends processed, dead-lettered or still queued.

The accounting follows Jepsen's ``total-queue`` checker:

- attempted:     ids of ``publish`` events (any outcome);
- confirmed:     ids whose publish outcome is ``ok`` (the broker confirmed them);
- processed:     ids with at least one ``processed`` event;
- dead_lettered: ids listed in a ``final_queue`` of role ``dlq``;
- asked:         ids the harness asked to fail for good (poison, ``fail_always``, ``crash_always``,
                 ``fail_times`` >= ``max_attempts``: ``facts.asked_to_fail``);
- remaining:     ids listed in a ``final_queue`` of role ``main`` or ``retry``;
- lost       = confirmed - (processed | (dead_lettered & asked) | remaining)
                                                                   -> violation;
- dead-lettered, never processed = (dead_lettered - asked) & confirmed, not
  processed: the DLQ is not a success; a worker that dead-letters what it
  should process (a "poison guard" on redelivered=true) lost that work
                                                                   -> violation;
- unexpected = processed ids never attempted                       -> violation;
- recovered  = ids published with outcome ``unknown``/``fail`` yet processed (fine);
- duplicated = ids processed more than once (counted; no-duplicate-processing judges).

The reverse: RabbitMQ dead-letters at most once (classic queues, and quorum
queues unless their dead-letter strategy is at-least-once), so an asked-to-fail
task may vanish when a broker fault hits it on its way to the DLQ. A lost id
that was asked to fail, received by a worker, and followed by an injected
broker fault (restart or stop, from the harness's own fault record) is
explained by that, not lost (``ClaimResult.explained``).

Read from an event preset (a framework's log lines) in a run where a worker
process died, an id that its own ``after_process`` crash ended shows no success
line whether or not its side effect happened: undecided, never lost and never
processed (``UNSEEN_CRASHES``). Read from a preset whose lines a kill can drop
(Dramatiq's pipe, ``base.LINES_CUT``), an unprocessed id whose last receipt was by
a process then killed, and that nobody received again, is undecided too
(``facts.cut_by_kill``): its processing and ack may be in the lines the kill
dropped. A FAIL on the other ids stands.

Which facts come from the worker: ``processed`` (the contract's required
event: a worker that reports processing it never did is a worker lying about
its side effect, which no broker evidence can see). Everything else is the
harness's (publish confirms, faults) or the broker's (the final destructive
read of every queue). A worker's ``dead_lettered`` report is never counted:
only the DLQ's contents are.

Unknown when nothing was confirmed, when the main queue's final contents were not
captured (or a listing failed or was partial while ids are unaccounted), or when
the drain did not complete and ids are unaccounted: they may still be on their way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import LINES_CUT, ClaimResult, first, unknown
from harness.history import History

CLAIM: Final = "no-loss"
# A reason, set by ``checkers.check_all`` from the run's event preset
# (``harness.presets``) when a worker process died: a task whose process its own
# ``after_process`` crash directive ended did its side effect, but a log line
# written after the side effect never came. Such an id that the lines show
# unprocessed is undecided, not lost; every other id is judged as always.
UNSEEN_CRASHES: Final = "unseen_crashes"


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    fin = idx.final
    asked = facts.asked_to_fail(idx, params)
    dlq = fin.ids["dlq"] & asked
    dlq_unasked = fin.ids["dlq"] - asked
    remaining = fin.remaining
    n_confirmed = idx.count_where(lambda v: bool(v & ix.OK))
    n_processed = idx.count_where(lambda v: bool(v & ix.PROC))
    never_processed = idx.ids_where(lambda v: bool(v & ix.OK) and not v & ix.PROC)
    lost = never_processed - dlq if never_processed else never_processed
    if lost:
        lost -= remaining
    wrongly_dead = (lost & dlq_unasked) - remaining if lost else set()
    vanished = _vanished_in_transit(idx, lost & asked) if lost else {}
    if vanished:
        lost -= vanished.keys()
    unseen: set[str] = set()
    # Only for a worker that honours directives: a crash directive it ignored ended nothing.
    if lost and params.get(UNSEEN_CRASHES) and idx.capabilities.get("directives"):
        unseen = {i for i in lost if idx.crash_directives.get(i) == "after_process"}
        lost -= unseen
    # An event preset whose lines a kill can drop (Dramatiq's pipe): a task the killed
    # process held may have been processed and acked in the lost lines.
    cut: dict[str, dict[str, Any]] = {}
    if lost and params.get(LINES_CUT):
        cut = facts.cut_by_kill(idx, lost)
        lost -= cut.keys()
    unexpected = idx.ids_where(lambda v: bool(v & ix.PROC) and not v & ix.PUBLISHED)
    counts: dict[str, Any] = {
        "attempted": idx.count_where(lambda v: bool(v & ix.PUBLISHED)),
        "confirmed": n_confirmed,
        "processed": n_processed,
        "dead_lettered": len(dlq),
        "dead_lettered_unasked": len(dlq_unasked),
        "dead_lettered_never_processed": len(wrongly_dead),
        "asked_to_fail": len(asked),
        "remaining": len(remaining),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "recovered": idx.count_where(
            lambda v: bool(v & ix.PROC) and bool(v & (ix.UNK | ix.FAIL)) and not v & ix.OK),
        "duplicated": idx.count_where(lambda v: bool(v & ix.PROC2)),
        "publish_unknown": idx.count_where(lambda v: bool(v & ix.UNK) and not v & ix.OK),
        "publish_failed": idx.count_where(
            lambda v: bool(v & ix.FAIL) and not v & (ix.OK | ix.UNK)),
        "drain_complete": idx.drain_complete,
        "final_captured": dict(fin.captured),
    }
    if unseen:
        counts["unseen_crashed"] = len(unseen)
    if cut:
        counts["lines_cut"] = len(cut)
    if unexpected:
        return ClaimResult(
            CLAIM, False,
            f"{len(unexpected)} processed task(s) were never published",
            {**counts, "unexpected_ids": first(unexpected), "lost_ids": first(lost)},
        )
    if not n_confirmed:
        return unknown(CLAIM, "no publish was confirmed: nothing to account for", **counts)
    if not fin.captured["main"]:
        why = "failed" if fin.failed["main"] else "was not recorded"
        return unknown(CLAIM, f"the main queue's final contents {why}: final state not captured",
                       **counts, unaccounted_ids=first(lost))
    if lost:
        holes = [r for r in ("dlq", "retry", "main") if fin.failed[r] or fin.partial[r]]
        if not fin.captured["dlq"] and not fin.failed["dlq"]:
            counts["note"] = "no final_queue of role dlq recorded: dead-lettered counted as none"
        # A task found in the DLQ unasked is conclusive whatever else is missing.
        if holes and not wrongly_dead:
            return unknown(
                CLAIM,
                f"{len(lost)} confirmed task(s) unaccounted, but the final listing of "
                f"{', '.join(holes)} failed or was partial",
                **counts, unaccounted_ids=first(lost))
        if idx.drain_complete is not True and not wrongly_dead:
            why = "did not complete" if idx.drain is not None else "was not recorded"
            return unknown(
                CLAIM,
                f"{len(lost)} confirmed task(s) unaccounted, but the drain {why}: "
                "they may still have been on their way",
                **counts, unaccounted_ids=first(lost))
        if holes or idx.drain_complete is not True:
            # Only the DLQ's evidence is conclusive; the rest may still be on its way.
            counts["unaccounted_undecided"] = len(lost - wrongly_dead)
            lost = set(wrongly_dead)
            counts["lost"] = len(lost)
        parts = []
        if wrongly_dead:
            parts.append(f"{len(wrongly_dead)} dead-lettered, never processed, though the "
                         "harness did not ask them to fail")
        if lost - wrongly_dead:
            parts.append(f"{len(lost - wrongly_dead)} never processed, not dead-lettered, "
                         "not queued")
        return ClaimResult(
            CLAIM, False,
            f"{len(lost)} of {n_confirmed} confirmed task(s) lost: " + "; ".join(parts),
            {**counts, "lost_ids": first(lost),
             "dead_lettered_never_processed_ids": first(wrongly_dead)},
            _explained(vanished),
        )
    if cut:
        ids = first(cut)
        return unknown(CLAIM, f"{len(cut)} task(s) held by a killed worker show neither "
                       "processing nor ack and were never received again, and the kill may "
                       f"have dropped those lines: {params[LINES_CUT]}",
                       **counts, lines_cut_ids=ids, lines_cut_by={i: cut[i] for i in ids})
    if unseen:
        return unknown(CLAIM, f"{len(unseen)} task(s) ended by their after_process crash show "
                       f"no success line, processed or not: {params[UNSEEN_CRASHES]}",
                       **counts, unseen_crashed_ids=first(unseen))
    return ClaimResult(
        CLAIM, True,
        f"all {n_confirmed} confirmed task(s) accounted for: {n_processed} processed, "
        f"{len(dlq)} dead-lettered as asked, {len(remaining)} still queued"
        + (f"; {len(vanished)} asked to fail lost in transit by a broker fault"
           if vanished else ""),
        counts, _explained(vanished),
    )


def _vanished_in_transit(idx: ix.Index, candidates: set[str]) -> dict[str, dict[str, Any]]:
    """Asked-to-fail ids a broker fault may have dropped on their way to the DLQ
    (at-most-once dead-lettering): received, then an injected broker fault."""
    if not candidates or not idx.broker_faults:
        return {}
    if idx.cluster.get("dead_letter_strategy") == "at-least-once":
        return {}
    receipts = idx.received.events(candidates)
    out: dict[str, dict[str, Any]] = {}
    for ident in candidates:
        recs = [e.ts for e in receipts.get(ident, ())]
        if not recs or idx.has(ident, ix.ACK):
            continue  # acked, not dead-lettered: nothing was on its way to the DLQ
        # In transit: the fault took effect between its last receipt and a few
        # seconds after it (the nack and the dead-letter hop take milliseconds).
        lo, hi = min(recs), max(recs) + ix.EFFECT_MAX_S
        fault = next((f for f in idx.broker_faults
                      if max(f.ts, f.end) >= lo and f.ts <= hi), None)
        if fault is not None:
            out[ident] = {"explained_by": fault.describe(),
                          "why": "dead-lettering is at most once: a broker fault can drop "
                                 "a message on its way to the DLQ"}
    return out


def _explained(vanished: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not vanished:
        return {}
    ids = first(vanished)
    return {"count": len(vanished), "ids": ids, "by": {i: vanished[i] for i in ids}}
