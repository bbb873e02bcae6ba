"""dead-letter: "Nack ... send to DLQ".

Expected in the DLQ: the ids published with outcome ``ok`` that must fail for
good: ``poison`` bodies (any worker must reject them), and, when the worker
honours directives, ``fail_always``, ``fail_times`` >= ``max_attempts`` and
``crash_always`` (a message that crashes every worker that takes it: the crash
loop ends only in the DLQ, by the queue's delivery limit).
Actual: the final contents of the queue(s) of role ``dlq`` (the broker's own
evidence, counted per listing so a message dead-lettered twice shows twice).

The claim holds iff every expected id is in the DLQ exactly once, no other id
is there, and no expected id was processed successfully. Violations, with ids:

- ``missing_from_dlq``: e.g. no dead-letter exchange on the queue (a nack
  without requeue drops the message), or a requeue bug (still looping through
  the main queue: listed as ``still_queued``); each missing id says where it is;
- ``duplicated_in_dlq``: dead-lettered more than once;
- ``unexpected_in_dlq``: an id that should have succeeded (any publish outcome);
- ``processed``: an expected id that a worker processed successfully.

Unknown: no expected id (with directives not honoured only poison counts),
no ``final_queue`` of role dlq or its listing failed, or the listing is partial
(shorter than the queue's depth) while ids are missing.

The broker's ``x-death`` reason of each expected id in the DLQ is reported as
``dead_lettered_by`` (``delivery_limit`` for a crash loop the queue's limit ended,
``rejected`` for a worker's nack): evidence for the reader, not a condition (a
worker may end a crash loop itself, counting ``x-delivery-count``).

Which facts come from the worker, and why they are safe: ``processed`` (an
expected id processed successfully is a violation) and ``dead_lettered``
(only to say where a missing id went). Whether an id is in the DLQ, and how
often, is the broker's evidence (the final destructive read); a worker's
report of dead-lettering never puts an id there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, first, unknown
from harness.history import History

CLAIM: Final = "dead-letter"


def _dlq_counts(history: History) -> tuple[Counter[str], bool, bool, bool]:
    """(id -> count in the DLQ listings, captured, failed, partial): last listing per queue."""
    last: dict[str, Any] = {}
    for ev in history.of_type("final_queue"):
        if ev.get("role") == "dlq":
            last[str(ev.get("queue", ""))] = ev
    counts: Counter[str] = Counter()
    captured = failed = partial = False
    for ev in last.values():
        if not ev.get("ok", True):
            failed = True
            continue
        captured = True
        ids = [str(i) for i in ev.get("ids") or []]
        counts.update(ids)
        depth = ev.get("depth")
        if isinstance(depth, int) and depth > len(ids):
            partial = True
    return counts, captured, failed, partial


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    directives = idx.capabilities.get("directives") is not False
    max_attempts_v = idx.setting(params, "max_attempts")
    max_attempts = max_attempts_v if isinstance(max_attempts_v, int) else None

    # Candidates of any publish outcome (an id in the DLQ among them is not
    # unexpected); expected = the confirmed ones.
    reasons: dict[str, str] = {i: "poison" for i in idx.poison}
    if directives:
        for ident, d in idx.fail_directives.items():
            if ident in reasons:
                continue
            k = d.get("fail_times")
            if d.get("fail_always"):
                reasons[ident] = "fail_always"
            elif (max_attempts is not None and isinstance(k, int) and not isinstance(k, bool)
                  and k >= max_attempts):
                reasons[ident] = "max_attempts"
        for ident, crash in idx.crash_directives.items():
            if crash == ix.CRASH_ALWAYS and ident not in reasons:
                # Crashes every worker that takes it: the queue's delivery limit ends
                # its loop, in the DLQ.
                reasons[ident] = "crash_always"
    expected = {i for i in reasons if idx.has(i, ix.OK)}
    by_reason = Counter(reasons[i] for i in expected)
    note = None if directives else ("the worker does not honour directives: only poison "
                                    "bodies are expected in the DLQ")
    if not expected:
        why = note or ("no confirmed task was poison, fail_always, crash_always or "
                       "fail_times >= max_attempts")
        return unknown(CLAIM, f"nothing expected in the DLQ: {why}")

    counts, captured, failed, partial = _dlq_counts(history)
    if not captured:
        return unknown(CLAIM, "the DLQ's final contents "
                       + ("could not be read" if failed else "were not recorded"),
                       expected=len(expected))
    in_dlq = set(counts)
    missing = expected - in_dlq
    duplicated = {i for i in expected if counts.get(i, 0) > 1}
    unexpected = in_dlq - set(reasons)
    processed = {i for i in expected if idx.has(i, ix.PROC)}

    where: dict[str, str] = {}
    for i in first(missing):
        if i in idx.final.ids["main"] and reasons.get(i) == "crash_always":
            where[i] = (f"still in the main queue after {len(idx.received.events([i]).get(i, ()))} "
                        "reported deliveries: a crash loop (no x-delivery-limit on the queue?)")
        elif i in idx.final.ids["main"]:
            where[i] = "still in the main queue (requeued instead of dead-lettered?)"
        elif i in idx.final.ids["retry"]:
            where[i] = "still in a retry queue"
        elif idx.has(i, ix.PROC):
            where[i] = "processed"
        elif idx.has(i, ix.DL):
            where[i] = "the worker dead-lettered it, the broker dropped it (no DLX?)"
        else:
            where[i] = "gone (nacked without a dead-letter exchange?)"
    # Who dead-lettered each: the broker's x-death reason (``rejected``: a worker's
    # nack; ``delivery_limit``: the quorum queue's limit, the end of a crash loop).
    deaths: dict[str, str] = {}
    for ev in history.of_type("final_queue"):
        if ev.get("role") == "dlq" and isinstance(ev.get("death_reasons"), dict):
            deaths.update({str(k): str(v) for k, v in ev.get("death_reasons").items()})
    evidence: dict[str, Any] = {
        "expected": len(expected), "expected_by_reason": dict(by_reason),
        "dead_lettered_by": dict(sorted(Counter(deaths[i] for i in expected & set(deaths))
                                        .items())),
        "in_dlq": len(in_dlq), "dlq_messages": sum(counts.values()),
        "missing_from_dlq": len(missing), "duplicated_in_dlq": len(duplicated),
        "unexpected_in_dlq": len(unexpected), "processed": len(processed),
        "still_queued": len(missing & idx.final.remaining),
        "worker_dead_lettered": idx.count("dead_lettered"),
    }
    if note:
        evidence["note"] = note
    if missing and partial and not (duplicated or unexpected or processed):
        return unknown(CLAIM, f"{len(missing)} expected id(s) not in the DLQ listing, but the "
                       "listing was partial", **evidence, missing_ids=first(missing))
    if missing or duplicated or unexpected or processed:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(expected)} expected id(s) missing from the DLQ")
        if duplicated:
            parts.append(f"{len(duplicated)} dead-lettered more than once")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected id(s) in the DLQ")
        if processed:
            parts.append(f"{len(processed)} that must fail were processed")
        return ClaimResult(CLAIM, False, "; ".join(parts), {
            **evidence, "missing_ids": first(missing), "missing_where": where,
            "duplicated_ids": first(duplicated), "unexpected_ids": first(unexpected),
            "processed_ids": first(processed)})
    return ClaimResult(
        CLAIM, True,
        f"all {len(expected)} permanently failing task(s) in the DLQ exactly once "
        f"({', '.join(f'{n} {r}' for r, n in sorted(by_reason.items()))}); nothing else there",
        evidence)
