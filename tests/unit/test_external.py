"""--backend external (harness.cluster.external): fault templates, the log follower's
prefixes and filters, the harness's record of what its templates did, and the
options and scenario checks. The follower and the templates run here against a
fake runner and fed lines; tests/integration/test_external_compose.py runs them
against a real Compose deployment."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
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
    ("kill=docker kill {worker!x}", "Unknown conversion"),
    ("kill=docker kill {n:d}", "Unknown format code"),
    ("terminate=docker rm -f {worker}", "restart cannot bring back"),
    ("kill=docker kill --signal=SIGTERM {worker}", "another --signal"),
    ("kill=docker restart {worker}", "a terminate, not a kill"),
    ("kill=nerdctl stop {worker}", "a terminate, not a kill"),
    ("kill=", "give NAME=COMMAND"),
    ("scale=docker compose up -d --scale worker=3", "give {n}"),
    ("scale=kubectl scale --replicas={n} {worker}", "give {n} .and no {worker}."),
])
def test_a_bad_or_mislabelled_template_is_a_one_line_error(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        FaultCommands.parse([item])
    assert "\n" not in str(info.value)


def test_a_kill_with_the_kill_signal_and_a_terminate_by_term_are_what_they_say() -> None:
    FaultCommands.parse(["kill=docker kill --signal KILL app-{worker}",
                         "terminate=docker kill --signal=TERM app-{worker}"])


def test_secret_options_are_masked_in_what_the_harness_prints() -> None:
    from harness.cluster.external import masked

    assert masked("kubectl --token=abc123 logs -f") == "kubectl --token=*** logs -f"
    assert masked("stern --password hunter2 -l app=w") == "stern --password *** -l app=w"
    cmds = FaultCommands.parse(["kill=kubectl --token=abc123 exec {worker} -- pkill -KILL w"])
    assert "abc123" not in str(cmds.describe())


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
    on_line = cluster._on_line if cluster is not None else (lambda name, line, seen: None)
    on_exit = cluster._on_exit if cluster is not None else None
    return LogFollower([], rec, WorkerSpec(events=events), "t0abc1-", tmp_path, on_line,
                       on_exit)


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
                                          "resume=docker unpause app-{worker}"),
            kills_close: bool = True) -> tuple[ExternalCluster, Recorder]:
    """A cluster whose commands a fake runs; the broker's connections: two, and one
    fewer after each kill or terminate (unless ``kills_close`` is False)."""
    rec = Recorder(None)
    conns = {"a", "b", "c", "d"}

    def runner(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        if rc == 0 and kills_close and argv[1] in ("kill", "stop") and conns:
            conns.pop()
        return subprocess.CompletedProcess(argv, rc, "", "Error: No such container: x\n")

    ext = ExternalCluster("20261206-000000-abc1", tmp_path, rec, "true",
                          FaultCommands.parse(templates), "t0abc1-", runner,
                          connections=lambda: set(conns))
    return ext, rec


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
    f.feed('worker_1  | {"event":"ready","ts":1.0}', seen=killed_at + 0.3)  # stamped before
    assert not ext.is_running("worker_1")  # late lines of the dead process
    f.feed(f'worker_1  | {{"event":"connected","ts":{killed_at + 0.5}}}', seen=killed_at + 0.6)
    assert ext.is_running("worker_1")  # a process that connected after the kill
    kinds = [(e.type, e.get("requested")) for e in rec.snapshot()
             if e.type in (vocab.WORKER_STARTED, vocab.WORKER_EXITED)]
    assert kinds == [(vocab.WORKER_STARTED, None), (vocab.WORKER_EXITED, True),
                     (vocab.WORKER_STARTED, None)]


def test_a_line_long_after_the_kill_is_a_new_process_too(tmp_path: Path) -> None:
    """A worker with no contract events (a regex, a preset): any line past the slack."""
    from harness.cluster.external import RESTART_SLACK_S

    ext, rec = cluster(tmp_path, [])
    f = ext.follower = follower(rec, tmp_path, ext)
    f.feed("worker_1  | hello", seen=100.0)
    ext.kill("worker_1")
    killed_at = next(e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED).ts
    f.feed("worker_1  | late", seen=killed_at + RESTART_SLACK_S - 0.5)
    assert not ext.is_running("worker_1")
    f.feed("worker_1  | new", seen=killed_at + RESTART_SLACK_S + 0.5)
    assert ext.is_running("worker_1")


def test_a_kill_the_broker_did_not_see_is_not_made(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The command exits 0 and no connection of the deployment closes (kill -KILL 1 in a
    container): no fault, no exit recorded; a kill would explain duplicates."""
    import harness.cluster.external as external

    ext, rec = cluster(tmp_path, [], kills_close=False)
    monkeypatch.setattr(external, "CLOSE_SEEN_WAIT_S", 0.3)
    with pytest.raises(ClusterError, match="no connection of the deployment closed"):
        ext.kill("worker_1")
    assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]
    unseen, _ = cluster(tmp_path, [])
    unseen._connections = lambda: None
    with pytest.raises(ClusterError, match="could not be checked"):
        unseen.kill("worker_1")


