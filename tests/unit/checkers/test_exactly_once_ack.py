"""exactly-once-ack: every delivery settled once (acks seen in events or on the broker)."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    W2,
    W3,
    H,
    claim_names,
    clean,
    start_ready,
)

from harness.checkers import (
    check_all,
    exactly_once_ack,
)
from harness.history import History
from harness.verdicts import judge_history

# -- exactly-once-ack -----------------------------------------------------------

def test_ack_true() -> None:
    r = exactly_once_ack.check(clean(10).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["settled_once"] == 10


def test_ack_true_with_dead_letters_and_queued() -> None:
    h = clean(3).publish("dl").publish("poison").publish("queued")
    h.received("dl", W1).failed("dl", W1, permanent=True).dead_lettered("dl", W1)
    h.received("poison", W2).failed("poison", W2, permanent=True)  # broker dead-letters it
    r = exactly_once_ack.check(h.finish(main=["queued"], dlq=["dl", "poison"]).build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["settled_once"] == 5


def test_ack_second_settlement_explained_by_kill() -> None:
    h = clean(3)
    h.publish("x").received("x", W1).processed("x", W1).acked("x", W1)
    h.fault("kill", W1).worker_exited(W1, requested=True)
    h.received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    r = exactly_once_ack.check(h.finish().build(), {})
    assert r.valid is True, r.summary
    assert r.explained["count"] == 1 and r.explained["ids"] == ["x"]
    assert r.explained["by"]["x"]["explained_by"]["fault"] == "fault:kill"


def test_ack_kill_recorded_just_before_the_ack_is_within_slack() -> None:
    h = clean(2).publish("x").received("x", W1, ts=1010.0).processed("x", W1, ts=1010.2)
    h.fault("kill", W1, ts=1010.25).acked("x", W1, ts=1010.3)
    h.received("x", W2, redelivered=True, ts=1011.0).processed("x", W2).acked("x", W2)
    assert exactly_once_ack.check(h.finish().build(), {}).valid is True


def test_ack_false_unexplained_double_ack() -> None:
    h = clean(3).publish("x").received("x", W1).processed("x", W1).acked("x", W1)
    h.acked("x", W1)
    r = exactly_once_ack.check(h.finish().build(), {})
    assert r.valid is False
    assert r.evidence["unexplained"] == 1 and r.evidence["unexplained_ids"] == ["x"]


def test_ack_false_fault_of_another_worker_does_not_explain() -> None:
    h = clean(3).publish("x").received("x", W1).processed("x", W1).acked("x", W1)
    h.fault("kill", W3)
    h.received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    assert exactly_once_ack.check(h.finish().build(), {}).valid is False


def test_ack_false_never_settled() -> None:
    h = clean(3).publish("x").received("x", W1).processed("x", W1)
    r = exactly_once_ack.check(h.finish().build(), {})
    assert r.valid is False
    assert r.evidence["never_settled"] == 1


@pytest.mark.parametrize("case", ["no_acks", "nothing_confirmed", "never_settled_no_final"])
def test_ack_unknown(case: str) -> None:
    if case == "no_acks":
        h = H().publish("a").received("a", W1).processed("a", W1).finish()
    elif case == "nothing_confirmed":
        h = H().publish("a", outcome="unknown").task("a", W1).finish()
    else:
        h = clean(3).publish("x").received("x", W1)
    r = exactly_once_ack.check(h.build(), {})
    assert r.valid is None, r.summary


def test_ack_then_broker_dead_lettering_is_two_settlements() -> None:
    h = clean(2).publish("x").received("x", W1).processed("x", W1).acked("x", W1)
    r = exactly_once_ack.check(h.finish(dlq=["x"]).build(), {})
    assert r.valid is False and r.evidence["settled_more_than_once"] == 1


# -- an ack the dying worker could not report --------------------------------------------------

def _killed_after_ack(redelivered_b: bool = True) -> History:
    """W1 processes "a" and acks it, but SIGKILL lands before it writes "acked";
    "b" was only received: the broker redelivers it to W2."""
    h = clean(30, workers=2).publish("a").publish("b")
    h.received("a", W1).received("b", W1).processed("a", W1)
    h.fault("kill", W1).worker_exited(W1, requested=True)
    if redelivered_b:
        h.received("b", W2, redelivered=True).processed("b", W2).acked("b", W2)
    return h.finish().build()


def test_unobserved_ack_of_a_killed_worker_counts_once() -> None:
    [r] = check_all(_killed_after_ack(), ["exactly-once-ack"])
    assert r.valid is True, r.summary
    assert r.evidence["acked_unobserved"] == 1 and r.evidence["never_settled"] == 0


def test_unobserved_ack_is_not_in_flight_but_the_rest_must_come_back() -> None:
    [r] = check_all(_killed_after_ack(), ["redelivery-after-crash"])
    assert r.valid is True, r.summary
    assert (r.evidence["in_flight"], r.evidence["acked_unobserved"]) == (1, 1)
    [bad] = check_all(_killed_after_ack(redelivered_b=False), ["redelivery-after-crash"])
    assert bad.valid is False  # "b" was never processed and never came back


def test_a_task_never_processed_is_never_an_unobserved_ack() -> None:
    h = clean(30, workers=2).publish("a").received("a", W1)
    h.fault("kill", W1).worker_exited(W1, requested=True)
    [r] = check_all(h.finish().build(), ["exactly-once-ack"])
    assert r.valid is False and r.evidence["never_settled"] == 1


# -- the broker decides when the run is over --------------------------------------------

def held_run(held: bool, main: list[str]) -> H:
    h = start_ready().publish("a").publish("b").received("a", W1).received("b", W1)
    h.processed("b", W1).acked("b", W1)
    h.add("drain", "harness", complete=not held, waited_s=30.0,
          held=[{"connection": "worker-1", "unacked": 1, "peer": "127.0.0.1:1"}] if held
          else [])
    return h.final_queue("main", main).final_queue("dlq").final_queue("retry")


def test_held_deliveries_are_the_workers_failure() -> None:
    r = exactly_once_ack.check(held_run(True, ["a"]).build(), {})
    assert r.valid is False and r.evidence["held_ids"] == ["a"]
    assert "worker-1" in r.summary


def test_held_names_every_requeued_id_even_one_the_worker_never_reported() -> None:
    """The worker swallowed ``z`` without a line: the broker's final read names it."""
    h = start_ready().publish("z")
    h.events += held_run(True, ["a", "z"]).events
    r = exactly_once_ack.check(h.build(), {})
    assert r.valid is False and r.evidence["held_ids"] == ["a", "z"], r.summary


