"""``harness audit --backend swarm`` against ``harness audit --backend docker`` (issue
16's acceptance), measured on the reference worker and, with ``--bugs``, on the
planted bugs the docker backend catches:

    python benchmarks/swarm_vs_docker.py [--bugs ack-before-process,no-reconnect]

Runs both audits (docker first: its shared broker; swarm: a broker service per
run) and compares, per scenario both ran and per claim, the run's invariant
(``result.json``), so a claim that one backend judged on one scenario and the
other on another does not hide a difference. Then, for each bug of ``--bugs``,
``harness mutants --bugs BUG`` on both backends, and compares what caught it.
Prints the wall times, every difference, and the scenarios the swarm backend
skips (its faults: no ``partition``); exit 0 when no verdict differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _child import run_child

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 3 * 3600


def audit(out: Path, backend: str) -> tuple[dict[tuple[str, str], str], list[str], float]:
    """(scenario, claim) -> invariant of each run; the scenarios skipped; wall time."""
    t0 = time.monotonic()
    run_child([sys.executable, "-m", "harness", "audit", "--backend", backend, "--out",
               str(out), "--no-progress"], ROOT, TIMEOUT_S, capture=False)
    took = time.monotonic() - t0
    report: dict[str, Any] = json.loads(next(out.glob("audit-*.json")).read_text())
    verdicts: dict[tuple[str, str], str] = {}
    for run in report["runs"]:
        result = json.loads((Path(run["run_dir"]) / "result.json").read_text())
        for c in result["claims"]:
            verdicts[(run["scenario"], c["claim"])] = str(c.get("invariant") or c["valid"])
    skipped = sorted({r["why"] for r in report["claims"] if not r["scenarios"] and r.get("why")})
    return verdicts, skipped, took


def mutants(out: Path, backend: str, bug: str) -> tuple[list[str], float]:
    """The claims that caught ``bug`` (mutants' report)."""
    t0 = time.monotonic()
    run_child([sys.executable, "-m", "harness", "mutants", "--backend", backend, "--bugs", bug,
               "--out", str(out), "--no-progress"], ROOT, TIMEOUT_S, capture=False)
    took = time.monotonic() - t0
    found = sorted(out.glob("**/mutants*.json"))
    if not found:
        return ["(no report)"], took
    report: dict[str, Any] = json.loads(found[-1].read_text())
    caught: list[str] = []
    for row in report["rows"]:
        if row["bug"] == bug and row["caught"]:
            caught += [f"{row['scenario']}:{c}" for c in row["violated"]]
    return sorted(set(caught)), took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bugs", default="", help="planted bugs to compare (comma-separated)")
    args = ap.parse_args()
    differ = 0
    with tempfile.TemporaryDirectory(prefix="swarm-vs-docker-") as tmp:
        runs: dict[str, tuple[dict[tuple[str, str], str], list[str], float]] = {}
        for backend in ("docker", "swarm"):
            (Path(tmp) / backend).mkdir()
            runs[backend] = audit(Path(tmp) / backend, backend)
        dv, _, dt = runs["docker"]
        sv, skipped, st = runs["swarm"]
        both = sorted(set(dv) & set(sv))
        print(f"audit: docker {dt / 60:.1f} min, swarm {st / 60:.1f} min (ratio {st / dt:.2f}); "
              f"{len(both)} (scenario, claim) verdicts on both")
        for key in both:
            if dv[key] != sv[key]:
                differ += 1
                print(f"  DIFFERS {key[0]} {key[1]}: docker {dv[key]}, swarm {sv[key]}")
        only = sorted({s for s, _ in set(dv) - set(sv)})
        print(f"  scenarios swarm did not run: {', '.join(only) or 'none'}")
        for why in skipped:
            print(f"  swarm audit skipped: {why}")
        for bug in [b for b in args.bugs.split(",") if b]:
            caught = {}
            for backend in ("docker", "swarm"):
                caught[backend] = mutants(Path(tmp) / f"m-{bug}-{backend}", backend, bug)
            same = caught["docker"][0] == caught["swarm"][0]
            differ += 0 if same else 1
            print(f"  {bug}: docker caught by {caught['docker'][0]} "
                  f"({caught['docker'][1] / 60:.1f} min), swarm by {caught['swarm'][0]} "
                  f"({caught['swarm'][1] / 60:.1f} min){'' if same else '  DIFFERS'}")
    print(f"{differ} difference(s)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
