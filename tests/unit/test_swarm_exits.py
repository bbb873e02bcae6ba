"""Who asked for a swarm task's exit: the harness's own signal, or swarm's order
seen while the task ran, never swarm's final record alone (it marks every ended
task ``shutdown``) and never the worker (``harness.cluster.swarm.exit_requested``)."""

from __future__ import annotations

import pytest

from harness.cluster.swarm import SLOT_NAME_RE, exit_requested


@pytest.mark.parametrize(("signalled", "ordered", "error", "requested"), [
    (True, False, "task: non-zero exit (137)", True),  # the harness's kill
    (False, False, "task: non-zero exit (137)", False),  # a crash
    (False, True, None, True),  # swarm ordered it down while it ran: a scale, the end
    (False, False, None, False),  # exited 0 by itself (swarm then files it "shutdown")
    # swarm's replacement of an unhealthy task: the worker's failure, whoever stopped it
    (False, True, "task: non-zero exit (143): dockerexec: unhealthy container", False),
    (True, False, "task: non-zero exit (137): dockerexec: unhealthy container", False),
])
def test_exit_requested(signalled: bool, ordered: bool, error: str | None,
                        requested: bool) -> None:
    assert exit_requested(signalled, ordered, error) is requested


def test_an_unhealthy_task_that_drained_and_exited_0_is_no_request() -> None:
    """Swarm stops an unhealthy task with SIGTERM: a worker that drains exits 0, its
    task ends "complete" without an error; the engine's HEALTHCHECK verdict stands."""
    assert exit_requested(False, True, None, "unhealthy") is False
    assert exit_requested(False, True, None, "healthy") is True


def test_workers_are_named_by_slot() -> None:
    assert SLOT_NAME_RE.match("worker-1") and SLOT_NAME_RE.match("worker-25")
    assert not SLOT_NAME_RE.match("worker-0")
    assert not SLOT_NAME_RE.match("w1")


def test_two_readers_of_the_task_records_follow_a_new_container_once() -> None:
    """The watcher and scale_to read the task records at once: a container seen new
    by both was followed twice, each of its events recorded twice (a false
    duplicate-processing FAIL on swarm's linear-scaling run)."""
    import threading
    import time
    from typing import Any

    from harness.cluster.swarm import SwarmCluster

    followed: list[str] = []
    task = {"ID": "t1", "Slot": 2, "DesiredState": "running",
            "CreatedAt": "2026-12-07T18:00:00.000000000Z",
            "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c" * 64}}}
    cluster: Any = object.__new__(SwarmCluster)
    cluster._service = object()
    cluster._lock = threading.Lock()
    cluster._read_lock = threading.Lock()
    cluster._seen, cluster._task_of, cluster._ordered = set(), {}, set()
    cluster._tasks = lambda service: [task]

    def incarnation(t: dict[str, Any], cid: str) -> bool:
        time.sleep(0.05)  # the engine's answer takes a moment: the window of the race
        followed.append(cid)
        return True

    cluster._incarnation = incarnation
    readers = [threading.Thread(target=cluster._read_tasks) for _ in range(4)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(5)
    assert followed == ["c" * 64]


def test_a_container_swarm_calls_starting_but_not_yet_started_is_followed_later() -> None:
    """Swarm reports "starting" before the engine starts the container: following it
    then would read no log and see a false exit at once; the next read retries."""
    import threading
    from typing import Any

    from harness.cluster.swarm import SwarmCluster
    from harness.history import Recorder

    class Created:
        status = "created"

    class Client:
        class containers:
            @staticmethod
            def get(cid: str) -> Created:
                return Created()

    cluster: Any = object.__new__(SwarmCluster)
    cluster.client = Client()
    cluster.recorder = Recorder(None)
    cluster._lock = threading.Lock()
    task = {"ID": "t1", "Slot": 1, "Status": {"State": "starting"}}
    assert cluster._incarnation(task, "c" * 64) is False
    assert cluster.recorder.snapshot().events == []
