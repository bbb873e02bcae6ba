"""harness explore (harness.explore): generated schedules stay in their bounds and
write scenario files the harness runs as they are; the search runs each schedule
once, stops at the first violation or the budget, and tries the failures its
example database kept first. Runs are faked here (a function of the schedule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import vocab
from harness.explore import (
    Bounds,
    Example,
    ExploreError,
    LiveLine,
    describe,
    explore,
    faults_for,
    schedule_key,
    schedule_strategy,
    shrink,
    step_dict,
    write_scenario,
    write_summary,
)
from harness.model import Step
from harness.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "scenarios" / "load-balancing.yaml"
BOUNDS = Bounds(faults=("kill", "pause", "partition", "broker-restart"), max_steps=3,
                tasks=100, concurrency=10, max_faulted_s=12.0)


@settings(max_examples=60, deadline=None)
@given(schedule_strategy(BOUNDS))
def test_a_generated_schedule_keeps_its_bounds(steps: tuple[Step, ...]) -> None:
    assert 1 <= len(steps) <= BOUNDS.max_steps
    assert sum(s.duration_s or 0 for s in steps) <= BOUNDS.max_faulted_s
    for before, s in zip((None, *steps), steps, strict=False):
        assert s.fault in BOUNDS.faults
        lasting = vocab.FAULT_KINDS[s.fault].lasting
        assert (s.duration_s is not None) == lasting  # every lasting fault heals
        assert s.target in ("busiest", "random", "one", "last")
        if s.target == "last":  # the worker of a step before, never of none
            assert before is not None and before.fault != "broker-restart"
        w = s.when
        assert [w.after_s, w.processed, w.holding_unacked].count(None) == 2


@settings(max_examples=15, deadline=None)
@given(schedule_strategy(BOUNDS), st.integers(0, 10**6))
def test_a_schedule_written_out_is_the_scenario_harness_run_reads(
        tmp_path_factory: pytest.TempPathFactory, steps: tuple[Step, ...], n: int) -> None:
    sc = load_scenario(SOURCE)
    out = tmp_path_factory.mktemp("sched") / f"found-{n}.yaml"
    write_scenario(SOURCE, sc, steps, out, "load-balancing-found")
    back = load_scenario(out)
    assert [step_dict(s) for s in back.schedule] == [step_dict(s) for s in steps]
    assert back.workload == sc.workload and back.cluster == sc.cluster
    assert back.name == "load-balancing-found" and describe(steps) in back.description


@pytest.mark.parametrize("name", ["poison-crash-loop.yaml", "consumer-timeout.yaml"])
def test_an_incident_scenario_is_a_starting_point_its_cluster_carried(
        tmp_path: Path, name: str) -> None:
    """Every example of a search from an incident keeps its cluster: the restart
    policy and the delivery limit, the broker's consumer timeout."""
    source = ROOT / "scenarios" / name
    sc = load_scenario(source)
    steps = steps_of(("kill", {"processed": 4}, None, "busiest"))
    back = load_scenario(write_scenario(source, sc, steps, tmp_path / "x.yaml", "x"))
    assert back.cluster == sc.cluster and back.workload == sc.workload
    assert (back.cluster.delivery_limit, back.cluster.consumer_timeout_ms) in {(3, None),
                                                                               (None, 4000)}


def fake_runs(bug: str | None) -> tuple[list[tuple[Step, ...]], object]:
    """A run_one whose worker breaks no-loss when the schedule holds ``bug``."""
    ran: list[tuple[Step, ...]] = []

    def run_one(path: Path, steps: tuple[Step, ...]) -> Example:
        ran.append(steps)
        broken = bug is not None and any(s.fault == bug for s in steps)
        return Example(steps, 1 if broken else 0, ("no-loss",) if broken else (),
                       path.parent / f"run-{len(ran)}", path, len(steps))

    return ran, run_one


def test_the_search_stops_at_the_first_violation_and_runs_each_schedule_once(
        tmp_path: Path) -> None:
    sc = load_scenario(SOURCE)
    ran, run_one = fake_runs("pause")
    result = explore(SOURCE, sc, BOUNDS, run_one, examples=50, time_budget_s=600, seed=3,  # type: ignore[arg-type]
                     out_dir=tmp_path / "out", database_dir=tmp_path / "db")
    assert result.found is not None and "pause" in {s.fault for s in result.found.steps}
    assert result.found.violated == ("no-loss",)
    assert len({schedule_key(s) for s in ran}) == len(ran)  # none run twice
    assert result.found.scenario_file.is_file()