def test_a_line_cannot_be_split_into_another_workers_line(tmp_path: Path) -> None:
    """A carriage return inside worker_1's line is part of it, not a line of worker_2."""
    from harness.cluster.external import _lines

    stream = io.BytesIO(b'worker_1  | x\rworker_2  | {"event":"processed",'
                        b'"id":"t0abc1-000001"}\nworker_3  | y\n')
    assert next(split_prefix(line) for line in _lines(stream)) == (
        "worker_1", 'x\rworker_2  | {"event":"processed","id":"t0abc1-000001"}')


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
    ext.kill("worker_3")
    ext.follower = follower(Recorder(None), tmp_path, ext)
    # worker_3 writes again (a late line, or its orchestrator restarted it): started
    # again at the end all the same (a no-op for a running container).
    ext.follower.feed("worker_3  | late", seen=1e12)
    ext.stop()
    assert ran[3:] == [["docker", "unpause", "app-worker_1"], ["docker", "start", "app-worker_2"],
                       ["docker", "start", "app-worker_3"]]


def test_the_follower_runs_the_command_and_stops_it(tmp_path: Path) -> None:
    rec = Recorder(None)
    script = ("import sys,time; print('worker_1 | {\"event\":\"ready\"}', flush=True); "
              "time.sleep(60)")
    f = LogFollower([sys.executable, "-c", script], rec, WorkerSpec(), "t0abc1-", tmp_path,
                    lambda name, line, seen: None)
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
    ({"broker_url": URL, "worker_logs": "   "}, "the command is empty"),
    ({"broker_url": URL, "worker_logs": LOGS, "task_format": "dramatiq"},
     "declares its queues"),
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
    check_external(sc, ["kill", "restart"], allow_dlq=False)
    with pytest.raises(ScenarioError, match=r"crash-recovery.yaml:\d+: schedule\[0\].fault: "
                                            r"kill on --backend external needs --fault-cmd"):
        check_external(sc, [], allow_dlq=False)
    with pytest.raises(ScenarioError, match="needs --fault-cmd restart=COMMAND too"):
        check_external(sc, ["kill"], allow_dlq=False)
    partition = load_scenario(ROOT / "scenarios" / "partition-recovery.yaml")
    with pytest.raises(ScenarioError, match="not available on --backend external"):
        check_external(partition, ["kill", "terminate", "pause", "resume"], allow_dlq=False)


@pytest.mark.parametrize("name,word", [("crash-during.yaml", "crash"),
                                       ("poison-crash-loop.yaml", "crash_always")])
def test_crash_directives_are_refused_on_a_deployment(name: str, word: str) -> None:
    sc = load_scenario(ROOT / "scenarios" / name)
    with pytest.raises(ScenarioError, match=rf"{name}:[1-9]\d*: workload.*\.{word}: "):
        check_external(sc, ["kill", "restart"], allow_dlq=True, replays=True)


