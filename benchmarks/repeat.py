"""Repeat timing-sensitive cases N times in a row and count how many held.

    python benchmarks/repeat.py --times 20 --backend docker \\
        --scenario zombie-pause --scenario zombie-blackhole --scenario partition-recovery \\
        --scenario health-check --scenario graceful-shutdown \\
        --bug no-reconnect --bug health-always-ok --bug sigterm-acks-inflight

A ``--scenario`` case runs ``harness run scenarios/NAME.yaml`` on the correct
worker and holds when it exits 0 (every gated invariant true). A ``--bug`` case
runs ``harness mutants --bugs NAME --no-control`` and holds when the planted bug
is caught by its claim (exit 0). ``--reporting`` picks the reference worker's
reporting mode for both. Every failed repetition prints its rerun command; the
last line gives, per case, the passes of N and the wall time. Exit 0 only when
every case held every time: "passes 20 times in a row" is this command's
``20/20`` on every line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _child import run_child

from harness.model import REPORTING_MODES

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600


def _rerun(out: Path) -> str:
    for result in sorted(out.glob("*/result.json")):
        return str(json.loads(result.read_text()).get("rerun", ""))
    return "(no result written)"


def run_case(kind: str, name: str, backend: str, reporting: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="repeat-") as tmp:
        out = Path(tmp)
        base = [sys.executable, "-m", "harness"]
        if kind == "scenario":
            cmd = [*base, "run", str(ROOT / "scenarios" / f"{name}.yaml")]
        else:
            cmd = [*base, "mutants", "--bugs", name, "--no-control"]
        cmd += ["--backend", backend, "--out", str(out), "--no-progress",
                "--reporting", reporting]
        try:
            proc = run_child(cmd, ROOT, RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {RUN_TIMEOUT_S} s"
        if proc.returncode == 0:
            return True, ""
        tail = proc.stdout.strip().splitlines()[-3:]
        return False, f"exit {proc.returncode}; rerun: {_rerun(out)}; " + " | ".join(tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--times", type=int, default=20)
    ap.add_argument("--backend", default="docker", choices=("local", "docker"))
    ap.add_argument("--reporting", default="full", choices=REPORTING_MODES)
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--bug", action="append", default=[])
    args = ap.parse_args()
    if not 1 <= args.times <= 200:
        ap.error("--times must be 1..200")
    cases = [("scenario", s) for s in args.scenario] + [("bug", b) for b in args.bug]
    if not cases:
        ap.error("name at least one --scenario or --bug")
    for kind, name in cases:
        if kind == "scenario" and not (ROOT / "scenarios" / f"{name}.yaml").is_file():
            ap.error(f"--scenario {name}: no scenarios/{name}.yaml")
    started = time.monotonic()
    held = {c: 0 for c in cases}
    took = {c: 0.0 for c in cases}
    for i in range(args.times):
        for case in cases:
            t0 = time.monotonic()
            ok, why = run_case(*case, args.backend, args.reporting)
            took[case] += time.monotonic() - t0
            held[case] += ok
            if not ok:
                print(f"repetition {i + 1}: {case[0]} {case[1]} FAILED: {why}", flush=True)
        print(f"repetition {i + 1}/{args.times} done "
              f"({(time.monotonic() - started) / 60:.1f} min)", flush=True)
    print()
    for case in cases:
        print(f"{case[0]} {case[1]}: {held[case]}/{args.times} held "
              f"({took[case] / args.times:.0f} s each, {args.backend}, {args.reporting})")
    print(f"wall time {(time.monotonic() - started) / 60:.1f} min")
    return 0 if all(v == args.times for v in held.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