def test_the_summary_says_when_the_failure_came_and_what_the_shrink_spent(
        tmp_path: Path) -> None:
    """explore.json: the examples, the time to the first failure (the search's own
    clock), the shrink's runs and the reproduction rate, as the console printed."""
    import json

    ticks = iter(range(1000))
    sc = load_scenario(SOURCE)
    _, run_one = fake_runs("pause")
    result = explore(SOURCE, sc, BOUNDS, run_one, examples=50, time_budget_s=600, seed=3,  # type: ignore[arg-type]
                     out_dir=tmp_path / "out", database_dir=None,
                     clock=lambda: float(next(ticks)))
    assert result.found is not None and result.found_after_s is not None
    assert 0 < result.found_after_s <= result.search_s
    shrunk = shrink(result.found.steps, lambda s: any(x.fault == "pause" for x in s),
                    budget_runs=10, reruns=1, failed_once=True)
    path = write_summary(tmp_path, sc, 3, "fake", BOUNDS, result, shrunk, (4, 5),
                         tmp_path / "min.yaml")
    doc = json.loads(path.read_text())
    assert len(doc["examples"]) == len(result.examples) and doc["found"]["violated"] == [
        "no-loss"]
    assert doc["found_after_s"] == result.found_after_s
    assert doc["shrink"]["runs_used"] == shrunk.runs_used and doc["shrink"]["steps"] == 1
    assert doc["reproduces"] == [4, 5] and doc["minimal_scenario"].endswith("min.yaml")


def test_a_correct_worker_gets_no_false_alarm_and_the_examples_are_listed(
        tmp_path: Path) -> None:
    sc = load_scenario(SOURCE)
    ran, run_one = fake_runs(None)
    result = explore(SOURCE, sc, BOUNDS, run_one, examples=8, time_budget_s=600, seed=4,  # type: ignore[arg-type]
                     out_dir=tmp_path / "out", database_dir=None)
    assert result.found is None
    assert 1 <= len(result.examples) <= 8 and len(ran) == len(result.examples)
    assert result.faults_injected == sum(len(s) for s in ran)


def test_the_kept_failure_is_tried_first_next_time(tmp_path: Path) -> None:
    sc = load_scenario(SOURCE)
    _, run_one = fake_runs("broker-restart")
    first = explore(SOURCE, sc, BOUNDS, run_one, examples=60, time_budget_s=600, seed=5,  # type: ignore[arg-type]
                    out_dir=tmp_path / "a", database_dir=tmp_path / "db")
    assert first.found is not None
    again, run_one2 = fake_runs("broker-restart")
    second = explore(SOURCE, sc, BOUNDS, run_one2, examples=60, time_budget_s=600,  # type: ignore[arg-type]
                     seed=99, out_dir=tmp_path / "b", database_dir=tmp_path / "db")
    assert second.found is not None and len(again) == 1  # the database's failure, first


def test_the_time_budget_ends_the_search(tmp_path: Path) -> None:
    sc = load_scenario(SOURCE)
    ran, run_one = fake_runs(None)
    now = [0.0]

    def clock() -> float:
        now[0] += 100.0  # every look at the clock: 100 s later
        return now[0]

    result = explore(SOURCE, sc, BOUNDS, run_one, examples=50, time_budget_s=250, seed=6,  # type: ignore[arg-type]
                     out_dir=tmp_path / "out", database_dir=None, clock=clock)
    assert result.stopped_by_budget and len(ran) <= 2


def test_the_scenarios_own_schedule_is_the_first_example(tmp_path: Path) -> None:
    source = ROOT / "scenarios" / "crash-recovery.yaml"
    sc = load_scenario(source)
    ran, run_one = fake_runs("kill")
    result = explore(source, sc, BOUNDS, run_one, examples=5, time_budget_s=600, seed=7,  # type: ignore[arg-type]
                     out_dir=tmp_path / "out", database_dir=None)
    assert ran == [tuple(sc.schedule)] and result.found is not None