def test_held_with_nothing_requeued_is_judged_as_usual() -> None:
    h = held_run(False, [])
    h.processed("a", W1).acked("a", W1)
    assert exactly_once_ack.check(h.build(), {}).valid is True


def test_no_acks_and_nothing_held_is_unknown_and_not_observable() -> None:
    h = start_ready().publish("a").received("a", W1).processed("a", W1).finish()
    r = exactly_once_ack.check(h.build(), {})
    assert r.valid is None and r.evidence["observable"] is False
    # ...so an unlisted invariant is left out rather than shown as unknown.
    assert "exactly-once-ack" not in claim_names(judge_history(h.build(), ["no-loss"], {}, []))


def test_an_ack_and_an_unreported_dlq_entry_are_never_explained() -> None:
    h = start_ready().publish("a").received("a", W1).processed("a", W1).acked("a", W1)
    h.fault("kill", W1)
    assert exactly_once_ack.check(h.finish(dlq=["a"]).build(), {}).valid is False


def test_second_ack_after_own_connection_lost_is_unexplained() -> None:
    h = start_ready().publish("a").received("a", W1).processed("a", W1).acked("a", W1)
    h.connection_lost(W1).received("a", W2, redelivered=True).processed("a", W2)
    h.acked("a", W2)
    assert exactly_once_ack.check(h.finish().build(), {}).valid is False


