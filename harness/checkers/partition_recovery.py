"""partition-recovery: "Network issues causing duplicate delivery?" -- after the
network heals, the worker reconnects and consumes again.

For each heal (``fault`` with phase ``heal``, ok) of a ``partition``,
``blackhole`` or ``reset`` on worker W, measured from the heal's
``completed_ts`` (the network is back then; ``ts`` when not recorded): within
``bound_s`` (default heartbeat_s * 3 + 20: the broker or the client needs up to
about two heartbeats to declare the old connection dead, the reconnect backoff
is capped at a few seconds, plus setup) W must show that it consumes again:

- strong evidence: a ``ready`` event of W (it re-declared and consumes), or a
  ``received`` event of W (a new delivery), or, for a worker that reports only
  ``processed``, a processing that started after the heal;
- weak evidence, accepted only when no task remained to consume (no worker
  received anything after W's health turned ok and the main queue ended empty):
  a ``health`` event of W with ok True after the heal.

False: W showed neither within the bound although the record reaches past it
(the no-reconnect bug). Evidence: time to recover per heal and how.
Unknown: no healed network fault, or W exited before the bound.

Which facts come from the worker, and why they are safe: ``ready``,
``received`` and ``processed`` after the heal, as signs that it consumes again.
The heal itself is the harness's (nemesis). A worker that writes ``ready``
without consuming could pass the bound; the health fallback needs the broker's
evidence too (the main queue empty at the end, no receipt after the probe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, unknown
from harness.history import History

CLAIM: Final = "partition-recovery"
NETWORK_FAULTS: Final = frozenset({"partition", "blackhole", "reset"})
HEARTBEAT_S: Final = 10.0


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    heartbeat_s = facts.as_float(idx.cluster.get("heartbeat_s"), HEARTBEAT_S) or HEARTBEAT_S
    bound_s = float(params.get("bound_s", heartbeat_s * 3 + 20))
    heals = sorted(
        ((str(ix.fault_target(ev)), facts.as_float(ev.get("completed_ts"), ev.ts) or ev.ts,
          str(ev.get("fault")))
         for ev in idx.faults
         if ev.get("fault") in NETWORK_FAULTS and ev.get("phase") == "heal"
         and ev.get("ok", False) and ix.fault_target(ev) is not None),
        key=lambda h: h[1])
    if not heals:
        return unknown(CLAIM, "no healed network fault (partition, blackhole, reset) in the "
                       "history")

    ready = facts.events_by_worker(idx.ready)
    health = facts.events_by_worker(idx.health)
    exits = facts.events_by_worker(idx.worker_exited)
    end = facts.horizon(history)
    all_receipts = sorted(e.ts for lst in idx.received.lists.values() for e in lst)
    queue_empty = idx.final.captured["main"] and not idx.final.ids["main"]

    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    undecided: list[str] = []
    needed: list[float] = []
    for w, heal_ts, fault in heals:
        deadline = heal_ts + bound_s
        row: dict[str, Any] = {"worker": w, "fault": fault, "heal_ts": heal_ts}
        cands: list[tuple[float, str]] = []
        r = next((e for e in ready.get(w, ()) if e.ts >= heal_ts), None)
        if r is not None:
            cands.append((r.ts, "ready"))
        rec = next((e for e in sorted(idx.received.lists.get(w, ()), key=lambda e: e.ts)
                    if e.ts >= heal_ts), None)
        if rec is not None:
            cands.append((rec.ts, "received"))
        starts = [facts.start_ts(idx, e) for e in idx.processed.lists.get(w, ())]
        s = min((x for x in starts if x >= heal_ts), default=None)
        if s is not None:
            cands.append((s, "processing started"))
        best = min(cands) if cands else None
        if best is None or best[0] > deadline:
            h = next((e for e in health.get(w, ()) if e.ts >= heal_ts and e.get("ok")), None)
            if h is not None and h.ts <= deadline and queue_empty and not any(
                    t > h.ts for t in all_receipts):
                best = (h.ts, "health ok (nothing left to consume)")
        exit_ts = min((e.ts for e in exits.get(w, ()) if e.ts >= heal_ts), default=None)
        if best is not None and best[0] <= deadline:
            row.update(recovered_after_s=round(best[0] - heal_ts, 3), how=best[1])
        elif exit_ts is not None and exit_ts < deadline:
            row["verdict"] = "exited before the bound"
            undecided.append(w)
        elif end < deadline:
            row["verdict"] = "the record ends before the bound"
            undecided.append(w)
            needed.append(deadline)
        else:
            row["verdict"] = f"did not consume again within {bound_s:g} s"
            failed.append(w)
        rows.append(row)

    times = [r["recovered_after_s"] for r in rows if "recovered_after_s" in r]
    evidence: dict[str, Any] = {
        "heals": len(heals), "recovered": len(times), "not_recovered": len(failed),
        "undecided": len(undecided), "bound_s": bound_s,
        "recovery_max_s": max(times) if times else None, "per_heal": rows[:20],
    }
    if failed:
        return ClaimResult(
            CLAIM, False,
            f"{len(failed)} of {len(heals)} worker(s) never consumed again within {bound_s:g} s "
            f"of the network healing ({', '.join(sorted(set(failed)))})", evidence)
    if undecided:
        return unknown(CLAIM, f"{len(undecided)} heal(s) undecided: the worker exited or the "
                       "record ended before the bound", **evidence,
                       **({ix.NEEDED_UNTIL: max(needed)} if needed else {}))
    weak = sum(1 for r in rows if str(r.get("how", "")).startswith("health"))
    note = f" ({weak} by health only: nothing was left to consume)" if weak else ""
    return ClaimResult(
        CLAIM, True,
        f"after {len(heals)} network heal(s) every worker consumed again within "
        f"{max(times):.1f} s{note}", evidence)