def test_faults_follow_the_backend_and_bad_options_are_one_line_errors() -> None:
    assert "partition" not in faults_for("local", True, None)
    assert "partition" in faults_for("docker", True, None)
    assert "broker-restart" not in faults_for("docker", False, None)
    with pytest.raises(ExploreError, match="--faults explode"):
        faults_for("local", True, ["explode"])
    with pytest.raises(ExploreError, match="partition needs --backend docker"):
        faults_for("local", True, ["partition"])
    with pytest.raises(ExploreError, match="--max-steps"):
        Bounds(faults=("kill",), max_steps=0)
    with pytest.raises(ExploreError, match="--examples"):
        explore(SOURCE, load_scenario(SOURCE), BOUNDS, lambda p, s: None,  # type: ignore[arg-type,return-value]
                examples=0, time_budget_s=1, seed=1, out_dir=Path("/nonexistent"),
                database_dir=None)


def test_explore_with_a_bad_fault_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    code = main(["explore", str(SOURCE), "--backend", "local", "--faults", "kill,explode"])
    err = capsys.readouterr().err
    assert code == 2 and "explode" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# -- shrinking ---------------------------------------------------------------------------

def steps_of(*items: tuple[str, dict[str, float], float | None, str]) -> tuple[Step, ...]:
    from harness.model import When

    return tuple(Step(when=When(**trigger, timeout_s=30.0), fault=fault,  # type: ignore[arg-type]
                      duration_s=duration, target=target)
                 for fault, trigger, duration, target in items)


def test_shrinking_keeps_what_the_bug_needs_and_drops_the_rest() -> None:
    """The bug: a kill after at least 3 processed, and a pause of at least 2 s."""
    big = steps_of(("pause", {"after_s": 9.0}, 8.0, "random"),
                   ("terminate", {"holding_unacked": 6}, None, "busiest"),
                   ("kill", {"processed": 40}, None, "busiest"))

    def fails(steps: tuple[Step, ...]) -> bool:
        kill = any(s.fault == "kill" and (s.when.processed or 0) >= 3 for s in steps)
        pause = any(s.fault == "pause" and (s.duration_s or 0) >= 2 for s in steps)
        return kill and pause

    out = shrink(big, fails, budget_runs=200, reruns=1)
    assert not out.exhausted
    assert [s.fault for s in out.steps] == ["pause", "kill"]
    pause, kill = out.steps
    assert pause.duration_s is not None and 2 <= pause.duration_s < 4
    assert pause.when.after_s == 0.5 and pause.target == "one"
    assert kill.when.processed is not None and 3 <= kill.when.processed < 6
    assert kill.target == "one"


def test_a_step_dropped_hands_its_worker_to_the_step_that_named_it() -> None:
    """The stale-ack bug needs one worker cut twice. Dropping the first of
    ``one; last`` leaves ``one`` (the second step's worker), not ``last`` as a first
    step (which names nobody and is never taken); a broker restart has no worker
    to hand on."""
    from harness.explore import simpler

    two = steps_of(("close-connections", {"holding_unacked": 3}, None, "one"),
                   ("close-connections", {"processed": 4}, None, "last"))
    first = simpler(two)[0]
    assert [(s.target, s.when.processed) for s in first] == [("one", 4)]
    assert [s.target for s in simpler(two)[1]] == ["one"]
    three = steps_of(("close-connections", {"after_s": 2.0}, None, "busiest"),
                     ("close-connections", {"processed": 4}, None, "last"),
                     ("close-connections", {"after_s": 8.1}, None, "last"))
    assert [s.target for s in simpler(three)[1]] == ["busiest", "last"]
    # A broker restart hands on no worker (a hand-written starting point may
    # have ``last`` after one; it stays as written).
    restart = steps_of(("kill", {"processed": 2}, None, "busiest"),
                       ("broker-restart", {"after_s": 2.0}, None, "one"),
                       ("kill", {"processed": 4}, None, "last"))
    assert [s.target for s in simpler(restart)[1]] == ["busiest", "last"]

    def resolve(steps: tuple[Step, ...]) -> list[str]:
        """Pessimistic targets: ``one`` is w1, a busiest or random worker w2."""
        hit: list[str] = []
        for s in steps:
            hit.append((hit[-1] if hit else "nobody") if s.target == "last"
                       else "w1" if s.target == "one" else "w2")
        return hit

    def fails(steps: tuple[Step, ...]) -> bool:  # one worker cut twice
        hit = [w for w in resolve(steps) if w != "nobody"]
        return len(hit) != len(set(hit))

    found = (*two, steps_of(("close-connections", {"after_s": 8.1}, None, "random"))[0])
    out = shrink(found, fails, budget_runs=60, reruns=1)
    assert len(out.steps) == 2 and fails(out.steps)


