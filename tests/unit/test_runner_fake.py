"""The runner end to end against the fake backend (in-memory cluster and broker,
``harness.cluster.fake``): a clean run passes, a planted loss fails, a kill is
recorded and healed, a step that never fires is a run problem (unknown), and
Ctrl-C stops everything and still writes the result."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from harness import drain, runner, vocab
from harness.cluster.fake import FakeCluster
from harness.history import History, Recorder
from harness.model import ClusterSpec, Scenario, Step, When, Workload
from harness.options import RunOptions, RunOutcome
from harness.signals import Interrupted


@pytest.fixture(autouse=True)
def _short_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain's quiet and stable bounds are sized for real brokers' lagging
    counters; the fake broker's counts are exact."""
    monkeypatch.setattr(drain, "DRAIN_QUIET_MIN_S", 0.2)
    monkeypatch.setattr(drain, "DRAIN_POLL_S", 0.05)
    monkeypatch.setattr(drain, "STATS_INTERVAL_OWNED_S", 0.05)


class Fakes(list[FakeCluster]):
    """The fake clusters the runner made, and the bug the next one plants."""

    bug: str | None = None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    made = Fakes()

    def make(backend: str, run_id: str, run_dir: Path, recorder: Recorder,
             shared_broker: object = None, opts: object = None,
             id_prefix: object = None, broker_settings: object = None) -> FakeCluster:
        c = FakeCluster(run_id=run_id, run_dir=run_dir, recorder=recorder, bug=made.bug)
        made.append(c)
        return c

    monkeypatch.setattr(runner, "make_cluster", make)
    yield made


def scenario(steps: tuple[Step, ...] = (), tasks: int = 30) -> Scenario:
    return Scenario(name="fake-run", path="scenarios/fake-run.yaml",
                    claims=("no-loss", "exactly-once-ack", "no-duplicate-processing"),
                    cluster=ClusterSpec(workers=2, grace_s=1.0),
                    workload=Workload(tasks=tasks, drain_timeout_s=5.0, publish_timeout_s=5.0),
                    schedule=steps)


def run(sc: Scenario, tmp_path: Path, steps_optional: bool = False) -> RunOutcome:
    opts = RunOptions(backend="fake", out=tmp_path, progress=False, seed=7,
                      capabilities=frozenset({"directives"}), steps_optional=steps_optional)
    return runner.run_scenario(sc, opts, Console(file=io.StringIO()))


def words(outcome: RunOutcome) -> dict[str, bool | None]:
    from harness.verdicts import invariant_verdict

    return {r.claim: invariant_verdict(r) for r in outcome.results}


def test_a_clean_run_passes_and_writes_its_result(fake: Fakes,
                                                  tmp_path: Path) -> None:
    out = run(scenario(), tmp_path)
    assert out.exit_code == 0, (out.problems, [r.summary for r in out.results])
    assert words(out) == {"no-loss": True, "exactly-once-ack": True,
                          "no-duplicate-processing": True}
    data = json.loads((out.run_dir / "result.json").read_text())
    assert data["verdict"] == "PASS" and data["seed"] == 7 and data["problems"] == []
    assert data["schema_version"] == 1 and data["harness_version"]
    assert data["started_at"] <= data["finished_at"] and data["worker"]["reference"] is True
    assert fake[0].stopped


