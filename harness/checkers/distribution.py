"""even-distribution: "Each pod gets ~100 messages (round-robin)".

Counts, per worker, the tasks it processed first (the first ``processed`` event of
each id; a duplicate does not count twice). Only workers undisturbed during the
run are compared: a worker is excluded when a fault targeted it, it lost its
connection or exited before the last task was processed (the harness stops
every worker at the end), or it started after the first
task was processed (a late joiner sees fewer tasks by construction; param
``include_late`` keeps them, for a scenario that scales up onto a backlog).
Eligible workers that processed nothing count as 0: an exclusive consumer
shows up (a connection_lost of a worker that never became ready does not
exclude it: it never consumed).

Statistic: the maximum relative deviation from the mean, max_i |n_i - mean| / mean,
against ``max_deviation`` (default 0.25). Why 0.25: the guide promises "~100 each"
under round-robin; a quarter covers scheduling noise at the scenario sizes we run,
while unlimited prefetch or an exclusive consumer gives deviations near 1 or more.
The coefficient of variation (population stdev / mean) is reported too.
Unknown with fewer than 2 eligible workers or a mean below ``min_mean`` (default 20).

Which facts come from the worker, and why they are safe: ``processed`` events
(who did each task first). A worker cannot make an uneven run look even without
reporting processings it did not do; the per-worker counts are checked against
the tasks the harness published (no id processed that was never published).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, unknown
from harness.history import History

CLAIM: Final = "even-distribution"
MAX_DEVIATION: Final = 0.25
MIN_MEAN: Final = 20.0


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    bound = float(params.get("max_deviation", MAX_DEVIATION))
    min_mean = float(params.get("min_mean", MIN_MEAN))
    counts = {w: n for w, n in idx.first_processed.items() if w is not None}
    # An exit or a lost connection after the last processing disturbed nothing
    # (the harness stops the workers at the end).
    end = idx.last_processed_ts if idx.last_processed_ts is not None else float("inf")
    if idx.end_ts is not None:
        # The harness's own stop after the drain (complete or not) is no fault.
        end = min(end, idx.end_ts)

    excluded: dict[str, str] = {}
    for ev in idx.faults:
        target = ix.fault_target(ev)
        if ix.is_fault_invoke(ev) and target not in (None, "broker"):
            excluded.setdefault(str(target), f"fault {ev.get('fault')}")
    first_ready: dict[str, float] = {}
    for ev in idx.ready:
        w = ix.worker_of(ev)
        if w is not None:
            first_ready.setdefault(w, ev.ts)
    for ev in idx.connection_lost:
        w = ix.worker_of(ev)
        # A worker that never became ready was not disturbed: it never consumed
        # (an exclusive consumer refuses it), and counts as the 0 it processed.
        if w is not None and ev.ts < end and first_ready.get(w, float("inf")) < ev.ts:
            excluded.setdefault(w, "connection_lost")
    for ev in idx.worker_exited:
        w = ix.worker_of(ev)
        if w is not None and ev.ts < end:
            excluded.setdefault(w, "exited during the run")
    first_ts = idx.first_processed_ts
    # include_late: a scenario that scales up onto a backlog compares the late
    # joiners too (unlimited prefetch lets the first worker take the backlog).
    if first_ts is not None and not params.get("include_late", False):
        for ev in idx.worker_started:
            w = ix.worker_of(ev)
            if w is not None and ev.ts > first_ts:
                excluded.setdefault(w, "started after the first task was processed")
    broker_faults = [str(ev.get("fault")) for ev in idx.faults
                     if ix.is_fault_invoke(ev) and ix.fault_target(ev) == "broker"]

    workers: set[str] = idx.workers | counts.keys()
    eligible = sorted(w for w in workers if w not in excluded)
    per_worker = {w: counts.get(w, 0) for w in eligible}
    evidence: dict[str, Any] = {
        "per_worker": per_worker,
        "excluded": {w: excluded[w] for w in sorted(excluded) if w in workers},
        "excluded_counts": {w: counts.get(w, 0) for w in sorted(excluded) if w in workers},
        "eligible_workers": len(eligible),
        "max_deviation_bound": bound,
        "min_mean": min_mean,
    }
    if broker_faults:
        evidence["broker_faults"] = broker_faults
    if len(eligible) < 2:
        return unknown(CLAIM, f"{len(eligible)} undisturbed worker(s): need at least 2 to "
                       "compare", **evidence)
    values = list(per_worker.values())
    mean = statistics.fmean(values)
    evidence["mean"] = round(mean, 3)
    if mean < min_mean:
        return unknown(CLAIM, f"mean of {mean:.1f} task(s) per worker is below {min_mean:g}: "
                       "too little evidence", **evidence)
    dev = max(abs(n - mean) for n in values) / mean
    cv = statistics.pstdev(values) / mean
    evidence["max_relative_deviation"] = round(dev, 4)
    evidence["coefficient_of_variation"] = round(cv, 4)
    lo, hi = min(values), max(values)
    if dev > bound:
        return ClaimResult(
            CLAIM, False,
            f"uneven: per-worker counts {lo}..{hi} around a mean of {mean:.1f}, max deviation "
            f"{dev:.0%} > {bound:.0%}", evidence)
    return ClaimResult(
        CLAIM, True,
        f"even: {len(values)} workers processed {lo}..{hi} tasks (mean {mean:.1f}), "
        f"max deviation {dev:.0%} <= {bound:.0%}", evidence)
