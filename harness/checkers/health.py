"""health-check: "Health checks ... restart if unhealthy".

Input: the harness's ``health`` events (worker=name, ``ok`` = HTTP 200),
recorded per worker at its first observation and on every change of ``ok``
while the harness polls ``/healthcheck`` (every 0.25 s); and the broker
outages: ``broker-restart`` faults (invoke, ok) spanning [ts, completed_ts]
(the broker stopped, then started and answering).

For each outage and each worker running through it (started before ts, not
exited before completed_ts + up_bound_s, and observed by the prober):

- down: the worker reports unhealthy (a health event with ok False) within
  [ts, ts + down_bound_s] (default 15 s: a stopped broker closes its
  connections at once; a vanished one is found by missed heartbeats), or was
  already unhealthy at ts;
- up: after that, a health event with ok True at or before
  completed_ts + up_bound_s (default 30 s: the reconnect backoff is capped at
  5 s, plus the broker's boot).

False: a worker that never turned unhealthy (the health-always-ok bug) or never
healthy again (the no-reconnect bug), with per-worker times. Unknown: the
worker serves no health endpoint (capability), no health event, no broker
outage, no worker observed through one, or the record ends before a bound.

Which facts come from the worker, and why they are safe: none. The probe
results are the harness's own HTTP requests, the outages its own broker faults;
when the record ends before a bound, ``evidence.record_needed_until_ts`` says
how far it must reach, and the runner waits (bounded) before it ends the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, unknown
from harness.history import BROKER_FAULTS, Event, History

CLAIM: Final = "health-check"
DOWN_BOUND_S: Final = 15.0
UP_BOUND_S: Final = 30.0


def _state_at(events: list[Event], ts: float) -> bool | None:
    """The worker's health (``ok``) as last observed at or before ``ts``."""
    state: bool | None = None
    for e in events:
        if e.ts > ts:
            break
        state = bool(e.get("ok", False))
    return state


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    down_bound = float(params.get("down_bound_s", DOWN_BOUND_S))
    up_bound = float(params.get("up_bound_s", UP_BOUND_S))
    if idx.capabilities.get("health") is False:
        return unknown(CLAIM, "the worker serves no /healthcheck (capability health false)")
    if not idx.health:
        return unknown(CLAIM, "no health event in the history: /healthcheck was not polled")
    outages = [(ev.ts, facts.as_float(ev.get("completed_ts"), ev.ts) or ev.ts)
               for ev in idx.faults
               if ev.get("fault") in BROKER_FAULTS and ix.is_fault_invoke(ev)]
    if not outages:
        return unknown(CLAIM, "no broker outage in the history: nothing to turn unhealthy",
                       health_events=len(idx.health))

    health = facts.events_by_worker(idx.health)
    starts = facts.events_by_worker(idx.worker_started)
    exits = facts.events_by_worker(idx.worker_exited)
    end = facts.horizon(history)
    checks: list[dict[str, Any]] = []
    never_down: list[str] = []
    never_up: list[str] = []
    violated_at: list[float] = []  # when each failed bound expired
    undecided: list[str] = []
    needed: list[float] = []  # where the record must reach to decide the undecided
    for ts, done_ts in sorted(outages):
        up_deadline = done_ts + up_bound
        for w, evs in sorted(health.items()):
            st = [e.ts for e in starts.get(w, ()) if e.ts <= ts]
            if starts.get(w) and not st:
                continue  # started during the outage
            since = st[-1] if st else float("-inf")
            if any(since < e.ts <= done_ts for e in exits.get(w, ())):
                continue  # exited before or during the outage: not running through it
            # The worker's record ends at its exit (the harness stops workers at the end).
            w_end = min([end, *(e.ts for e in exits.get(w, ()) if e.ts > done_ts)])
            if not evs or evs[0].ts > ts + down_bound:
                continue  # not observed in time
            row: dict[str, Any] = {"worker": w, "outage_ts": ts,
                                   "outage_s": round(done_ts - ts, 3)}
            down: Event | None = None
            if _state_at(evs, ts) is False:
                down = max((e for e in evs if e.ts <= ts), key=lambda e: e.ts)
                row["down_after_s"] = 0.0
                row["note"] = "already unhealthy when the outage began"
            else:
                down = next((e for e in evs if ts <= e.ts <= ts + down_bound
                             and not e.get("ok", False)), None)
            if down is None:
                if end < ts + down_bound:
                    undecided.append(w)
                    needed.append(ts + down_bound)
                    row["verdict"] = "record ends before the down bound"
                else:
                    never_down.append(w)
                    violated_at.append(ts + down_bound)
                    row["verdict"] = f"never unhealthy within {down_bound:g} s"
                checks.append(row)
                continue
            row.setdefault("down_after_s", round(down.ts - ts, 3))
            row["status_down"] = down.get("status")
            up = next((e for e in evs if e.ts >= down.ts and e.get("ok", False)), None)
            if up is not None:
                row["up_after_completed_s"] = round(up.ts - done_ts, 3)
            if up is None or up.ts > up_deadline:
                if up is None and w_end < up_deadline:
                    undecided.append(w)
                    if w_end >= end:  # not exited: a longer record decides it
                        needed.append(up_deadline)
                    row["verdict"] = "record ends before the up bound"
                else:
                    never_up.append(w)
                    violated_at.append(up_deadline)
                    row["verdict"] = f"not healthy again within {up_bound:g} s"
            else:
                row["verdict"] = "ok"
            checks.append(row)

    evidence: dict[str, Any] = {
        "outages": len(outages), "checks": len(checks), "never_unhealthy": len(never_down),
        "never_healthy_again": len(never_up), "undecided": len(undecided),
        "down_bound_s": down_bound, "up_bound_s": up_bound, "per_worker": checks[:30],
    }
    if never_down or never_up:
        parts = []
        if never_down:
            parts.append(f"{len(never_down)} worker(s) stayed healthy through a broker "
                         f"outage ({', '.join(sorted(set(never_down)))})")
        if never_up:
            parts.append(f"{len(never_up)} worker(s) not healthy again within {up_bound:g} s "
                         f"of the broker's return ({', '.join(sorted(set(never_up)))})")
        return ClaimResult(CLAIM, False, "; ".join(parts), evidence,
                           violated_at_ts=min(violated_at))
    if not checks:
        return unknown(CLAIM, "no worker was observed running through a broker outage",
                       **evidence)
    if undecided:
        return unknown(CLAIM, f"the record ends before the bounds for {len(undecided)} "
                       "worker(s)", **evidence,
                       **({ix.NEEDED_UNTIL: max(needed)} if needed else {}))
    downs = [r["down_after_s"] for r in checks]
    ups = [r["up_after_completed_s"] for r in checks]
    return ClaimResult(
        CLAIM, True,
        f"{len(checks)} worker check(s) over {len(outages)} broker outage(s): unhealthy within "
        f"{max(downs):.1f} s, healthy again {max(ups):.1f} s after the broker returned",
        evidence)
