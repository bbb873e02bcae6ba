"""Quality: the planted bugs only a search finds (``worker.bugs.SEARCH_BUGS``) are
found by ``harness explore`` from a fault-free scenario, for real on the local
backend, and shrunk to a minimal scenario of at most 2 steps that ``harness run``
reads. CI runs each with a small budget; the README's figures come from larger
ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import vocab
from harness.scenario import load_scenario

pytestmark = [pytest.mark.quality, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
EXPLORE_TIMEOUT_S = 600


def test_explore_finds_and_shrinks_transient_retry_queues(tmp_path: Path) -> None:
    """transient-retry-queues loses the retries waiting in its non-durable retry
    queues when the broker restarts: any broker restart while tasks wait for a retry
    shows it (no-loss false). The budget: broker restarts only, 2 examples of at
    most 2 steps, a shrink of 2 runs, no reproduction rate (a benchmark's figure:
    benchmarks/bench_explore.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "explore", "benchmarks/search/retry-base.yaml",
         "--backend", "local", "--faults", "broker-restart", "--examples", "2",
         "--max-steps", "2", "--seed", "4", "--shrink-runs", "2", "--reruns", "1",
         "--rate-runs", "0", "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=EXPLORE_TIMEOUT_S, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == vocab.EXIT_VIOLATED, out[-4000:]
    assert "violated" in out and "no-loss" in out, out[-4000:]
    found = sorted(tmp_path.rglob("retry-base-minimal.yaml"))
    assert len(found) == 1, out[-4000:]
    minimal = found[0]
    steps = yaml.safe_load(minimal.read_text(encoding="utf-8"))["schedule"]
    assert 1 <= len(steps) <= 2 and all(s["fault"] == "broker-restart" for s in steps)
    assert load_scenario(minimal).schedule  # what harness run reads


def test_explore_finds_stale_ack_after_two_reconnects(tmp_path: Path) -> None:
    """stale-ack-after-two-reconnects acks a stale delivery only after two reconnects
    of one worker within one task's run: two cuts of one worker, found from the
    fault-free quick base (30 tasks of 2.5-3.5 s: the drain's quiet wait is three
    longest tasks, so shorter tasks make each run shorter). The budget:
    close-connections only, 2 examples of at most 2 steps (seed 6: the second is
    two cuts, "one when holding 8 unacked" then "one after 5 processed"; found
    and shrunk 9 times in 9 here), a shrink of 1 run."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "explore",
         "benchmarks/search/search-base-quick.yaml", "--backend", "local",
         "--faults", "close-connections", "--examples", "2", "--max-steps", "2",
         "--seed", "6", "--shrink-runs", "1", "--reruns", "1", "--rate-runs", "0",
         "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=EXPLORE_TIMEOUT_S, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == vocab.EXIT_VIOLATED, out[-4000:]
    found = sorted(tmp_path.rglob("search-base-quick-minimal.yaml"))
    assert len(found) == 1, out[-4000:]
    steps = yaml.safe_load(found[0].read_text(encoding="utf-8"))["schedule"]
    assert len(steps) == 2 and all(s["fault"] == "close-connections" for s in steps), steps
    assert load_scenario(found[0]).schedule