def test_a_second_ack_of_a_republished_copy_needs_lineage() -> None:
    """exactly-once-ack: W1 acks ``a`` and publishes it again; a kill right after
    does not explain the second ack of the new message (false). The same second
    ack on a redelivery (the broker's copy) is explained by the kill (true)."""
    def run(republished: bool) -> H:
        h = start_ready().publish("a").received("a", W1, ts=1000.5).processed("a", W1)
        h.acked("a", W1, ts=1000.6).fault("kill", W1, ts=1000.62)
        h.worker_exited(W1, requested=True, ts=1000.65)
        h.received("a", W2, redelivered=not republished, ts=1001.0).processed("a", W2)
        return h.acked("a", W2).finish()

    assert exactly_once_ack.check(run(True).build(), {}).valid is False
    assert exactly_once_ack.check(run(False).build(), {}).valid is True


def test_without_acks_a_processed_task_in_the_dlq_is_settled_twice() -> None:
    """Minimal reporter: the broker's final read finds a processed task in the DLQ
    that nobody asked to fail: exactly-once-ack is false, not 'unobservable'."""
    h = start_ready().publish("a").publish("b")
    h.received("a", W1).processed("a", W1).received("b", W1).processed("b", W1)
    r = exactly_once_ack.check(h.finish(dlq=["a"]).build(), {})
    assert r.valid is False and r.evidence["unexplained_ids"] == ["a"], r.summary
    clean = start_ready().publish("a").received("a", W1).processed("a", W1).finish()
    assert exactly_once_ack.check(clean.build(), {}).evidence.get("observable") is False


def test_without_acks_a_task_its_own_crash_ended_before_the_ack_was_settled_once() -> None:
    """Celery, acks_late, acks_on_failure_or_timeout=False, a DLQ of its own: the
    after_process crash kills the pool child after the side effect and before the
    ack, and Celery rejects the delivery to the DLQ: processed, never acked, one
    settlement. Not so for another id in the DLQ, or with directives not honoured."""
    def run(directives: bool) -> H:
        h = start_ready().publish("c", directives={"crash": "after_process"}).publish("x")
        h.received("c", W1).processed("c", W1).received("x", W1).processed("x", W1)
        if not directives:
            h.events[0].data = {**(h.events[0].data or {}),
                                "capabilities": {"directives": False}}
        return h.finish(dlq=["c"])

    r = exactly_once_ack.check(run(True).build(), {})
    assert r.valid is None and r.evidence["crashed_and_dead_lettered"] == 1, r.summary
    assert exactly_once_ack.check(run(False).build(), {}).valid is False
    h = start_ready().publish("c", directives={"crash": "after_process"}).publish("x")
    h.received("c", W1).processed("c", W1).received("x", W1).processed("x", W1)
    both = exactly_once_ack.check(h.finish(dlq=["c", "x"]).build(), {})
    assert both.valid is False and both.evidence["unexplained_ids"] == ["x"]


def test_a_second_ack_explained_by_another_workers_kill_after_a_pause() -> None:
    """Seen on local (explore, retry-base): W3 is paused holding attempt 1 of x, fails
    it at resume and republishes it, and is killed before its ack; W1 gets attempt 1
    again, fails it and republishes it too, so two copies of attempt 2 are each
    processed and acked. W3's faults are the lineage (W1 had none): explained.
    Without any fault, nothing requeued W3's attempt 1: unexplained."""
    def run(kill: bool) -> History:
        h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
        h.received("x", W3, attempt=1, ts=1000.1)
        if kill:
            h.fault("pause", W3, ts=1000.11, completed_ts=1000.12)
            h.fault("pause", W3, phase="heal", ts=1002.6)
        h.failed("x", W3, attempt=1, ts=1002.61)
        if kill:
            h.fault("kill", W3, ts=1002.62, completed_ts=1002.63)
            h.worker_exited(W3, requested=True, ts=1002.63)
        h.received("x", W1, redelivered=True, attempt=1, ts=1002.64)
        h.failed("x", W1, attempt=1, ts=1002.8).retry_scheduled("x", W1, attempt=2, ts=1002.81)
        h.acked("x", W1, reason="retry", ts=1002.82)
        h.received("x", W1, attempt=2, ts=1003.0).processed("x", W1, attempt=2, ts=1003.2)
        h.acked("x", W1, ts=1003.2)
        h.received("x", W2, attempt=2, ts=1003.3).processed("x", W2, attempt=2, ts=1003.5)
        return h.acked("x", W2, ts=1003.5).finish().build()

    good = exactly_once_ack.check(run(True), {})
    assert good.valid is True and good.evidence["unexplained"] == 0, good.evidence
    assert good.explained["by"]["x"]["explained_by"]["worker"] == W3, good.explained
    bad = exactly_once_ack.check(run(False), {})
    assert bad.valid is False and bad.evidence["unexplained"] == 1, bad.evidence