def test_the_clusters_notices_end_the_output(fake: Fakes, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What the backend's stop says about the engine (a swarm it had to keep)."""
    stop = FakeCluster.stop

    def stop_and_say(self: FakeCluster) -> None:
        stop(self)
        self.notices.append("the engine stays the swarm node this run made: because")

    monkeypatch.setattr(FakeCluster, "stop", stop_and_say)
    buf = io.StringIO()
    opts = RunOptions(backend="fake", out=tmp_path, progress=False, seed=7,
                      capabilities=frozenset({"directives"}))
    out = runner.run_scenario(scenario(), opts, Console(file=buf, width=200))
    assert out.exit_code == 0
    assert "engine: the engine stays the swarm node this run made: because" in buf.getvalue()


class _SayingSharedBroker:
    """A suite broker whose stop keeps a swarm (``SharedDockerBroker``'s surface)."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.stopped = False

    def start(self, run_dir: Path) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True
        self.notices.append("the engine stays a swarm node: because")


def test_a_suite_brokers_notices_are_printed_after_its_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """audit, mutants and explore on docker share one broker: what its stop says
    about the engine reaches their console, also when the suite raised."""
    from harness.cluster import docker

    made: list[_SayingSharedBroker] = []

    def make() -> _SayingSharedBroker:
        made.append(_SayingSharedBroker())
        return made[-1]

    monkeypatch.setattr(docker, "SharedDockerBroker", make)
    buf = io.StringIO()
    opts = RunOptions(backend="docker", out=tmp_path, worker_image="w:1")
    with pytest.raises(RuntimeError), \
            runner.suite_broker(opts, Console(file=buf, width=200)) as run_opts:
        assert run_opts.shared_broker is made[0]
        raise RuntimeError("a suite's run went wrong")
    assert made[0].stopped
    assert "engine: the engine stays a swarm node: because" in buf.getvalue()
    with runner.suite_broker(opts):  # no console: the notices are not printed, no error
        pass
    assert made[1].stopped


def test_a_worker_that_loses_work_fails(fake: Fakes, tmp_path: Path) -> None:
    fake.bug = "ack-without-processing"
    out = run(scenario(), tmp_path)
    assert out.exit_code == 1 and words(out)["no-loss"] is False


def test_a_kill_is_recorded_requeued_and_the_run_still_passes(fake: Fakes,
                                                              tmp_path: Path) -> None:
    sc = scenario((Step(When(processed=5, timeout_s=5), "kill", "one", line=9),), tasks=60)
    out = run(sc, tmp_path)
    history = History.load(out.run_dir / "history.jsonl")
    kills = [e for e in history.of_type(vocab.FAULT) if e.get("fault") == "kill"]
    assert [k.get("ok") for k in kills] == [True]
    target = kills[0].get("target")
    exits = [e for e in history.of_type(vocab.WORKER_EXITED) if e.worker == target]
    assert exits and exits[0].get("requested") is True
    assert out.exit_code == 0, (out.problems, [r.summary for r in out.results])


def test_a_step_that_never_fires_is_a_problem_and_unknown(fake: Fakes,
                                                          tmp_path: Path) -> None:
    sc = scenario((Step(When(processed=10_000, timeout_s=0.3), "kill", "one", line=12),))
    out = run(sc, tmp_path)
    assert out.exit_code == 2
    assert any("line 12" in p and "did not take effect" in p for p in out.problems)
    assert all(v is None for v in words(out).values())


def test_an_explored_step_that_never_fires_leaves_the_run_judged(fake: Fakes,
                                                                 tmp_path: Path) -> None:
    """harness explore's generated steps: one whose trigger is never met is a note;
    the invariants judge the run that happened (a fault-free one here)."""
    sc = scenario((Step(When(processed=10_000, timeout_s=0.3), "kill", "one", line=12),))
    out = run(sc, tmp_path, steps_optional=True)
    assert not out.problems and out.exit_code == 0, out.problems
    assert words(out)["no-loss"] is True


def test_ctrl_c_stops_everything_and_writes_the_result(fake: Fakes,
                                                       tmp_path: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    sc = scenario((Step(When(after_s=0), "pause", "one", duration_s=60, line=5),
                   Step(When(after_s=30), "kill", "one", line=6)), tasks=20)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(Interrupted):
            run(sc, tmp_path)
    finally:
        timer.cancel()
    cluster = fake[0]
    assert cluster.stopped and ("heal_all", "") in cluster.calls
    assert not any(w.state == "paused" for w in cluster.table.values())
    (result,) = tmp_path.glob("*/result.json")
    data = json.loads(result.read_text())
    assert data["exit_code"] == 2 and any("interrupted" in p for p in data["problems"])
