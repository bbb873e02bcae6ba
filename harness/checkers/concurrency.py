"""concurrency: "1 pod x 10 concurrent workers = 10 tasks processing simultaneously".

Per worker, each ``processed`` event gives a processing interval
[started_ts, processed ts] (``started_ts`` as the worker reports it; without it
the worker's latest receipt of the id, which can only widen the interval, as
``interval_start`` says). The peak is the largest number of intervals open at
one instant (a sweep; an interval ending at t does not overlap one starting
at t).

The claim holds when, for the busiest worker (most processings):

- its peak equals C = ``concurrency`` (``run_started.cluster``, params
  ``concurrency``): below it the worker does not run tasks side by side (the
  ignore-concurrency bug has peak 1); above it, and for any worker, it runs
  more than it was told;
- its throughput n / (last processed ts - first started ts), the tasks it
  completed over the span it was busy, is at least ``min_ratio`` (default 0.7)
  times C / mean task time (the mean of its intervals): 0.7 leaves room for the
  ack round trips, the refill of the prefetch window and a tail where fewer
  than C tasks remain, while a worker that serialises its tasks reaches 1/C.

Only meaningful with a backlog: unknown when the busiest worker processed
fewer than 2 * C tasks, when nothing was processed or C is not known.

Which facts come from the worker, and why they are safe: ``processed`` with
``started_ts`` (else the receipt) gives each processing interval. A worker that
misreports its start times can only shrink or stretch the overlap it claims;
the throughput figure is counted from the harness's publish record and the
``processed`` events, and a peak above ``WORKER_CONCURRENCY`` is itself a
violation, so over-reporting cannot pass either.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, unknown
from harness.history import History

CLAIM: Final = "concurrency"
MIN_RATIO: Final = 0.7


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (half-open [s, e))."""
    points = [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]
    points.sort()  # at equal ts the end (-1) sorts before the start (+1)
    cur = peak = 0
    for _, d in points:
        cur += d
        peak = max(peak, cur)
    return peak


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    conc_v = idx.setting(params, "concurrency")
    if not isinstance(conc_v, int) or isinstance(conc_v, bool) or conc_v < 1:
        return unknown(CLAIM, "the configured concurrency is not known "
                       "(run_started cluster.concurrency or params concurrency)")
    conc = conc_v
    min_ratio = float(params.get("min_ratio", MIN_RATIO))
    if not len(idx.processed):
        return unknown(CLAIM, "nothing was processed")

    peaks: dict[str, int] = {}
    intervals_of: dict[str, list[tuple[float, float]]] = {}
    from_receipt = 0
    for w, evs in idx.processed.lists.items():
        if w is None:
            continue
        iv = []
        for e in evs:
            if not isinstance(e.get("started_ts"), int | float):
                from_receipt += 1
            s = facts.start_ts(idx, e)
            iv.append((min(s, e.ts), e.ts))
        intervals_of[w] = iv
        peaks[w] = peak_overlap(iv)
    busiest = max(intervals_of, key=lambda w: (len(intervals_of[w]), w))
    iv = intervals_of[busiest]
    n = len(iv)
    peak = peaks[busiest]
    over = {w: p for w, p in peaks.items() if p > conc}
    evidence: dict[str, Any] = {
        "concurrency": conc, "busiest_worker": busiest, "processed_by_busiest": n,
        "peak_by_worker": dict(sorted(peaks.items())), "peak": peak,
        "interval_start": "received" if from_receipt else "started_ts",
        "min_ratio": min_ratio,
    }
    if over:
        return ClaimResult(CLAIM, False,
                           f"{len(over)} worker(s) ran more tasks at once than the concurrency "
                           f"{conc}: peak {max(over.values())}", evidence)
    if n < 2 * conc:
        return unknown(CLAIM, f"the busiest worker processed {n} task(s), fewer than 2 x "
                       f"concurrency ({2 * conc}): no backlog to show concurrency", **evidence)
    mean_task_s = statistics.fmean(e - s for s, e in iv)
    span = max(e for _, e in iv) - min(s for s, _ in iv)
    throughput = n / span if span > 0 else float("inf")
    expected = conc / mean_task_s if mean_task_s > 0 else float("inf")
    ratio = throughput / expected if expected not in (0.0, float("inf")) else None
    evidence.update(mean_task_s=round(mean_task_s, 4), busy_span_s=round(span, 3),
                    throughput_per_s=round(throughput, 3),
                    expected_per_s=round(expected, 3),
                    throughput_ratio=round(ratio, 4) if ratio is not None else None)
    if peak < conc:
        return ClaimResult(CLAIM, False,
                           f"{busiest} ran at most {peak} task(s) at once, not {conc} "
                           f"(throughput {throughput:.1f}/s vs {expected:.1f}/s expected)",
                           evidence)
    if ratio is not None and ratio < min_ratio:
        return ClaimResult(CLAIM, False,
                           f"{busiest} reached {conc} tasks at once but its throughput "
                           f"{throughput:.1f}/s is {ratio:.0%} of concurrency / task time "
                           f"({expected:.1f}/s), below {min_ratio:.0%}", evidence)
    return ClaimResult(
        CLAIM, True,
        f"{busiest} ran {peak} tasks at once (concurrency {conc}); throughput "
        f"{throughput:.1f}/s = {ratio if ratio is not None else 1:.0%} of {expected:.1f}/s",
        evidence)
