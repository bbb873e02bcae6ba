"""graceful-shutdown: a SIGTERMed worker finishes what it holds and exits in time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from histories import (
    W1,
    W2,
    W3,
    H,
    start,
    start_ready,
)

from harness.checkers import (
    graceful_shutdown,
)

# -- graceful-shutdown -------------------------------------------------------------

def sigterm(bug: str = "") -> H:
    """W1 holds a, b, c at SIGTERM (1010): a and b finish, c is requeued to W2."""
    h = start()
    for i in ("a", "b", "c", "d"):
        h.publish(i, ts=1001.0)
    h.received("d", W1, ts=1002.0).processed("d", W1, ts=1003.0).acked("d", W1, ts=1003.1)
    for i in ("a", "b", "c"):
        h.received(i, W1, ts=1005.0)
    h.fault("terminate", W1, ts=1010.0, completed_ts=1013.0)
    if bug == "acks_inflight":
        h.acked("a", W1, ts=1010.1)
    else:
        h.processed("a", W1, ts=1011.0).acked("a", W1, ts=1011.1)
    h.processed("b", W1, ts=1012.0).acked("b", W1, ts=1012.1)
    if bug != "lost":
        h.received("c", W2, redelivered=True, ts=1012.5).processed("c", W2, ts=1013.5)
        h.acked("c", W2, ts=1013.6)
    if bug == "killed":
        h.worker_exited(W1, requested=True, ts=1020.0, code=-9, signal=9)
    else:
        h.worker_exited(W1, requested=True, ts=1012.4, code=0, signal=None)
    return h


def test_graceful_true() -> None:
    r = graceful_shutdown.check(sigterm().finish().build(), {})
    assert r.valid is True, r.summary
    e = r.evidence
    assert (e["in_flight"], e["finished_and_acked"], e["requeued_and_completed"]) == (3, 2, 1)
    assert e["per_termination"][0]["exit_after_s"] == pytest.approx(2.4)


@pytest.mark.parametrize("bug", ["acks_inflight", "lost", "killed"])
def test_graceful_false(bug: str) -> None:
    r = graceful_shutdown.check(sigterm(bug).finish().build(), {})
    assert r.valid is False, r.summary
    if bug == "acks_inflight":
        assert r.evidence["acked_unfinished_ids"] == ["a"]
    elif bug == "lost":
        assert r.evidence["lost_ids"] == ["c"]
    else:
        assert "code -9" in r.summary


def test_graceful_scale_fault_lists_terminated_workers() -> None:
    h = start().publish("a").received("a", W3, ts=1005.0)
    h.fault("scale", "cluster", ts=1010.0, count=2, terminated=[W3])
    h.processed("a", W3, ts=1011.0).acked("a", W3, ts=1011.1)
    h.worker_exited(W3, requested=True, ts=1011.5, code=0, signal=None)
    r = graceful_shutdown.check(h.finish().build(), {})
    assert r.valid is True and r.evidence["finished_and_acked"] == 1


@pytest.mark.parametrize("case", ["no_terminate", "nothing_in_flight"])
def test_graceful_unknown(case: str) -> None:
    h = start().publish("a").task("a", W1)
    if case == "nothing_in_flight":
        h.fault("terminate", W1).worker_exited(W1, requested=True, code=0, signal=None)
    r = graceful_shutdown.check(h.finish().build(), {})
    assert r.valid is None, r.summary


def term_run(w1_does: Callable[[H, str], None]) -> H:
    h = start_ready()
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
    good = start_ready().publish("a").received("a", W1).fault("terminate", W1, ts=1001.0)
    proc(good, "a")
    good.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None).finish()
    assert graceful_shutdown.check(good.build(), {}).valid is True
    nothing = start_ready().publish("a").fault("terminate", W1, ts=1001.0).received("a", W2)
    proc(nothing, "a")
    nothing.worker_exited(W1, requested=True, ts=1002.0, code=0, signal=None).finish()
    assert graceful_shutdown.check(nothing.build(), {}).valid is None


# -- a minimal reporter (received, processed; no acks) ---------------------------------

def minimal_term(processed: bool, again: bool = False) -> H:
    h = start_ready().publish("a").received("a", W1).fault("terminate", W1, ts=1001.0)
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
    h = start_ready().publish("a").received("a", W1, ts=1000.5)
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


def test_an_ack_that_did_not_take_is_not_finishing() -> None:
    """W1 processed and 'acked' ``a`` on SIGTERM, but the broker handed it out
    again: the ack did not take. Completed by W2: requeued (true); never
    processed again: lost (false)."""
    def run(w2_processes: bool) -> H:
        h = start_ready().publish("a").received("a", W1, ts=1000.5)
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
