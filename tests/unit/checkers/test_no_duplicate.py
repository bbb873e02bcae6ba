"""no-duplicate-processing: a second processing only where an injected fault explains it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from histories import (
    W1,
    W2,
    W3,
    H,
    clean,
    start_ready,
)

from harness.checkers import (
    check_all,
    no_duplicate,
)
from harness.history import History
from harness.verdicts import invariant_verdict

# -- no-duplicate-processing ------------------------------------------------------

def test_dup_true() -> None:
    r = no_duplicate.check(clean(10).finish().build(), {})
    assert r.valid is True
    assert r.evidence["invariant_holds"] is True and r.evidence["unexplained"] == 0


def test_dup_false_but_explained_by_kill_after_process() -> None:
    h = clean(4).publish("x").received("x", W1).processed("x", W1)
    h.fault("kill", W1).worker_exited(W1, requested=True)
    h.received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.valid is False
    assert r.evidence["invariant_holds"] is True
    assert r.evidence["unexplained"] == 0 and r.evidence["explained"] == 1
    assert r.explained["ids"] == ["x"]
    assert r.explained["by"]["x"][0]["explained_by"]["fault"] == "fault:kill"


def test_dup_explained_by_broker_restart_and_by_crash() -> None:
    h = clean(2).publish("x").publish("y", directives={"crash": "after_process"})
    h.received("x", W1).processed("x", W1).fault("broker-restart", "broker")
    h.received("x", W1, redelivered=True).processed("x", W1).acked("x", W1)
    h.received("y", W2).processed("y", W2).worker_exited(W2, requested=False)
    h.received("y", W1, redelivered=True).processed("y", W1).acked("y", W1)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["explained"] == 2 and r.evidence["invariant_holds"] is True


def test_dup_zombie_ordered_by_start() -> None:
    # worker-1 is paused mid-task; the broker redelivers to worker-2, which finishes
    # first; worker-1 resumes and finishes later: still explained by the pause.
    h = clean(2).publish("x").received("x", W1, ts=1010.0).fault("pause", W1, ts=1010.1)
    h.received("x", W2, redelivered=True, ts=1040.0).processed("x", W2, ts=1040.1)
    h.fault("pause", W1, phase="heal", ts=1050.0).processed("x", W1, ts=1050.1)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is True, r.evidence


def stale_copy(ack_failed: bool = True, reconnected_before_receipt: bool = False) -> H:
    """Seen on docker (zombie-pause): x reaches W2's socket as W2 is paused; the
    broker requeues it to W1, which processes and acks it; W2 resumes, reads the
    stale delivery from its buffer, processes it and its ack fails."""
    h = clean(2).ready(W2, ts=1005.0).fault("pause", W2, ts=1011.70).publish("x", ts=1011.74)
    h.received("x", W1, redelivered=True, ts=1018.8).processed("x", W1, ts=1022.2)
    h.acked("x", W1, ts=1022.2).fault("pause", W2, phase="heal", ts=1023.75)
    if reconnected_before_receipt:
        h.ready(W2, ts=1023.77)
    h.received("x", W2, ts=1023.78).processed("x", W2, ts=1027.2)
    if ack_failed:
        h.ack_failed("x", W2, ts=1027.2)
    return h.connection_lost(W2, ts=1023.8)


def test_dup_stale_copy_read_after_a_pause_is_explained() -> None:
    r = no_duplicate.check(stale_copy().finish().build(), {})
    assert r.valid is False  # processed twice: the guide's words are false
    assert r.evidence["invariant_holds"] is True, r.evidence
    assert r.explained["by"]["x"][0]["explained_by"]["fault"] == "fault:pause"


@pytest.mark.parametrize("case", ["ack_succeeded", "received_on_a_new_connection"])
def test_dup_stale_copy_needs_a_failed_ack_on_the_faulted_connection(case: str) -> None:
    h = stale_copy(ack_failed=case != "ack_succeeded",
                   reconnected_before_receipt=case == "received_on_a_new_connection")
    if case == "ack_succeeded":
        h.acked("x", W2, ts=1027.3)  # the broker took the ack: it had not requeued x
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False and r.evidence["unexplained_ids"] == ["x"]


def test_dup_stale_copy_does_not_excuse_a_copy_that_came_before_the_fault() -> None:
    # W1 processes x and requeues it (a bug) before W2 is paused: the duplicate is
    # W1's doing, even though W2's later copy is stale and its ack fails.
    h = clean(2).ready(W2, ts=1001.0).publish("x", ts=1002.0)
    h.received("x", W1, ts=1005.0).processed("x", W1, ts=1006.0)
    h.fault("pause", W2, ts=1007.0).fault("pause", W2, phase="heal", ts=1020.0)
    h.received("x", W2, ts=1020.1).processed("x", W2, ts=1021.0).ack_failed("x", W2, ts=1021.0)
    h.received("x", W3, redelivered=True, ts=1022.0).processed("x", W3, ts=1023.0)
    h.acked("x", W3, ts=1023.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False and r.evidence["unexplained_ids"] == ["x"]


def test_dup_stale_copy_needs_the_workers_connection_record() -> None:
    # No ``ready`` from W2 (optional in contract v1): the connection's start is
    # unknown, so an old broker restart must not explain the duplicate.
    h = clean(2).fault("broker-restart", "broker", ts=1001.0).publish("x", ts=1030.0)
    h.received("x", W1, ts=1031.0).processed("x", W1, ts=1032.0).acked("x", W1, ts=1032.0)
    h.received("x", W2, ts=1033.0).processed("x", W2, ts=1034.0).ack_failed("x", W2, ts=1034.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False


def redelivered_before_the_first_processing_ends(started: bool, worker_lies: bool = False,
                                                 cut: bool = True) -> H:
    """Seen on docker (two close-connections, tasks of 2-4 s): W1 receives x, the
    broker closes W1's connection (the fault's close lands 4 s after it was issued,
    while the management API lists the connection), W1 reconnects and gets x again
    (redelivered) while it still runs the first copy, which then ends: its ack fails;
    the second copy is processed and acked."""
    h = clean(2).publish("x", ts=1007.9)
    if cut:
        h.fault("close-connections", W1, ts=1007.911, completed_ts=1012.322)
    h.received("x", W1, ts=1010.343)
    h.received("x", W1, redelivered=True, ts=1012.584)
    h.processed("x", W1, ts=1013.919, started_ts=(1012.6 if worker_lies else 1010.343)
                if started else None)
    h.ack_failed("x", W1, ts=1013.92)
    h.processed("x", W1, ts=1016.425, started_ts=1012.848 if started else None)
    return h.acked("x", W1, ts=1016.425)


@pytest.mark.parametrize("started", [True, False], ids=["started_ts", "no_started_ts"])
def test_dup_redelivered_to_the_same_worker_mid_processing_is_explained(started: bool) -> None:
    """Each processing is anchored to a receipt of its own: the first to the first
    delivery (before the cut), not to the redelivery (after it). Without that, the
    correct worker failed the invariant (a false FAIL, 10 of 150 tasks)."""
    r = no_duplicate.check(redelivered_before_the_first_processing_ends(started).finish()
                           .build(), {})
    assert r.evidence["invariant_holds"] is True, r.evidence
    assert r.explained["by"]["x"][0]["explained_by"]["fault"] == "fault:close-connections"


@pytest.mark.parametrize("started", [True, False], ids=["started_ts", "no_started_ts"])
def test_dup_two_cuts_and_copies_waiting_in_the_pool_are_each_explained(started: bool) -> None:
    """Seen on docker (two close-connections 5 s apart, tasks of 11-14 s, a pool of 10
    busy): x is received three times by W1 (a cut before each redelivery), the two
    redeliveries wait in the pool, and the copies run one after the other. Each
    processing takes its own receipt in arrival order; each pair has its cut."""
    h = clean(2).publish("x", ts=1006.09).received("x", W1, ts=1006.071)
    h.fault("close-connections", W1, ts=1006.087, completed_ts=1010.45)
    h.received("x", W1, redelivered=True, ts=1010.707)
    h.fault("close-connections", W1, ts=1010.461, completed_ts=1015.35)
    h.received("x", W1, redelivered=True, ts=1015.544)
    for start, end in ((1006.072, 1017.938), (1017.27, 1029.136), (1029.136, 1041.002)):
        h.processed("x", W1, ts=end, started_ts=start if started else None)
        if end < 1041:
            h.ack_failed("x", W1, ts=end + 0.001)
    h.acked("x", W1, ts=1041.003)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is True, r.evidence
    assert r.evidence["explained_processings"] == 2


def test_dup_two_receipts_explain_nothing_without_a_cut_between() -> None:
    """The same receipts and processings with no fault: the worker received x twice
    with no cut to make the broker redeliver it; the anchoring explains nothing."""
    h = redelivered_before_the_first_processing_ends(True, cut=False)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False and r.evidence["unexplained_ids"] == ["x"]


def test_dup_two_processings_off_one_receipt_stay_unexplained() -> None:
    """One delivery after the cut, processed twice (the worker's own doing), with a
    started_ts before the cut on one of them: there is no second receipt to anchor
    it to, so its start stays at the one receipt, after the cut."""
    h = clean(2).publish("x", ts=1007.9)
    h.fault("close-connections", W1, ts=1007.911, completed_ts=1012.322)
    h.received("x", W1, redelivered=True, ts=1012.584)
    h.processed("x", W1, ts=1013.919, started_ts=1010.0).ack_failed("x", W1, ts=1013.92)
    h.processed("x", W1, ts=1016.425, started_ts=1012.848).acked("x", W1, ts=1016.425)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False and r.evidence["unexplained_ids"] == ["x"]


def test_dup_a_receipt_of_a_killed_process_anchors_nothing_after_it() -> None:
    """The restarted process processes its one delivery twice (a bug); the killed
    process's receipt before the kill must not be taken for the first copy's, or the
    kill would explain the pair (seen by a skeptic's review)."""
    for started in (True, False):
        h = clean(2).publish("x", ts=1000.0).received("x", W1, ts=1000.1)
        h.fault("kill", W1, ts=1001.0).worker_exited(W1, requested=True, ts=1001.05)
        h.worker_started(W1, ts=1001.5).ready(W1, ts=1001.6)
        h.received("x", W1, redelivered=True, ts=1002.0)
        h.processed("x", W1, ts=1002.5, started_ts=1002.01 if started else None)
        h.processed("x", W1, ts=1003.0, started_ts=1002.6 if started else None)
        r = no_duplicate.check(h.acked("x", W1, ts=1003.0).finish().build(), {})
        assert r.evidence["invariant_holds"] is False, (started, r.evidence)


def test_dup_a_failed_attempt_takes_its_receipt() -> None:
    """x fails (nacked, requeued) on its first receipt; after an unrelated cut its
    one redelivery is processed twice (a bug): the failed attempt's receipt is taken,
    so the second processing has none of its own."""
    h = clean(2).publish("x", ts=1000.0, directives={"fail_times": 1})
    h.received("x", W1, ts=1000.1).failed("x", W1, ts=1000.2)
    h.fault("close-connections", W1, ts=1000.5, completed_ts=1000.6).ready(W1, ts=1000.7)
    h.received("x", W1, redelivered=True, ts=1001.0)
    h.processed("x", W1, ts=1001.5, started_ts=1001.01)
    h.processed("x", W1, ts=1002.0, started_ts=1001.6).acked("x", W1, ts=1002.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False, r.evidence


def test_dup_an_unprocessed_receipt_before_a_cut_keeps_the_latest_receipt_pairing() -> None:
    """A worker without started_ts drops its copy on its own connection loss (x is
    redelivered to it), processes the redelivery, is cut by a fault and processes the
    next redelivery: the arrival-order pairing misses the cut, the latest-receipt
    pairing finds it, and the pair is judged by the one that explains."""
    h = clean(2).publish("x", ts=1000.0)
    h.received("x", W1, ts=1000.1).connection_lost(W1, ts=1000.5).ready(W1, ts=1000.6)
    h.received("x", W1, redelivered=True, ts=1001.0).processed("x", W1, ts=1002.0)
    h.fault("close-connections", W1, ts=1002.1, completed_ts=1002.2)
    h.ack_failed("x", W1, ts=1002.25).ready(W1, ts=1002.3)
    h.received("x", W1, redelivered=True, ts=1002.5).processed("x", W1, ts=1003.0)
    r = no_duplicate.check(h.acked("x", W1, ts=1003.0).finish().build(), {})
    assert r.evidence["invariant_holds"] is True, r.evidence


@pytest.mark.parametrize("started", [True, False], ids=["started_ts", "no_started_ts"])
def test_dup_a_retried_copy_cut_mid_processing_is_explained_by_the_cut(started: bool) -> None:
    """x fails once (no side effect) and is republished as attempt 2; attempt 2 is
    processed, a cut takes its ack, and the same message comes back (redelivered,
    attempt 2) and is processed again: a redelivery pair, explained by the cut. The
    lineage question (why does a second message exist) is for a pair whose later
    copy is a second message, not this one (found by a skeptic's review)."""
    h = clean(2).publish("x", ts=1000.0, directives={"fail_times": 1})
    h.received("x", W1, ts=1000.1).failed("x", W1, ts=1000.3)
    h.retry_scheduled("x", W1, ts=1000.31).acked("x", W1, reason="retry", ts=1000.32)
    h.received("x", W1, attempt=2, ts=1001.0)
    h.processed("x", W1, attempt=2, ts=1002.0, started_ts=1001.01 if started else None)
    h.fault("close-connections", W1, ts=1002.1, completed_ts=1002.2)
    h.ack_failed("x", W1, ts=1002.25).ready(W1, ts=1002.3)
    h.received("x", W1, redelivered=True, attempt=2, ts=1002.5)
    h.processed("x", W1, attempt=2, ts=1003.0, started_ts=1002.51 if started else None)
    r = no_duplicate.check(h.acked("x", W1, ts=1003.0).finish().build(), {})
    assert r.evidence["invariant_holds"] is True, r.evidence


def _retried(h: H) -> H:
    """x fails once; W1 republishes it as attempt 2 and acks the first delivery."""
    h.publish("x", ts=1000.0, directives={"fail_times": 1})
    h.received("x", W1, ts=1000.1).failed("x", W1, ts=1000.3)
    return h.retry_scheduled("x", W1, attempt=2, ts=1000.31).acked("x", W1, reason="retry",
                                                                    ts=1000.32)


@pytest.mark.parametrize("case", ["second_republish", "acked_before_the_cut"])
def test_dup_a_redelivery_of_a_republish_needs_it_held_at_the_cut(case: str) -> None:
    """A worker that republishes attempt 2 twice (a bug): copy A is processed and acked
    before the cut, copy B is what comes back. The pair (A, B's redelivery) is no
    redelivery of A: its lineage decides, and there is none (found by a skeptic's
    review). Also when the worker itself reports B's return as A's."""
    h = _retried(clean(2))
    h.received("x", W1, attempt=2, ts=1001.0)
    h.processed("x", W1, attempt=2, ts=1001.5, started_ts=1001.01).acked("x", W1, ts=1001.6)
    if case == "second_republish":
        h.received("x", W1, attempt=2, ts=1001.7)  # copy B's first delivery
    h.fault("close-connections", W1, ts=1002.0, completed_ts=1002.1).ready(W1, ts=1002.2)
    h.received("x", W2 if case == "second_republish" else W1, redelivered=True, attempt=2,
               ts=1002.3)
    h.processed("x", W2 if case == "second_republish" else W1, attempt=2, ts=1002.5,
                started_ts=1002.31)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.evidence["invariant_holds"] is False, r.evidence


def test_dup_false_unexplained() -> None:
    h = clean(4).task("t0001", W2, redelivered=True).finish()
    r = no_duplicate.check(h.build(), {})
    assert r.valid is False
    assert r.evidence["unexplained"] == 1 and r.evidence["invariant_holds"] is False
    assert r.evidence["unexplained_ids"] == ["t0001"]


def test_dup_fault_before_the_first_processing_does_not_explain() -> None:
    h = clean(2).fault("kill", W1).publish("x").task("x", W1).task("x", W2).finish()
    assert no_duplicate.check(h.build(), {}).evidence["unexplained"] == 1


def test_dup_unknown_nothing_processed() -> None:
    h = H().publish("a").received("a", W1).finish(main=["a"])
    assert no_duplicate.check(h.build(), {}).valid is None


# -- zombies and fault effect windows (seen on the docker backend) ---------------------------

def _zombie_history(pause_explains: bool, completed_delay_s: float = 0.05) -> History:
    """W1 receives x as a pause is issued (the freeze takes effect ~40 ms later),
    the broker redelivers x to W2, which finishes first; W1, resumed, starts
    its stale copy only after that."""
    h = clean(40, workers=2).publish("x")
    if pause_explains:
        h.fault("pause", W1, ts=1100.0, completed_ts=1100.0 + completed_delay_s)
    h.received("x", W1, ts=1100.02)
    h.received("x", W2, redelivered=True, ts=1106.0)
    h.processed("x", W2, ts=1109.0, started_ts=1106.0).acked("x", W2, ts=1109.01)
    h.processed("x", W1, ts=1115.0, started_ts=1112.0)
    h.ack_failed("x", W1, ts=1115.01)
    return h.finish().build()


def test_zombie_that_starts_late_is_explained_by_its_pause() -> None:
    [r] = check_all(_zombie_history(pause_explains=True), ["no-duplicate-processing"])
    assert r.valid is False  # the guide's "No duplicates!" is false as worded
    assert r.evidence["unexplained"] == 0 and r.evidence["invariant_holds"] is True
    assert r.explained["count"] == 1


def test_same_zombie_without_a_fault_is_unexplained() -> None:
    [r] = check_all(_zombie_history(pause_explains=False), ["no-duplicate-processing"])
    assert r.valid is False
    assert r.evidence["unexplained"] == 1 and r.evidence["invariant_holds"] is False


# -- only injected faults explain -------------------------------------------------------

def dup_after(cause: Callable[[H], None], crash_directive: bool = False) -> H:
    directives = {"crash": "after_process"} if crash_directive else None
    h = start_ready().publish("a", directives=directives)
    h.received("a", W1).processed("a", W1)
    cause(h)
    return h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2).finish()


@pytest.mark.parametrize("cause", [
    lambda h: h.connection_lost(W1),  # the worker's own word (e.g. a 406 after a double ack)
    lambda h: h.worker_exited(W1, requested=False),  # an exit nobody asked for
])
def test_a_workers_own_loss_explains_no_duplicate(cause: Callable[[H], None]) -> None:
    r = no_duplicate.check(dup_after(cause).build(), {})
    assert invariant_verdict(r) is False, r.summary


@pytest.mark.parametrize("cause,directive", [
    (lambda h: h.fault("kill", W1), False),
    (lambda h: h.worker_exited(W1, requested=False), True),  # the crash directive did it
])
def test_an_injected_fault_explains_a_duplicate(cause: Callable[[H], None],
                                                directive: bool) -> None:
    r = no_duplicate.check(dup_after(cause, directive).build(), {})
    assert r.valid is False and invariant_verdict(r) is True, r.summary


def test_a_crash_after_a_redelivered_crash_task_is_not_injected() -> None:
    """The directive fires on a first delivery only: a worker that crashes after a
    redelivered copy of a crash task crashed on its own."""
    h = start_ready().publish("x", directives={"crash": "after_process"}).publish("a")
    h.received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    h.received("a", W2).processed("a", W2).worker_exited(W2, requested=False)
    h.received("a", W3, redelivered=True).processed("a", W3).acked("a", W3)
    assert invariant_verdict(no_duplicate.check(h.finish().build(), {})) is False


def test_nothing_processed_is_unknown_for_duplicates() -> None:
    r = no_duplicate.check(start_ready().publish("a").finish().build(), {})
    assert r.valid is None and invariant_verdict(r) is None


def test_a_processed_only_worker_crashing_on_a_crash_task_is_injected() -> None:
    """No receipts reported: W1's ``processed`` of the crash task, then its exit,
    show the crash the harness asked for, so W2's second processing is explained;
    without the directive the same exit explains nothing; nothing processed twice
    and nothing lost is simply true."""
    def run(directive: bool) -> H:
        h = start_ready().publish("a", directives={"crash": "after_process"} if directive else None)
        h.processed("a", W1, ts=1000.5).worker_exited(W1, requested=False, ts=1000.6)
        h.processed("a", W2, ts=1001.0)
        return h.finish()

    explained = no_duplicate.check(run(True).build(), {})
    assert explained.valid is False and invariant_verdict(explained) is True, explained.summary
    unexplained = no_duplicate.check(run(False).build(), {})
    assert invariant_verdict(unexplained) is False, unexplained.summary
    once = start_ready().publish("a").processed("a", W1, ts=1000.5).finish()
    assert no_duplicate.check(once.build(), {}).valid is True


# -- a second message is explained by lineage, not by a fault alone ----------------------

def test_a_retry_republish_caught_by_a_kill_is_explained_by_lineage() -> None:
    """The guide's retry pattern (republish, then ack) with a kill between the two:
    the requeued original and the republished copy both run. Explained."""
    h = start_ready().publish("a", directives={"fail_times": 1})
    h.received("a", W1, attempt=1, ts=1000.5).failed("a", W1, attempt=1)
    h.retry_scheduled("a", W1, attempt=2).fault("kill", W1, ts=1000.7)
    h.worker_exited(W1, requested=True, ts=1000.75)
    h.received("a", W2, redelivered=True, attempt=1, ts=1001.0).failed("a", W2, attempt=1)
    h.retry_scheduled("a", W2, attempt=2).acked("a", W2, reason="retry")
    h.received("a", W3, attempt=2, ts=1001.5).processed("a", W3, attempt=2).acked("a", W3)
    h.received("a", W2, attempt=2, ts=1001.8).processed("a", W2, attempt=2).acked("a", W2)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.valid is False and invariant_verdict(r) is True, r.summary


def test_a_republish_after_success_is_not_explained_by_a_nearby_kill() -> None:
    """A worker that acks and then publishes the task again (a second message,
    ``redelivered`` false): a kill right after does not explain the second run."""
    def run(republished: bool) -> H:
        h = start_ready().publish("a").received("a", W1, ts=1000.5).processed("a", W1)
        if republished:
            h.acked("a", W1)  # the republish came after the ack (as a redelivery could not)
        h.fault("kill", W1, ts=1000.7).worker_exited(W1, requested=True, ts=1000.75)
        h.received("a", W2, redelivered=not republished, ts=1001.0).processed("a", W2)
        return h.acked("a", W2).finish()

    r = no_duplicate.check(run(True).build(), {})
    assert invariant_verdict(r) is False, r.summary
    # The same pair as a redelivery (redelivered true) of a delivery the kill caught
    # before its ack is the broker's doing and the kill's: explained, as before.
    assert invariant_verdict(no_duplicate.check(run(False).build(), {})) is True


# -- from the skeptic's review: a worker's word must not excuse ----------------------

def test_a_worker_republishing_what_it_processed_has_no_lineage() -> None:
    """The task was not asked to fail; W1 processed it, a close-connections hit it
    before the ack, and the worker republished it (attempt 2): the second message
    is the worker's doing, in both reporting modes (false). A task the harness
    asked to fail, republished by its failing attempts, is explained (true)."""
    def worker_bug(acks: bool) -> H:
        h = start_ready().publish("a", ts=1001.0)
        h.received("a", W1, attempt=1, ts=1001.1).processed("a", W1, ts=1001.5)
        h.fault("close-connections", W1, ts=1001.6)
        h.received("a", W2, redelivered=True, attempt=1, ts=1002.0).processed("a", W2)
        if acks:
            h.acked("a", W2)
        h.received("a", W3, redelivered=False, attempt=2, ts=1003.0).processed("a", W3)
        if acks:
            h.acked("a", W3)
        return h.finish()

    for acks in (True, False):
        r = no_duplicate.check(worker_bug(acks).build(), {})
        assert invariant_verdict(r) is False, (acks, r.summary)

    h = start_ready().publish("a", directives={"fail_times": 1}, ts=1001.0)
    h.received("a", W1, attempt=1, ts=1001.1).failed("a", W1, attempt=1, ts=1001.4)
    h.fault("close-connections", W1, ts=1001.6)  # after the republish, before the ack
    h.received("a", W2, redelivered=True, attempt=1, ts=1002.0).failed("a", W2)
    h.acked("a", W2, reason="retry")
    h.received("a", W3, attempt=2, ts=1003.0).processed("a", W3).acked("a", W3)
    h.received("a", W2, attempt=2, ts=1003.5).processed("a", W2).acked("a", W2)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.valid is False and invariant_verdict(r) is True, r.summary


def test_a_crash_long_after_a_crash_task_is_the_workers_own() -> None:
    """A processed-only worker: W1 crashes right after processing the crash task
    (injected); W2 dies on its own 17 s after processing its copy: not injected,
    so the duplicate of ``x`` after it is unexplained."""
    h = start_ready().publish("c", directives={"crash": "after_process"}, ts=1001.0)
    h.publish("x", ts=1001.0)
    h.processed("c", W1, ts=1002.0).worker_exited(W1, requested=False, ts=1002.05)
    h.processed("c", W2, ts=1003.0)
    h.processed("x", W2, ts=1020.0).worker_exited(W2, requested=False, ts=1020.1)
    h.processed("x", W3, ts=1022.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert invariant_verdict(r) is False, r.summary
    # ...while c's own duplicate is explained by W1's asked-for crash.
    assert "c" not in (r.evidence.get("unexplained_ids") or []), r.evidence


def test_a_started_ts_far_before_anything_the_run_allows_is_clamped() -> None:
    """No receipts: a start reported before an early fault does not let that
    fault explain a duplicate 15 s later."""
    h = start_ready().publish("x", ts=1001.0).publish("y", ts=1001.0)
    h.processed("y", W1, ts=1004.0).fault("close-connections", W1, ts=1005.0)
    h.processed("x", W1, ts=1020.0, started_ts=0.0).processed("x", W2, ts=1022.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert invariant_verdict(r) is False, r.summary


# -- an after_process crash inside a pool (no exit of the worker to see) ---------------

def pool_crash(*, processings: int = 2, first_redelivered: bool = False,
               directives: bool = True) -> H:
    """Celery's prefork pool: the crash directive kills the child after the side
    effect, the worker (the main process) lives on, and with
    ``task_reject_on_worker_lost`` the delivery comes back."""
    caps = {"directives": directives, "health": False, "events": "json"}
    h = H().run_started(capabilities=caps).worker_started(W1).worker_started(W2)
    h.publish("c", directives={"crash": "after_process"})
    h.received("c", W1, redelivered=first_redelivered).processed("c", W1)
    for i in range(processings - 1):
        h.received("c", W2 if i % 2 == 0 else W1, redelivered=True)
        h.processed("c", W2 if i % 2 == 0 else W1)
    return h.finish()


def test_a_pool_childs_crash_explains_the_second_processing_only() -> None:
    r = no_duplicate.check(pool_crash().build(), {})
    assert r.valid is False and invariant_verdict(r) is True, r.summary
    assert r.explained["by"]["c"][0]["explained_by"]["fault"] == "crash:after_process"
    # A third processing: the directive fired once, nothing explains the next.
    three = no_duplicate.check(pool_crash(processings=3).build(), {})
    assert invariant_verdict(three) is False, three.summary


def test_a_pool_crash_explains_nothing_off_a_first_delivery_or_without_directives() -> None:
    for case in (pool_crash(first_redelivered=True), pool_crash(directives=False)):
        r = no_duplicate.check(case.build(), {})
        assert invariant_verdict(r) is False, r.summary


def late_exit(crash: bool) -> H:
    """Dramatiq: the crash directive kills the worker process after the side effect
    of ``c``; the broker requeues what it held at once (``x``, processed, its ack
    not yet sent), another worker processes ``x`` again, and the worker's main
    process exits only a second later."""
    h = start_ready().publish("c", directives={"crash": "after_process"} if crash else None)
    h.publish("x")
    h.received("c", W1, ts=1001.0).received("x", W1, ts=1001.01)
    h.processed("x", W1, ts=1001.05).acked("x", W1, ts=1001.06)
    h.processed("c", W1, ts=1001.1)
    h.received("x", W2, redelivered=True, ts=1001.3).processed("x", W2, ts=1001.4)
    h.acked("x", W2, ts=1001.41)
    h.received("c", W2, redelivered=True, ts=1001.5).processed("c", W2, ts=1001.6)
    h.acked("c", W2, ts=1001.61)
    h.worker_exited(W1, requested=False, ts=1002.3)
    return h.finish()


def test_a_crash_seen_by_a_late_exit_explains_what_its_process_held() -> None:
    from harness.checkers import exactly_once_ack

    r = no_duplicate.check(late_exit(True).build(), {})
    assert r.valid is False and invariant_verdict(r) is True, r.summary
    ack = exactly_once_ack.check(late_exit(True).build(), {})
    assert invariant_verdict(ack) is True, ack.summary
    # The same exit with no crash asked for explains nothing.
    assert invariant_verdict(no_duplicate.check(late_exit(False).build(), {})) is False
    # ...and the span is no known cut: deliveries before the exit stay W1's.
    from harness.checkers import index as ix

    idx = ix.get(late_exit(True).build())
    assert idx.last_cut_before(W1, 1002.0) == float("-inf")
    assert idx.last_cut_before(W1, 1003.0) == 1002.3


def copies_off_one_delivery_before_a_crash() -> H:
    """W1 processes and acks ``b`` twice off ONE delivery (its bug), while it holds
    the crash task ``c``; the asked crash comes seconds later. Nothing cut b's
    delivery between its two processings."""
    h = start_ready()
    h.publish("c", directives={"crash": "after_process", "sleep_ms": 3000})
    h.publish("b")
    h.received("c", W1, ts=1001.0).received("b", W1, ts=1001.1)
    h.processed("b", W1, ts=1001.2).acked("b", W1, ts=1001.21)
    h.processed("b", W1, ts=1001.3).acked("b", W1, ts=1001.31)
    h.processed("c", W1, ts=1004.0).worker_exited(W1, requested=False, ts=1004.05)
    h.received("c", W2, redelivered=True, ts=1004.2).processed("c", W2, ts=1004.3)
    h.acked("c", W2, ts=1004.31)
    return h.finish()


def test_a_crash_span_explains_no_copy_off_the_same_delivery() -> None:
    from harness.checkers import exactly_once_ack

    r = no_duplicate.check(copies_off_one_delivery_before_a_crash().build(), {})
    assert invariant_verdict(r) is False, r.summary
    assert "b" in r.evidence["unexplained_ids"] and "c" not in r.evidence["unexplained_ids"]
    ack = exactly_once_ack.check(copies_off_one_delivery_before_a_crash().build(), {})
    assert invariant_verdict(ack) is False, ack.summary


def own_crash_claimed(*, again: str) -> H:
    """A worker said to honour directives processes the crash task twice, with no
    exit, no child death anyone saw: ``again`` is how its second copy came."""
    caps = {"directives": True, "health": False, "events": "json"}
    h = H().run_started(capabilities=caps).worker_started(W1).worker_started(W2)
    h.publish("c", directives={"crash": "after_process"})
    h.received("c", W1, redelivered=False, ts=1001.0).processed("c", W1, ts=1001.1)
    if again == "same delivery":
        h.processed("c", W1, ts=1001.2)
    elif again == "after an ack":
        h.acked("c", W1, ts=1001.15)
        h.received("c", W2, redelivered=True, ts=1001.5).processed("c", W2, ts=1001.6)
    elif again == "a fresh message":
        h.received("c", W2, redelivered=False, ts=1001.5).processed("c", W2, ts=1001.6)
    return h.finish()


def test_an_after_process_directive_alone_explains_no_duplicate() -> None:
    for again in ("same delivery", "after an ack", "a fresh message"):
        r = no_duplicate.check(own_crash_claimed(again=again).build(), {})
        assert invariant_verdict(r) is False, (again, r.summary)


# -- found by a skeptic's review: a cut nearby must not excuse the worker's own duplicate --

def test_two_attempts_both_processed_are_never_a_redelivery() -> None:
    """side-effect-every-attempt: attempt 1 is processed (its side effect) and then
    fails and is retried; a cut of its worker before attempt 2 runs elsewhere. Two
    processings of different attempts are the worker's doing: a correct worker never
    does the side effect of an attempt that fails, and a cut redelivers one attempt,
    never makes another. Unexplained, as it is without the cut."""
    def run(cut: bool) -> History:
        h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
        h.received("x", W1, attempt=1, ts=1000.1).processed("x", W1, attempt=1, ts=1000.2)
        h.failed("x", W1, attempt=1, ts=1000.3).retry_scheduled("x", W1, attempt=2, ts=1000.31)
        h.acked("x", W1, reason="retry", ts=1000.32)
        h.received("x", W1, attempt=2, ts=1000.5)
        if cut:
            h.fault("close-connections", W1, ts=1000.6, completed_ts=1000.7)
        h.received("x", W2, redelivered=True, attempt=2, ts=1001.0)
        h.processed("x", W2, attempt=2, ts=1001.5, started_ts=1001.01)
        return h.acked("x", W2, ts=1001.6).finish().build()

    for cut in (True, False):
        r = no_duplicate.check(run(cut), {})
        assert invariant_verdict(r) is False, (cut, r.evidence)


def test_a_cut_of_another_worker_is_no_lineage_for_a_processed_attempt() -> None:
    """W1 is cut holding attempt 1 before doing anything; W2 gets it redelivered, does
    its side effect, fails, retries, and processes attempt 2. W1's cut explains why
    W2 had the delivery, not why attempt 1 was processed: unexplained."""
    h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
    h.received("x", W1, attempt=1, ts=1000.1)
    h.fault("close-connections", W1, ts=1000.2, completed_ts=1000.3)
    h.received("x", W2, redelivered=True, attempt=1, ts=1000.5)
    h.processed("x", W2, attempt=1, ts=1000.6).failed("x", W2, attempt=1, ts=1000.7)
    h.retry_scheduled("x", W2, attempt=2, ts=1000.71).acked("x", W2, reason="retry", ts=1000.72)
    h.received("x", W2, attempt=2, ts=1001.0).processed("x", W2, attempt=2, ts=1001.5)
    r = no_duplicate.check(h.acked("x", W2, ts=1001.6).finish().build(), {})
    assert invariant_verdict(r) is False, r.evidence


def test_a_second_message_never_processed_on_its_first_delivery_still_needs_lineage() -> None:
    """W1 processes x and acks it, and publishes x again (a bug); W1 is cut later. The
    second message's first delivery goes to W2, which is killed before it runs it;
    its redelivery runs on W3. The pair (W1's, W3's) has W1's cut between its starts,
    but what W3 ran descends from a second message with no lineage: unexplained.
    Without the second message (W3's copy is W1's own, redelivered after a cut
    before W1's ack) it is explained."""
    def run(second_message: bool) -> History:
        h = start_ready().publish("x", ts=1000.0)
        h.received("x", W1, ts=1000.1).processed("x", W1, ts=1000.2)
        if second_message:
            h.acked("x", W1, ts=1000.3)
            h.received("x", W2, ts=1000.35)
            h.fault("kill", W2, ts=1000.4).worker_exited(W2, requested=True, ts=1000.45)
        h.fault("close-connections", W1, ts=1000.5, completed_ts=1000.6)
        h.received("x", W3, redelivered=True, ts=1001.0)
        h.processed("x", W3, ts=1001.5, started_ts=1001.01)
        return h.acked("x", W3, ts=1001.6).finish().build()

    assert invariant_verdict(no_duplicate.check(run(True), {})) is False
    assert invariant_verdict(no_duplicate.check(run(False), {})) is True


def test_a_copy_received_before_the_cut_is_no_redelivery_of_it() -> None:
    """A worker that reports every receipt as redelivered (so no copy looks like a
    second message) and publishes x again after processing it: W2 receives the copy
    long before W1's cut, and runs it after. The cut cannot have handed W2 that copy:
    unexplained. W2's copy received after the cut is a redelivery: explained."""
    def run(received_ts: float) -> History:
        h = start_ready().publish("x", ts=1000.0)
        h.received("x", W1, redelivered=True, ts=1000.1).processed("x", W1, ts=1000.2)
        h.received("x", W2, redelivered=True, ts=received_ts)
        h.fault("close-connections", W1, ts=1003.0, completed_ts=1003.1)
        h.processed("x", W2, ts=1005.0, started_ts=1004.9)
        return h.acked("x", W2, ts=1005.1).finish().build()

    assert invariant_verdict(no_duplicate.check(run(1000.3), {})) is False
    assert invariant_verdict(no_duplicate.check(run(1003.5), {})) is True


def test_one_delivery_processed_twice_is_never_explained() -> None:
    """W1 receives x once and processes it twice; a close-connections issued earlier
    is still taking effect (docker: ~5 s). Two processings off one delivery are the
    worker's doing."""
    def run(completed_ts: float) -> History:
        h = start_ready().publish("x", ts=1000.0)
        h.fault("close-connections", W1, ts=1008.0, completed_ts=completed_ts)
        h.received("x", W1, ts=1011.0).processed("x", W1, ts=1011.5, started_ts=1011.0)
        h.processed("x", W1, ts=1012.0, started_ts=1011.6).acked("x", W1, ts=1012.0)
        return h.finish().build()

    for completed_ts in (1008.05, 1013.0):
        r = no_duplicate.check(run(completed_ts), {})
        assert invariant_verdict(r) is False, (completed_ts, r.evidence)


def test_a_retry_acked_before_the_cut_has_no_lineage() -> None:
    """W1 fails attempt 1, publishes attempt 2 twice (a bug) and acks attempt 1; a
    cut of W1 after that ack did not requeue it, so it is no lineage of the second
    copy. The same cut before the ack is (the correct worker's retry pattern)."""
    def run(ack_before_cut: bool) -> History:
        h = start_ready().publish("x", directives={"fail_times": 1}, ts=1000.0)
        h.received("x", W1, attempt=1, ts=1000.1).failed("x", W1, attempt=1, ts=1000.2)
        h.retry_scheduled("x", W1, attempt=2, ts=1000.21)
        if ack_before_cut:
            h.acked("x", W1, reason="retry", ts=1000.22)
        h.fault("close-connections", W1, ts=1000.4, completed_ts=1000.45)
        if not ack_before_cut:
            h.received("x", W3, redelivered=True, attempt=1, ts=1000.46)
            h.failed("x", W3, attempt=1, ts=1000.47).acked("x", W3, reason="retry", ts=1000.48)
        h.received("x", W2, attempt=2, ts=1000.5)
        h.processed("x", W2, attempt=2, ts=1000.6, started_ts=1000.5).acked("x", W2, ts=1000.6)
        h.received("x", W3, attempt=2, ts=1000.55)
        h.processed("x", W3, attempt=2, ts=1000.7, started_ts=1000.55).acked("x", W3, ts=1000.7)
        return h.finish().build()

    assert invariant_verdict(no_duplicate.check(run(True), {})) is False
    assert invariant_verdict(no_duplicate.check(run(False), {})) is True


def test_a_copy_published_after_the_pause_was_over_is_not_stale() -> None:
    """W2's copy of x, its ack failed, looks like a stale copy of a pause; but x was
    published 47 s after the pause healed, so it never waited in the frozen socket:
    unexplained (W2's own 406 requeued it). Published before the heal: explained."""
    def run(published_ts: float) -> History:
        h = start_ready().fault("pause", W2, ts=1002.0, completed_ts=1002.05)
        h.fault("pause", W2, phase="heal", ts=1003.0)
        h.publish("x", ts=published_ts)
        h.received("x", W2, ts=1060.1)
        h.connection_lost(W2, ts=1060.95).ready(W2, ts=1061.2)
        h.received("x", W1, redelivered=True, ts=1061.0)
        h.processed("x", W1, ts=1061.5, started_ts=1061.0).acked("x", W1, ts=1061.5)
        h.processed("x", W2, ts=1062.0, started_ts=1060.1).ack_failed("x", W2, ts=1062.0)
        return h.finish().build()

    assert invariant_verdict(no_duplicate.check(run(1050.1), {})) is False
    assert invariant_verdict(no_duplicate.check(run(1001.0), {})) is True


def test_a_restarted_process_does_not_take_its_predecessors_receipt() -> None:
    """W1 processes x and is killed before its ack; W2 runs the redelivery (explained).
    W1's new process then runs x again with no delivery of its own (a journal
    replay): the killed process's receipt is not its, so the kill explains nothing."""
    def run(replay: bool) -> History:
        h = start_ready().publish("x", ts=1000.0)
        h.received("x", W1, ts=1010.0).processed("x", W1, ts=1010.5, started_ts=1010.0)
        h.fault("kill", W1, ts=1011.0).worker_exited(W1, requested=True, ts=1011.1)
        h.received("x", W2, redelivered=True, ts=1011.2)
        h.processed("x", W2, ts=1011.6, started_ts=1011.2).acked("x", W2, ts=1011.6)
        h.worker_started(W1, ts=1012.0).ready(W1, ts=1012.2)
        if replay:
            h.processed("x", W1, ts=1012.8, started_ts=1012.3)
        return h.finish().build()

    assert invariant_verdict(no_duplicate.check(run(True), {})) is False
    assert invariant_verdict(no_duplicate.check(run(False), {})) is True


def test_a_lineage_redelivery_before_a_late_exit_is_still_its_crash() -> None:
    """A minimal reporter, a Dramatiq-like late exit: W1's process dies on c's asked
    crash at ~1004.0 and the harness sees it exit at 1004.8; W1 had failed x's
    attempt 1 and republished it, so x comes back to W2 at 1004.2, before the exit
    was seen, and W2 republishes it too. The crash explains both copies of attempt 2
    (a receipt up to EFFECT_MAX_S before an exit may be its redelivery)."""
    h = start_ready()
    h.publish("c", directives={"crash": "after_process", "sleep_ms": 3000}, ts=1000.9)
    h.publish("x", directives={"fail_times": 1}, ts=1000.95)
    h.received("c", W1, ts=1001.0)
    h.received("x", W1, attempt=1, ts=1003.9)
    h.processed("c", W1, ts=1004.0)
    h.received("x", W2, redelivered=True, attempt=1, ts=1004.2)
    h.received("c", W2, redelivered=True, ts=1004.25).processed("c", W2, ts=1004.3)
    h.received("x", W2, attempt=2, ts=1004.5).processed("x", W2, attempt=2, ts=1004.6)
    h.worker_exited(W1, requested=False, ts=1004.8, code=1, signal=None)
    h.received("x", W3, attempt=2, ts=1004.9).processed("x", W3, attempt=2, ts=1005.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert invariant_verdict(r) is True, r.evidence


def test_a_zombies_stale_copy_of_a_retry_is_no_second_message() -> None:
    """W3 is paused as attempt 2 of x (a retry) reaches its socket; the broker gives it
    to W1; W3, resumed, reads its stale first delivery of attempt 2 and runs it, and
    its ack fails. The only first delivery of attempt 2 is the retry itself, not a
    second message: the pause explains the pair, as it does for attempt 1."""
    h = start_ready().publish("x", directives={"fail_times": 1}, ts=1002.47)
    h.received("x", W2, ts=1002.47).failed("x", W2, ts=1003.95)
    h.retry_scheduled("x", W2, attempt=2, ts=1003.95).acked("x", W2, reason="retry",
                                                           ts=1003.96)
    h.fault("pause", W3, ts=1003.19, completed_ts=1003.24)
    h.received("x", W1, redelivered=True, attempt=2, ts=1008.94)
    h.fault("pause", W3, phase="heal", ts=1010.25).received("x", W3, attempt=2, ts=1010.25)
    h.processed("x", W1, attempt=2, ts=1010.42, started_ts=1008.94).acked("x", W1, ts=1010.43)
    h.processed("x", W3, attempt=2, ts=1011.73, started_ts=1010.25)
    r = no_duplicate.check(h.ack_failed("x", W3, ts=1011.74).finish().build(), {})
    assert invariant_verdict(r) is True, r.evidence


def test_a_copy_acked_well_before_the_cut_was_not_requeued_by_it() -> None:
    """W1 processes x and acks it 2 s before a kill; W2 then runs x, reported as a
    redelivery. The broker had W1's ack, so the kill requeued nothing: unexplained.
    Killed before its ack (the at-least-once case): explained."""
    def run(acked: bool) -> History:
        h = start_ready().publish("x", ts=1000.0)
        h.received("x", W1, ts=1000.1).processed("x", W1, ts=1000.5)
        if acked:
            h.acked("x", W1, ts=1000.6)
        h.fault("kill", W1, ts=1002.6).worker_exited(W1, requested=True, ts=1002.7)
        h.received("x", W2, redelivered=True, ts=1003.0)
        h.processed("x", W2, ts=1003.5, started_ts=1003.0)
        return h.acked("x", W2, ts=1003.6).finish().build()

    assert invariant_verdict(no_duplicate.check(run(True), {})) is False
    assert invariant_verdict(no_duplicate.check(run(False), {})) is True


@pytest.mark.parametrize("crash_always,explained", [(True, True), (False, False)])
def test_a_crash_always_task_crashes_its_redelivered_copies_too(crash_always: bool,
                                                                explained: bool) -> None:
    """A poison crash loop: W1 crashed on the task's first delivery, W2 on its
    redelivery while it held ``a`` processed but unacked, and W3 processed ``a``
    again. With ``crash_always`` W2's exit is the crash the harness asked for, so
    the duplicate is explained; with ``crash: during`` (first delivery only) the
    same exit is W2's own and explains nothing."""
    directives = ({"crash_always": True, "sleep_ms": 500} if crash_always
                  else {"crash": "during", "sleep_ms": 500})
    h = start_ready().publish("x", directives=directives).publish("a")
    h.received("x", W1).worker_exited(W1, requested=False)
    h.received("x", W2, redelivered=True).received("a", W2).processed("a", W2)
    h.worker_exited(W2, requested=False)
    h.received("a", W3, redelivered=True).processed("a", W3).acked("a", W3)
    r = no_duplicate.check(h.finish(dlq=["x"]).build(), {})
    assert r.valid is False
    assert invariant_verdict(r) is explained, r.summary


@pytest.mark.parametrize("worker,explained", [(W1, True), (None, False), (W2, False)])
def test_a_consumer_timeout_the_broker_logged_explains_the_holders_duplicate(
        worker: str | None, explained: bool) -> None:
    """The broker closed W1's channel for its consumer_timeout (its log, the peer the
    harness saw W1 hold): what W1 held came back and W2 processed it again. A close
    whose peer no sighting names, or that was another worker's, explains nothing."""
    h = start_ready().publish("a").received("a", W1)
    h.add("consumer_timeout", "broker", worker=worker, peer="127.0.0.1:5000", channel=1,
          timeout_ms=5000)
    h.processed("a", W1)
    h.received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    r = no_duplicate.check(h.finish().build(), {})
    assert r.valid is False
    assert invariant_verdict(r) is explained, r.summary
    if explained:
        assert r.evidence["explained_by_kind"] == {"timeout:consumer": 1}
        assert "1 by the broker's consumer_timeout" in r.summary


@pytest.mark.parametrize("after_close_s,explained", [(0.0002, True), (0.9, True),
                                                     (2.0, False)])
def test_a_copy_received_just_after_its_channels_close_came_on_that_channel(
        after_close_s: float, explained: bool) -> None:
    """Seen in CI (minimal reporter): the broker timed out W2's channel, requeued
    ``a`` and sent it on W1's channel, which it closed for its own timeout a moment
    later; W1 logged the receipt 0.2 ms after that close's log line, processed it,
    its ack failed, and W2 got ``a`` again. W1's close explains that copy. A copy W1
    received 2 s after its close came on a new channel: the close explains nothing."""
    h = start_ready().publish("a", ts=1000.0).received("a", W2, ts=1000.1)
    h.add("consumer_timeout", "broker", ts=1004.0, worker=W2, peer="127.0.0.1:5002",
          channel=1, timeout_ms=4000)
    h.add("consumer_timeout", "broker", ts=1004.0003, worker=W1, peer="127.0.0.1:5001",
          channel=1, timeout_ms=4000)
    got = 1004.0003 + after_close_s
    h.received("a", W1, redelivered=True, ts=got)
    h.processed("a", W1, ts=got + 0.1, started_ts=got + 0.001)
    h.received("a", W2, redelivered=True, ts=got + 0.15)
    h.processed("a", W2, ts=got + 0.35, started_ts=got + 0.25).acked("a", W2, ts=got + 0.36)
    h.processed("a", W2, ts=1007.1, started_ts=1000.1)  # the first copy's sleep ends
    r = no_duplicate.check(h.finish().build(), {})
    assert r.valid is False
    assert invariant_verdict(r) is explained, r.summary
    if explained:
        assert r.evidence["explained_by_kind"] == {"timeout:consumer": 2}


@pytest.mark.parametrize("acked", [False, True])
def test_a_consumer_timeout_of_a_copy_processed_long_before_explains_nothing(
        acked: bool) -> None:
    """The broker times a channel out only for a delivery left unacked: W1 processed
    ``a`` 4 s before the close and never acked it (or says it did: the ack never
    reached the broker, or ``a`` would not be back). The close is W1's own doing."""
    h = start_ready().publish("a").received("a", W1, ts=1001.0).processed("a", W1, ts=1001.1)
    if acked:
        h.acked("a", W1, ts=1001.11)
    h.add("consumer_timeout", "broker", ts=1005.1, worker=W1, peer="127.0.0.1:5000",
          channel=1, timeout_ms=4000)
    h.received("a", W2, redelivered=True, ts=1005.3).processed("a", W2, ts=1005.4)
    h.acked("a", W2, ts=1005.41)
    r = no_duplicate.check(h.finish().build(), {})
    assert invariant_verdict(r) is False, r.summary


@pytest.mark.parametrize("forge,explained", [(False, False), (True, False)])
def test_a_made_up_receipt_of_the_poison_makes_no_exit_a_crash(forge: bool,
                                                                explained: bool) -> None:
    """The poison's real loop (W1, W3; delivery limit 1) ended in the DLQ; seconds
    later W2 dies on its own holding ``a`` processed, unacked. A line of its own,
    'received px', just before its exit, must not make that exit an injected crash:
    the broker delivered px limit + 1 = 2 times, and a third receipt is no delivery."""
    h = start_ready(queue_type="quorum", delivery_limit=1)
    h.publish("px", directives={"crash_always": True, "sleep_ms": 2000}).publish("a")
    h.received("px", W1, ts=1001.0).worker_exited(W1, requested=False, ts=1002.0)
    h.received("px", W3, redelivered=True, ts=1002.1).worker_exited(W3, requested=False,
                                                                    ts=1003.1)
    h.received("a", W2, ts=1010.0).processed("a", W2, ts=1010.1)
    if forge:
        h.received("px", W2, redelivered=True, ts=1010.9)
    h.worker_exited(W2, requested=False, ts=1011.0)
    h.received("a", W3, redelivered=True, ts=1011.2).processed("a", W3, ts=1011.3)
    h.acked("a", W3, ts=1011.31)
    r = no_duplicate.check(h.finish(dlq=["px"]).build(), {})
    assert invariant_verdict(r) is explained, r.summary