# -- lineage, from a skeptic's review: one fault explains one requeue, not any copy -----

def _double_republish(fault: str) -> History:
    """W1 fails attempt 1 of x and (a bug) republishes it twice; a fault of W1 (or the
    broker) comes after the failure, and its retry ack after the fault; attempt 1 is
    never delivered again. Both copies of attempt 2 are processed and acked."""
    h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
    h.received("x", W1, attempt=1, ts=1000.1)
    h.failed("x", W1, attempt=1, ts=1000.2).retry_scheduled("x", W1, attempt=2, ts=1000.21)
    if fault == "pause":
        h.fault("pause", W1, ts=1000.22, completed_ts=1000.23)
        h.fault("pause", W1, phase="heal", ts=1000.5)
    elif fault == "broker":
        h.fault("broker-restart", "broker", ts=1000.22, completed_ts=1000.4)
    h.acked("x", W1, reason="retry", ts=1000.51)
    h.received("x", W2, attempt=2, ts=1001.0).processed("x", W2, attempt=2, ts=1001.2)
    h.acked("x", W2, ts=1001.21)
    h.received("x", W3, attempt=2, ts=1001.3).processed("x", W3, attempt=2, ts=1001.5)
    return h.acked("x", W3, ts=1001.51).finish().build()


@pytest.mark.parametrize("fault", ["none", "pause", "broker"])
def test_a_fault_that_requeued_nothing_is_no_lineage(fault: str) -> None:
    r = exactly_once_ack.check(_double_republish(fault), {})
    assert r.valid is False and r.evidence["unexplained"] == 1, r.evidence


def test_one_requeue_explains_one_more_copy_not_two() -> None:
    """W1 is killed holding attempt 1 (before it failed it); W2 gets it again, fails it
    and republishes it twice (a bug): one failure, two messages of attempt 2. The
    kill made W2's delivery, not the second copy: unexplained. One copy each of two
    failures (W1 failed and republished before the kill) is explained."""
    def run(w1_failed_first: bool) -> History:
        h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
        h.received("x", W1, attempt=1, ts=1000.1)
        if w1_failed_first:
            h.failed("x", W1, attempt=1, ts=1000.15)
            h.retry_scheduled("x", W1, attempt=2, ts=1000.16)
        h.fault("kill", W1, ts=1000.2, completed_ts=1000.25)
        h.worker_exited(W1, requested=True, ts=1000.25)
        h.received("x", W2, redelivered=True, attempt=1, ts=1000.5)
        h.failed("x", W2, attempt=1, ts=1000.6).retry_scheduled("x", W2, attempt=2, ts=1000.61)
        h.acked("x", W2, reason="retry", ts=1000.62)
        h.received("x", W2, attempt=2, ts=1001.0).processed("x", W2, attempt=2, ts=1001.2)
        h.acked("x", W2, ts=1001.21)
        h.received("x", W3, attempt=2, ts=1001.3).processed("x", W3, attempt=2, ts=1001.5)
        return h.acked("x", W3, ts=1001.51).finish().build()

    bad = exactly_once_ack.check(run(False), {})
    assert bad.valid is False and bad.evidence["unexplained"] == 1, bad.evidence
    good = exactly_once_ack.check(run(True), {})
    assert good.valid is True and good.evidence["unexplained"] == 0, good.evidence


