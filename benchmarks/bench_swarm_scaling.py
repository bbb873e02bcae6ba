"""Scaling through the orchestrator: the guide's "1 pod = 10 tasks/sec" curve and a
backlog shared by 25 replicas, with ``docker service scale`` doing the scaling.

    python benchmarks/bench_swarm_scaling.py [--counts 1,2,4,8,16,25] [--baseline docker]
                                             [--per-worker 200] [--no-curve]

1. The curve: one scenario, one worker of concurrency 1 and tasks of 100 ms,
   scaled through every count of ``--counts`` (``--step-s`` per phase); the
   ``linear-scaling`` checker measures each phase's throughput over a window after
   the new workers report ready, and its efficiency T(N) / (N x T(1)). The same
   scenario on ``--baseline`` (docker: the supervisor starts containers itself) is
   the baseline measured in the same run: the ratio swarm / baseline per count
   says what the orchestrator costs, apart from what the machine can do.
2. The backlog at the largest count (``--per-worker`` tasks a replica): one
   worker faces it, then the service is scaled to that count at once;
   ``even-distribution`` (with the late starters) and ``no-loss`` are judged at
   that N, on swarm and on the baseline.

Prints one row per count and the verdicts; ``--json`` writes the figures.
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

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S: Final = 1800.0
TASK_MS: Final = 100


def curve_scenario(counts: list[int], step_s: float) -> dict[str, Any]:
    """One phase per count; enough 100 ms tasks that a backlog remains to the end."""
    ideal = sum(c * (1000 // TASK_MS) * step_s for c in counts)
    return {
        "name": "bench-swarm-curve",
        "claims": ["no-loss", "exactly-once-ack", "linear-scaling"],
        "cluster": {"workers": counts[0], "concurrency": 1, "queue": "go.logger"},
        "workload": {"tasks": int(ideal * 1.2) + 200, "drain_timeout_s": 300,
                     "publish_timeout_s": 120, "directives": {"sleep_ms": TASK_MS}},
        "schedule": [{"when": {"after_s": step_s}, "fault": "scale", "count": c}
                     for c in counts[1:]],
        "params": {"linear-scaling": {"warmup_s": 3, "window_s": 4, "min_efficiency": 0.8,
                                      "ready_wait_s": 60}},
    }


# Tasks per replica of the backlog. With 40 (scale-up-backlog.yaml's share) the 24
# new workers of a scale 1 -> 25 came ready over 0.5-12.5 s on 2 cores, on docker
# and on swarm alike, and the backlog was gone at 12-14 s: the late ones had
# nothing left (counts 0..90 around 40). 200 make the stagger a small part.
PER_WORKER: Final = 200


def backlog_scenario(count: int, per_worker: int = PER_WORKER) -> dict[str, Any]:
    """scale-up-backlog.yaml at ``count`` replicas: ``per_worker`` tasks of 300 ms
    each per replica."""
    return {
        "name": f"bench-swarm-backlog-{count}",
        "claims": ["no-loss", "exactly-once-ack", "even-distribution"],
        "cluster": {"workers": 1, "concurrency": 2, "queue": "go.logger"},
        "workload": {"tasks": per_worker * count, "drain_timeout_s": 300,
                     "publish_timeout_s": 60,
                     "directives": {"sleep_ms": 300}},
        "schedule": [{"when": {"after_s": 0}, "fault": "scale", "count": count}],
        "params": {"even-distribution": {"max_deviation": 0.5, "include_late": True}},
    }


def run(doc: dict[str, Any], backend: str, out: Path) -> dict[str, Any]:
    path = out / f"{doc['name']}-{backend}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    runs = out / f"runs-{doc['name']}-{backend}"
    t0 = time.monotonic()
    proc = run_child([sys.executable, "-m", "harness", "run", str(path), "--backend", backend,
                      "--seed", "1", "--out", str(runs), "--no-progress"], ROOT, RUN_TIMEOUT_S)
    wall = time.monotonic() - t0
    found = sorted(runs.glob("*/result.json"))
    if not found:
        raise SystemExit(f"no result.json from {backend} run of {doc['name']}:\n"
                         f"{proc.stdout[-3000:]}")
    result: dict[str, Any] = json.loads(found[-1].read_text(encoding="utf-8"))
    result["wall_s"] = wall
    # A step that did not take effect: say why (the run directory is temporary).
    with (found[-1].parent / "history.jsonl").open(encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            if ev.get("type") == "fault" and ev.get("ok") is False:
                print(f"  {backend}: {ev.get('fault')} {ev.get('count', '')} failed: "
                      f"{ev.get('error')}")
    result["exit_code"] = proc.returncode
    return result


def claims(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["claim"]: c for c in result["claims"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1,2,4,8,16,25")
    ap.add_argument("--step-s", type=float, default=12.0)
    ap.add_argument("--baseline", default="docker", choices=("docker", "local", "none"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--per-worker", type=int, default=PER_WORKER,
                    help="backlog tasks per replica at the largest count")
    ap.add_argument("--no-curve", action="store_true", help="only the backlog")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if counts[0] != 1 or counts != sorted(set(counts)) or counts[-1] > 256:
        raise SystemExit("--counts: increasing, from 1, at most 256")
    figures: dict[str, Any] = {"counts": counts, "step_s": args.step_s}
    with tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp:
        out = Path(tmp)
        backends = ["swarm"] + ([args.baseline] if args.baseline != "none" else [])
        curves: dict[str, dict[int, dict[str, Any]]] = {}
        for backend in backends if not args.no_curve else []:
            res = run(curve_scenario(counts, args.step_s), backend, out)
            ls = claims(res)["linear-scaling"]
            rows = {int(r["workers"]): r for r in ls.get("evidence", {}).get("phases", [])}
            curves[backend] = rows
            figures[f"curve_{backend}"] = {"valid": ls["valid"], "summary": ls["summary"],
                                           "phases": ls.get("evidence", {}).get("phases"),
                                           "bends_at": ls.get("evidence", {}).get("bends_at"),
                                           "wall_s": round(res["wall_s"], 1)}
        if not args.no_curve:
            print_curve(counts, backends, curves, figures, args.baseline)
        top = counts[-1]
        for backend in backends:
            res = run(backlog_scenario(top, args.per_worker), backend, out)
            verdicts = {c: v["valid"] for c, v in claims(res).items()}
            figures[f"backlog_{backend}"] = {
                "workers": top, "tasks": top * args.per_worker, "verdicts": verdicts,
                "even": claims(res)["even-distribution"]["summary"],
                "wall_s": round(res["wall_s"], 1)}
            print(f"backlog of {top * args.per_worker} tasks scaled 1 -> {top} on {backend}: "
                  f"{verdicts}; {figures[f'backlog_{backend}']['even']} "
                  f"({figures[f'backlog_{backend}']['wall_s']} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


def print_curve(counts: list[int], backends: list[str],
                curves: dict[str, dict[int, dict[str, Any]]], figures: dict[str, Any],
                baseline: str) -> None:
    """One row per count: swarm's throughput and efficiency, the baseline's, the ratio."""
    print(f"{'N':>4} {'swarm/s':>9} {'eff':>6} " +
          (f"{baseline + '/s':>10} {'eff':>6} {'ratio':>6}" if len(backends) > 1 else ""))
    for n in counts:
        s = curves["swarm"].get(n, {})
        line = f"{n:>4} {s.get('throughput_per_s', '-')!s:>9} {s.get('efficiency', '-')!s:>6} "
        if len(backends) > 1:
            b = curves[baseline].get(n, {})
            ratio = (round(s["throughput_per_s"] / b["throughput_per_s"], 2)
                     if s.get("throughput_per_s") and b.get("throughput_per_s") else "-")
            line += (f"{b.get('throughput_per_s', '-')!s:>10} "
                     f"{b.get('efficiency', '-')!s:>6} {ratio!s:>6}")
        print(line)
        for where, row in (("swarm", s), *(((baseline, curves[baseline].get(n, {})),)
                                           if len(backends) > 1 else ())):
            if row.get("invalid"):
                print(f"     {where}: not measured: {row['invalid']}")
    for backend in backends:
        f = figures[f"curve_{backend}"]
        print(f"linear-scaling on {backend}: {f['valid']}: {f['summary']} "
              f"(bends at {f['bends_at']}; {f['wall_s']} s)")


if __name__ == "__main__":
    sys.exit(main())
