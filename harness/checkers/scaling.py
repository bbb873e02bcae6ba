"""linear-scaling: "1 pod -> 10 tasks/sec ... 100 pods -> 1000 tasks/sec".

Phases: the first starts at ``publish_started`` with ``run_started.cluster.workers``
workers; each ``scale`` fault (invoke, ok, data ``count`` = N) starts the next,
at the fault's ts or, when the workers it added report ``ready``, at the last
of those ``ready`` events within ``ready_wait_s`` (default 30 s: a new
container needs time to boot and connect; measuring before it consumes would
charge its boot to the scaling).

Throughput of a phase with N workers starting at ts0:

    T(N) = #processed events with ts in [ts0 + warmup_s, ts0 + warmup_s + window_s] / window_s

(warmup_s default 2, window_s default 4: the warm-up lets prefetch windows
fill and a scale-down's terminations finish). A phase is measured only if the
window ends before the next phase begins and the backlog lasted through the
window (confirmed publishes up to its end outnumber the processed events up to
its end: tasks were still waiting, so T measures capacity, not arrivals).

Efficiency E(N) = T(N) / (N * T(1)), T(1) from the first measured phase with
one worker. Holds iff E(N) >= ``min_efficiency`` (default 0.8) for every
measured phase. Evidence: ``curve`` = [{workers, throughput_per_s,
efficiency}] (plot-ready) and ``bends_at``: the smallest N with E below the
bound (None if none). False: some phase below the bound (even if another
phase could not be measured). Unknown: fewer than 2 phases, no one-worker
phase measured, or a phase that could not be measured (which, and why).

Which facts come from the worker, and why they are safe: ``processed`` events,
counted per step; the step boundaries and the worker counts are the harness's
own (its scale faults). A worker that reported processings it never did could
inflate T(N); none is counted that the harness did not publish.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any, Final

from harness import vocab
from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, unknown
from harness.history import History

CLAIM: Final = "linear-scaling"
WARMUP_S: Final = 2.0
WINDOW_S: Final = 4.0
MIN_EFFICIENCY: Final = 0.8
READY_WAIT_S: Final = 30.0


def phases(idx: ix.Index, ready_wait_s: float = READY_WAIT_S) -> list[tuple[int, float, str]]:
    """(workers, ts0, how) of every phase, in order."""
    out: list[tuple[int, float, str]] = []
    n0 = idx.cluster.get("workers")
    # On --backend external the deployment runs as many workers as it does, not the
    # scenario's count: the first phase's size is unknown, so it is not measured.
    external = (idx.run_started is not None
                and idx.run_started.get("backend") == vocab.EXTERNAL)
    if idx.publish_started is not None and isinstance(n0, int) and not external:
        out.append((n0, idx.publish_started.ts, "publish_started"))
    ready_first: dict[str, float] = {}
    for e in sorted(idx.ready, key=lambda e: e.ts):
        if e.worker is not None:
            ready_first.setdefault(e.worker, e.ts)
    for ev in sorted(idx.faults, key=lambda e: e.ts):
        if ev.get("fault") != "scale" or not ix.is_fault_invoke(ev):
            continue
        count = ev.get("count")
        if not isinstance(count, int) or isinstance(count, bool):
            continue
        ts0, how = ev.ts, "scale"
        prev = out[-1][0] if out else None
        new = [t for t in ready_first.values()
               if ev.ts - 5.0 <= t <= ev.ts + ready_wait_s]
        if prev is not None and count > prev and len(new) >= count - prev:
            ts0 = max(ev.ts, sorted(new)[count - prev - 1])
            how = "scale, new workers ready"
        out.append((count, ts0, how))
    return out


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    warmup_s = float(params.get("warmup_s", WARMUP_S))
    window_s = float(params.get("window_s", WINDOW_S))
    bound = float(params.get("min_efficiency", MIN_EFFICIENCY))
    ph = phases(idx, float(params.get("ready_wait_s", READY_WAIT_S)))
    if len(ph) < 2:
        return unknown(CLAIM, f"{len(ph)} phase(s) of distinct worker counts: need a scale "
                       "step (and publish_started with cluster.workers)", phases=len(ph))
    processed = sorted(e.ts for lst in idx.processed.lists.values() for e in lst)
    published = sorted(e.ts for e in history.of_type("publish") if e.get("outcome") == "ok")

    rows: list[dict[str, Any]] = []
    invalid: list[str] = []
    for i, (n, ts0, how) in enumerate(ph):
        lo, hi = ts0 + warmup_s, ts0 + warmup_s + window_s
        nxt = ph[i + 1][1] if i + 1 < len(ph) else float("inf")
        row: dict[str, Any] = {"workers": n, "start_ts": ts0, "start": how}
        if hi > nxt:
            row["invalid"] = (f"phase lasted {nxt - ts0:.1f} s, shorter than warm-up + window "
                              f"({warmup_s + window_s:g} s)")
        elif n < 1:
            row["invalid"] = "no worker"
        else:
            done = bisect.bisect_right(processed, hi)
            waiting = bisect.bisect_right(published, hi) - done
            count = done - bisect.bisect_left(processed, lo)
            row["throughput_per_s"] = round(count / window_s, 3)
            row["waiting_at_end"] = waiting
            if waiting <= 0:
                row["invalid"] = "the backlog ran out before the window ended"
        if "invalid" in row:
            invalid.append(f"{n} worker(s): {row['invalid']}")
        rows.append(row)

    t1 = next((r["throughput_per_s"] for r in rows
               if r["workers"] == 1 and "invalid" not in r), None)
    curve: list[dict[str, Any]] = []
    bends_at: int | None = None
    for r in rows:
        if "invalid" in r:
            continue
        eff = (r["throughput_per_s"] / (r["workers"] * t1)) if t1 else None
        r["efficiency"] = round(eff, 4) if eff is not None else None
        curve.append({"workers": r["workers"], "throughput_per_s": r["throughput_per_s"],
                      "efficiency": r["efficiency"]})
        if eff is not None and eff < bound and (bends_at is None or r["workers"] < bends_at):
            bends_at = r["workers"]
    evidence: dict[str, Any] = {
        "curve": curve, "bends_at": bends_at, "min_efficiency": bound,
        "warmup_s": warmup_s, "window_s": window_s, "phases": rows,
        "unmeasured": invalid,
    }
    if not t1:
        why = "no phase with one worker" if not any(r["workers"] == 1 for r in rows) else \
            "the one-worker phase could not be measured (or processed nothing)"
        return unknown(CLAIM, f"no T(1): {why}", **evidence)
    if bends_at is not None:
        worst = min(c["efficiency"] for c in curve if c["efficiency"] is not None)
        return ClaimResult(
            CLAIM, False,
            f"scaling bends at {bends_at} workers: efficiency down to {worst:.0%} "
            f"< {bound:.0%} (T(1) = {t1:g}/s)", evidence)
    if invalid:
        return unknown(CLAIM, "phase(s) not measured: " + "; ".join(invalid), **evidence)
    if len(curve) < 2:
        return unknown(CLAIM, "only one phase measured", **evidence)
    return ClaimResult(
        CLAIM, True,
        "linear: " + ", ".join(f"T({c['workers']}) = {c['throughput_per_s']:g}/s "
                               f"({c['efficiency']:.0%})" for c in curve)
        + f"; every efficiency >= {bound:.0%}", evidence)
