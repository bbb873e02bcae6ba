"""Bring your own worker: a plain-text worker is checked through a regex, and
the claims that need what it lacks (directives, /healthcheck, ack events) are
``unknown`` with the reason, never ``true``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-runs")]

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "integration" / "workers" / "plain_worker.py"
REGEX = r"regex:done processing task (?P<id>\S+)"


def run(scenario: str, out: Path) -> tuple[int, dict[str, dict[str, object]]]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(ROOT / "scenarios" / scenario),
         "--backend", "local", "--worker-cmd", f"{sys.executable} {WORKER}",
         "--events", REGEX, "--out", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    results = sorted(out.glob("*/result.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(results[-1].read_text())
    return proc.returncode, {c["claim"]: c for c in data["claims"]}


def test_plain_text_worker_through_a_regex(tmp_path: Path) -> None:
    code, claims = run("retry-backoff.yaml", tmp_path)
    # Its processed lines are read through the regex: every task is accounted for.
    assert claims["no-loss"]["valid"] == "true", claims["no-loss"]
    # It ignores directives: the retries cannot be provoked, so no verdict.
    backoff = claims["retry-backoff"]
    assert backoff["valid"] == "unknown"
    assert "directives" in str(backoff["summary"])
    # It reports no acks: exactly-once-ack cannot be decided from its output.
    assert claims["exactly-once-ack"]["valid"] == "unknown"
    assert code == 2  # undecided, never a pass


def test_missing_health_capability_is_unknown(tmp_path: Path) -> None:
    code, claims = run("health-check.yaml", tmp_path)
    health = claims["health-check"]
    assert health["valid"] == "unknown", health
    assert "health" in str(health["summary"]).lower()
    assert code == 2


GUARD = ROOT / "tests" / "integration" / "workers" / "poison_guard_worker.py"


def test_a_poison_guard_that_dead_letters_redeliveries_fails_no_loss(tmp_path: Path) -> None:
    """A minimal reporter (received, processed) that dead-letters what a killed pod
    held: no-loss false ("dead-lettered, never processed"), never a PASS; its
    structured logger's foreign 'health' and 'fault' lines are ignored."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(ROOT / "scenarios" / "crash-recovery.yaml"),
         "--backend", "local", "--worker-cmd", f"{sys.executable} {GUARD}",
         "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    results = sorted(tmp_path.glob("*/result.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(results[-1].read_text())
    claims = {c["claim"]: c for c in data["claims"]}
    loss = claims["no-loss"]
    assert loss["valid"] == "false", loss
    assert loss["evidence"]["dead_lettered_never_processed"] >= 1
    assert claims["redelivery-after-crash"]["valid"] == "false"
    assert proc.returncode == 1, proc.stdout[-3000:]
    history = [json.loads(x) for x in (results[-1].parent / "history.jsonl").open()]
    foreign = [e for e in history if e["type"] == "foreign_event"]
    assert {e["name"] for e in foreign} == {"health", "fault"}
    # Its "fault" line is not a fault, nor its "health" line a probe.
    assert not any(e["type"] == "fault" and e.get("target") == "worker-9" for e in history)
    assert not any(e["type"] == "health" for e in history)
