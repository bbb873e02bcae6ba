"""The README's mutants table is generated from a real ``harness mutants`` report
(kept in docs/), never typed: this fails when the two disagree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.checkers.base import ClaimResult
from harness.history import History
from harness.model import REPORTING_MODES
from harness.mutants import (
    MUTANTS,
    Row,
    first_violation_s,
    readme_with_table,
    rows_from_report,
)

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "mutants-report.json"


def test_readme_table_matches_the_kept_report() -> None:
    data = json.loads(REPORT.read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme_with_table(readme, rows_from_report(data)) == readme, (
        "README's mutants table differs from docs/mutants-report.json: run "
        "python scripts/readme_mutants.py docs/mutants-report.json")


def test_kept_report_is_a_full_docker_run_that_caught_every_bug() -> None:
    data = json.loads(REPORT.read_text())
    rows = rows_from_report(data)
    assert data["backend"] == "docker"
    for mode in REPORTING_MODES:  # every bug, in both reporting modes
        assert sorted(r.bug for r in rows if r.bug != "(none)" and r.reporting == mode) == \
            sorted(m.bug for m in MUTANTS), mode
    assert all(r.caught for r in rows if r.bug != "(none)")
    assert data["false_alarms"] == 0 and any(r.bug == "(none)" for r in rows)
    # A reader reruns them from a checkout: no path of the machine that ran them.
    assert all(" harness run scenarios/" in f" {r['rerun']}" for r in data["rows"])


def test_table_replacement_needs_the_markers() -> None:
    row = Row("auto-ack", "crash-recovery", "no-loss", True, ["no-loss"], [], 4.0, "d", "r")
    with pytest.raises(ValueError, match=r"no .* block"):
        readme_with_table("# README without markers\n", [row])


def _history(*events: dict[str, object]) -> History:
    return History.from_dicts([{"t": 0.0, "source": "harness", **e} for e in events])


def test_first_violation_is_the_earliest_last_sighting_of_a_blamed_task() -> None:
    h = _history({"type": "run_started", "ts": 100.0},
                 {"type": "publish", "ts": 101.0, "id": "a"},
                 {"type": "received", "ts": 102.0, "id": "a"},  # lost here: last seen
                 {"type": "publish", "ts": 101.5, "id": "b"},
                 {"type": "acked", "ts": 107.0, "id": "b"},
                 {"type": "processed", "ts": 103.0, "id": "ok"})
    lost = ClaimResult("no-loss", False, "2 lost", {"lost_ids": ["a", "b"], "lost": 2})
    assert first_violation_s(h, [lost]) == 2.0


def test_a_pinned_moment_wins_and_whole_run_claims_have_none() -> None:
    h = _history({"type": "run_started", "ts": 100.0})
    health = ClaimResult("health-check", False, "stayed healthy", {}, violated_at_ts=112.5)
    assert first_violation_s(h, [health]) == 12.5
    uneven = ClaimResult("even-distribution", False, "one worker took all", {"max": 1.0})
    assert first_violation_s(h, [uneven]) is None
    assert first_violation_s(_history(), [health]) is None  # no run start on record