def test_a_dead_lettered_poison_republished_has_no_lineage_in_a_later_kill() -> None:
    """W1 dead-letters poison x (its settlement) and (a bug) republishes it; W1 is
    killed 3 s later. The kill requeued nothing of x: unexplained."""
    h = start_ready().publish("ok", ts=999.9).publish("x", poison=True, ts=1000.0)
    h.received("ok", W3, ts=1000.05).processed("ok", W3, ts=1000.06).acked("ok", W3, ts=1000.07)
    h.received("x", W1, attempt=1, ts=1000.1)
    h.failed("x", W1, attempt=1, permanent=True, ts=1000.2)
    h.dead_lettered("x", W1, reason="poison", ts=1000.21)
    h.fault("kill", W1, ts=1003.0, completed_ts=1003.05)
    h.worker_exited(W1, requested=True, ts=1003.05)
    h.received("x", W2, attempt=1, ts=1004.0)
    h.failed("x", W2, attempt=1, permanent=True, ts=1004.1)
    h.dead_lettered("x", W2, reason="poison", ts=1004.11)
    r = exactly_once_ack.check(h.finish(dlq=["x"]).build(), {})
    assert r.valid is False and r.evidence["unexplained"] == 1, r.evidence


def _paused_failed_killed(copies: int, failures_of_w1: int = 1) -> History:
    """W3 is paused holding attempt 1 of x, fails it at resume (republishing it) and is
    killed before its ack; W1 gets attempt 1 again and fails it ``failures_of_w1``
    times; ``copies`` messages of attempt 2 are each processed and acked."""
    h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
    h.received("x", W3, attempt=1, ts=1000.1)
    h.fault("pause", W3, ts=1000.11, completed_ts=1000.12)
    h.fault("pause", W3, phase="heal", ts=1002.6).failed("x", W3, attempt=1, ts=1002.61)
    h.fault("kill", W3, ts=1002.62, completed_ts=1002.63)
    h.worker_exited(W3, requested=True, ts=1002.63)
    h.received("x", W1, redelivered=True, attempt=1, ts=1002.64)
    for k in range(failures_of_w1):
        h.failed("x", W1, attempt=1, ts=1002.8 + k / 100)
    h.acked("x", W1, reason="retry", ts=1002.9)
    for k in range(copies):
        w = (W1, W2, W3)[k % 3]
        h.received("x", w, attempt=2, ts=1003.0 + k).processed("x", w, attempt=2,
                                                                 ts=1003.2 + k)
        h.acked("x", w, ts=1003.2 + k)
    return h.finish().build()


def test_one_lineage_explains_as_many_copies_as_failures() -> None:
    """Two failures of attempt 1 (W3's before its kill, W1's after): two messages of
    attempt 2 are explained, a third one is not (W1 republished twice)."""
    two = exactly_once_ack.check(_paused_failed_killed(2), {})
    assert two.valid is True and two.evidence["unexplained"] == 0, two.evidence
    three = exactly_once_ack.check(_paused_failed_killed(3), {})
    assert three.valid is False and three.evidence["unexplained"] == 1, three.evidence


def test_a_fault_is_no_lineage_when_its_delivery_never_came_back() -> None:
    """W1 fails attempt 1 twice (two failures reported, two messages of attempt 2: the
    count allows them) and is paused between the failure and its retry ack; attempt 1
    is never delivered again, so the pause requeued nothing: unexplained."""
    h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
    h.received("x", W1, attempt=1, ts=1000.1)
    h.failed("x", W1, attempt=1, ts=1000.2).failed("x", W1, attempt=1, ts=1000.21)
    h.fault("pause", W1, ts=1000.22, completed_ts=1000.23)
    h.fault("pause", W1, phase="heal", ts=1000.5).acked("x", W1, reason="retry", ts=1000.51)
    h.received("x", W2, attempt=2, ts=1001.0).processed("x", W2, attempt=2, ts=1001.2)
    h.acked("x", W2, ts=1001.21)
    h.received("x", W3, attempt=2, ts=1001.3).processed("x", W3, attempt=2, ts=1001.5)
    r = exactly_once_ack.check(h.acked("x", W3, ts=1001.51).finish().build(), {})
    assert r.valid is False and r.evidence["unexplained"] == 1, r.evidence
