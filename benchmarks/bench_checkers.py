"""Benchmark of the checkers on a synthetic history (a script, not a test).

For each size it starts a fresh subprocess that builds a history of N tasks
(publish ok, received, processed, acked per task over 10 workers, a few kills
with redeliveries and duplicates, final queues), times ``check_all`` over the
five claims, and reports its peak RSS (``ru_maxrss``: the history itself plus
the checkers). Prints a table and the time ratio between the sizes.

    python3 benchmarks/bench_checkers.py                 # N = 1,000,000 and 100,000
    python3 benchmarks/bench_checkers.py --tasks 200000

Targets: under 10 s and 2 GiB for 1,000,000 tasks; 10x the tasks costs at most 12x the time.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.checkers import check_all
from harness.history import Event, History

CLAIMS = ("no-loss", "exactly-once-ack", "no-duplicate-processing", "redelivery-after-crash",
          "even-distribution")
WORKERS = 10
KILLS = 3
IN_FLIGHT = 8  # tasks held by a worker when it is killed
CHILD_TIMEOUT_S = 600


def synthetic(n: int) -> History:
    """A run of n tasks over 10 workers, with KILLS kills; each kill leaves IN_FLIGHT
    tasks unacked on the killed worker (half of them already processed: duplicates
    explained by the kill) that another worker receives again and completes."""
    workers = [f"worker-{i + 1}" for i in range(WORKERS)]
    ev: list[Event] = []
    add = ev.append
    t0 = 1_700_000_000.0
    add(Event("run_started", "harness", ts=t0, data={"seed": 1, "scenario": "bench"}))
    for w in workers:
        add(Event("worker_started", "cluster", ts=t0, worker=w, data={"pid": 1}))
    ids = [f"task-{i:08d}" for i in range(n)]
    dt = 1e-4
    for i, ident in enumerate(ids):
        add(Event("publish", "workload", ts=t0 + 1 + i * dt, id=ident,
                  data={"outcome": "ok", "directives": {}, "poison": False}))
    # Kill k (of worker k) holds the victim's IN_FLIGHT tasks from index start_k on.
    held: dict[int, int] = {}  # task index -> victim worker index
    last_held: dict[int, int] = {}  # task index of the last held task -> victim
    if n >= 100 * WORKERS * IN_FLIGHT:
        for k in range(KILLS):
            start = (k + 1) * n // (KILLS + 1) // WORKERS * WORKERS + k
            mine = [start + j * (WORKERS - k) for j in range(IN_FLIGHT)]
            held.update(dict.fromkeys(mine, k))
            last_held[mine[-1]] = k
    dead: set[int] = set()
    live = list(range(WORKERS))
    pending: list[tuple[str, int]] = []  # (id, victim) unacked on a worker about to die
    base = t0 + 2 + n * dt
    for i, ident in enumerate(ids):
        ts = base + i * dt
        # Held tasks go to the victim; the others round-robin over the live consumers.
        wi = held[i] if i in held else live[i % len(live)]
        w = workers[wi]
        add(Event("received", w, ts=ts, id=ident, worker=w,
                  data={"redelivered": False, "attempt": 1}))
        if i in held:
            if len(pending) % 2 == 0:  # half were processed: redelivery duplicates them
                add(Event("processed", w, ts=ts + dt / 3, id=ident, worker=w,
                          data={"attempt": 1}))
            pending.append((ident, wi))
            if i in last_held:
                kts = ts + dt / 2
                add(Event("fault", "nemesis", ts=kts,
                          data={"fault": "kill", "target": w, "phase": "invoke", "ok": True}))
                add(Event("worker_exited", "cluster", ts=kts, worker=w,
                          data={"code": -9, "signal": 9, "requested": True}))
                dead.add(wi)
                live.remove(wi)
                oi = (wi + 1) % WORKERS
                while oi in dead:
                    oi = (oi + 1) % WORKERS
                other = workers[oi]
                for j, (hid, _) in enumerate(pending):
                    rts = kts + 0.05 + j * 1e-3
                    add(Event("received", other, ts=rts, id=hid, worker=other,
                              data={"redelivered": True, "attempt": 1}))
                    add(Event("processed", other, ts=rts + 1e-4, id=hid, worker=other,
                              data={"attempt": 1}))
                    add(Event("acked", other, ts=rts + 2e-4, id=hid, worker=other,
                              data={"reason": "processed"}))
                pending = []
            continue
        add(Event("processed", w, ts=ts + dt / 3, id=ident, worker=w, data={"attempt": 1}))
        add(Event("acked", w, ts=ts + dt / 2, id=ident, worker=w, data={"reason": "processed"}))
    end = base + n * dt + 1
    add(Event("drain", "harness", ts=end, data={"complete": True, "waited_s": 1.0,
                                                 "reason": "empty"}))
    for role in ("main", "dlq", "retry"):
        add(Event("final_queue", "harness", ts=end, data={"queue": f"q.{role}", "role": role,
                                                           "ids": [], "depth": 0, "ok": True}))
    for wi, w in enumerate(workers):
        if wi not in dead:
            add(Event("worker_exited", "cluster", ts=end + 1, worker=w,
                      data={"code": 0, "signal": None, "requested": True}))
    add(Event("run_finished", "harness", ts=end + 2))
    return History(ev)


def child(n: int, repeat: int) -> dict[str, Any]:
    t = time.perf_counter()
    # Building millions of tracked objects with the collector on costs a full
    # collection every few hundred thousand events (History.load would do the same).
    gc.disable()
    history = synthetic(n)
    gc.enable()
    build_s = time.perf_counter() - t
    rss_history_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls: list[float] = []
    cpus: list[float] = []
    results = []
    for _ in range(repeat):
        history._cache.clear()  # rebuild the shared index each time: it is part of the cost
        t, c = time.perf_counter(), time.process_time()
        results = check_all(history, CLAIMS, {})
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "tasks": n, "events": len(history), "build_s": build_s,
        "check_s": min(walls), "check_cpu_s": min(cpus), "check_s_all": walls,
        "rss_after_build_mib": rss_history_kib / 1024, "peak_rss_mib": peak_kib / 1024,
        "verdicts": {r.claim: r.verdict for r in results},
        "summaries": {r.claim: r.summary for r in results},
    }


def run_child(n: int, repeat: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--repeat", str(repeat)],
                          capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child for {n} tasks failed: {proc.stderr.strip()[-500:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000, help="N (also runs N/10)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of check_all per size; the best is reported (default 3)")
    ap.add_argument("--verbose", action="store_true", help="print the summaries")
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, max(1, args.repeat))))
        return 0
    if args.tasks < 1000:
        raise SystemExit("--tasks must be at least 1000")
    rows = [run_child(args.tasks // 10, args.repeat), run_child(args.tasks, args.repeat)]
    print(f"check_all over {len(CLAIMS)} claims, best of {args.repeat} (wall and CPU seconds); "
          "peak RSS includes the history")
    print(f"{'tasks':>10} {'events':>10} {'build_s':>8} {'check_s':>8} {'cpu_s':>6} "
          f"{'rss_hist_MiB':>12} {'peak_MiB':>9}  verdicts")
    for r in rows:
        v = " ".join(f"{k}={val}" for k, val in r["verdicts"].items())
        print(f"{r['tasks']:>10} {r['events']:>10} {r['build_s']:>8.2f} {r['check_s']:>8.2f} "
              f"{r['check_cpu_s']:>6.2f} {r['rss_after_build_mib']:>12.0f} "
              f"{r['peak_rss_mib']:>9.0f}  {v}")
        if args.verbose:
            for k, s in r["summaries"].items():
                print(f"{'':>12}{k}: {s}")
    ratio = rows[1]["check_s"] / rows[0]["check_s"]
    cpu_ratio = rows[1]["check_cpu_s"] / rows[0]["check_cpu_s"]
    big = rows[1]
    ok_time = big["check_s"] < 10.0 if args.tasks >= 1_000_000 else True
    ok_mem = big["peak_rss_mib"] < 2048
    print(f"scaling: 10x tasks -> {ratio:.2f}x check wall time, {cpu_ratio:.2f}x CPU time "
          "(target <= 12x): "
          f"{'ok' if ratio <= 12 else 'MISSED'}")
    print(f"targets for {args.tasks} tasks: check {big['check_s']:.2f} s (< 10 s: "
          f"{'ok' if ok_time else 'MISSED'}), peak RSS {big['peak_rss_mib']:.0f} MiB "
          f"(< 2048: {'ok' if ok_mem else 'MISSED'})")
    return 0 if ratio <= 12 and ok_time and ok_mem else 1


if __name__ == "__main__":
    raise SystemExit(main())
