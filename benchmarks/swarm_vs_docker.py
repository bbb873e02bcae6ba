"""``harness audit --backend swarm`` against ``harness audit --backend docker`` (issue
16's acceptance), measured on the reference worker and, with ``--bugs``, on the
planted bugs the docker backend catches:

    python benchmarks/swarm_vs_docker.py [--bugs ack-before-process,no-reconnect]
                                         [--no-audit] [--no-brought]

Runs both audits (docker first: its shared broker; swarm: a broker service per
run) and compares, per scenario both ran and per claim, the run's invariant
(``result.json``), so a claim that one backend judged on one scenario and the
other on another does not hide a difference. Then, for each bug of ``--bugs``,
``harness mutants --bugs BUG`` on both backends, and compares what caught it.
Prints the wall times, every difference, and the scenarios the swarm backend
skips (its faults: no ``partition``). Then the brought workers (the example Celery
and Dramatiq images: Celery's defaults read from its own INFO lines alone, with
``HARNESS_EVENTS=off``, the contract's minimum and less; Celery with
``acks_late``; Dramatiq) on ``crash-recovery.yaml``, each claim's verdict compared.
Exit 0 when no verdict differs.
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

from harness.exampleimages import example_image

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


# (name, --format, --events, --worker-env...): the runs of tests/integration/
# test_frameworks_docker.py, on both backends.
BROUGHT: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("celery-defaults-log-lines", "celery", "celery",
     ("HARNESS_EVENTS=off", "CELERY_LOG_LEVEL=info")),
    ("celery-acks-late", "celery", "json", ("CELERY_ACKS_LATE=true",)),
    ("dramatiq", "dramatiq", "json", ()),
)


def brought(out: Path, backend: str, app: str, events: str,
            env: tuple[str, ...]) -> tuple[dict[str, str], float]:
    """claim -> invariant of one crash-recovery run of an example image; wall time."""
    t0 = time.monotonic()
    run_child([sys.executable, "-m", "harness", "run",
               str(ROOT / "scenarios" / "crash-recovery.yaml"), "--backend", backend,
               "--format", app, "--worker-image", example_image(app), "--events", events,
               "--capabilities", "directives", "--out", str(out), "--no-progress",
               *(a for e in env for a in ("--worker-env", e))], ROOT, TIMEOUT_S,
              capture=False)
    took = time.monotonic() - t0
    results = sorted(out.glob("*/result.json"))
    if not results:
        return {"(no result)": "missing"}, took
    data: dict[str, Any] = json.loads(results[-1].read_text())
    # The invariant, as the audits' comparison: the guide's wording ("no duplicates"
    # false as worded) turns on whether a kill caught a task between its processing
    # and its ack, a matter of timing in one run.
    return {str(c["claim"]): str(c.get("invariant") or c["valid"]) for c in data["claims"]}, took


def compare_audits(tmp: Path) -> int:
    """Both audits; the number of (scenario, claim) verdicts that differ."""
    differ = 0
    runs: dict[str, tuple[dict[tuple[str, str], str], list[str], float]] = {}
    for backend in ("docker", "swarm"):
        (tmp / backend).mkdir()
        runs[backend] = audit(tmp / backend, backend)
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
    return differ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bugs", default="", help="planted bugs to compare (comma-separated)")
    ap.add_argument("--no-audit", action="store_true", help="skip the two audits")
    ap.add_argument("--no-brought", action="store_true",
                    help="skip the example images' crash-recovery runs")
    args = ap.parse_args()
    differ = 0
    with tempfile.TemporaryDirectory(prefix="swarm-vs-docker-") as tmp:
        if not args.no_audit:
            differ += compare_audits(Path(tmp))
        for bug in [b for b in args.bugs.split(",") if b]:
            caught = {}
            for backend in ("docker", "swarm"):
                caught[backend] = mutants(Path(tmp) / f"m-{bug}-{backend}", backend, bug)
            same = caught["docker"][0] == caught["swarm"][0]
            differ += 0 if same else 1
            print(f"  {bug}: docker caught by {caught['docker'][0]} "
                  f"({caught['docker'][1] / 60:.1f} min), swarm by {caught['swarm'][0]} "
                  f"({caught['swarm'][1] / 60:.1f} min){'' if same else '  DIFFERS'}")
        if not args.no_brought:
            for name, app, events, env in BROUGHT:
                got = {}
                for backend in ("docker", "swarm"):
                    got[backend] = brought(Path(tmp) / f"b-{name}-{backend}", backend, app,
                                           events, env)
                (dc, dtook), (sc, stook) = got["docker"], got["swarm"]
                diffs = [f"{c}: docker {dc.get(c)}, swarm {sc.get(c)}"
                         for c in sorted(set(dc) | set(sc)) if dc.get(c) != sc.get(c)]
                differ += len(diffs)
                print(f"  {name}: docker {dtook:.0f} s, swarm {stook:.0f} s; "
                      + ", ".join(f"{c} {v}" for c, v in sorted(dc.items())))
                for d in diffs:
                    print(f"    DIFFERS {d}")
    print(f"{differ} difference(s)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
