"""False alarms: run the full suite on the correct worker K times in a row and
count the runs that reported any violation or any ``unknown``.

    python benchmarks/false_alarms.py --runs 10 --backend docker

Each round is one ``harness audit`` (every scenario of the suite, fresh broker
and workers per scenario, a new seed each time). A round is a false alarm when
any scenario of it has a claim whose invariant is ``false`` or ``unknown``;
the claims and scenarios responsible are listed with their rerun commands, so
every flake can be reproduced with its seed. A round whose audit row for a claim
differs from the one DESIGN.md expects for a correct worker
(``harness.audit.reference_verdict``: e.g. a zombie scenario whose fault did not
produce the zombie, so ``exactly-one-consumer`` shows ``holds`` instead of
``false as stated``) counts too: the suite failed to show what it must show.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness.audit import reference_verdict

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--backend", default="docker", choices=("local", "docker"))
    ap.add_argument("--out", type=Path, default=Path("runs/false-alarms"))
    ap.add_argument("--only", action="append", help="suite scenarios to run (see audit)")
    args = ap.parse_args()
    if not 1 <= args.runs <= 100:
        ap.error("--runs must be 1..100")
    started = time.monotonic()
    alarms = 0
    by_claim: Counter[str] = Counter()
    for i in range(args.runs):
        out = args.out / f"round-{i + 1:02d}"
        cmd = [sys.executable, "-m", "harness", "audit", "--backend", args.backend,
               "--out", str(out), "--no-progress"]
        for o in args.only or []:
            cmd += ["--only", o]
        t0 = time.monotonic()
        round_t0 = time.time() - 1.0  # file times have coarse resolution on some filesystems
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        took = time.monotonic() - t0
        bad: list[str] = []
        for result in sorted(out.glob("*/result.json")):
            data = json.loads(result.read_text())
            for c in data["claims"]:
                if c["invariant"] != "true":
                    bad.append(f"{data['scenario']}:{c['claim']}={c['invariant']}")
                    by_claim[c["claim"]] += 1
                    bad.append(f"  rerun: {data['rerun']}")
            for p in data.get("problems", []):
                bad.append(f"{data['scenario']}: problem: {p}")
        # This round's report only (an earlier invocation may have used the same --out).
        audits = sorted(p for p in out.glob("audit-*.json") if p.stat().st_mtime >= round_t0)
        if not audits:
            bad.append("no audit report was written")
        for audit in audits[-1:]:
            for row in json.loads(audit.read_text())["claims"]:
                if not row["scenarios"]:
                    continue  # no scenario of this selection (--only, backend) checked it
                want = reference_verdict(row["claim"])
                if row["verdict"] != want:
                    bad.append(f"audit row {row['claim']}: {row['verdict']!r}, a correct "
                               f"worker gives {want!r}: {row['evidence']}")
                    by_claim[f"row:{row['claim']}"] += 1
        status = "ok" if not bad and proc.returncode == 0 else "ALARM"
        alarms += status != "ok"
        print(f"round {i + 1}/{args.runs}: {status} (exit {proc.returncode}, {took:.0f} s)")
        for line in bad:
            print(f"    {line}")
        sys.stdout.flush()
    total = time.monotonic() - started
    print()
    print(f"{alarms} of {args.runs} rounds had a violation or an unknown on the correct worker; "
          f"wall time {total / 60:.1f} min ({total / args.runs:.0f} s a round)")
    if by_claim:
        print("by claim: " + ", ".join(f"{k}={v}" for k, v in by_claim.most_common()))
    return 0 if alarms == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
