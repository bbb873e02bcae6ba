"""Unit tests of the checkers on hand-made histories (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from histories import H, clean, ids

from harness.checkers import (
    CHECKERS,
    check_all,
    distribution,
    exactly_once_ack,
    index,
    no_duplicate,
    no_loss,
    redelivery,
)
from harness.checkers.base import ClaimResult, run_checker
from harness.history import History

W1, W2, W3 = "worker-1", "worker-2", "worker-3"


# -- registry -----------------------------------------------------------------

def test_registry_has_every_claim() -> None:
    from harness.model import CLAIMS

    assert set(CHECKERS) == set(CLAIMS)


def test_check_all_keeps_order_and_unknown_claim_is_unknown() -> None:
    h = clean(10).finish().build()
    res = check_all(h, ["no-loss", "concurrency", "exactly-once-ack"], {})
    assert [r.claim for r in res] == ["no-loss", "concurrency", "exactly-once-ack"]
    assert [r.valid for r in res] == [True, None, True]


def test_crashing_checker_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(history: History, params: Any) -> ClaimResult:
        raise RuntimeError("bug")

    assert run_checker("no-loss", boom, History(), {}).valid is None
    monkeypatch.setitem(CHECKERS, "no-loss", boom)
    (res,) = check_all(clean(3).finish().build(), ["no-loss"])
    assert res.valid is None
    assert "RuntimeError: bug" in res.summary


def test_index_is_cached_and_rebuilt_when_the_history_grows() -> None:
    h = clean(3).build()
    a = index.get(h)
    assert index.get(h) is a
    h.events.extend(H(t0=2000.0).publish("x").events)
    b = index.get(h)
    assert b is not a and b.has("x", index.OK)


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


# -- even-distribution -----------------------------------------------------------

def test_distribution_true() -> None:
    r = distribution.check(clean(100, workers=2).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["per_worker"] == {W1: 50, W2: 50}
    assert r.evidence["max_relative_deviation"] == 0


def test_distribution_excludes_faulted_workers() -> None:
    h = clean(90, workers=3).fault("pause", W3).finish()
    # worker-3 was paused: compared are worker-1 and worker-2 only.
    h.worker_exited(W1, requested=True).worker_exited(W2, requested=True)  # after the run
    r = distribution.check(h.build(), {})
    assert r.valid is True, r.summary
    assert set(r.evidence["per_worker"]) == {W1, W2}
    assert r.evidence["excluded"] == {W3: "fault pause"}


def test_distribution_false_skewed() -> None:
    h = H()
    h.worker_started(W1).worker_started(W2)
    for i, t in enumerate(ids(100)):
        h.publish(t).task(t, W1 if i % 10 else W2)
    r = distribution.check(h.finish().build(), {})
    assert r.valid is False
    assert r.evidence["per_worker"] == {W1: 90, W2: 10}
    assert r.evidence["max_relative_deviation"] == pytest.approx(0.8)
    assert r.evidence["coefficient_of_variation"] == pytest.approx(0.8)


def test_distribution_idle_worker_counts_as_zero() -> None:
    h = clean(60, workers=1).worker_started(W2, ts=999.0)  # started before any task
    r = distribution.check(h.finish().build(), {})
    assert r.valid is False and r.evidence["per_worker"][W2] == 0


@pytest.mark.parametrize("case", ["too_few_tasks", "one_worker", "all_faulted"])
def test_distribution_unknown(case: str) -> None:
    if case == "too_few_tasks":
        h = clean(10, workers=2)
    elif case == "one_worker":
        h = clean(100, workers=1)
    else:
        h = clean(100, workers=2).fault("kill", W1).connection_lost(W2)
    r = distribution.check(h.finish().build(), {})
    assert r.valid is None, r.summary


def test_distribution_params() -> None:
    h = H()
    h.worker_started(W1).worker_started(W2)
    for i, t in enumerate(ids(40)):
        h.publish(t).task(t, W1 if i % 4 else W2)  # 30 / 10: deviation 0.5
    built = h.finish().build()
    assert distribution.check(built, {}).valid is False  # mean 20: enough evidence
    assert distribution.check(built, {"min_mean": 21}).valid is None
    assert distribution.check(built, {"min_mean": 5, "max_deviation": 0.6}).valid is True


# -- robustness ------------------------------------------------------------------

def test_checkers_agree_on_a_history_loaded_from_json() -> None:
    h = clean(60, workers=2).publish("x").received("x", W1).processed("x", W1)
    h.fault("kill", W1).received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    built = h.finish().build()
    loaded = History.from_dicts(e.to_dict() for e in built.events)
    claims = ["no-loss", "exactly-once-ack", "no-duplicate-processing",
              "redelivery-after-crash", "even-distribution"]
    a = [(r.claim, r.valid, r.evidence) for r in check_all(built, claims)]
    b = [(r.claim, r.valid, r.evidence) for r in check_all(loaded, claims)]
    assert a == b
    assert [v for _, v, _ in a] == [True, True, False, True, None]  # W1 faulted: 1 eligible


def test_distribution_ignores_the_final_stop_even_without_a_drain_event() -> None:
    h = clean(100, workers=2)
    h.worker_exited(W1, requested=True).worker_exited(W2, requested=True)
    h.final_queue("main").final_queue("dlq")
    assert distribution.check(h.build(), {}).valid is True


def test_ack_then_broker_dead_lettering_is_two_settlements() -> None:
    h = clean(2).publish("x").received("x", W1).processed("x", W1).acked("x", W1)
    r = exactly_once_ack.check(h.finish(dlq=["x"]).build(), {})
    assert r.valid is False and r.evidence["settled_more_than_once"] == 1


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


# -- even-distribution: who is compared -------------------------------------------------------

def _one_worker_takes_all(stop_after_drain: bool) -> History:
    """W1 processes every task; W2 is up and consuming but gets nothing (as with
    unlimited prefetch on a backlog). The harness stops W2 when the drain ends."""
    h = H().run_started()
    h.worker_started(W1).worker_started(W2).ready(W1).ready(W2)
    tasks = ids(60)
    for t in tasks:
        h.publish(t)
    for t in tasks[:50]:
        h.task(t, W1)
    if stop_after_drain:
        h.drain(complete=False).worker_exited(W2, requested=True)
        for t in tasks[50:]:  # W1 finishes its buffer during its own graceful stop
            h.task(t, W1)
        return h.final_queue("main").final_queue("dlq").final_queue("retry").build()
    for t in tasks[50:]:
        h.task(t, W1)
    return h.finish().build()


def test_an_idle_pod_counts_as_zero() -> None:
    [r] = check_all(_one_worker_takes_all(False), ["even-distribution"])
    assert r.valid is False
    assert r.evidence["per_worker"] == {W1: 60, W2: 0}


def test_the_harness_stop_after_the_drain_is_no_fault() -> None:
    [r] = check_all(_one_worker_takes_all(True), ["even-distribution"])
    assert r.valid is False, r.summary  # W2 stays compared, with its 0
    assert r.evidence["per_worker"][W2] == 0


def test_a_worker_that_never_consumed_counts_as_zero() -> None:
    # An exclusive consumer's peers: they connect, are refused, retry, never ready.
    h = H().run_started()
    h.worker_started(W1).worker_started(W2).ready(W1)
    h.connection_lost(W2).connection_lost(W2)
    tasks = ids(40)
    for t in tasks:
        h.publish(t)
    for t in tasks:
        h.task(t, W1)
    [r] = check_all(h.finish().build(), ["even-distribution"])
    assert r.valid is False
    assert r.evidence["per_worker"] == {W1: 40, W2: 0}


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
