"""The audit's rows: how per-scenario results become one verdict per claim, and
which verdicts gate the exit code. Hand-built results, no runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.audit import (
    ClaimRow,
    default_gate,
    exit_code,
    rows_from,
)
from harness.checkers.base import ClaimResult
from harness.options import RunOutcome
from harness.scenario import load_scenario
from harness.verdicts import CLAIMS, DEFAULT_GATE, reference_verdict, verdict_word

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def outcome(name: str, *results: ClaimResult) -> RunOutcome:
    return RunOutcome(scenario=load_scenario(SCENARIOS / f"{name}.yaml"), run_dir=Path("x"),
                      seed=1, results=list(results), exit_code=0)


def row(rows: list[ClaimRow], claim: str) -> ClaimRow:
    return next(r for r in rows if r.claim == claim)


def test_verdict_words() -> None:
    assert verdict_word("no-loss", True, True) == "holds"
    assert verdict_word("dead-letter", True, True) == "holds with a caveat"
    assert verdict_word("no-duplicate-processing", False, True) == "false as stated"
    assert verdict_word("no-loss", False, False) == "VIOLATED"
    # A violated invariant wins over a missing guide verdict, and unknown over holds.
    assert verdict_word("no-loss", None, False) == "VIOLATED"
    assert verdict_word("no-loss", True, None) == "unknown"
    assert verdict_word("no-loss", None, True) == "unknown"


def test_reference_verdicts_match_design() -> None:
    """docs/claims.md's last column: two claims false as worded, the rest hold."""
    false_as_stated = {c for c in CLAIMS if reference_verdict(c) == "false as stated"}
    assert false_as_stated == {"no-duplicate-processing", "exactly-one-consumer"}
    assert reference_verdict("no-loss") == "holds"
    assert reference_verdict("even-distribution") == "holds with a caveat"
    assert all(reference_verdict(c) != "VIOLATED" for c in CLAIMS)


def test_worst_result_decides_the_row_and_names_its_scenario() -> None:
    ok = ClaimResult("no-loss", True, "all accounted for")
    lost = ClaimResult("no-loss", False, "2 lost", evidence={"lost": 2})
    rows = rows_from([outcome("no-duplicates", ok), outcome("crash-recovery", lost)], {})
    r = row(rows, "no-loss")
    assert r.verdict == "VIOLATED"
    assert r.evidence == "[crash-recovery] 2 lost"
    assert r.scenarios == ("no-duplicates", "crash-recovery")
    assert exit_code(rows, frozenset({"no-loss"})) == 1


def test_duplicates_explained_by_a_fault_are_false_as_stated_and_pass_the_gate() -> None:
    dup = ClaimResult("no-duplicate-processing", False, "3 duplicates, all explained",
                      evidence={"invariant_holds": True})
    rows = rows_from([outcome("crash-after-process", dup)], {})
    r = row(rows, "no-duplicate-processing")
    assert r.verdict == "false as stated"
    assert exit_code(rows, frozenset({"no-duplicate-processing"})) == 0


def test_unexplained_duplicates_violate_the_invariant() -> None:
    dup = ClaimResult("no-duplicate-processing", False, "1 unexplained duplicate",
                      evidence={"invariant_holds": False})
    rows = rows_from([outcome("no-duplicates", dup)], {})
    assert row(rows, "no-duplicate-processing").verdict == "VIOLATED"
    assert exit_code(rows, DEFAULT_GATE) == 1


def test_a_claim_no_scenario_checked_is_unknown_with_the_reason() -> None:
    rows = rows_from([outcome("no-duplicates", ClaimResult("no-loss", True, "ok"))],
                     {"partition-recovery": "needs the docker backend"})
    assert {r.claim for r in rows} == set(CLAIMS)  # a row for every claim, always
    r = row(rows, "partition-recovery")
    assert r.verdict == "unknown"
    assert r.evidence == "needs the docker backend"
    assert "no scenario" in row(rows, "retry-backoff").evidence


@pytest.mark.parametrize("gated, expected", [
    (frozenset({"no-loss"}), 0),            # every gated invariant true
    (frozenset({"no-loss", "health-check"}), 2),  # one gated invariant unknown
    (frozenset(), 2),                       # nothing gated: no verdict to give
])
def test_exit_code_follows_only_the_gated_invariants(gated: frozenset[str],
                                                      expected: int) -> None:
    rows = rows_from([outcome("no-duplicates", ClaimResult("no-loss", True, "ok"),
                              ClaimResult("linear-scaling", False, "bends at N=2"))], {})
    # linear-scaling is false but not gated: it never decides the exit code.
    assert exit_code(rows, gated) == expected


UNSEEN = ClaimResult("exactly-once-ack", None, "no acked event", {"observable": False})


def test_a_default_gate_does_not_wait_on_a_claim_the_worker_cannot_show() -> None:
    """With a minimal reporter exactly-once-ack is unknown in every scenario: the
    default gate leaves it out (and says so), so the rest decides; a gate the
    user names keeps it (2); an observable unknown still gates (2)."""
    ok = ClaimResult("no-loss", True, "ok")
    rows = rows_from([outcome("crash-recovery", ok, UNSEEN)], {})
    assert row(rows, "exactly-once-ack").verdict == "unknown"
    gate, unseen = default_gate(rows)
    assert unseen == ["exactly-once-ack"] and "exactly-once-ack" not in gate
    assert exit_code(rows, frozenset({"no-loss"})) == 0
    assert exit_code(rows, frozenset({"no-loss", "exactly-once-ack"})) == 2
    seen = ClaimResult("exactly-once-ack", None, "final read failed")
    rows2 = rows_from([outcome("crash-recovery", ok, UNSEEN), outcome("no-duplicates", seen)],
                      {})
    assert default_gate(rows2)[1] == []


def test_a_run_default_gate_skips_only_unobservable_results() -> None:
    from harness.verdicts import not_gated, overall_exit_code

    ok = ClaimResult("no-loss", True, "ok")
    assert overall_exit_code([ok, UNSEEN]) == 0
    assert not_gated([ok, UNSEEN], None) == ["exactly-once-ack"]
    assert overall_exit_code([ok, UNSEEN], {"no-loss", "exactly-once-ack"}) == 2
    assert not_gated([ok, UNSEEN], {"no-loss"}) == []
    assert overall_exit_code([UNSEEN]) == 2  # nothing observable: nothing passes
    assert overall_exit_code([ClaimResult("no-loss", False, "lost"), UNSEEN]) == 1

