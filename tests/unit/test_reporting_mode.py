"""``--reporting full|minimal``: the reference worker's reporting mode reaches its
environment and the rerun command, a brought worker is refused it, and the
false-alarm benchmark excuses an ``unknown`` only where the mode cannot observe
the claim (and never lets such a claim be ``true``)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bench_scripts import load_benchmark

from harness.cli import build_parser, main
from harness.model import Scenario
from harness.options import RunOptions, rerun_command, worker_spec

false_alarms = load_benchmark("false_alarms")


def test_minimal_reporting_reaches_the_worker_env_and_the_rerun() -> None:
    sc = Scenario(name="s", path="scenarios/s.yaml", claims=("no-loss",))
    assert worker_spec(sc, RunOptions(reporting="minimal"), "r1").env["WORKER_EVENTS"] == "minimal"
    assert "--reporting minimal" in rerun_command(sc, RunOptions(reporting="minimal"), 1, "local")
    assert "WORKER_EVENTS" not in worker_spec(sc, RunOptions(), "r1").env
    # A brought worker reports as it does, whatever the mode says.
    brought = RunOptions(reporting="minimal", worker_cmd="my-worker --fast")
    spec = worker_spec(sc, brought, "r1")
    assert "WORKER_EVENTS" not in spec.env and spec.command == ("my-worker", "--fast")
    assert "--reporting" not in rerun_command(sc, RunOptions(), 1, "local")


def test_a_brought_worker_reports_as_it_does(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "no-duplicates.yaml"
    code = main(["run", str(scenario), "--out", str(tmp_path), "--backend", "local",
                 "--worker-cmd", "true", "--reporting", "minimal"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "brought worker" in err[0]


def test_audit_takes_one_mode_mutants_a_list() -> None:
    p = build_parser()
    assert p.parse_args(["audit", "--reporting", "minimal"]).reporting == "minimal"
    assert p.parse_args(["mutants", "--reporting", "minimal,full"]).modes == "minimal,full"
    with pytest.raises(SystemExit):
        p.parse_args(["audit", "--reporting", "chatty"])


def _round(tmp: Path, claims: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Path:
    out = tmp / "round-01"
    (out / "run-a").mkdir(parents=True)
    (out / "run-a" / "result.json").write_text(json.dumps(
        {"scenario": "crash-recovery", "claims": claims, "problems": [], "rerun": "harness run"}))
    (out / "audit-1.json").write_text(json.dumps({"claims": rows, "runs": []}))
    return out


def _claim(name: str, invariant: str, observable: bool | None) -> dict[str, Any]:
    ev = {} if observable is None else {"observable": observable}
    return {"claim": name, "invariant": invariant, "evidence": ev}


def _row(claim: str, verdict: str) -> dict[str, Any]:
    return {"claim": claim, "verdict": verdict, "evidence": "", "scenarios": ["crash-recovery"]}


def test_benchmark_excuses_only_an_unobservable_unknown(tmp_path: Path) -> None:
    since = time.time() - 5
    ok = _round(tmp_path / "a", [_claim("no-loss", "true", None),
                                 _claim("exactly-once-ack", "unknown", False)],
                [_row("no-loss", "holds"), _row("exactly-once-ack", "unknown")])
    assert false_alarms.alarms_of(ok, since, False, Counter()) == []


def test_benchmark_alarms_on_an_observable_unknown(tmp_path: Path) -> None:
    since = time.time() - 5
    out = _round(tmp_path / "b", [_claim("exactly-once-ack", "unknown", None)],
                 [_row("exactly-once-ack", "unknown")])
    bad = false_alarms.alarms_of(out, since, False, Counter())
    assert any("exactly-once-ack=unknown" in b for b in bad)
    assert any("audit row exactly-once-ack" in b for b in bad)


def test_benchmark_alarms_on_an_unobservable_true(tmp_path: Path) -> None:
    since = time.time() - 5
    out = _round(tmp_path / "c", [_claim("exactly-once-ack", "true", False)],
                 [_row("exactly-once-ack", "holds")])
    bad = false_alarms.alarms_of(out, since, False, Counter())
    assert any("exactly-once-ack=true" in b for b in bad)
