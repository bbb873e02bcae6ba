"""no-loss: every confirmed task ends processed, dead-lettered or still queued.

The accounting follows Jepsen's ``total-queue`` checker:

- attempted:     ids of ``publish`` events (any outcome);
- confirmed:     ids whose publish outcome is ``ok`` (the broker confirmed them);
- processed:     ids with at least one ``processed`` event;
- dead_lettered: ids listed in a ``final_queue`` of role ``dlq``;
- remaining:     ids listed in a ``final_queue`` of role ``main`` or ``retry``;
- lost       = confirmed - (processed | dead_lettered | remaining)   -> violation;
- unexpected = processed ids never attempted                       -> violation;
- recovered  = ids published with outcome ``unknown``/``fail`` yet processed (fine);
- duplicated = ids processed more than once (counted; no-duplicate-processing judges).

Unknown when nothing was confirmed, when the main queue's final contents were not
captured (or a listing failed or was partial while ids are unaccounted), or when
the drain did not complete and ids are unaccounted: they may still be on their way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, first, unknown
from harness.history import History

CLAIM: Final = "no-loss"


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    fin = idx.final
    dlq = fin.ids["dlq"]
    remaining = fin.remaining
    n_confirmed = idx.count_where(lambda v: bool(v & ix.OK))
    n_processed = idx.count_where(lambda v: bool(v & ix.PROC))
    lost = idx.ids_where(lambda v: bool(v & ix.OK) and not v & ix.PROC)
    if lost:
        lost -= dlq
    if lost:
        lost -= remaining
    unexpected = idx.ids_where(lambda v: bool(v & ix.PROC) and not v & ix.PUBLISHED)
    counts: dict[str, Any] = {
        "attempted": idx.count_where(lambda v: bool(v & ix.PUBLISHED)),
        "confirmed": n_confirmed,
        "processed": n_processed,
        "dead_lettered": len(dlq),
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
        if holes:
            return unknown(
                CLAIM,
                f"{len(lost)} confirmed task(s) unaccounted, but the final listing of "
                f"{', '.join(holes)} failed or was partial",
                **counts, unaccounted_ids=first(lost))
        if idx.drain_complete is not True:
            why = "did not complete" if idx.drain is not None else "was not recorded"
            return unknown(
                CLAIM,
                f"{len(lost)} confirmed task(s) unaccounted, but the drain {why}: "
                "they may still have been on their way",
                **counts, unaccounted_ids=first(lost))
        return ClaimResult(
            CLAIM, False,
            f"{len(lost)} of {n_confirmed} confirmed task(s) lost: never processed, "
            "not dead-lettered, not queued",
            {**counts, "lost_ids": first(lost)},
        )
    return ClaimResult(
        CLAIM, True,
        f"all {n_confirmed} confirmed task(s) accounted for: {n_processed} processed, "
        f"{len(dlq)} dead-lettered, {len(remaining)} still queued",
        counts,
    )
