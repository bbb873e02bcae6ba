"""The pytest plugin's collected suite under ``pytest -n 2`` gives the same
invariant verdicts as ``harness audit`` (issue 12's acceptance), measured:

    python benchmarks/plugin_vs_audit.py --backend docker

Runs ``harness audit`` once, then ``pytest -n 2 --harness-scenarios suite`` in an
empty directory (a user's project), and compares, per claim, the audit row's
invariant with the worst invariant the plugin's items of that claim recorded
(the ``invariant`` JUnit property; an item that errored is ``unknown``). Prints
the two wall times and every claim whose verdicts differ; exit 0 when none do.
Both runs judge the reference worker, so both should say ``true`` throughout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from _child import run_child

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 3600
RANK = {"false": 0, "unknown": 1, "true": 2}


def worst(words: list[str]) -> str:
    return min(words, key=lambda w: RANK.get(w, 1)) if words else "unknown"


def audit_verdicts(out: Path, backend: str) -> tuple[dict[str, str], float]:
    t0 = time.monotonic()
    run_child([sys.executable, "-m", "harness", "audit", "--backend", backend, "--out",
               str(out), "--no-progress"], ROOT, TIMEOUT_S, capture=False)
    took = time.monotonic() - t0
    report = json.loads(next(out.glob("audit-*.json")).read_text())
    return {r["claim"]: r["invariant"] for r in report["claims"] if r["scenarios"]}, took


def plugin_verdicts(project: Path, backend: str) -> tuple[dict[str, str], float]:
    t0 = time.monotonic()
    run_child([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider",
               "--harness-scenarios", "suite", "--harness-backend", backend,
               "--harness-out", str(project / "runs"), "--junitxml", "j.xml", "-q"],
              project, TIMEOUT_S, capture=False)
    took = time.monotonic() - t0
    by_claim: dict[str, list[str]] = {}
    for case in ET.parse(project / "j.xml").getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        error = case.find("error")
        if case.get("name") == "run" or (error is not None and "cannot run on --harness-backend"
                                         in (error.get("message") or error.text or "")):
            continue  # not a claim; or a scenario the audit skips on this backend too
        word = props.get("invariant") or "unknown"
        by_claim.setdefault(str(case.get("name")), []).append(word)
    return {c: worst(w) for c, w in by_claim.items()}, took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="docker", choices=("local", "docker"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="plugin-vs-audit-") as tmp:
        base = Path(tmp)
        (base / "audit").mkdir()
        (base / "project").mkdir()
        audit, audit_s = audit_verdicts(base / "audit", args.backend)
        plugin, plugin_s = plugin_verdicts(base / "project", args.backend)
    differ = sorted(c for c in set(audit) | set(plugin) if audit.get(c) != plugin.get(c))
    for claim in sorted(set(audit) | set(plugin)):
        mark = "  DIFFERS" if claim in differ else ""
        print(f"{claim:26} audit {audit.get(claim, '-'):8} plugin {plugin.get(claim, '-'):8}"
              f"{mark}")
    print(f"audit {audit_s / 60:.1f} min; pytest -n 2 {plugin_s / 60:.1f} min "
          f"(ratio {plugin_s / audit_s:.2f}); {len(differ)} claim(s) differ ({args.backend})")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
