"""The invariants: always judged, and a run problem turns a true invariant unknown."""

from __future__ import annotations

from histories import (
    W1,
    W2,
    claim_names,
    start_ready,
)

from harness.verdicts import invariant_verdict, judge_history

# -- problems reach the invariant ---------------------------------------------------------

def test_problem_turns_a_true_invariant_unknown() -> None:
    h = start_ready().publish("a").received("a", W1).processed("a", W1)
    h.fault("kill", W1).received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    hist = h.finish().build()
    clean = judge_history(hist, ["no-duplicate-processing"], {}, [])
    assert clean[0].valid is False and invariant_verdict(clean[0]) is True
    problem = judge_history(hist, ["no-duplicate-processing"], {}, ["the drain did not finish"])
    assert invariant_verdict(problem[0]) is None
    assert "drain" in problem[0].summary


def test_problem_keeps_a_false_invariant() -> None:
    h = start_ready().publish("a").task("a", W1).task("a", W2).finish()
    res = judge_history(h.build(), ["no-duplicate-processing"], {}, ["anything"])
    assert invariant_verdict(res[0]) is False


# -- invariants are always judged --------------------------------------------------------

def test_invariants_are_judged_whatever_the_claims_list() -> None:
    h = start_ready().publish("a").task("a", W1).task("a", W2).finish()  # an unexplained duplicate
    res = judge_history(h.build(), ["retry-backoff"], {}, [])
    assert claim_names(res) == ["retry-backoff", "no-loss", "exactly-once-ack",
                           "no-duplicate-processing"]
    by = {r.claim: r for r in res}
    assert invariant_verdict(by["no-duplicate-processing"]) is False
    assert invariant_verdict(by["no-loss"]) is True
    assert by["retry-backoff"].valid is None
