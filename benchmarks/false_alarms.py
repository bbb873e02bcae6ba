"""False alarms: run the full suite on the correct worker K times in a row and
count the runs that reported any violation or any ``unknown``.

    python benchmarks/false_alarms.py --runs 10 --backend docker
    python benchmarks/false_alarms.py --runs 10 --backend docker --reporting minimal
    python benchmarks/false_alarms.py --rejudge runs/false-alarms

Each round is one ``harness audit`` (every scenario of the suite, fresh workers
per scenario, a new seed each time). A round is a false alarm when any scenario
of it has a claim whose invariant is ``false`` or ``unknown`` or a run problem;
the claims and scenarios responsible are listed with their rerun commands, so
every flake can be reproduced with its seed. A round whose audit row for a claim
differs from the one docs/claims.md gives a correct worker
(``harness.audit.reference_verdict``: e.g. a zombie scenario whose fault did not
produce the zombie, so ``exactly-one-consumer`` shows ``holds`` instead of
``false as stated``) counts too: the suite failed to show what it must show.

With ``--reporting minimal`` the reference worker writes only ``received`` and
``processed``: a claim its checker marks not observable with those events
(``evidence.observable`` false, e.g. ``exactly-once-ack``) is ``unknown`` by
construction and is not an alarm, provided it is never ``true``; any other
``unknown`` is.

``--rejudge DIR`` runs nothing: it judges the recorded histories of an earlier
invocation's rounds again with the checkers of this tree (after a checker fix,
the evidence already gathered says whether the fix holds on it), keeping each
run's recorded problems.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _child import run_child

from harness.audit import rows_from
from harness.checkers.base import OBSERVABLE, observable
from harness.history import History
from harness.model import REPORTING_MODES
from harness.options import RunOutcome
from harness.scenario import load_scenario
from harness.verdicts import invariant_verdict, judge_history, reference_verdict
from harness.vocab import word

AUDIT_TIMEOUT_S = 3600  # a round takes 5-8 min here; an hour means it is stuck

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"


def _results(out: Path, since: float) -> list[tuple[Path, dict[str, Any]]]:
    """The run directories of one round (written after ``since``) and their results."""
    found = []
    for result in sorted(out.glob("*/result.json")):
        if result.stat().st_mtime >= since:
            found.append((result.parent, json.loads(result.read_text())))
    return found


Claim = tuple[str, str, str, bool]  # scenario, claim, invariant word, observable


def recorded(out: Path, since: float) -> tuple[list[Claim], list[dict[str, Any]]]:
    """(scenario, claim, invariant, observable) of every claim as the round
    recorded it, and the rows of the round's audit report."""
    claims = [(data["scenario"], c["claim"], c["invariant"],
               (c.get("evidence") or {}).get(OBSERVABLE) is not False)
              for _, data in _results(out, since) for c in data["claims"]]
    audits = sorted(p for p in out.glob("audit-*.json") if p.stat().st_mtime >= since)
    rows = json.loads(audits[-1].read_text())["claims"] if audits else []
    return claims, rows


def rejudged(out: Path) -> tuple[list[Claim], list[dict[str, Any]]]:
    """The same, from the round's histories judged again by this tree's checkers:
    the runs its audit report lists (none without a report: an unfinished round)."""
    claims: list[Claim] = []
    outcomes: list[RunOutcome] = []
    audits = sorted(out.glob("audit-*.json"))
    listed = json.loads(audits[-1].read_text())["runs"] if audits else []
    for run in listed:
        run_dir = Path(run["run_dir"])
        if not run_dir.is_dir():
            run_dir = out / run_dir.name  # the rounds were moved since
        try:
            data = json.loads((run_dir / "result.json").read_text())
            history = History.load(run_dir / "history.jsonl")
        except (OSError, ValueError, KeyError) as exc:
            claims.append((run.get("scenario", run_dir.name), "(record)",
                           f"unreadable: {exc}", True))
            continue
        problems = list(data.get("problems") or [])
        results = judge_history(history, tuple(c["claim"] for c in data["claims"]),
                                data.get("params") or {}, problems)
        claims += [(data["scenario"], r.claim, word(invariant_verdict(r)),
                    observable(r)) for r in results]
        path = Path(data.get("scenario_path") or SCENARIOS / f"{data['scenario']}.yaml")
        outcomes.append(RunOutcome(load_scenario(path), run_dir, int(data.get("seed", 0)),
                                   results, 0, problems, str(data.get("rerun", ""))))
    return claims, [r.to_dict() for r in rows_from(outcomes, {})] if listed else []


