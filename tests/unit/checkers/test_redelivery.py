"""redelivery-after-crash: what a killed worker held comes back, completed by its new holder."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    W2,
    W3,
    H,
    clean,
    dead_letter_it,
    kill_run,
    process_it,
    start_ready,
)

from harness.checkers import (
    redelivery,
)

# -- redelivery-after-crash -------------------------------------------------------

def _kill_run(complete_t1: bool = True, redeliver_t1: bool = True) -> H:
    h = clean(4).publish("a").publish("b").publish("c")
    h.received("a", W1).received("b", W1).received("c", W1).processed("c", W1).acked("c", W1)
    h.fault("kill", W1).worker_exited(W1, requested=True)
    h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    if redeliver_t1:
        h.received("b", W2, redelivered=True)
        if complete_t1:
            h.processed("b", W2).acked("b", W2)
    return h


def test_redelivery_true() -> None:
    r = redelivery.check(_kill_run().finish().build(), {})
    assert r.valid is True, r.summary
    e = r.evidence
    assert (e["kills"], e["in_flight"], e["redelivered"]) == (1, 2, 2)
    assert e["latency_max_s"] > 0 and e["per_kill"][0]["worker"] == W1


def test_redelivery_crash_counts_and_merges_with_kill() -> None:
    h = clean(2).publish("a").received("a", W1).worker_exited(W1, requested=False)
    h.fault("kill", W1)  # a kill reported right after the crash: the same death
    h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    r = redelivery.check(h.finish().build(), {})
    assert r.valid is True and r.evidence["kills"] == 1


def test_redelivery_to_restarted_worker_counts() -> None:
    h = clean(2).publish("a").received("a", W1).fault("kill", W1).worker_started(W1)
    h.received("a", W1, redelivered=True).processed("a", W1).acked("a", W1)
    assert redelivery.check(h.finish().build(), {}).valid is True


def test_redelivery_false_not_redelivered() -> None:
    r = redelivery.check(_kill_run(redeliver_t1=False).finish().build(), {})
    assert r.valid is False
    assert r.evidence["not_redelivered_ids"] == ["b"]


def test_redelivery_false_not_completed() -> None:
    r = redelivery.check(_kill_run(complete_t1=False).finish().build(), {})
    assert r.valid is False
    assert r.evidence["not_completed_ids"] == ["b"]


@pytest.mark.parametrize("case", ["no_kill", "nothing_in_flight", "no_received",
                                  "queued_after_incomplete_drain"])
def test_redelivery_unknown(case: str) -> None:
    if case == "no_kill":
        h = clean(5).finish()
    elif case == "nothing_in_flight":
        h = clean(5).fault("kill", W1).finish()
    elif case == "no_received":
        h = H().publish("a").processed("a", W1).acked("a", W1).fault("kill", W1).finish()
    else:
        h = _kill_run(complete_t1=False).finish(main=["b"], complete=False)
    r = redelivery.check(h.build(), {})
    assert r.valid is None, r.summary


def test_fault_target_falls_back_to_the_event_worker() -> None:
    h = clean(2).publish("a").received("a", W1)
    h.add("fault", "nemesis", worker=W1, fault="kill", phase="invoke", ok=True)
    h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    assert redelivery.check(h.finish().build(), {}).valid is True


def test_failed_fault_invocation_is_not_a_kill() -> None:
    h = clean(2).publish("a").received("a", W1).fault("kill", W1, ok=False)
    h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    assert redelivery.check(h.finish().build(), {}).valid is None


def test_redelivery_deliveries_before_an_earlier_connection_loss_are_not_in_flight() -> None:
    h = clean(2).publish("a").publish("b").received("a", W1).connection_lost(W1)
    h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    h.received("b", W1).fault("kill", W1)
    h.received("b", W2, redelivered=True).processed("b", W2).acked("b", W2)
    r = redelivery.check(h.finish().build(), {})
    assert r.valid is True and r.evidence["in_flight"] == 1


def test_redelivery_ack_that_got_out_just_after_the_kill_was_not_in_flight() -> None:
    h = clean(2).publish("a").publish("b").received("a", W1).received("b", W1)
    h.fault("kill", W1).acked("a", W1)  # the kill lands a few ms later
    h.received("b", W2, redelivered=True).processed("b", W2).acked("b", W2)
    r = redelivery.check(h.finish().build(), {})
    assert r.valid is True and r.evidence["in_flight"] == 1


def test_redelivery_complete_only_when_the_new_holder_processed() -> None:
    bad = redelivery.check(kill_run(dead_letter_it, dlq=("a", "b")).build(), {})
    assert bad.valid is False and bad.evidence["not_completed"] == 2
    good = redelivery.check(kill_run(process_it).build(), {})
    assert good.valid is True, good.summary
    # Asked to fail: the DLQ is where it belongs, after the redelivery.
    asked = redelivery.check(kill_run(dead_letter_it, dlq=("a", "b"),
                                      poison=("a", "b")).build(), {})
    assert asked.valid is True, asked.summary


def test_redelivery_unknown_without_receipts() -> None:
    h = start_ready().publish("a").processed("a", W1).fault("kill", W1).finish()
    assert redelivery.check(h.build(), {}).valid is None


def test_a_delivery_handed_out_again_before_the_kill_was_not_in_flight() -> None:
    """A real connection loss requeued ``a``; W2 completed it before W1's kill:
    W1 no longer held it (the broker's next delivery says so), so nothing of W1's
    was in flight (unknown), and a kill that caught ``b`` still counts (true)."""
    def run(with_b: bool) -> H:
        h = start_ready().publish("a").publish("b").received("a", W1, ts=1000.2)
        h.connection_lost(W1, ts=1000.3)
        h.received("a", W2, redelivered=True, ts=1000.4).processed("a", W2).acked("a", W2)
        if with_b:
            h.received("b", W1, ts=1000.6)
        h.fault("kill", W1, ts=1001.0).worker_exited(W1, requested=True, ts=1001.05)
        if with_b:
            h.received("b", W3, redelivered=True, ts=1001.5).processed("b", W3)
            h.acked("b", W3)
        return h.finish()

    nothing = redelivery.check(run(False).build(), {})
    assert nothing.valid is None and nothing.evidence["in_flight"] == 0, nothing.summary
    caught = redelivery.check(run(True).build(), {})
    assert caught.valid is True and caught.evidence["in_flight"] == 1, caught.summary


def _unreported_hold(complete: bool, other_cut: bool = False) -> H:
    """Seen on the local backend with a serial brought worker (prefetch 10, a receipt
    reported only when a task starts): W3 processed all it reported, and was killed
    holding y unreported; y's first receipt, by W1 after the kill, says redelivered."""
    h = clean(2).publish("x", ts=1001.0).publish("y", ts=1001.1)
    h.received("x", W3, ts=1002.0).processed("x", W3, ts=1002.5)
    if other_cut:
        h.fault("close-connections", W2, ts=1002.6, completed_ts=1002.7)
    h.fault("kill", W3, ts=1002.9).worker_exited(W3, requested=True, ts=1003.0)
    h.received("y", W1, redelivered=True, ts=1003.2)
    if complete:
        h.processed("y", W1, ts=1003.5).acked("y", W1, ts=1003.5)
    else:
        h.dead_lettered("y", W1, reason="poison guard", ts=1003.3)
    return h


def test_a_task_the_killed_worker_held_unreported_must_come_back_completed() -> None:
    dropped = _unreported_hold(complete=False).finish(dlq=["y"]).build()
    r = redelivery.check(dropped, {})
    assert r.valid is False and r.evidence["not_completed_ids"] == ["y"], r.evidence
    # Completed, it proves nothing alone: its being held rests on the worker's
    # redelivered flag, which can fail the claim but not pass it.
    done = redelivery.check(_unreported_hold(complete=True).finish().build(), {})
    assert done.valid is None and done.evidence["held_unreported"] == 1, done.evidence


def test_an_unreported_hold_is_not_pinned_on_a_kill_when_another_cut_could_be_its_cause(
        ) -> None:
    r = redelivery.check(_unreported_hold(complete=False, other_cut=True)
                         .finish(dlq=["y"]).build(), {})
    assert r.valid is None and r.evidence["in_flight"] == 0, r.evidence


def test_the_killed_workers_own_earlier_receipt_is_not_an_unreported_hold() -> None:
    """x came back to W1 itself (its own cut), W1 retried it and was killed: x's first
    receipt is W1's, judged by the reported path; it is not a task W1 held unreported
    that never came back (a false FAIL found by a skeptic's review)."""
    h = clean(2).publish("x", ts=1001.0, directives={"fail_times": 1})
    h.fault("close-connections", W1, ts=1001.2, completed_ts=1001.25)
    h.received("x", W1, redelivered=True, ts=1001.7)
    h.failed("x", W1, ts=1001.75).retry_scheduled("x", W1, attempt=2, ts=1001.76)
    h.acked("x", W1, reason="retry", ts=1001.77)
    h.fault("kill", W1, ts=1002.0).worker_exited(W1, requested=True, ts=1002.05)
    h.received("x", W2, redelivered=False, attempt=2, ts=1002.3)
    h.processed("x", W2, attempt=2, ts=1002.4).acked("x", W2, ts=1002.41)
    r = redelivery.check(h.finish().build(), {})
    assert r.valid is not False, r.evidence


def test_a_lasting_fault_of_another_worker_before_the_publish_may_be_the_cause() -> None:
    """W2 paused long before y's publish and healed after it (its connection may die
    at any heartbeat in between): y's redelivery is not pinned on W3's kill."""
    h = clean(2).fault("pause", W2, ts=960.0).publish("y", ts=1001.1)
    h.received("x", W3, ts=1002.0).processed("x", W3, ts=1002.5)
    h.fault("kill", W3, ts=1002.9).worker_exited(W3, requested=True, ts=1003.0)
    h.received("y", W1, redelivered=True, ts=1005.2).dead_lettered("y", W1, ts=1005.3)
    h.fault("pause", W2, phase="heal", ts=1010.0)
    r = redelivery.check(h.finish(dlq=["y"]).build(), {})
    assert r.valid is None and "held_unreported" not in r.evidence, r.evidence


@pytest.mark.parametrize("directive,in_dlq,valid", [
    ({"crash_always": True}, True, True),  # the delivery limit ended the loop
    ({"crash_always": True}, False, False),  # gone: neither redelivered nor dead-lettered
    ({"crash": "during"}, True, False),  # a one-off crash task must come back
])
def test_a_crash_loop_ended_by_the_delivery_limit_needs_no_last_redelivery(
        directive: dict[str, object], in_dlq: bool, valid: bool) -> None:
    """The poison crashed W1, came back to W2 and crashed it; the queue's delivery
    limit then dead-lettered it instead of redelivering it a third time."""
    h = clean(2).publish("px", directives={**directive, "sleep_ms": 400})
    h.received("px", W1).worker_exited(W1, requested=False).worker_started(W1)
    h.received("px", W2, redelivered=True).worker_exited(W2, requested=False)
    r = redelivery.check(h.finish(dlq=["px"] if in_dlq else None).build(), {})
    assert r.valid is valid, r.summary
    if not valid:
        assert r.evidence["not_redelivered_ids"] == ["px"]
