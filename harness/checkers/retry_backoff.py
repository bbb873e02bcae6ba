"""retry-backoff: "Exponential backoff for retries".

Tasks: the ids published with the directive ``fail_times`` k > 0 (they fail
transiently on attempts 1..k). Only meaningful when the worker honours
directives (``run_started.capabilities.directives``); otherwise unknown.

Statistic, per id and per retry a -> a+1 (attempt numbers from the ``received``
events' ``attempt``; receipt order when a worker does not report it):

    gap(a) = first receipt of attempt a+1  -  end of attempt a

where the end of attempt a is the ``failed`` event of attempt a (emitted before
the retry is published, so the TTL cannot have started earlier), else the
``retry_scheduled`` event announcing attempt a+1 (emitted after the publish was
confirmed: a persistent message's confirm waits for the disk, measured at up to
~90 ms, which would eat into the lower bound), else the receipt of attempt a
(then the task's ``sleep_ms`` is added to the upper bound: the processing time
is inside the gap). Measuring from the end of
the attempt rather than from its receipt (a refinement of "receipt to receipt")
keeps the processing time out of the statistic.

Bound: with d(a) = base_ms * 2^(a-1) (``retry_base_ms``, params ``base_ms``),

    lo(a) = d(a) * (1 - tol)  <=  gap(a)  <=  d(a) * (1 + tol) + slack_s = hi(a)

tol = ``tolerance`` (default 0.25), slack_s (default 0.5 s). The slack is
proportional to the delay plus a small constant: the constant covers what does
not grow with the delay (the dead-letter hop back to the work queue, a wait for
free prefetch behind other tasks, the worker's republish: measured here at up
to 0.22 s); nothing shortens a TTL, so the lower bound keeps no constant (a
worker that retries at once, the no-backoff bug, gives gaps near 0).

Growth is what "exponential" means, and the bounds judge it: d doubles per
attempt, so a fixed delay or a linear one leaves the band within a few attempts
(a fixed 900 ms at base 200 ms is too long for attempt 1 and too short for
attempt 4; base*a is too short from attempt 4). The scenario therefore makes
tasks fail up to 4 times. ``evidence["growth"]`` quotes, per task, the ratios
of consecutive gaps (about 2 for exponential backoff, 1 for a fixed delay).

Jitter (params ``jitter``: ``none``, ``full``, ``equal``): real frameworks draw
the delay at random below the exponential envelope (Celery's ``retry_jitter``
from [0, d], "equal" jitter from [d/2, d]). Then lo(a) is 0 (full) or
d(a)/2 * (1 - tol) (equal), hi(a) is unchanged, and the growth is judged on the
envelope across tasks: the longest gap of attempt a+1 must exceed the longest
gap of attempt a whenever both attempts have ``ENVELOPE_MIN_N`` gaps or more.

Gaps during which the worker or the broker had a connection fault are reported
as disturbed and not judged.

Which facts come from the worker, and why they are safe: the attempt number
(``received.attempt``; receipt order when absent) and the end of an attempt
(``failed``/``retry_scheduled``). A worker that lies about either can only move
the measured gap, and a gap out of bounds is reported with its source
(``measured_from``); the receipts themselves are the worker's, so a worker that
reports no ``received`` events is judged unknown, never true.

Attempts: with M = ``max_attempts``, an id must be received on exactly
min(k, M-1) + 1 attempts (success after k failures when k < M, the dead letter
after M attempts otherwise). More is a violation (retries past the limit);
fewer is one too (gave up early) unless the drain did not complete and the id
is still queued.

False: a gap out of bounds (the worst ones quoted) or a wrong attempt count.
Unknown: directives not honoured, no fail_times task, no received events, or
no gap measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import OBSERVABLE, OFFENDERS_MAX, ClaimResult, first, unknown
from harness.history import Event, History

CLAIM: Final = "retry-backoff"
TOLERANCE: Final = 0.25
SLACK_S: Final = 0.5
JITTERS: Final = ("none", "full", "equal")
# Gaps per attempt needed before the envelope's growth is judged (jitter only):
# with n gaps drawn from [0, 2d], the longest stays below d with chance 2^-n.
ENVELOPE_MIN_N: Final = 10
# A reason, set by ``checkers.check_all`` from the run's event preset
# (``harness.presets``), when the events cannot time the gaps: then only the attempt
# counts are judged (a wrong count is still false), else unknown, not observable.
GAPS_UNOBSERVABLE: Final = "gaps_unobservable"


def _attempts(receipts: list[Event]) -> dict[int, Event]:
    """attempt number -> its first receipt."""
    out: dict[int, Event] = {}
    for n, r in enumerate(receipts, start=1):
        a = r.get("attempt")
        attempt = a if isinstance(a, int) and not isinstance(a, bool) else n
        if attempt not in out:
            out[attempt] = r
    return out


def _end_of_attempt(idx: ix.Index, ident: str, a: int, before: float,
                    receipt: Event) -> tuple[float, str, str | None]:
    """(ts, what, worker) of the end of attempt ``a`` of ``ident``."""
    best: Event | None = None
    for e in idx.failed.all(ident):
        if e.get("attempt") == a and e.ts <= before and (best is None or e.ts > best.ts):
            best = e
    if best is not None:
        return best.ts, "failed", best.worker
    for e in idx.retry_scheduled.all(ident):
        if e.get("attempt") == a + 1 and e.ts <= before and (best is None or e.ts > best.ts):
            best = e
    if best is not None:
        return best.ts, "retry_scheduled", best.worker
    return receipt.ts, "received", receipt.worker


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    if idx.capabilities.get("directives") is False:
        return unknown(CLAIM, "the worker does not honour directives: cannot provoke retries")
    base_ms = facts.as_float(idx.setting(params, "base_ms", "retry_base_ms"))
    if base_ms is None or base_ms <= 0:
        return unknown(CLAIM, "the retry base delay is not known (cluster.retry_base_ms or "
                       "params base_ms)")
    max_attempts_v = idx.setting(params, "max_attempts")
    max_attempts = max_attempts_v if isinstance(max_attempts_v, int) else None
    tol = float(params.get("tolerance", TOLERANCE))
    slack_s = float(params.get("slack_s", SLACK_S))
    jitter = str(params.get("jitter", "none"))
    if jitter not in JITTERS:
        return unknown(CLAIM, f"params jitter {jitter!r}: use one of {', '.join(JITTERS)}")

    fail_times: dict[str, int] = {}
    for ident, d in idx.fail_directives.items():
        k = d.get("fail_times")
        if (isinstance(k, int) and not isinstance(k, bool) and k > 0
                and not d.get("fail_always") and ident not in idx.poison):
            fail_times[ident] = k
    if not fail_times:
        return unknown(CLAIM, "no task was published with fail_times > 0: no retry to time")
    if idx.count("received") == 0:
        return unknown(CLAIM, "the worker reports no received events: attempts not visible",
                       tasks=len(fail_times))

    receipts = idx.received.events(fail_times)
    remaining = idx.final.remaining
    gaps: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    disturbed = 0
    wrong_count: dict[str, dict[str, Any]] = {}
    incomplete: list[str] = []
    violated_at: list[float] = []
    by_attempt: dict[int, list[float]] = {}
    growth: dict[str, list[float]] = {}
    for ident, k in fail_times.items():
        recs = receipts.get(ident, [])
        if not recs:
            continue
        att = _attempts(recs)
        task_gaps: dict[int, float] = {}
        for a in sorted(att):
            nxt = att.get(a + 1)
            if nxt is None:
                continue
            end_ts, what, w = _end_of_attempt(idx, ident, a, nxt.ts, att[a])
            gap = nxt.ts - end_ts
            d_s = base_ms * 2 ** (a - 1) / 1000.0
            lo = {"none": d_s, "equal": d_s / 2, "full": 0.0}[jitter] * (1 - tol)
            hi = d_s * (1 + tol) + slack_s
            if what == "received":
                sleep = facts.as_float(idx.fail_directives[ident].get("sleep_ms"), 0.0) or 0.0
                hi += sleep / 1000.0
            item = {"id": ident, "attempt": a, "gap_s": round(gap, 4),
                    "expected_s": round(d_s, 4), "lo_s": round(lo, 4), "hi_s": round(hi, 4),
                    "measured_from": what}
            fault = idx.connection_fault(w, end_ts, nxt.ts) or (
                idx.connection_fault(nxt.worker, end_ts, nxt.ts) if nxt.worker != w else None)
            if fault is not None:
                disturbed += 1
                continue
            gaps.append(item)
            task_gaps[a] = gap
            by_attempt.setdefault(a, []).append(gap)
            if not lo <= gap <= hi:
                item["deviation"] = round(gap / d_s - 1.0, 4) if d_s else None
                bad.append(item)
                # Evident when the early attempt came, or when the bound ran out.
                violated_at.append(nxt.ts if gap < lo else end_ts + hi)
        ratios = [round(task_gaps[a + 1] / task_gaps[a], 3) for a in sorted(task_gaps)
                  if a + 1 in task_gaps and task_gaps[a] > 0]
        if ratios:
            growth[ident] = ratios
        if max_attempts is not None:
            expected = min(k, max_attempts - 1) + 1
            actual = max(att)
            if actual > expected or (actual < expected and ident not in remaining):
                wrong_count[ident] = {"fail_times": k, "expected_attempts": expected,
                                      "attempts": actual}
                if actual > expected:  # evident when the first attempt past the limit came
                    violated_at.append(min(e.ts for a, e in att.items() if a > expected))
            elif actual < expected:
                incomplete.append(ident)

    per_attempt = {
        str(a): {"expected_s": round(base_ms * 2 ** (a - 1) / 1000.0, 4), "n": len(v),
                 "min_s": round(min(v), 4), "median_s": round(statistics.median(v), 4),
                 "max_s": round(max(v), 4)}
        for a, v in sorted(by_attempt.items())
    }
    flat_envelope: list[dict[str, Any]] = []
    if jitter != "none":
        for a in sorted(by_attempt):
            nxt_gaps = by_attempt.get(a + 1, [])
            d_a = base_ms * 2 ** (a - 1) / 1000.0
            # Growth under jitter: the longest gap of attempt a+1 reaches past d(a),
            # half its own envelope (an immediate retry stays near 0).
            if len(nxt_gaps) >= ENVELOPE_MIN_N and max(nxt_gaps) <= d_a:
                flat_envelope.append({"attempt": a, "max_s": round(max(by_attempt[a]), 4),
                                      "next_max_s": round(max(nxt_gaps), 4)})
    bad.sort(key=lambda g: -abs(g.get("deviation") or 0.0))
    all_ratios = [r for rs in growth.values() for r in rs]
    evidence: dict[str, Any] = {
        "tasks": len(fail_times), "gaps": len(gaps), "out_of_bounds": len(bad),
        "jitter": jitter,
        "growth": {"ratios": len(all_ratios),
                   "min": min(all_ratios, default=None),
                   "median": round(statistics.median(all_ratios), 3) if all_ratios else None,
                   "per_task": {i: growth[i] for i in first(growth)}},
        "disturbed_gaps": disturbed, "wrong_attempt_count": len(wrong_count),
        "incomplete": len(incomplete), "base_ms": base_ms, "max_attempts": max_attempts,
        "tolerance": tol, "slack_s": slack_s, "per_attempt": per_attempt,
    }
    hidden = params.get(GAPS_UNOBSERVABLE)
    if isinstance(hidden, str) and hidden:
        # The run's event source cannot time the gaps (an event preset says why): only
        # the attempt counts are evidence, and without a wrong count nothing is decided.
        bad, flat_envelope = [], []
        if not wrong_count:
            return unknown(CLAIM, hidden, **evidence, **{OBSERVABLE: False})
    if bad or wrong_count or flat_envelope:
        parts = []
        if bad:
            short = sum(1 for g in bad if g["gap_s"] < g["lo_s"])
            worst = "; ".join(f"{g['id']} attempt {g['attempt']}: {g['gap_s']:g} s, expected "
                              f"{g['lo_s']:g}-{g['hi_s']:g} s" for g in bad[:3])
            parts.append(f"{len(bad)} of {len(gaps)} retry gap(s) out of bounds "
                         f"({short} too short, {len(bad) - short} too long: {worst})")
        if flat_envelope:
            parts.append("the delay does not grow: the longest gap of attempt "
                         + ", ".join(f"{f['attempt'] + 1} ({f['next_max_s']:g} s) is not above "
                                     f"that of attempt {f['attempt']} ({f['max_s']:g} s)"
                                     for f in flat_envelope))
        if wrong_count:
            parts.append(f"{len(wrong_count)} task(s) with the wrong number of attempts")
        ids = first(wrong_count)
        return ClaimResult(CLAIM, False, "; ".join(parts),
                           {**evidence, "worst_gaps": bad[:OFFENDERS_MAX],
                            "flat_envelope": flat_envelope,
                            "wrong_attempt_ids": ids,
                            "wrong_attempts": {i: wrong_count[i] for i in ids}},
                           violated_at_ts=min(violated_at, default=None))
    judged_growth = any(len(v) >= ENVELOPE_MIN_N for a, v in by_attempt.items() if a > 1)
    if jitter != "none" and not judged_growth and gaps:
        return unknown(CLAIM, f"jitter {jitter}: fewer than {ENVELOPE_MIN_N} gaps of any retry "
                       "after the first, too few to judge the growth of the envelope",
                       **evidence)
    if not gaps:
        return unknown(CLAIM, "no retry gap could be measured (no task reached a second "
                       "attempt undisturbed)", **evidence, incomplete_ids=first(incomplete))
    if incomplete and idx.drain_complete is not True:
        return unknown(CLAIM, f"{len(gaps)} retry gap(s) within bounds, but {len(incomplete)} "
                       "task(s) still queued after an incomplete drain",
                       **evidence, incomplete_ids=first(incomplete))
    return ClaimResult(
        CLAIM, True,
        f"all {len(gaps)} retry gap(s) of {len(fail_times)} task(s) within "
        f"base*2^(a-1) x [1-{tol:g}, 1+{tol:g}] + {slack_s:g} s (base {base_ms:g} ms, jitter "
        f"{jitter}); consecutive gaps grow x{evidence['growth']['median']} (median)",
        evidence)