def test_a_flaky_candidate_counts_by_majority_and_the_budget_holds() -> None:
    """Real runs disagree: a candidate that fails one run in three is not accepted;
    the budget of runs is never passed."""
    import itertools

    big = steps_of(("kill", {"processed": 8}, None, "busiest"),
                   ("kill", {"processed": 4}, None, "busiest"))
    pattern = itertools.cycle([True, False, False])

    def fails(steps: tuple[Step, ...]) -> bool:
        return len(steps) == 2 or next(pattern)  # the full schedule always fails

    out = shrink(big, fails, budget_runs=12, reruns=3)
    assert out.runs_used <= 12
    assert len(out.steps) == 2  # no one-step candidate won a majority
    with pytest.raises(ExploreError, match="odd"):
        shrink(big, fails, budget_runs=1, reruns=2)


def test_the_reproduction_rate_counts_fresh_runs() -> None:
    from harness.explore import reproduction_rate

    flips = iter([True, False, True, True, False])
    assert reproduction_rate((), lambda s: next(flips), 5) == (3, 5)


def test_a_run_that_raises_is_an_error_not_a_failure_and_runs_once(tmp_path: Path) -> None:
    sc = load_scenario(SOURCE)
    calls: list[tuple[Step, ...]] = []

    def run_one(path: Path, steps: tuple[Step, ...]) -> Example:
        calls.append(steps)
        raise RuntimeError("the engine went away")

    result = explore(SOURCE, sc, BOUNDS, run_one, examples=4, time_budget_s=600, seed=8,
                     out_dir=tmp_path / "out", database_dir=tmp_path / "db")
    assert result.found is None and len(calls) == len({schedule_key(c) for c in calls})
    assert all(e.error == "RuntimeError: the engine went away" for e in result.examples)
    assert not list((tmp_path / "db").rglob("*")) or not any(
        p.is_file() for p in (tmp_path / "db").rglob("*"))  # nothing kept as a failure


def test_ctrl_c_stops_the_search_and_nothing_is_kept(tmp_path: Path) -> None:
    from harness.signals import Interrupted

    sc = load_scenario(SOURCE)
    calls: list[tuple[Step, ...]] = []

    def run_one(path: Path, steps: tuple[Step, ...]) -> Example:
        calls.append(steps)
        raise Interrupted("SIGINT")

    with pytest.raises(Interrupted):
        explore(SOURCE, sc, BOUNDS, run_one, examples=10, time_budget_s=600, seed=9,
                out_dir=tmp_path / "out", database_dir=tmp_path / "db")
    assert len(calls) == 1  # not run again by a replay


