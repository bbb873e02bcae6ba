"""no-loss: every confirmed task processed, or accounted for by the broker."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    W2,
    H,
    clean,
    dead_letter_it,
    kill_run,
    start_ready,
)

from harness.checkers import (
    no_loss,
)

# -- no-loss ------------------------------------------------------------------

def test_no_loss_true() -> None:
    h = clean(10)
    h.publish("dl", poison=True, ts=1000.5).received("dl", W1)
    h.failed("dl", W1, permanent=True)
    h.publish("queued").publish("maybe", outcome="unknown").task("maybe", W2)
    r = no_loss.check(h.finish(main=["queued"], dlq=["dl"]).build(), {})
    assert r.valid is True, r.summary
    e = r.evidence
    assert (e["attempted"], e["confirmed"], e["processed"]) == (13, 12, 11)
    assert (e["dead_lettered"], e["remaining"], e["lost"], e["recovered"]) == (1, 1, 0, 1)


def test_no_loss_false_lost() -> None:
    h = clean(10).publish("gone").finish()
    r = no_loss.check(h.build(), {})
    assert r.valid is False
    assert r.evidence["lost"] == 1 and r.evidence["lost_ids"] == ["gone"]


def test_no_loss_false_unexpected() -> None:
    h = clean(4).task("ghost", W1).finish()
    r = no_loss.check(h.build(), {})
    assert r.valid is False
    assert r.evidence["unexpected_ids"] == ["ghost"]


def test_no_loss_counts_duplicates_without_judging() -> None:
    h = clean(4).task("t0000", W2, redelivered=True).finish()
    r = no_loss.check(h.build(), {})
    assert r.valid is True and r.evidence["duplicated"] == 1


@pytest.mark.parametrize("case", ["no_final_state", "nothing_confirmed", "drain_incomplete",
                                  "dlq_listing_failed", "partial_listing"])
def test_no_loss_unknown(case: str) -> None:
    if case == "no_final_state":
        h = clean(5)
    elif case == "nothing_confirmed":
        h = H().publish("a", outcome="fail").publish("b", outcome="unknown").finish()
    elif case == "drain_incomplete":
        h = clean(5).publish("late").finish(complete=False)
    elif case == "dlq_listing_failed":
        h = (clean(5).publish("x").drain().final_queue("main")
             .final_queue("dlq", ok=False))
    else:
        h = clean(5).publish("x").drain().final_queue("main", ["t0000"], depth=2)
    r = no_loss.check(h.build(), {})
    assert r.valid is None, r.summary


def test_no_loss_nothing_captured_but_unexpected_is_still_false() -> None:
    r = no_loss.check(H().task("ghost", W1).build(), {})
    assert r.valid is False


def test_dlq_unasked_is_loss_in_no_loss() -> None:
    hist = kill_run(dead_letter_it, dlq=("a", "b")).build()
    r = no_loss.check(hist, {})
    assert r.valid is False and "dead-lettered" in r.summary
    assert r.evidence["dead_lettered_unasked"] == 2


def test_dlq_asked_is_accounted_for() -> None:
    hist = kill_run(dead_letter_it, dlq=("a", "b"), poison=("a", "b")).build()
    assert no_loss.check(hist, {}).valid is True


def test_dlq_unknown_when_dlq_not_captured() -> None:
    h = start_ready().publish("a").received("a", W1).failed("a", W1, permanent=True)
    h.dead_lettered("a", W1).drain().final_queue("main").final_queue("dlq", ok=False)
    assert no_loss.check(h.build(), {}).valid is None


def test_broker_fault_explains_an_asked_failure_that_vanished() -> None:
    """RabbitMQ dead-letters at most once: a broker restart can drop a task that was
    on its way to the DLQ. The evidence (asked to fail, a broker fault after its
    receipt, a classic queue) explains it; the same without a broker fault is loss."""
    def run(broker_fault: bool) -> H:
        h = start_ready().publish("p", poison=True).received("p", W1)
        h.failed("p", W1, permanent=True).dead_lettered("p", W1, reason="poison")
        if broker_fault:
            h.fault("broker-restart", "broker", completed_ts=h.now + 3)
        return h.finish()

    r = no_loss.check(run(True).build(), {})
    assert r.valid is True and r.explained.get("count") == 1, r.summary
    assert no_loss.check(run(False).build(), {}).valid is False
    # A broker fault long after the task was dropped explains nothing.
    late = start_ready().publish("p", poison=True).received("p", W1, ts=1001.0)
    late.failed("p", W1, permanent=True, ts=1001.01)
    late.fault("broker-restart", "broker", ts=1040.0, completed_ts=1043.0)
    assert no_loss.check(late.finish().build(), {}).valid is False


@pytest.mark.parametrize("directive,valid", [({"crash_always": True}, True),
                                             ({"crash": "during"}, False)])
def test_a_crash_loop_dead_lettered_is_not_lost(directive: dict[str, object],
                                                valid: bool) -> None:
    """A message that crashes every worker belongs in the DLQ (the delivery limit put
    it there); a one-off crash task found there was dropped instead of processed."""
    h = clean(2).publish("px", directives={**directive, "sleep_ms": 400})
    h.received("px", W1).worker_exited(W1, requested=False)
    r = no_loss.check(h.finish(dlq=["px"]).build(), {})
    assert r.valid is valid, r.summary