def test_the_task_ids_on_a_deployment_are_not_drawn_from_the_seed() -> None:
    """A rerun repeats the seed; tasks an earlier run left in the deployment's queue
    must not pass for this run's."""
    from harness.options import task_id_prefix

    run_id = "20261206-000000-4242ab"
    assert task_id_prefix(run_id) == task_id_prefix(run_id) == "t4242ab"
    assert task_id_prefix(run_id, "external") != task_id_prefix(run_id, "external")


def test_tasks_meant_for_the_dlq_need_the_users_opt_in() -> None:
    sc = load_scenario(ROOT / "scenarios" / "dead-letter-tasks.yaml")
    with pytest.raises(ScenarioError, match=r"dead-letter-tasks.yaml:[1-9]\d*: workload.*"
                                            r"--allow-dlq"):
        check_external(sc, [], allow_dlq=False)
    check_external(sc, [], allow_dlq=True)


def test_a_replayed_line_is_one_event_and_a_repeated_plain_line_two(tmp_path: Path) -> None:
    """``--since`` replays a restarted container's old lines: a contract line with the
    worker's ts and an id is the same event; a line without a ts may be a real repeat
    (two processings), never dropped."""
    rec = Recorder(None)
    f = follower(rec, tmp_path)
    line = 'worker_1  | {"event":"processed","id":"t0abc1-000001","ts":5.0}'
    f.feed(line, seen=6.0)
    f.feed(line, seen=9.0)
    f.feed('worker_2  | {"event":"processed","id":"t0abc1-000001","ts":5.0}', seen=9.0)
    f.feed('worker_1  | {"event":"processed","id":"t0abc1-000002"}', seen=9.0)
    f.feed('worker_1  | {"event":"processed","id":"t0abc1-000002"}', seen=9.5)
    got = [(e.worker, e.id) for e in rec.snapshot()]
    assert got == [("worker_1", "t0abc1-000001"), ("worker_2", "t0abc1-000001"),
                   ("worker_1", "t0abc1-000002"), ("worker_1", "t0abc1-000002")]
    assert f.replayed == 1


def test_since_is_filled_and_spares_the_attach_wait(tmp_path: Path) -> None:
    import time

    ran: list[list[str]] = []
    (tmp_path / "logs").mkdir()
    ext, _ = cluster(tmp_path, ran)
    ext.worker_logs = f"{sys.executable} -c 'import sys; print(sys.argv[1])' {{since}}"
    t0 = time.monotonic()
    ext.start_worker("worker-1", WorkerSpec())
    assert time.monotonic() - t0 < 1.5  # no wait for the first output
    assert ext.follower is not None
    ext.follower.first_output.wait(10)
    ext.stop()
    text = (tmp_path / "logs" / "follower.log").read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n", text), text


def test_a_restart_needs_a_follower_that_replays() -> None:
    sc = load_scenario(ROOT / "scenarios" / "health-check.yaml")
    import dataclasses

    restarting = dataclasses.replace(
        sc, schedule=(), cluster=dataclasses.replace(sc.cluster, restart_policy="always"))
    with pytest.raises(ScenarioError, match=r"restart_policy: .*\{since\}"):
        check_external(restarting, ["kill", "restart"], allow_dlq=False)
    check_external(restarting, ["kill", "restart"], allow_dlq=False, replays=True)


# -- scale through the orchestrator ------------------------------------------------------

SCALE = "scale=docker-compose -p app up -d --no-recreate --scale worker={n} worker"


