"""The soundness rules (the broker's evidence decides, a worker's word never
excuses), one section per rule, each with a case that must be false, one true
and one unknown, on hand-built histories."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from histories import H

from harness.checkers import (
    exactly_once_ack,
    graceful_shutdown,
    health,
    no_duplicate,
    no_loss,
    redelivery,
    retry_backoff,
)
from harness.checkers.base import ClaimResult
from harness.checkers.index import NEEDED_UNTIL
from harness.verdicts import invariant_verdict, judge_history

W1, W2, W3 = "worker-1", "worker-2", "worker-3"
CAPS: dict[str, Any] = {"directives": True, "health": True, "events": "json"}
CLUSTER: dict[str, Any] = {"workers": 3, "concurrency": 10, "queue": "q", "dlq": "q.dlq",
                           "retry_base_ms": 200, "max_attempts": 5, "heartbeat_s": 2,
                           "grace_s": 10, "queue_type": "classic"}


def start(**over: Any) -> H:
    h = H().run_started({**CLUSTER, **over}, CAPS)
    for w in (W1, W2, W3):
        h.worker_started(w, ts=1000.0)
        h.ready(w, ts=1000.0)
    return h


# -- backoff means growth -------------------------------------------------------------

def backoff_run(delay_s: Callable[[int], float], fail_times: tuple[int, ...] = (4, 4, 3, 2, 1),
                base_ms: int = 200) -> H:
    """Tasks that fail k times; attempt a+1 is received delay_s(a) after attempt a failed."""
    h = start(retry_base_ms=base_ms)
    t = 1010.0
    for n, k in enumerate(fail_times):
        ident = f"r{n}"
        h.publish(ident, directives={"sleep_ms": 0, "fail_times": k}, ts=t)
        for a in range(1, k + 2):
            w = (W1, W2)[a % 2]
            h.received(ident, w, attempt=a, ts=t)
            if a <= k:
                h.failed(ident, w, attempt=a, ts=t + 0.01)
                t += 0.01 + delay_s(a)
            else:
                h.processed(ident, w, attempt=a, ts=t + 0.01).acked(ident, w, ts=t + 0.02)
        t += 0.1
    return h.finish()


def test_backoff_exponential_with_overhead_is_true() -> None:
    r = retry_backoff.check(backoff_run(lambda a: 0.2 * 2 ** (a - 1) + 0.2).build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["growth"]["median"] == pytest.approx(2.0, abs=0.6)


@pytest.mark.parametrize("name,delay", [("fixed 900 ms", lambda a: 0.9),
                                        ("linear", lambda a: 0.2 * a)])
def test_backoff_fixed_or_linear_is_false_with_gaps_quoted(
        name: str, delay: Callable[[int], float]) -> None:
    r = retry_backoff.check(backoff_run(delay).build(), {})
    assert r.valid is False, (name, r.summary)
    assert "expected" in r.summary and "attempt" in r.summary


def test_backoff_full_jitter_true_under_the_envelope_false_when_flat() -> None:
    rng = random.Random(3)
    ok = backoff_run(lambda a: rng.uniform(0, 0.2 * 2 ** (a - 1)) + 0.05,
                     fail_times=(4,) * 12).build()
    assert retry_backoff.check(ok, {"jitter": "full"}).valid is True
    # An immediate retry hides under a lower bound of 0, not under the growth rule.
    flat = backoff_run(lambda a: rng.uniform(0, 0.1), fail_times=(4,) * 12).build()
    r = retry_backoff.check(flat, {"jitter": "full"})
    assert r.valid is False and "does not grow" in r.summary


def test_backoff_jitter_with_too_few_gaps_is_unknown() -> None:
    few = backoff_run(lambda a: 0.2 * 2 ** (a - 1), fail_times=(4,) * 3).build()
    assert retry_backoff.check(few, {"jitter": "full"}).valid is None


def test_backoff_unknown_jitter_word_is_unknown() -> None:
    r = retry_backoff.check(backoff_run(lambda a: 0.2 * 2 ** (a - 1)).build(),
                            {"jitter": "some"})
    assert r.valid is None and "jitter" in r.summary


# -- the DLQ is not a success ------------------------------------------------------------

def kill_run(new_holder: Callable[[H, str], None], ids: tuple[str, ...] = ("a", "b"),
             dlq: tuple[str, ...] = (), poison: tuple[str, ...] = ()) -> H:
    """W1 holds ``ids`` and is killed; ``new_holder`` says what W2 does with each."""
    h = start()
    for i in ids:
        h.publish(i, poison=i in poison)
    for i in ids:
        h.received(i, W1)
    h.fault("kill", W1, ts=1001.0).worker_exited(W1, requested=True, ts=1001.05)
    for i in ids:
        h.received(i, W2, redelivered=True, ts=1001.5)
        new_holder(h, i)
    return h.finish(dlq=list(dlq))


def dead_letter_it(h: H, i: str) -> None:
    h.failed(i, W2, permanent=True).dead_lettered(i, W2, reason="poison")


def process_it(h: H, i: str) -> None:
    h.processed(i, W2).acked(i, W2)


def test_dlq_unasked_is_loss_in_no_loss() -> None:
    hist = kill_run(dead_letter_it, dlq=("a", "b")).build()
    r = no_loss.check(hist, {})
    assert r.valid is False and "dead-lettered" in r.summary
    assert r.evidence["dead_lettered_unasked"] == 2


def test_dlq_asked_is_accounted_for() -> None:
    hist = kill_run(dead_letter_it, dlq=("a", "b"), poison=("a", "b")).build()
    assert no_loss.check(hist, {}).valid is True


def test_dlq_unknown_when_dlq_not_captured() -> None:
    h = start().publish("a").received("a", W1).failed("a", W1, permanent=True)
    h.dead_lettered("a", W1).drain().final_queue("main").final_queue("dlq", ok=False)
    assert no_loss.check(h.build(), {}).valid is None


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
    h = start().publish("a").processed("a", W1).fault("kill", W1).finish()
    assert redelivery.check(h.build(), {}).valid is None


def term_run(w1_does: Callable[[H, str], None]) -> H:
    h = start()
    h.publish("a").received("a", W1)
    h.fault("terminate", W1, ts=1001.0)
    w1_does(h, "a")
    h.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None)
    return h.finish(dlq=["a"])


def test_graceful_shutdown_dead_lettering_is_not_finishing() -> None:
    def dl(h: H, i: str) -> None:
        h.failed(i, W1, permanent=True).dead_lettered(i, W1)

    def proc(h: H, i: str) -> None:
        h.processed(i, W1).acked(i, W1)

    r = graceful_shutdown.check(term_run(dl).build(), {})
    assert r.valid is False, r.summary
    good = start().publish("a").received("a", W1).fault("terminate", W1, ts=1001.0)
    proc(good, "a")
    good.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None).finish()
    assert graceful_shutdown.check(good.build(), {}).valid is True
    nothing = start().publish("a").fault("terminate", W1, ts=1001.0).received("a", W2)
    proc(nothing, "a")
    nothing.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None).finish()
    assert graceful_shutdown.check(nothing.build(), {}).valid is None


def test_broker_fault_explains_an_asked_failure_that_vanished() -> None:
    """RabbitMQ dead-letters at most once: a broker restart can drop a task that was
    on its way to the DLQ. The evidence (asked to fail, a broker fault after its
    receipt, a classic queue) explains it; the same without a broker fault is loss."""
    def run(broker_fault: bool) -> H:
        h = start().publish("p", poison=True).received("p", W1)
        h.failed("p", W1, permanent=True).dead_lettered("p", W1, reason="poison")
        if broker_fault:
            h.fault("broker-restart", "broker", completed_ts=h.now + 3)
        return h.finish()

    r = no_loss.check(run(True).build(), {})
    assert r.valid is True and r.explained.get("count") == 1, r.summary
    assert no_loss.check(run(False).build(), {}).valid is False
    # A broker fault long after the task was dropped explains nothing.
    late = start().publish("p", poison=True).received("p", W1, ts=1001.0)
    late.failed("p", W1, permanent=True, ts=1001.01)
    late.fault("broker-restart", "broker", ts=1040.0, completed_ts=1043.0)
    assert no_loss.check(late.finish().build(), {}).valid is False


# -- problems reach the invariant ---------------------------------------------------------

def test_problem_turns_a_true_invariant_unknown() -> None:
    h = start().publish("a").received("a", W1).processed("a", W1)
    h.fault("kill", W1).received("a", W2, redelivered=True).processed("a", W2).acked("a", W2)
    hist = h.finish().build()
    clean = judge_history(hist, ["no-duplicate-processing"], {}, [])
    assert clean[0].valid is False and invariant_verdict(clean[0]) is True
    problem = judge_history(hist, ["no-duplicate-processing"], {}, ["the drain did not finish"])
    assert invariant_verdict(problem[0]) is None
    assert "drain" in problem[0].summary


def test_problem_keeps_a_false_invariant() -> None:
    h = start().publish("a").task("a", W1).task("a", W2).finish()
    res = judge_history(h.build(), ["no-duplicate-processing"], {}, ["anything"])
    assert invariant_verdict(res[0]) is False


def _names(results: list[ClaimResult]) -> list[str]:
    return [r.claim for r in results]


# -- the broker decides when the run is over --------------------------------------------

def held_run(held: bool, main: list[str]) -> H:
    h = start().publish("a").publish("b").received("a", W1).received("b", W1)
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
    h = start().publish("z")
    h.events += held_run(True, ["a", "z"]).events
    r = exactly_once_ack.check(h.build(), {})
    assert r.valid is False and r.evidence["held_ids"] == ["a", "z"], r.summary


def test_held_with_nothing_requeued_is_judged_as_usual() -> None:
    h = held_run(False, [])
    h.processed("a", W1).acked("a", W1)
    assert exactly_once_ack.check(h.build(), {}).valid is True


def test_no_acks_and_nothing_held_is_unknown_and_not_observable() -> None:
    h = start().publish("a").received("a", W1).processed("a", W1).finish()
    r = exactly_once_ack.check(h.build(), {})
    assert r.valid is None and r.evidence["observable"] is False
    # ...so an unlisted invariant is left out rather than shown as unknown.
    assert "exactly-once-ack" not in _names(judge_history(h.build(), ["no-loss"], {}, []))


# -- invariants are always judged --------------------------------------------------------

def test_invariants_are_judged_whatever_the_claims_list() -> None:
    h = start().publish("a").task("a", W1).task("a", W2).finish()  # an unexplained duplicate
    res = judge_history(h.build(), ["retry-backoff"], {}, [])
    assert _names(res) == ["retry-backoff", "no-loss", "exactly-once-ack",
                           "no-duplicate-processing"]
    by = {r.claim: r for r in res}
    assert invariant_verdict(by["no-duplicate-processing"]) is False
    assert invariant_verdict(by["no-loss"]) is True
    assert by["retry-backoff"].valid is None


# -- a run ends when every window has closed ---------------------------------------------

def test_health_undecided_says_how_long_the_record_must_reach() -> None:
    h = start().publish("a").task("a", W1)
    h.health(W1, True, ts=1001.0).fault("broker-restart", "broker", ts=1002.0,
                                        completed_ts=1005.0)
    r = health.check(h.build(), {"down_bound_s": 15, "up_bound_s": 30})
    assert r.valid is None and r.evidence[NEEDED_UNTIL] == pytest.approx(1017.0)
    # The same record carried past the bound decides it: false (never unhealthy).
    h.add("window_wait", "harness", ts=1017.5)
    assert health.check(h.build(), {"down_bound_s": 15, "up_bound_s": 30}).valid is False
    good = start().health(W1, True, ts=1001.0).fault("broker-restart", "broker", ts=1002.0,
                                                     completed_ts=1005.0)
    good.health(W1, False, ts=1002.5).health(W1, True, ts=1007.0)
    assert health.check(good.build(), {}).valid is True


# -- only injected faults explain -------------------------------------------------------

def dup_after(cause: Callable[[H], None], crash_directive: bool = False) -> H:
    h = start().publish("a", directives={"crash": "after_process"} if crash_directive else None)
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
    h = start().publish("x", directives={"crash": "after_process"}).publish("a")
    h.received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    h.received("a", W2).processed("a", W2).worker_exited(W2, requested=False)
    h.received("a", W3, redelivered=True).processed("a", W3).acked("a", W3)
    assert invariant_verdict(no_duplicate.check(h.finish().build(), {})) is False


def test_an_ack_and_an_unreported_dlq_entry_are_never_explained() -> None:
    h = start().publish("a").received("a", W1).processed("a", W1).acked("a", W1)
    h.fault("kill", W1)
    assert exactly_once_ack.check(h.finish(dlq=["a"]).build(), {}).valid is False


def test_nothing_processed_is_unknown_for_duplicates() -> None:
    r = no_duplicate.check(start().publish("a").finish().build(), {})
    assert r.valid is None and invariant_verdict(r) is None


def test_second_ack_after_own_connection_lost_is_unexplained() -> None:
    h = start().publish("a").received("a", W1).processed("a", W1).acked("a", W1)
    h.connection_lost(W1).received("a", W2, redelivered=True).processed("a", W2)
    h.acked("a", W2)
    assert exactly_once_ack.check(h.finish().build(), {}).valid is False


# -- a minimal reporter (received, processed; no acks) ---------------------------------

def minimal_term(processed: bool, again: bool = False) -> H:
    h = start().publish("a").received("a", W1).fault("terminate", W1, ts=1001.0)
    if processed:
        h.processed("a", W1, ts=1001.5)
    h.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None)
    if again:
        h.received("a", W2, redelivered=True, ts=1002.5)
    return h.finish()


def test_graceful_shutdown_minimal_reporter_finished_by_broker_evidence() -> None:
    assert graceful_shutdown.check(minimal_term(True).build(), {}).valid is True
    # Acked without processing (the SIGTERM bug), seen without any ack event: lost.
    assert graceful_shutdown.check(minimal_term(False).build(), {}).valid is False
    # Handed out again and never processed by the new holder: not finished either.
    bad = graceful_shutdown.check(minimal_term(True, again=True).finish().build(), {})
    assert bad.valid is not True


# -- in-flight sets rest on what the harness saw, not on a worker's connection_lost ----

def term_after_own_loss(w1_lost_it: bool) -> H:
    """W1 reports ``connection_lost`` (its own word) after receiving ``a``, is
    then terminated; ``a`` is handed out again (or not) after the SIGTERM."""
    h = start().publish("a").received("a", W1, ts=1000.5)
    h.connection_lost(W1, ts=1000.8).fault("terminate", W1, ts=1001.0)
    h.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None)
    if not w1_lost_it:
        h.received("a", W2, redelivered=True, ts=1002.5).processed("a", W2).acked("a", W2)
    return h.finish()


def test_an_own_connection_lost_does_not_shrink_the_in_flight_set() -> None:
    """A worker that says it lost its connection just before a SIGTERM is still
    held to what it had received: the task it dropped is lost (false); one the
    broker handed out again and another worker completed is requeued (true)."""
    bad = graceful_shutdown.check(term_after_own_loss(True).build(), {})
    assert bad.valid is False and bad.evidence["lost"] == 1, bad.summary
    good = graceful_shutdown.check(term_after_own_loss(False).build(), {})
    assert good.valid is True and good.evidence["requeued_and_completed"] == 1, good.summary


def test_a_delivery_handed_out_again_before_the_kill_was_not_in_flight() -> None:
    """A real connection loss requeued ``a``; W2 completed it before W1's kill:
    W1 no longer held it (the broker's next delivery says so), so nothing of W1's
    was in flight (unknown), and a kill that caught ``b`` still counts (true)."""
    def run(with_b: bool) -> H:
        h = start().publish("a").publish("b").received("a", W1, ts=1000.2)
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


def test_an_ack_that_did_not_take_is_not_finishing() -> None:
    """W1 processed and 'acked' ``a`` on SIGTERM, but the broker handed it out
    again: the ack did not take. Completed by W2: requeued (true); never
    processed again: lost (false)."""
    def run(w2_processes: bool) -> H:
        h = start().publish("a").received("a", W1, ts=1000.5)
        h.fault("terminate", W1, ts=1001.0)
        h.processed("a", W1, ts=1001.2).acked("a", W1, ts=1001.3)
        h.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None)
        h.received("a", W2, redelivered=True, ts=1002.5)
        if w2_processes:
            h.processed("a", W2).acked("a", W2)
        return h.finish()

    good = graceful_shutdown.check(run(True).build(), {})
    assert good.valid is True and good.evidence["requeued_and_completed"] == 1, good.summary
    bad = graceful_shutdown.check(run(False).build(), {})
    assert bad.valid is False and bad.evidence["lost"] == 1, bad.summary


def test_a_processed_only_worker_crashing_on_a_crash_task_is_injected() -> None:
    """No receipts reported: W1's ``processed`` of the crash task, then its exit,
    show the crash the harness asked for, so W2's second processing is explained;
    without the directive the same exit explains nothing; nothing processed twice
    and nothing lost is simply true."""
    def run(directive: bool) -> H:
        h = start().publish("a", directives={"crash": "after_process"} if directive else None)
        h.processed("a", W1, ts=1000.5).worker_exited(W1, requested=False, ts=1000.6)
        h.processed("a", W2, ts=1001.0)
        return h.finish()

    explained = no_duplicate.check(run(True).build(), {})
    assert explained.valid is False and invariant_verdict(explained) is True, explained.summary
    unexplained = no_duplicate.check(run(False).build(), {})
    assert invariant_verdict(unexplained) is False, unexplained.summary
    once = start().publish("a").processed("a", W1, ts=1000.5).finish()
    assert no_duplicate.check(once.build(), {}).valid is True


def test_a_started_ts_is_clamped_to_what_the_harness_saw() -> None:
    """A ``started_ts`` before the receipt or after the report is the worker's
    word outside the facts: kept inside [receipt, processed]."""
    from harness.checkers import facts
    from harness.checkers import index as ix

    h = start().publish("a").received("a", W1, ts=1000.5)
    h.processed("a", W1, ts=1001.0, started_ts=900.0)
    h.publish("b").received("b", W1, ts=1001.1).processed("b", W1, ts=1001.5,
                                                           started_ts=2000.0)
    h.publish("c").received("c", W1, ts=1001.6).processed("c", W1, ts=1002.0,
                                                           started_ts=1001.8)
    hist = h.finish().build()
    idx = ix.get(hist)
    starts = {e.id: facts.start_ts(idx, e) for e in idx.processed.lists[W1]}
    assert starts == {"a": 1000.5, "b": 1001.5, "c": 1001.8}


# -- a second message is explained by lineage, not by a fault alone ----------------------

def test_a_retry_republish_caught_by_a_kill_is_explained_by_lineage() -> None:
    """The guide's retry pattern (republish, then ack) with a kill between the two:
    the requeued original and the republished copy both run. Explained."""
    h = start().publish("a", directives={"fail_times": 1})
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
        h = start().publish("a").received("a", W1, ts=1000.5).processed("a", W1)
        h.acked("a", W1).fault("kill", W1, ts=1000.7).worker_exited(W1, requested=True,
                                                                    ts=1000.75)
        h.received("a", W2, redelivered=not republished, ts=1001.0).processed("a", W2)
        return h.acked("a", W2).finish()

    r = no_duplicate.check(run(True).build(), {})
    assert invariant_verdict(r) is False, r.summary
    # The same pair as a redelivery (redelivered true) is the broker's doing and
    # the kill's: explained, as before.
    assert invariant_verdict(no_duplicate.check(run(False).build(), {})) is True


def test_a_second_ack_of_a_republished_copy_needs_lineage() -> None:
    """exactly-once-ack: W1 acks ``a`` and publishes it again; a kill right after
    does not explain the second ack of the new message (false). The same second
    ack on a redelivery (the broker's copy) is explained by the kill (true)."""
    def run(republished: bool) -> H:
        h = start().publish("a").received("a", W1, ts=1000.5).processed("a", W1)
        h.acked("a", W1, ts=1000.6).fault("kill", W1, ts=1000.62)
        h.worker_exited(W1, requested=True, ts=1000.65)
        h.received("a", W2, redelivered=not republished, ts=1001.0).processed("a", W2)
        return h.acked("a", W2).finish()

    assert exactly_once_ack.check(run(True).build(), {}).valid is False
    assert exactly_once_ack.check(run(False).build(), {}).valid is True


# -- from the skeptic's review: a worker's word must not excuse ----------------------

def test_a_worker_republishing_what_it_processed_has_no_lineage() -> None:
    """The task was not asked to fail; W1 processed it, a close-connections hit it
    before the ack, and the worker republished it (attempt 2): the second message
    is the worker's doing, in both reporting modes (false). A task the harness
    asked to fail, republished by its failing attempts, is explained (true)."""
    def worker_bug(acks: bool) -> H:
        h = start().publish("a", ts=1001.0)
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

    h = start().publish("a", directives={"fail_times": 1}, ts=1001.0)
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
    h = start().publish("c", directives={"crash": "after_process"}, ts=1001.0)
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
    h = start().publish("x", ts=1001.0).publish("y", ts=1001.0)
    h.processed("y", W1, ts=1004.0).fault("close-connections", W1, ts=1005.0)
    h.processed("x", W1, ts=1020.0, started_ts=0.0).processed("x", W2, ts=1022.0)
    r = no_duplicate.check(h.finish().build(), {})
    assert invariant_verdict(r) is False, r.summary


def test_without_acks_a_processed_task_in_the_dlq_is_settled_twice() -> None:
    """Minimal reporter: the broker's final read finds a processed task in the DLQ
    that nobody asked to fail: exactly-once-ack is false, not 'unobservable'."""
    h = start().publish("a").publish("b")
    h.received("a", W1).processed("a", W1).received("b", W1).processed("b", W1)
    r = exactly_once_ack.check(h.finish(dlq=["a"]).build(), {})
    assert r.valid is False and r.evidence["unexplained_ids"] == ["a"], r.summary
    clean = start().publish("a").received("a", W1).processed("a", W1).finish()
    assert exactly_once_ack.check(clean.build(), {}).evidence.get("observable") is False