def alarms_of(out: Path, since: float, rejudge: bool, by_claim: Counter[str]) -> list[str]:
    """What makes this round a false alarm, one line each (empty: none)."""
    claims, rows = rejudged(out) if rejudge else recorded(out, since)
    runs = _results(out, 0.0 if rejudge else since)
    bad: list[str] = []
    reruns = {data["scenario"]: data.get("rerun", "") for _, data in runs}
    unobservable = set()
    for scenario, claim, invariant, seen in claims:
        if not seen and invariant == "unknown":
            unobservable.add(claim)  # this mode's events cannot show it: expected
        elif invariant != "true" or not seen:  # never true when not observable
            bad += [f"{scenario}:{claim}={invariant}", f"  rerun: {reruns.get(scenario, '')}"]
            by_claim[claim] += 1
    for _, data in runs:
        bad += [f"{data['scenario']}: problem: {p}" for p in data.get("problems", [])]
    if not runs:
        bad.append("no run of this round left a result")
    if not rows or (rejudge and not any(out.glob("audit-*.json"))):
        bad.append("no audit report was written (the round did not finish)")
    for row in rows:
        if not row["scenarios"]:
            continue  # no scenario of this selection (--only, backend) checked it
        want = "unknown" if row["claim"] in unobservable else reference_verdict(row["claim"])
        if row["verdict"] != want:
            bad.append(f"audit row {row['claim']}: {row['verdict']!r}, a correct worker "
                       f"gives {want!r}: {row['evidence']}")
            by_claim[f"row:{row['claim']}"] += 1
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--backend", default="docker", choices=("local", "docker"))
    ap.add_argument("--out", type=Path, default=Path("runs/false-alarms"))
    ap.add_argument("--only", action="append", help="suite scenarios to run (see audit)")
    ap.add_argument("--reporting", default="full", choices=REPORTING_MODES,
                    help="the reference worker's reporting mode (see harness audit)")
    ap.add_argument("--rejudge", type=Path, metavar="DIR",
                    help="judge the rounds recorded in DIR again; run nothing")
    args = ap.parse_args()
    if not 1 <= args.runs <= 100:
        ap.error("--runs must be 1..100")
    if args.rejudge is not None and not sorted(args.rejudge.glob("round-*")):
        ap.error(f"--rejudge {args.rejudge}: no round-* directories there")
    started = time.monotonic()
    by_claim: Counter[str] = Counter()
    rounds = (sorted(args.rejudge.glob("round-*")) if args.rejudge is not None
              else [args.out / f"round-{i + 1:02d}" for i in range(args.runs)])
    alarms = 0
    for i, out in enumerate(rounds):
        t0 = time.monotonic()
        since = time.time() - 1.0  # file times have coarse resolution on some filesystems
        code = 0
        if args.rejudge is None:
            cmd = [sys.executable, "-m", "harness", "audit", "--backend", args.backend,
                   "--out", str(out), "--no-progress", "--reporting", args.reporting]
            for o in args.only or []:
                cmd += ["--only", o]
            code = run_child(cmd, ROOT, AUDIT_TIMEOUT_S).returncode
        bad = alarms_of(out, since, args.rejudge is not None, by_claim)
        status = "ok" if not bad and code == 0 else "ALARM"
        alarms += status != "ok"
        took = time.monotonic() - t0
        print(f"round {i + 1}/{len(rounds)} ({out.name}): {status} (exit {code}, {took:.0f} s)")
        for line in bad:
            print(f"    {line}")
        sys.stdout.flush()
    total = time.monotonic() - started
    print()
    print(f"{alarms} of {len(rounds)} rounds had a violation or an unknown on the correct "
          f"worker ({'rejudged' if args.rejudge else f'reporting {args.reporting}'}); "
          f"wall time {total / 60:.1f} min "
          f"({total / len(rounds):.0f} s a round)")
    if by_claim:
        print("by claim: " + ", ".join(f"{k}={v}" for k, v in by_claim.most_common()))
    return 0 if alarms == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
