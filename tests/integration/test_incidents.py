"""The two incident scenarios, end to end: a poison message in a crash loop (local)
and a task past the broker's consumer_timeout (local with the minimal reporter, and
docker, whose broker is the run's own and whose log comes through the engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 300


def run(scenario: str, backend: str, out: Path, *extra: str) -> tuple[int, dict[str, Any],
                                                                     list[dict[str, Any]]]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(SCENARIOS / scenario), "--backend",
         backend, "--out", str(out), "--no-progress", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((dirs[0] / "result.json").read_text())
    with open(dirs[0] / "history.jsonl") as f:
        events = [json.loads(line) for line in f]
    return proc.returncode, {c["claim"]: c for c in result["claims"]}, events


@pytest.mark.integration
@pytest.mark.xdist_group("local-runs")
def test_a_poison_crash_loop_ends_in_the_dlq_and_the_fleet_lives(tmp_path: Path) -> None:
    code, claims, events = run("poison-crash-loop.yaml", "local", tmp_path)
    assert code == 0, claims
    assert claims["dead-letter"]["valid"] == "true", claims["dead-letter"]
    assert claims["dead-letter"]["evidence"]["expected_by_reason"] == {"crash_always": 1}
    assert claims["redelivery-after-crash"]["valid"] == "true"
    crashes = [e for e in events if e["type"] == "worker_exited" and not e.get("requested")]
    # delivery_limit 3: the broker dead-letters it on its fourth return, after 4 crashes.
    assert len(crashes) == 4, crashes
    assert claims["no-loss"]["evidence"]["processed"] == 39


def _explained_by_the_broker(claims: dict[str, dict[str, Any]],
                             events: list[dict[str, Any]]) -> None:
    timeouts = [e for e in events if e["type"] == "consumer_timeout"]
    assert timeouts and all(e["source"] == "broker" and e.get("worker") for e in timeouts)
    assert all(e["timeout_ms"] == 4000 for e in timeouts)
    dup = claims["no-duplicate-processing"]
    assert dup["invariant"] == "true", dup
    kinds = dup["evidence"].get("explained_by_kind", {})
    assert set(kinds) == {"timeout:consumer"}, dup
    assert "the broker's consumer_timeout" in dup["summary"]
    assert claims["no-loss"]["valid"] == "true"


@pytest.mark.integration
@pytest.mark.xdist_group("local-runs")
def test_a_consumer_timeout_is_explained_by_the_brokers_log_local_minimal(
        tmp_path: Path) -> None:
    """The minimal reporter (received and processed only) leaves the worker's own
    account out: the broker's log and the harness's sightings decide."""
    code, claims, events = run("consumer-timeout.yaml", "local", tmp_path,
                               "--reporting", "minimal")
    assert code == 0, claims
    _explained_by_the_broker(claims, events)


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.xdist_group("docker")
def test_a_consumer_timeout_is_explained_by_the_brokers_log_docker(tmp_path: Path) -> None:
    code, claims, events = run("consumer-timeout.yaml", "docker", tmp_path)
    assert code == 0, claims
    _explained_by_the_broker(claims, events)
    assert claims["exactly-once-ack"]["valid"] == "true"
    started = [e for e in events if e["type"] == "broker_started"]
    assert started and started[0].get("owned", True) is not False and "vhost" not in started[0]