def scaling(tmp_path: Path, ran: list[list[str]], logs: str = LOGS, exits: int | None = None,
            settle: bool = True, says: bool = True, v2: bool = False
            ) -> tuple[ExternalCluster, Recorder, LogFollower]:
    """A deployment of three workers consuming ``go.logger``; the fake orchestrator's
    scale sets the consumers to n and, for each worker it removes (the highest
    numbers, as Compose does), prints Compose's exit line (``exits`` of them when
    given); ``settle`` False: the consumers stay as they were; ``says`` False: the
    command does not say what it stopped (as kubectl scale); ``v2``: Compose v2's
    names and its exit line after terminal control."""
    rec = Recorder(None)
    consumers = {"c1", "c2", "c3"}
    holder: list[LogFollower] = []
    sep = "-" if v2 else "_"

    def runner(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        n = int(argv[-2].split("=")[1])
        gone = sorted(consumers)[n:]
        if settle:
            consumers.clear()
            consumers.update(f"c{i}" for i in range(1, n + 1))
        for c in gone[:exits]:
            line = f"app{sep}worker{sep}{c[1:]} exited with code 0"
            holder[0].feed("\r\x1b[K" + line if v2 else line, seen=None)
        said = "".join(f"Container app-worker-{c[1:]}  Stopped\n" if v2 else
                       f"Stopping and removing app_worker_{c[1:]} ... done\n" for c in gone)
        return subprocess.CompletedProcess(argv, 0, "", said if says else "")

    ext = ExternalCluster("20261206-000000-abc1", tmp_path, rec, logs,
                          FaultCommands.parse([SCALE]), "t0abc1-", runner,
                          connections=lambda: set(consumers),
                          consumers=lambda queue: len(consumers) if queue == "go.logger"
                          else None)
    f = ext.follower = follower(rec, tmp_path, ext)
    holder.append(f)
    for i in (1, 2, 3):
        f.feed(f'worker{sep}{i}  | {{"event":"ready"}}', seen=100.0)
    return ext, rec, f


def test_a_scale_down_terminates_the_workers_the_follower_saw_exit(tmp_path: Path) -> None:
    """Compose prints 'app_worker_3 exited with code 0' for a container it follows: the
    harness's observation of the orchestrator, checked against the broker's consumers;
    each worker it names is a termination, recorded with its exit; the end of the run
    scales back to the count before the first scale."""
    ran: list[list[str]] = []
    ext, rec, _ = scaling(tmp_path, ran)
    done = ext.scale_to(1, "go.logger", grace_s=10)
    assert done.terminated == ("worker_2", "worker_3") and done.started == ()
    assert ran == [["docker-compose", "-p", "app", "up", "-d", "--no-recreate", "--scale",
                    "worker=1", "worker"]]
    exits = [(e.worker, e.get("requested"), e.get("code"), e.get("signal"))
             for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]
    assert exits == [("worker_2", True, 0, None), ("worker_3", True, 0, None)]
    assert not ext.is_running("worker_3") and ext.is_running("worker_1")
    ext.stop()
    assert ran[-1][-2:] == ["worker=3", "worker"]  # left as found: three workers


def test_a_scale_down_whose_stops_nobody_named_is_not_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker saw consumers go, but the follower names no exit, or the command
    does not say what it stopped (kubectl scale): the terminations are unknown, so the
    step fails rather than guess; and an exit besides those the command stopped (a
    crash among them) cannot be told apart either."""
    import harness.cluster.external as external

    monkeypatch.setattr(external, "CLOSE_SEEN_WAIT_S", 0.2)
    ext, rec, _ = scaling(tmp_path, [], exits=0)
    with pytest.raises(ClusterError, match="named 0 of the 2 workers the command stopped"):
        ext.scale_to(1, "go.logger", grace_s=0)
    assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]
    silent, rec, _ = scaling(tmp_path, [], says=False)
    with pytest.raises(ClusterError, match="did not say which workers it stopped"):
        silent.scale_to(1, "go.logger", grace_s=0)
    assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]
    stuck, _, _ = scaling(tmp_path, [], settle=False)
    with pytest.raises(ClusterError, match=r"consumers of 'go.logger' count 3"):
        stuck.scale_to(1, "go.logger", grace_s=0)
    crowd, rec, f = scaling(tmp_path, [])
    scale = crowd._run_cmd

    def crash_then_scale(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        f.feed("app_worker_1 exited with code 137")  # a crash during the scale
        return scale(argv, timeout_s)

    crowd._run_cmd = crash_then_scale
    with pytest.raises(ClusterError, match="worker_1 exited besides the 1 the command stopped"):
        crowd.scale_to(2, "go.logger", grace_s=0)
    assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]


def test_a_scale_up_needs_a_follower_that_replays_and_the_brokers_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cluster.external as external

    ran: list[list[str]] = []
    ext, _, _ = scaling(tmp_path, ran)
    with pytest.raises(ClusterError, match=r"a scale-up .* needs .*\{since\}"):
        ext.scale_to(5, "go.logger", grace_s=10)
    assert ran == []  # refused before the command ran
    replaying, _, _ = scaling(tmp_path, ran, logs=LOGS + " --since {since}")
    done = replaying.scale_to(4, "go.logger", grace_s=10)
    assert done.terminated == ()
    monkeypatch.setattr(external, "SCALE_UP_WAIT_S", 0.2)
    replaying._consumers = lambda queue: 1
    with pytest.raises(ClusterError, match="count 1"):
        replaying.scale_to(6, "go.logger", grace_s=10)


def test_a_scale_is_refused_without_its_template_or_up_without_since() -> None:
    import dataclasses

    sc = load_scenario(ROOT / "scenarios" / "linear-scaling.yaml")
    with pytest.raises(ScenarioError, match=r"schedule\[0\].fault: scale .* --fault-cmd "
                                            r"scale=COMMAND \(with \{n\}\)"):
        check_external(sc, [], allow_dlq=False, replays=True)
    with pytest.raises(ScenarioError, match=r"schedule\[1\].count: a scale-up .*\{since\}"):
        check_external(sc, ["scale"], allow_dlq=False)
    check_external(sc, ["scale"], allow_dlq=False, replays=True)
    down = load_scenario(ROOT / "scenarios" / "graceful-shutdown.yaml")
    check_external(dataclasses.replace(down, schedule=down.schedule[1:]), ["scale"],
                   allow_dlq=False)


def test_an_orchestrators_terminations_are_the_scales_and_a_failed_scale_is_recorded() -> None:
    """What the supervisor records for the external scale: a terminate per worker the
    orchestrator stopped (graceful-shutdown reads them), and a scale that could not be
    checked as a failed step with its reason."""
    from harness.checkers import index as ix
    from harness.checkers.graceful_shutdown import terminations
    from harness.history import History
    from harness.nemesis import Nemesis

    rec = Recorder(None)
    nem = Nemesis(None, rec, grace_s=10)  # type: ignore[arg-type]
    nem.observed("terminate", "worker_3", 100.0, via="scale")

    def fails(count: int) -> list[str]:
        raise ClusterError("the follower named 0 of the 1 workers")

    assert nem.scale(1, fails, step=0) is False
    history = History(rec.snapshot())
    assert [(w, ts) for w, ts, _ in terminations(ix.get(history))] == [("worker_3", 100.0)]
    failed = [e for e in rec.snapshot() if e.get("fault") == "scale"]
    assert failed[0].get("ok") is False and "named 0" in str(failed[0].get("error"))


def test_a_crash_during_a_scale_is_never_taken_for_one_of_its_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """worker_3 crashes (its exit line read before the scale began) and Compose then
    removes it with worker_2: the command says it stopped both, the follower saw only
    worker_2 stop in the scale, so the step is not taken (a requested stop would
    explain worker_3's duplicates). Nor is one whose worker crashed during the scale
    (a crash's code), or crashed and was restarted before the stop (two exits)."""
    import harness.cluster.external as external

    monkeypatch.setattr(external, "CLOSE_SEEN_WAIT_S", 0.2)
    ext, rec, f = scaling(tmp_path, [], exits=1)
    f.feed("app_worker_3 exited with code 1")
    with pytest.raises(ClusterError, match="named 1 of the 2 workers"):
        ext.scale_to(1, "go.logger", grace_s=0)
    assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]
    for exits, why in ((0, "worker_3 exited with a code not a stop's"),
                       (None, "worker_3 exited more than once")):
        crash, rec, f = scaling(tmp_path, [], exits=exits)
        scale = crash._run_cmd

        def crash_then_scale(argv: list[str], timeout_s: float,
                             f: LogFollower = f, scale: object = scale
                             ) -> subprocess.CompletedProcess[str]:
            f.feed("app_worker_3 exited with code 139")
            assert callable(scale)
            done: subprocess.CompletedProcess[str] = scale(argv, timeout_s)
            return done

        crash._run_cmd = crash_then_scale
        with pytest.raises(ClusterError, match=why):
            crash.scale_to(2, "go.logger", grace_s=0)
        assert not [e for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]


def test_the_scale_back_count_is_the_commands_word_or_none(tmp_path: Path) -> None:
    """The end of the run scales back to the count the command's output implies (here
    3: it stopped one of three workers, though the broker counted 4 consumers, one
    worker holding two); where the command says nothing and the two lower bounds
    disagree, it scales nothing back and says so."""
    ran: list[list[str]] = []
    ext, _, _ = scaling(tmp_path, ran)
    ext._consumers = lambda queue: 4 if not ran else 2
    ext.scale_to(2, "go.logger", grace_s=10)
    ext.stop()
    assert ran[-1][-2] == "worker=3"
    quiet: list[list[str]] = []
    ext, _, _ = scaling(tmp_path, quiet, says=False)
    ext._consumers = lambda queue: 4 if not quiet else 5
    ext.replays = True
    ext.scale_to(5, "go.logger", grace_s=10)  # a scale-up from 4 consumers, 3 seen
    ext.stop()
    assert quiet == [quiet[0]]  # the scale only: no count to go back to


def test_the_end_of_the_run_scales_back_after_a_scale_in_flight(tmp_path: Path) -> None:
    """Ctrl-C during a scale: the scale-back waits for the command in flight, then
    runs; it never races it."""
    import threading

    ran: list[list[str]] = []
    ext, _, _ = scaling(tmp_path, ran)
    release = threading.Event()
    scale = ext._run_cmd

    def slow(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        if not ran:
            release.wait(5)
        return scale(argv, timeout_s)

    ext._run_cmd = slow
    t = threading.Thread(target=lambda: ext.scale_to(2, "go.logger", grace_s=1), daemon=True)
    t.start()
    time.sleep(0.2)
    stopper = threading.Thread(target=ext.stop, daemon=True)
    stopper.start()
    time.sleep(0.2)
    assert ran == []  # the scale-back waits for the scale's command
    release.set()
    stopper.join(10)
    t.join(10)
    assert [a[-2] for a in ran] == ["worker=2", "worker=3"]


def test_compose_v2_names_and_its_exit_line_after_terminal_control(tmp_path: Path) -> None:
    """Compose v2 (2.27+) writes a carriage return and an erase-line sequence before
    its exit line, even with --no-color; its command output names what it stopped."""
    ran: list[list[str]] = []
    ext, rec, _ = scaling(tmp_path, ran, says=True, v2=True)
    done = ext.scale_to(2, "go.logger", grace_s=10)
    assert done.terminated == ("worker-3",)
    exits = [e.worker for e in rec.snapshot() if e.type == vocab.WORKER_EXITED]
    assert exits == ["worker-3"]
    ext.stop()
    assert ran[-1][-2] == "worker=3"  # 2 + the 1 the command stopped


def test_a_refused_scale_up_leaves_nothing_to_scale_back(tmp_path: Path) -> None:
    ran: list[list[str]] = []
    ext, _, _ = scaling(tmp_path, ran)
    with pytest.raises(ClusterError, match="scale-up"):
        ext.scale_to(5, "go.logger", grace_s=10)
    ext.stop()
    assert ran == []  # the command never ran: the deployment was never scaled


def test_linear_scaling_does_not_take_the_scenarios_count_for_a_deployments() -> None:
    """On --backend external the first phase's size is the deployment's, unknown: only
    the phases the scale steps set are measured."""
    from harness.checkers import index as ix
    from harness.checkers.scaling import phases
    from harness.history import Event, History

    def history(backend: str) -> History:
        return History([
            Event(ts=1.0, source="harness", type=vocab.RUN_STARTED,
                  data={"backend": backend, "cluster": {"workers": 2}}),
            Event(ts=2.0, source="harness", type=vocab.PUBLISH_STARTED, data={}),
            Event(ts=10.0, source="nemesis", type=vocab.FAULT,
                  data={"fault": "scale", "target": "cluster", "phase": "invoke", "ok": True,
                        "count": 1}),
        ])

    assert [n for n, _, _ in phases(ix.get(history("docker")))] == [2, 1]
    assert [n for n, _, _ in phases(ix.get(history(vocab.EXTERNAL)))] == [1]
