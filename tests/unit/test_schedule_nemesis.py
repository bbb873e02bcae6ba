"""The schedule and the nemesis against the fake backend (``harness.cluster.fake``):
a fault fires on its trigger, a lasting one heals after its duration, on
teardown and on Ctrl-C, a backend call that fails is recorded as not taken,
and the nemesis is the only writer of ``fault`` events."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from harness import vocab
from harness.cluster.base import WorkerSpec
from harness.cluster.fake import FakeCluster
from harness.history import Event, Recorder
from harness.live import LiveState
from harness.model import Step, When
from harness.nemesis import Nemesis
from harness.schedule import Schedule

W1, W2 = "worker-1", "worker-2"


def setup(steps: tuple[Step, ...], fail: set[str] | None = None,
          scale: Callable[[int], list[str]] | None = None,
          ) -> tuple[FakeCluster, Recorder, LiveState, Schedule, Nemesis]:
    rec = Recorder(None)
    live = LiveState()
    rec.add_listener(live.on_event)
    cluster = FakeCluster(recorder=rec, fail=fail or set())
    for w in (W1, W2):
        cluster.start_worker(w, WorkerSpec())
    nemesis = Nemesis(cluster, rec, grace_s=1.0)
    nemesis.setup()
    sched = Schedule(steps, cluster, nemesis, live, rec, random.Random(7), scale=scale)
    return cluster, rec, live, sched, nemesis


def faults(rec: Recorder) -> list[Event]:
    return list(rec.snapshot().of_type(vocab.FAULT))


def run(sched: Schedule, timeout_s: float = 5.0) -> None:
    sched.start()
    assert sched.join(timeout_s), "the schedule did not finish"
    assert sched.error is None, sched.error


def test_an_after_s_kill_fires_on_time_and_the_exit_is_requested() -> None:
    cluster, rec, _, sched, _ = setup((Step(When(after_s=0.05), "kill", "one"),))
    t0 = time.monotonic()
    run(sched)
    assert time.monotonic() - t0 >= 0.05
    (f,) = faults(rec)
    assert (f.get("fault"), f.get("target"), f.get("ok")) == ("kill", W1, True)
    assert not cluster.is_running(W1) and cluster.is_running(W2)
    exits = list(rec.snapshot().of_type(vocab.WORKER_EXITED))
    assert exits[-1].get("requested") is True and exits[-1].worker == W1
    assert sched.killed == [W1] and sched.fired == [(0, True)]


def test_a_processed_trigger_waits_for_the_count() -> None:
    _, rec, _, sched, _ = setup((Step(When(processed=3, timeout_s=5), "pause", "one",
                                      duration_s=0.01),))
    sched.start()
    for i in range(3):
        time.sleep(0.05)
        assert not faults(rec), "fired before 3 tasks were processed"
        rec.record(vocab.PROCESSED, W2, id=f"t{i}", worker=W2)
    assert sched.join(5)
    kinds = [(f.get("fault"), f.get("phase"), f.get("ok")) for f in faults(rec)]
    assert kinds == [("pause", "invoke", True), ("pause", "heal", True)]


def test_a_condition_never_met_is_recorded_as_not_taken() -> None:
    _, rec, _, sched, _ = setup((Step(When(processed=5, timeout_s=0.1), "kill", "one"),))
    run(sched)
    (f,) = faults(rec)
    assert f.get("ok") is False and "not met within 0.1 s" in str(f.get("error"))
    assert sched.fired == [(0, False)]


def test_a_failed_backend_call_is_recorded_as_not_taken() -> None:
    cluster, rec, _, sched, _ = setup((Step(When(after_s=0), "kill", "one"),), fail={"kill"})
    run(sched)
    (f,) = faults(rec)
    assert f.get("ok") is False and "failed (as asked)" in str(f.get("error"))
    assert cluster.is_running(W1) and sched.killed == []


def test_a_killed_target_needs_a_kill_first() -> None:
    _, rec, _, sched, _ = setup((Step(When(after_s=0), "restart", "killed"),))
    run(sched)
    assert faults(rec)[0].get("ok") is False


def test_last_is_the_worker_of_the_step_before_and_never_none_or_the_broker() -> None:
    """Two cuts of one worker (``last``) hit the worker the step before hit; with no
    such step, or after the broker's restart, it is not taken and says why."""
    _, rec, _, sched, _ = setup((Step(When(after_s=0), "close-connections", "random"),
                                 Step(When(after_s=0), "close-connections", "last")))
    run(sched)
    first, second = faults(rec)
    assert second.get("target") == first.get("target") and second.get("ok") is True
    for before in ((), (Step(When(after_s=0), "broker-restart", "broker"),)):
        _, rec, _, sched, _ = setup((*before, Step(When(after_s=0), "kill", "last")))
        run(sched)
        last = faults(rec)[-1]
        assert last.get("ok") is False and "no earlier step hit a worker" in str(
            last.get("error"))


