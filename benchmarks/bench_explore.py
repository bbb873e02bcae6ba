"""The search of the fault space, measured: for each planted bug only a search finds
(``worker.bugs.SEARCH_BUGS``), ``harness explore`` from its fault-free base scenario
on one backend, and the figures issue 15 asks for.

    python benchmarks/bench_explore.py --backend local
    python benchmarks/bench_explore.py --backend docker --correct-examples 20

Per bug: the examples run until the first violation and the time to it, examples
per minute, the runs the shrink spent, the minimal schedule's steps and its
reproduction rate (``--rate-runs`` fresh runs). The baseline, measured in the same
run: one plain ``harness run`` of the base scenario without the bug and without
faults, as examples per minute (``rate ratio`` = explore's examples per minute over
the plain runs per minute: what the search costs over running the scenario).
``--correct-examples N`` also explores the base scenario on the correct worker and
prints "no violation in N examples" (a false alarm there is this benchmark's
failure, exit 1). Every explore's own ``explore.json`` is what is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import yaml
from _child import run_child

from worker.bugs import (
    SEARCH_BUGS,
    STALE_ACK_AFTER_TWO_RECONNECTS,
    TRANSIENT_RETRY_QUEUES,
)

ROOT = Path(__file__).resolve().parents[1]
# Each search-only bug's fault-free base scenario (it sets WORKER_BUG in cluster.env).
BASES: Final[dict[str, Path]] = {
    STALE_ACK_AFTER_TWO_RECONNECTS: ROOT / "benchmarks" / "search" / "search-base.yaml",
    TRANSIENT_RETRY_QUEUES: ROOT / "benchmarks" / "search" / "retry-base.yaml",
}
EXPLORE_TIMEOUT_S: Final = 3 * 3600.0


def correct_copy(base: Path, out: Path) -> Path:
    """``base`` without its planted bug: the correct worker, same workload."""
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    env = raw.get("cluster", {}).get("env", {})
    env.pop("WORKER_BUG", None)
    if not env:
        raw.get("cluster", {}).pop("env", None)
    raw["name"] = f"{raw['name']}-correct"
    path = out / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def plain_run_s(scenario: Path, backend: str, out: Path) -> float:
    """Wall time of one ``harness run`` of ``scenario`` (the baseline)."""
    t0 = time.monotonic()
    proc = run_child([sys.executable, "-m", "harness", "run", str(scenario), "--backend",
                      backend, "--out", str(out), "--no-progress"], ROOT, EXPLORE_TIMEOUT_S)
    if proc.returncode != 0:
        raise SystemExit(f"baseline run of {scenario.name} failed (exit {proc.returncode}):"
                         f"\n{proc.stdout[-2000:]}")
    return time.monotonic() - t0


def explore(scenario: Path, backend: str, out: Path, args: argparse.Namespace,
            examples: int) -> dict[str, Any]:
    """``harness explore`` as a user runs it; its ``explore.json``."""
    cmd = [sys.executable, "-m", "harness", "explore", str(scenario), "--backend", backend,
           "--examples", str(examples), "--max-steps", str(args.max_steps),
           "--seed", str(args.seed), "--shrink-runs", str(args.shrink_runs),
           "--reruns", str(args.reruns), "--rate-runs", str(args.rate_runs),
           "--time-budget-s", str(args.time_budget_s), "--out", str(out), "--no-progress"]
    if args.faults:
        cmd += ["--faults", args.faults]
    t0 = time.monotonic()
    proc = run_child(cmd, ROOT, EXPLORE_TIMEOUT_S)
    wall = time.monotonic() - t0
    found = sorted(out.glob("explore-*/explore.json"))
    if not found:
        raise SystemExit(f"no explore.json from: {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    doc: dict[str, Any] = json.loads(found[-1].read_text(encoding="utf-8"))
    doc["wall_s"] = wall
    doc["exit_code"] = proc.returncode
    doc["command"] = " ".join(["harness", *cmd[3:]])
    return doc


def per_min(n: int, seconds: float) -> float:
    return 60.0 * n / seconds if seconds > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("local", "docker"), default="local")
    ap.add_argument("--bugs", default=",".join(SEARCH_BUGS),
                    help="comma-separated search-only bugs (default: all)")
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--faults", default=None,
                    help="passed to harness explore (default: every fault the backend runs)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--shrink-runs", type=int, default=10)
    ap.add_argument("--reruns", type=int, default=1)
    ap.add_argument("--rate-runs", type=int, default=5)
    ap.add_argument("--time-budget-s", type=float, default=2400.0)
    ap.add_argument("--correct-examples", type=int, default=0,
                    help="also explore the correct worker this many examples")
    args = ap.parse_args()
    bugs = [b for b in args.bugs.split(",") if b]
    unknown = [b for b in bugs if b not in BASES]
    if unknown:
        print(f"--bugs {unknown[0]}: not a search-only bug; use {', '.join(BASES)}",
              file=sys.stderr)
        return 2
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        out = Path(tmp)
        for bug in bugs:
            base = BASES[bug]
            correct = correct_copy(base, out)
            baseline_s = plain_run_s(correct, args.backend, out / "baseline")
            doc = explore(base, args.backend, out / bug, args, args.examples)
            n = len(doc["examples"])
            rate = per_min(n, doc["search_s"])
            shrink = doc.get("shrink") or {}
            print(f"{bug} ({args.backend}, seed {args.seed}): {n} example(s), "
                  f"{rate:.2f} examples/min vs {per_min(1, baseline_s):.2f} plain runs/min "
                  f"(rate ratio {rate / per_min(1, baseline_s):.2f})")
            if doc.get("found") is None:
                failed = True
                print(f"  NOT FOUND in {n} examples ({doc['search_s']:.0f} s)")
            else:
                violated = ", ".join(doc["found"]["violated"])
                print(f"  first failure after {doc['found_after_s']:.0f} s "
                      f"(example {n}: {doc['found']['schedule']}; {violated})")
                print(f"  shrink: {shrink.get('runs_used')} runs, {shrink.get('candidates')} "
                      f"candidates -> {shrink.get('steps')} step(s): {shrink.get('schedule')}")
                if doc.get("reproduces"):
                    a, b = doc["reproduces"]
                    print(f"  reproduces {a} of {b} fresh runs")
                failed = failed or (shrink.get("steps") or 99) > 2
            print(f"  wall {doc['wall_s'] / 60:.1f} min: {doc['command']}")
            if args.correct_examples:
                ok = explore(correct, args.backend, out / f"{bug}-correct", args,
                             args.correct_examples)
                k = len(ok["examples"])
                if ok.get("found") is not None:
                    failed = True
                    print(f"  correct worker: FALSE ALARM in {k} examples: "
                          f"{ok['found']['schedule']} ({', '.join(ok['found']['violated'])})")
                else:
                    print(f"  correct worker: no violation in {k} examples "
                          f"({ok['faults_injected']} faults, {len(ok['fault_kinds'])} kinds), "
                          f"{per_min(k, ok['search_s']):.2f} examples/min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
