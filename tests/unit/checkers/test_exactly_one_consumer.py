"""exactly-one-consumer: no task held by two workers at once without a fault."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    W2,
    H,
    start,
)

from harness.checkers import (
    exactly_one_consumer,
)

# -- exactly-one-consumer ---------------------------------------------------------

def zombie(explained: bool = True) -> H:
    """W1 holds x, is paused; W2 gets x at 1020 while W1 finishes at 1030 (ack_failed)."""
    h = start().publish("x", ts=1001.0).received("x", W1, ts=1002.0)
    if explained:
        h.fault("pause", W1, ts=1003.0)
    h.received("x", W2, redelivered=True, ts=1020.0).processed("x", W2, ts=1021.0)
    h.acked("x", W2, ts=1021.1)
    if explained:
        h.fault("pause", W1, phase="heal", ts=1029.0)
    h.processed("x", W1, ts=1030.0).ack_failed("x", W1, ts=1030.1)
    return h


def test_one_consumer_true_with_clean_redelivery_after_kill() -> None:
    h = start().publish("x").publish("y").task("y", W2)
    h.received("x", W1, ts=1010.0).fault("kill", W1, ts=1011.0)
    h.received("x", W2, redelivered=True, ts=1011.05).processed("x", W2).acked("x", W2)
    h.worker_exited(W1, requested=True, ts=1011.2)  # recorded after the redelivery
    r = exactly_one_consumer.check(h.finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["ids_received_more_than_once"] == 1


def test_one_consumer_false_explained_zombie() -> None:
    r = exactly_one_consumer.check(zombie().finish().build(), {})
    assert r.valid is False
    assert r.evidence["invariant_holds"] is True
    assert r.explained["zombies"] == [W1] and r.explained["ack_failed_seen"] is True
    (item,) = r.explained["by"]["x"]
    assert item["late_by_s"] == pytest.approx(10.1)
    assert item["explained_by"]["fault"] == "fault:pause"


def test_one_consumer_false_unexplained() -> None:
    r = exactly_one_consumer.check(zombie(explained=False).finish().build(), {})
    assert r.valid is False and r.evidence["invariant_holds"] is False
    assert r.evidence["unexplained_ids"] == ["x"]


def test_one_consumer_unknown_without_receipts() -> None:
    h = start().publish("x").processed("x", W1).finish()
    assert exactly_one_consumer.check(h.build(), {}).valid is None
