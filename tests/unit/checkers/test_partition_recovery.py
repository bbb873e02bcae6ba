"""partition-recovery: a worker cut off from the broker works again after the heal."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    W2,
    H,
    start,
)

from harness.checkers import (
    partition_recovery,
)

# -- partition-recovery ------------------------------------------------------------

def partition(recovers: str = "ready") -> H:
    h = start().publish("a").publish("b").task("a", W1)
    h.fault("partition", W1, ts=1010.0).fault("partition", W1, phase="heal", ts=1020.0,
                                              completed_ts=1020.5)
    h.connection_lost(W1, ts=1021.0)
    if recovers == "ready":
        h.ready(W1, ts=1023.0)
    if recovers in ("ready", "received"):
        h.received("b", W1, ts=1024.0).processed("b", W1).acked("b", W1)
    else:
        h.received("b", W2, ts=1024.0).processed("b", W2).acked("b", W2)
    if recovers == "health":
        h.health(W1, True, ts=1025.0)
    h.add("run_finished", "harness", ts=1100.0)
    return h


@pytest.mark.parametrize(("recovers", "after"), [("ready", 2.5), ("received", 3.5),
                                                 ("health", 4.5)])
def test_partition_true(recovers: str, after: float) -> None:
    r = partition_recovery.check(partition(recovers).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["per_heal"][0]["recovered_after_s"] == after


def test_partition_health_is_not_enough_while_work_remains() -> None:
    h = partition("health")
    h.publish("c").received("c", W2, ts=1030.0).processed("c", W2).acked("c", W2)
    r = partition_recovery.check(h.finish().build(), {})
    assert r.valid is False


def test_partition_false_no_reconnect() -> None:
    r = partition_recovery.check(partition("never").finish().build(), {})
    assert r.valid is False and r.evidence["not_recovered"] == 1


@pytest.mark.parametrize("case", ["no_heal", "record_ends"])
def test_partition_unknown(case: str) -> None:
    h = start().fault("partition", W1, ts=1010.0)
    if case == "record_ends":
        h.fault("partition", W1, phase="heal", ts=1020.0)
    assert partition_recovery.check(h.build(), {}).valid is None