def test_a_kept_failure_survives_a_search_that_could_not_replay_it(tmp_path: Path) -> None:
    """The budget spent before it, or other bounds: it stays for the next search."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    from harness.explore import database_key, keep_failure

    sc = load_scenario(SOURCE)
    kept = steps_of(("pause", {"after_s": 2.0}, 3.0, "one"))
    keep_failure(tmp_path / "db", sc, BOUNDS, kept)
    _, run_one = fake_runs(None)
    now = [0.0]

    def clock() -> float:
        now[0] += 1000.0
        return now[0]

    explore(SOURCE, sc, BOUNDS, run_one, examples=5, time_budget_s=10, seed=1,  # type: ignore[arg-type]
            out_dir=tmp_path / "o1", database_dir=tmp_path / "db", clock=clock)
    other = Bounds(faults=("kill",), max_steps=1, tasks=100, concurrency=10)
    ran2, run_one2 = fake_runs(None)
    explore(SOURCE, sc, other, run_one2, examples=2, time_budget_s=600, seed=1,  # type: ignore[arg-type]
            out_dir=tmp_path / "o2", database_dir=tmp_path / "db")
    assert kept not in ran2  # another set of bounds: not this failure's
    db = DirectoryBasedExampleDatabase(str(tmp_path / "db"))
    assert len(list(db.fetch(database_key(sc, BOUNDS)))) == 1


def test_an_unconfirmed_failure_is_not_shrunk() -> None:
    """Found once, then it never fails again: a flaky failure, reported as such."""
    big = steps_of(("kill", {"processed": 8}, None, "busiest"),
                   ("pause", {"after_s": 4.0}, 2.0, "random"))
    out = shrink(big, lambda s: False, budget_runs=10, reruns=3, failed_once=True)
    assert out.confirmed is False and out.steps == big and out.runs_used == 2
    out = shrink(big, lambda s: True, budget_runs=1, reruns=3, failed_once=True)
    assert out.confirmed is True  # the search's run and one more: 2 of 3


def test_explore_judges_the_safety_invariants_not_fault_free_measures() -> None:
    from harness.explore import explore_gate

    sc = load_scenario(ROOT / "scenarios" / "concurrency.yaml")
    gate = explore_gate(sc, None)
    assert "concurrency" not in gate and {"no-loss", "exactly-once-ack"} <= gate
    assert explore_gate(sc, frozenset({"concurrency"})) == {"concurrency"}
    crash = load_scenario(ROOT / "scenarios" / "crash-recovery.yaml")
    assert "redelivery-after-crash" in explore_gate(crash, None)


def test_no_hand_written_scenario_restarts_the_broker_while_retries_wait() -> None:
    """The search-only bug transient-retry-queues loses only retries waiting in the
    retry queues when the broker restarts: no scenario of scenarios/ may both restart
    the broker and have tasks that fail, or the bug would not need a search."""
    from worker.bugs import SEARCH_BUGS, TRANSIENT_RETRY_QUEUES

    assert TRANSIENT_RETRY_QUEUES in SEARCH_BUGS
    restarts = []
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        sc = load_scenario(path)
        if any(s.fault == "broker-restart" for s in sc.schedule):
            restarts.append(path.name)
            text = path.read_text(encoding="utf-8")
            assert not any(w in text for w in ("fail_times", "fail_always", "poison")), path
    assert restarts  # the check looked at something


def test_the_benchmark_baseline_is_the_base_without_its_bug(tmp_path: Path) -> None:
    """bench_explore's baseline and correct-worker search run the base scenario with
    no planted bug, the same workload otherwise."""
    from bench_scripts import load_benchmark

    bench = load_benchmark("bench_explore")
    for bug, base in bench.BASES.items():
        copy = bench.correct_copy(base, tmp_path)
        sc, orig = load_scenario(copy), load_scenario(base)
        assert orig.cluster.extra_env.get("WORKER_BUG") == bug
        assert "WORKER_BUG" not in sc.cluster.extra_env and sc.workload == orig.workload
    assert bench.per_min(3, 90.0) == 2.0 and bench.per_min(1, 0.0) == 0.0


def test_the_live_line_follows_the_search_and_the_shrink(tmp_path: Path) -> None:
    one = steps_of(("kill", {"processed": 4}, None, "busiest"))
    two = steps_of(("kill", {"processed": 4}, None, "busiest"),
                   ("pause", {"after_s": 2.0}, 3.0, "random"))
    live = LiveLine(examples=20, shrink_runs=10, budget_s=1200.0)
    assert "example 1 of <=20" in live.line(two) and "best failure: none yet" in live.line(two)
    live.seen(Example(two, 1, ("no-loss",), None, tmp_path, 2, frozenset({"kill", "pause"})))
    live.seen(Example((), 0, (), None, tmp_path, 0))
    text = live.line(one)
    assert "example 3 of <=20" in text and "2 fault(s) injected (kill, pause)" in text
    assert f"best failure: {describe(two)} [no-loss]" in text and text.endswith(describe(one))
    live.phase = "shrink"
    live.seen(Example(one, 1, ("no-loss",), None, tmp_path, 1, frozenset({"kill"})))
    text = live.line(one)
    assert "shrink run 2 of <=10" in text and f"best failure: {describe(one)} [no-loss]" in text
    live.phase = "rate"
    assert "reproduction run 2" in live.line(one)


def test_the_explore_page_of_a_search_without_a_violation_says_so(tmp_path: Path) -> None:
    from harness.htmlreport import write_explore_report

    doc = {"scenario": "s", "seed": 1, "backend": "local", "faults": ["kill"], "max_steps": 2,
           "faults_injected": 3, "fault_kinds": ["kill"], "found": None, "shrink": None,
           "examples": [{"schedule": "kill busiest after 2 processed", "violated": [],
                         "exit_code": 0, "faults_injected": 3, "run_dir": None,
                         "error": None}]}
    (tmp_path / "explore.json").write_text(json.dumps(doc))
    text = write_explore_report(tmp_path, None).read_text()
    assert "no violation in 1 example(s)" in text
    assert 'id="plot-timeline" class="empty"' in text and "PASS" in text
