"""even-distribution: every consuming worker compared, an idle one with 0."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    W2,
    W3,
    H,
    clean,
    ids,
)

from harness.checkers import (
    check_all,
    distribution,
)
from harness.history import History

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


def test_distribution_ignores_the_final_stop_even_without_a_drain_event() -> None:
    h = clean(100, workers=2)
    h.worker_exited(W1, requested=True).worker_exited(W2, requested=True)
    h.final_queue("main").final_queue("dlq")
    assert distribution.check(h.build(), {}).valid is True


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