def test_busiest_is_the_worker_holding_most() -> None:
    cluster, rec, _, sched, _ = setup((Step(When(holding_unacked=2, timeout_s=5), "kill",
                                            "busiest"),))
    for i in range(2):
        rec.record(vocab.RECEIVED, W2, id=f"t{i}", worker=W2)
    run(sched)
    assert faults(rec)[0].get("target") == W2 and not cluster.is_running(W2)


def test_teardown_heals_what_is_still_active_like_ctrl_c() -> None:
    """A pause that would last 60 s: Ctrl-C stops the schedule, the nemesis's
    teardown heals it, and the backend is healed too."""
    cluster, rec, _, sched, nemesis = setup((Step(When(after_s=0), "pause", "one",
                                                  duration_s=60),))
    sched.start()
    deadline = time.monotonic() + 5
    while not faults(rec) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cluster.table[W1].state == "paused"
    sched.stop.set()  # what the runner does on SIGINT
    nemesis.teardown()
    assert sched.join(5)
    assert cluster.table[W1].state == "running"
    heals = [f for f in faults(rec) if f.get("phase") == "heal"]
    assert heals and heals[0].get("ok") is True and ("heal_all", "") in cluster.calls


def test_network_faults_heal_after_their_duration() -> None:
    cluster, _, _, sched, _ = setup((Step(When(after_s=0), "partition", W2,
                                            duration_s=0.05),))
    run(sched)
    assert not cluster.table[W2].cut_off
    assert [c for c in cluster.calls if c[1] == W2][-2:] == [("partition", W2),
                                                             ("heal_network", W2)]


def test_scale_is_recorded_by_the_nemesis_with_the_changed_workers() -> None:
    calls: list[int] = []

    def scale(n: int) -> list[str]:
        calls.append(n)
        return ["worker-3"]

    _, rec, _, sched, _ = setup((Step(When(after_s=0), "scale", "cluster", count=3),),
                                scale=scale)
    run(sched)
    (f,) = faults(rec)
    assert calls == [3] and f.get("workers") == ["worker-3"] and f.get("ok") is True


def test_the_nemesis_is_the_only_writer_of_fault_events() -> None:
    _, rec, _, sched, _ = setup((Step(When(after_s=0), "kill", "one"),
                                 Step(When(processed=9, timeout_s=0.05), "kill", "one")))
    sources: list[str] = []
    rec.add_listener(lambda ev: sources.append(ev.source) if ev.type == vocab.FAULT else None)
    run(sched)
    assert sources == ["nemesis", "nemesis"]


@pytest.mark.parametrize("fault", ["kill", "terminate", "pause", "restart", "partition",
                                   "close-connections"])
def test_every_fault_reaches_its_primitive(fault: str) -> None:
    cluster, _, _, _, nemesis = setup(())
    assert nemesis.invoke(fault, W1) is True
    assert (fault, W1) in cluster.calls


def test_the_schedule_thread_stops_promptly() -> None:
    _, _, _, sched, _ = setup((Step(When(after_s=30), "kill", "one"),))
    sched.start()
    threading.Event().wait(0.05)
    sched.stop.set()
    t0 = time.monotonic()
    assert sched.join(2) and time.monotonic() - t0 < 1.0


def test_the_schedule_names_its_steps_that_did_not_take_effect() -> None:
    _, _, _, sched, _ = setup((Step(When(after_s=0), "kill", "one", line=12),
                               Step(When(processed=9, timeout_s=0.05), "kill", "one", line=14),
                               Step(When(after_s=0), "kill", "one", line=16)))
    sched.start()
    deadline = time.monotonic() + 5
    while len(sched.fired) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    sched.stop.set()
    assert sched.join(5)
    problems = sched.problems()
    assert "schedule step 2 (kill one, line 14) did not take effect" in problems
    assert "schedule step 1" not in " ".join(problems)


def test_the_explore_guard_keeps_the_last_worker_running() -> None:
    """harness explore's guard: the second kill would leave no worker: not taken, and
    recorded as not taken with the reason; without the guard it is made."""
    steps = (Step(When(after_s=0.0), "kill", "one"), Step(When(after_s=0.0), "kill", "one"))
    cluster, rec, _, sched, _ = setup(steps)
    sched.guard_last_worker = True
    run(sched)
    assert cluster.is_running(W2)
    made = [(f.get("target"), f.get("ok")) for f in faults(rec)]
    assert made[0] == (W1, True) and made[1][1] is False
    assert any("leave no worker running" in str(f.get("error")) for f in faults(rec))
    assert sched.fired == [(0, True), (1, False)]
    cluster2, _, _, sched2, _ = setup(steps)
    run(sched2)
    assert not cluster2.is_running(W1) and not cluster2.is_running(W2)
