"""Docker backend figures: start-up to the first processed task, and the
reference worker's resident memory while busy.

    python benchmarks/bench_docker.py [--runs 3]

1. ``harness run`` (as a subprocess, warm images) of a 1-broker + 3-worker
   scenario: wall time from the command's start to the first ``processed``
   event's ``ts`` in the history (target: under 15 s on 2 cores).
2. While the same run is busy (concurrency 10, a backlog of 100 ms tasks), the
   RSS of every worker's process, read from ``/proc/<pid>/status`` on the host
   (the container's main process is a host process), peak over the run
   (target: under 128 MiB; the guide's pods request 256Mi, limit 512Mi).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = """\
name: bench-startup
claims: [no-loss]
cluster: {workers: 3, concurrency: 10}
workload:
  tasks: 600
  directives: {sleep_ms: 100}
"""
TARGET_START_S = 15.0
TARGET_RSS_MIB = 128.0


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample_rss(stop: threading.Event, peaks: dict[str, float]) -> None:
    import docker

    client = docker.from_env()
    while not stop.is_set():
        try:
            for c in client.containers.list(filters={"label": "rmq-harness=1"}):
                if "worker" not in c.name:
                    continue
                pid = int(c.attrs["State"]["Pid"])
                r = rss_mib(pid) if pid else None
                if r is not None:
                    peaks[c.name] = max(peaks.get(c.name, 0.0), r)
        except Exception:  # noqa: BLE001 - containers come and go; sample again
            pass
        stop.wait(0.2)


def one_run(tmp: Path) -> tuple[float, dict[str, float]]:
    scenario = tmp / "bench-startup.yaml"
    scenario.write_text(SCENARIO)
    out = tmp / "runs"
    peaks: dict[str, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(stop, peaks), daemon=True)
    sampler.start()
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(scenario), "--backend",
                           "docker", "--out", str(out), "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    stop.set()
    sampler.join(5)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    run_dir = next(d for d in out.iterdir() if d.is_dir())
    first = None
    with open(run_dir / "history.jsonl") as f:
        for line in f:
            ev = json.loads(line)
            if ev["type"] == "processed":
                first = ev["ts"]
                break
    if first is None:
        raise SystemExit("no task was processed")
    return first - t0, peaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "harness", "images", "build"], cwd=ROOT, check=True,
                   capture_output=True)  # warm images: the figure excludes builds
    starts: list[float] = []
    rss: list[float] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            start_s, peaks = one_run(Path(d))
        starts.append(start_s)
        rss.extend(peaks.values())
        print(f"run {i + 1}: first task processed after {start_s:.1f} s; worker RSS peaks "
              + ", ".join(f"{v:.1f}" for v in sorted(peaks.values())) + " MiB")
    med = statistics.median(starts)
    peak = max(rss) if rss else float("nan")
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| `harness run` to first task processed (1 broker + 3 workers, warm images), "
          f"median of {args.runs} | {med:.1f} s (min {min(starts):.1f}, max {max(starts):.1f})"
          f" | < {TARGET_START_S:.0f} s |")
    print(f"| reference worker RSS while busy (concurrency 10), peak | {peak:.1f} MiB | "
          f"< {TARGET_RSS_MIB:.0f} MiB |")
    ok = med < TARGET_START_S and peak < TARGET_RSS_MIB
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
