"""Who asked for a swarm task's exit: the harness's own signal and swarm's task
record decide, never the worker (``harness.cluster.swarm.exit_requested``)."""

from __future__ import annotations

import pytest

from harness.cluster.swarm import SLOT_NAME_RE, exit_requested


@pytest.mark.parametrize(("signalled", "state", "desired", "error", "requested"), [
    (True, "failed", "shutdown", "task: non-zero exit (137)", True),  # the harness's kill
    (False, "failed", "shutdown", "task: non-zero exit (137)", False),  # a crash
    (False, "shutdown", "shutdown", None, True),  # an update, the run's end
    (False, "running", "remove", None, True),  # a scale-down (the task then vanishes)
    # swarm's own teardown error after the clean exit it ordered
    (False, "failed", "remove", "error while removing network: unknown network n", True),
    (False, "shutdown", "shutdown",
     "task: non-zero exit (143): dockerexec: unhealthy container", False),
    (False, "failed", "shutdown",
     "task: non-zero exit (137): dockerexec: unhealthy container", False),
    (False, "complete", "running", None, False),  # exited 0 by itself
    (False, "running", "running", None, False),  # swarm's record lags: not excused
    (False, None, None, None, False),  # no task record read: not excused
])
def test_exit_requested(signalled: bool, state: str | None, desired: str | None,
                        error: str | None, requested: bool) -> None:
    assert exit_requested(signalled, state, desired, error) is requested


def test_workers_are_named_by_slot() -> None:
    assert SLOT_NAME_RE.match("worker-1") and SLOT_NAME_RE.match("worker-25")
    assert not SLOT_NAME_RE.match("worker-0")
    assert not SLOT_NAME_RE.match("w1")
