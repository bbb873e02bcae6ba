"""--backend external (harness.cluster.external): fault templates, the log follower's
prefixes and filters, the harness's record of what its templates did, and the
options and scenario checks. The follower and the templates run here against a
fake runner and fed lines; tests/integration/test_external_compose.py runs them
against a real Compose deployment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import vocab
from harness.cluster.base import ClusterError, WorkerSpec
from harness.cluster.external import ExternalCluster, FaultCommands, LogFollower, split_prefix
from harness.history import Recorder
from harness.options import OptionsError, build_options
from harness.scenario import ScenarioError, check_external, load_scenario

ROOT = Path(__file__).resolve().parents[2]
URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
LOGS = "docker compose logs -f --no-color --tail 0 worker"


# -- fault templates --------------------------------------------------------------------

def test_a_template_fills_the_worker_per_argument_never_through_a_shell() -> None:
    cmds = FaultCommands.parse(["kill=docker kill app-{worker}", "terminate=docker stop "
                                "--time 15 app-{worker}"])
    assert cmds.argv("kill", "worker-2") == ["docker", "kill", "app-worker-2"]
    # A name with shell syntax stays one argument.
    assert cmds.argv("kill", "w; rm -rf /") == ["docker", "kill", "app-w; rm -rf /"]
    with pytest.raises(ClusterError, match="no --fault-cmd pause"):
        cmds.argv("pause", "worker-1")


@pytest.mark.parametrize(("item", "message"), [
    ("kill", "give NAME=COMMAND"),
    ("explode=docker kill {worker}", "not a fault a command can carry"),
    ("kill=docker kill {pod}", "unknown placeholder {pod}"),
    ("kill=kubectl delete pod {worker} --grace-period=0 --force", "a terminate, not a kill"),
    ("kill=docker stop {worker}", "a terminate, not a kill"),
    ("terminate=docker kill {worker}", "a kill, not a terminate"),
    ("terminate=kubectl exec {worker} -- kill -9 1", "SIGKILL is a kill"),
    ("pause=docker pause {worker}", "needs resume"),
    ("kill='docker kill", "No closing quotation"),
])
def test_a_bad_or_mislabelled_template_is_a_one_line_error(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        FaultCommands.parse([item])
    assert "\n" not in str(info.value)


def test_a_template_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        FaultCommands.parse(["kill=docker kill a-{worker}", "kill=docker kill b-{worker}"])


# -- the follower's prefixes --------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    ("worker_1    | {\"event\":\"ready\"}", ("worker_1", "{\"event\":\"ready\"}")),  # compose v1
    ("worker-12  | hello", ("worker-12", "hello")),  # compose v2
    ("[pod/worker-7d9f-abc12/worker] hello", ("worker-7d9f-abc12", "hello")),  # kubectl
    ("Attaching to app_worker_1, app_worker_2", None),  # the follower's own chatter
    ("app_worker_2 exited with code 137", None),
])
def test_prefixes_of_compose_and_kubectl_name_the_worker(
        line: str, expected: tuple[str, str] | None) -> None:
    assert split_prefix(line) == expected


def follower(rec: Recorder, tmp_path: Path, cluster: ExternalCluster | None = None,
             events: str = "json") -> LogFollower:
    on_line = cluster._on_line if cluster is not None else (lambda name, seen: None)
    return LogFollower([], rec, WorkerSpec(events=events), "t0abc1-", tmp_path, on_line)


def test_only_the_runs_tasks_and_id_less_events_are_recorded(tmp_path: Path) -> None:
    """The deployment's own traffic goes through the same workers: its ids are not the
    run's (no 'processed task never published' from a colleague's task)."""
    rec = Recorder(None)
    f = follower(rec, tmp_path)
    f.feed('worker_1  | {"event":"processed","id":"t0abc1-000001","ts":1.0}', seen=2.0)
    f.feed('worker_1  | {"event":"processed","id":"order-42","ts":1.0}', seen=2.0)
    f.feed('worker_2  | {"event":"ready","queue":"q"}', seen=2.0)
    f.feed("Attaching to app_worker_1", seen=2.0)
    got = [(e.type, e.worker, e.id) for e in rec.snapshot()]
    assert got == [(vocab.PROCESSED, "worker_1", "t0abc1-000001"), (vocab.READY, "worker_2", None)]
    assert f.readers["worker_1"].others == 1 and f.unprefixed == 1
    assert (tmp_path / "worker_1.log").read_text().count("\n") == 2
    assert f.names() == ["worker_1", "worker_2"]


def cluster(tmp_path: Path, ran: list[list[str]], rc: int = 0,
            templates: tuple[str, ...] = ("kill=docker kill app-{worker}",
                                          "restart=docker start app-{worker}",
                                          "pause=docker pause app-{worker}",
                                          "resume=docker unpause app-{worker}")
            ) -> tuple[ExternalCluster, Recorder]:
    rec = Recorder(None)

    def runner(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, rc, "", "Error: No such container: x\n")

    return ExternalCluster("20261206-000000-abc1", tmp_path, rec, "true",
                           FaultCommands.parse(templates), "t0abc1-", runner), rec


def test_a_kill_is_recorded_and_a_later_line_is_a_new_process(tmp_path: Path) -> None:
    """The harness records the exit its command caused; the name's next line, past the
    slack, starts a new process of it (what redelivery-after-crash needs to tell a
    redelivery to the restarted worker from a receipt of the dead one)."""
    ran: list[list[str]] = []
    ext, rec = cluster(tmp_path, ran)
    f = ext.follower = follower(rec, tmp_path, ext)
    f.feed('worker_1  | {"event":"ready"}', seen=100.0)
    ext.kill("worker_1")
    assert ran == [["docker", "kill", "app-worker_1"]]
    assert not ext.is_running("worker_1")
    killed_at = next(e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED).ts
    f.feed('worker_1  | {"event":"acked","id":"t0abc1-000009"}', seen=killed_at + 0.2)
    assert not ext.is_running("worker_1")  # a late line of the dead process
    f.feed('worker_1  | {"event":"ready"}', seen=killed_at + 3.0)
    assert ext.is_running("worker_1")
    kinds = [(e.type, e.get("requested")) for e in rec.snapshot()
             if e.type in (vocab.WORKER_STARTED, vocab.WORKER_EXITED)]
    assert kinds == [(vocab.WORKER_STARTED, None), (vocab.WORKER_EXITED, True),
                     (vocab.WORKER_STARTED, None)]


def test_a_failing_template_is_a_cluster_error_with_its_output(tmp_path: Path) -> None:
    ext, rec = cluster(tmp_path, [], rc=1)
    with pytest.raises(ClusterError, match="exited 1: Error: No such container"):
        ext.kill("worker_9")
    assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]


def test_stop_resumes_the_paused_and_restarts_the_killed(tmp_path: Path) -> None:
    """The deployment is left as found: the follower stops, the workers do not."""
    ran: list[list[str]] = []
    ext, _ = cluster(tmp_path, ran)
    ext.pause("worker_1")
    ext.kill("worker_2")
    ext.stop()
    assert ran[2:] == [["docker", "unpause", "app-worker_1"], ["docker", "start", "app-worker_2"]]


def test_the_follower_runs_the_command_and_stops_it(tmp_path: Path) -> None:
    rec = Recorder(None)
    script = ("import sys,time; print('worker_1 | {\"event\":\"ready\"}', flush=True); "
              "time.sleep(60)")
    f = LogFollower([sys.executable, "-c", script], rec, WorkerSpec(), "t0abc1-", tmp_path,
                    lambda name, seen: None)
    f.start()
    import time

    deadline = time.monotonic() + 10
    while not rec.snapshot().events and time.monotonic() < deadline:
        time.sleep(0.05)
    f.stop()
    assert [e.type for e in rec.snapshot()] == [vocab.READY]
    assert f.exited() is not None  # its process is gone


# -- options and scenarios --------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"worker_logs": LOGS}, "needs --broker-url"),
    ({"broker_url": URL}, "needs --worker-logs"),
    ({"broker_url": URL, "worker_logs": LOGS, "vhost": "v"}, "--vhost"),
    ({"broker_url": URL, "worker_logs": LOGS, "worker_image": "x"}, "the deployment runs"),
    ({"broker_url": URL, "worker_logs": LOGS, "capabilities": frozenset({"health"})},
     "health endpoints"),
    ({"broker_url": URL, "worker_logs": LOGS, "fault_cmds": ["kill=docker stop {worker}"]},
     "a terminate, not a kill"),
])
def test_external_options_that_do_not_fit_are_one_line_errors(
        kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        build_options(backend="external", **kwargs)  # type: ignore[arg-type]


def test_external_flags_need_the_external_backend() -> None:
    with pytest.raises(OptionsError, match="add --backend external"):
        build_options(backend="local", worker_logs=LOGS)


def test_an_external_run_is_a_brought_worker_and_its_rerun_names_the_hooks() -> None:
    from harness.options import rerun_command

    opts = build_options(backend="external", broker_url=URL, worker_logs=LOGS,
                         fault_cmds=["kill=docker kill app-{worker}"])
    assert opts.brought_worker and opts.effective_capabilities() == frozenset()
    sc = load_scenario(ROOT / "scenarios" / "crash-recovery.yaml")
    rerun = rerun_command(sc, opts, 7, "external")
    assert "--worker-logs" in rerun and "'kill=docker kill app-{worker}'" in rerun
    assert "guest:guest" not in rerun and "$HARNESS_BROKER_URL" in rerun


def test_a_fault_without_its_template_names_the_schedules_line() -> None:
    sc = load_scenario(ROOT / "scenarios" / "crash-recovery.yaml")
    check_external(sc, ["kill"], allow_dlq=False)
    with pytest.raises(ScenarioError, match=r"crash-recovery.yaml:\d+: schedule\[0\].fault: "
                                            r"kill on --backend external needs --fault-cmd"):
        check_external(sc, [], allow_dlq=False)
    partition = load_scenario(ROOT / "scenarios" / "partition-recovery.yaml")
    with pytest.raises(ScenarioError, match="not available on --backend external"):
        check_external(partition, ["kill", "terminate", "pause", "resume"], allow_dlq=False)


def test_tasks_meant_for_the_dlq_need_the_users_opt_in() -> None:
    sc = load_scenario(ROOT / "scenarios" / "dead-letter-tasks.yaml")
    with pytest.raises(ScenarioError, match=r"dead-letter-tasks.yaml:[1-9]\d*: workload.*"
                                            r"--allow-dlq"):
        check_external(sc, [], allow_dlq=False)
    check_external(sc, [], allow_dlq=True)
