"""One run of one scenario, from publish to verdict.

The path of a task: ``workload.make_tasks`` builds it from the scenario with the
seeded RNG -> ``workload.Publisher`` publishes it with a confirm and records a
``publish`` event (ok / fail / unknown) -> a worker (started by the cluster
backend) receives, processes and acks it, and the backend records the worker's
events -> the ``schedule`` injects faults through the ``nemesis`` meanwhile ->
the runner waits for the drain, stops the workers, and records what is left in
the queues (``final_queue``) -> the checkers judge the history -> the report
prints the table and ``result.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import re
import shlex
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from harness import credentials, report, verdicts, vocab
from harness.broker import BrokerAdmin, parse_broker_url
from harness.checkers.base import ClaimResult
from harness.cluster.base import BrokerEndpoint, Cluster, ClusterError, WorkerSpec
from harness.history import Event, Recorder
from harness.live import LiveState
from harness.model import Scenario
from harness.nemesis import Nemesis
from harness.prober import HealthProber
from harness.schedule import Schedule
from harness.scratch import LEASE_S, DedicatedVhost, ScratchVhost
from harness.verdicts import invariant_verdict, judge_history
from harness.workload import Publisher, make_tasks

WORKERS_READY_TIMEOUT_S: Final = 60.0
# A broker given with --broker-url must answer within this (AMQP and management).
EXTERNAL_READY_TIMEOUT_S: Final = 15.0
# The CLI reads the broker URL from here when --broker-url is not given; reruns
# refer to it instead of repeating a URL with a password in it.
BROKER_URL_ENV: Final = "HARNESS_BROKER_URL"
# Once one worker consumes, how long the others get before the run goes on without
# them (docker starts a container in ~0.5 s, a loaded machine in a few seconds).
PARTIAL_READY_GRACE_S: Final = 15.0
DRAIN_POLL_S: Final = 0.5
# Consecutive empty polls before the drain counts as done...
DRAIN_STABLE_POLLS: Final = 3
# ...and they must span twice the management API's statistics interval, since its
# unacked counts lag by up to one interval: 500 ms on the brokers the harness
# starts, RabbitMQ's default 5 s on a broker it was given.
STATS_INTERVAL_OWNED_S: Final = 0.5
STATS_INTERVAL_DEFAULT_S: Final = 5.0
# The workers must have written no event for max(this, 3 x the longest task).
DRAIN_QUIET_MIN_S: Final = 2.0
# A worker's own in-flight report (received, no settlement yet) may hold a drain
# the broker calls done this much longer, never more: the worker's word can extend
# the wait, not veto the broker's evidence (acks are optional in the contract).
DRAIN_SELF_REPORT_EXTRA_S: Final = 10.0
FINAL_DRAIN_MAX: Final = 1_000_000
# Reconnect backoff is capped at 5 s in the reference worker; a broker takes up
# to ~20 s to boot under load: give recovery that, and a margin.
RECOVERY_WAIT_S: Final = 35.0
# How long the run may go on after the drain so that every judged claim's
# observation windows close (health's up bound is 30 s after the broker returns).
WINDOW_WAIT_MAX_S: Final = 45.0
WINDOW_POLL_S: Final = 0.5
# The claims whose checkers report ``record_needed_until_ts`` when undecided.
WINDOWED_CLAIMS: Final = frozenset({"health-check", "partition-recovery"})
SEED_MAX: Final = 2**32 - 1
CAPABILITIES: Final = frozenset({"directives", "health"})


@dataclass
class RunOptions:
    backend: str = "local"
    broker_url: str | None = None
    # With broker_url: a vhost dedicated to the harness (else a scratch vhost per run).
    vhost: str | None = None
    seed: int | None = None
    workers: int | None = None
    out: Path = Path("runs")
    worker_cmd: str | None = None
    worker_image: str | None = None
    events: str = "json"
    gate: frozenset[str] | None = None  # claims whose invariant gates the exit code
    progress: bool = True
    # What the worker can do: "directives" (honours the test hooks in task bodies),
    # "health" (serves /healthcheck). None: all for the reference worker, none for
    # a brought one, so a claim that needs one is unknown rather than a false pass.
    capabilities: frozenset[str] | None = None
    queue: str | None = None  # the worker's queue names, overriding the scenario's
    dlq: str | None = None
    # docker: a broker shared by several runs (one vhost each), to save a boot
    # per scenario in the audit. A ``harness.cluster.docker.SharedDockerBroker``.
    shared_broker: Any = None
    # Checker parameters over the scenario's ``params`` (``--param CLAIM.KEY=V``).
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The reference worker's reporting mode (``model.REPORTING_MODES``); a brought
    # worker reports as it does.
    reporting: str = "full"

    @property
    def brought_worker(self) -> bool:
        return bool(self.worker_cmd or self.worker_image)

    def effective_capabilities(self) -> frozenset[str]:
        if self.capabilities is not None:
            return self.capabilities
        return frozenset() if self.brought_worker else CAPABILITIES


@dataclass
class RunOutcome:
    scenario: Scenario
    run_dir: Path
    seed: int
    results: list[ClaimResult]
    exit_code: int
    problems: list[str] = field(default_factory=list)
    rerun: str = ""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during a run.

    A BaseException, like KeyboardInterrupt: the signal handler raises it in
    whatever frame runs, and library code with ``except Exception`` (pika's
    callbacks among them) must not swallow it and carry on publishing.
    """


def _all_ready(names: frozenset[str]) -> Callable[[LiveState], bool]:
    return lambda s: names <= s.ready


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "big")


def make_cluster(backend: str, run_id: str, run_dir: Path, recorder: Recorder,
                 shared_broker: Any = None) -> Cluster:
    if backend == "local":
        from harness.cluster.local import LocalCluster

        return LocalCluster(run_id, run_dir, recorder)
    if backend == "docker":
        from harness.cluster.docker import DockerCluster

        return DockerCluster(run_id, run_dir, recorder, shared=shared_broker)
    raise ClusterError(f"unknown backend '{backend}': use local or docker")


def default_backend() -> str:
    """``docker`` when an engine answers and the images exist, else ``local``."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.images.get("rmq-harness/worker:latest")
        return "docker"
    except Exception:
        return "local"


def worker_env(scenario: Scenario) -> dict[str, str]:
    c = scenario.cluster
    env = {
        "RABBITMQ_QUEUE": c.queue,
        "WORKER_CONCURRENCY": str(c.concurrency),
        "WORKER_RETRY_BASE_MS": str(c.retry_base_ms),
        "WORKER_MAX_ATTEMPTS": str(c.max_attempts),
        "RABBITMQ_HEARTBEAT_S": str(c.heartbeat_s),
        "WORKER_SHUTDOWN_GRACE_S": str(c.grace_s),
        "RABBITMQ_DLQ": c.dlq,
        "RABBITMQ_QUEUE_TYPE": c.queue_type,
        # Workers start while the broker boots; a short cap on the reference
        # worker's reconnect backoff keeps them from sleeping past its readiness.
        "WORKER_RECONNECT_MAX_S": "1",
    }
    env.update(c.extra_env)
    return env


def rerun_command(scenario: Scenario, opts: RunOptions, seed: int, backend: str) -> str:
    parts = ["harness", "run", scenario.path, "--seed", str(seed), "--backend", backend]
    if opts.workers is not None:
        parts += ["--workers", str(opts.workers)]
    if opts.vhost:
        parts += ["--vhost", opts.vhost]
    if opts.worker_cmd:
        parts += ["--worker-cmd", opts.worker_cmd]
    if opts.worker_image:
        parts += ["--worker-image", opts.worker_image]
    if opts.events != "json":
        parts += ["--events", opts.events]
    if opts.capabilities is not None:
        parts += ["--capabilities", ",".join(sorted(opts.capabilities)) or "none"]
    if opts.gate is not None:
        parts += ["--gate", ",".join(sorted(opts.gate))]
    if opts.reporting != "full":
        parts += ["--reporting", opts.reporting]
    if opts.queue:
        parts += ["--queue", opts.queue]
    if opts.dlq:
        parts += ["--dlq", opts.dlq]
    for claim, over in sorted(opts.params.items()):
        for key, value in sorted(over.items()):
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            parts += ["--param", f"{claim}.{key}={text}"]
    # The broker's URL carries a password: the rerun names the variable that holds
    # it (the CLI reads HARNESS_BROKER_URL), never the URL.
    tail = f' --broker-url "${BROKER_URL_ENV}"' if opts.broker_url else ""
    return shlex.join(parts) + tail


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM (CI cancelling a job) interrupts like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C must not leave processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


class Run:
    """The state of one run; ``execute`` drives it."""

    def __init__(self, scenario: Scenario, opts: RunOptions, console: Console) -> None:
        if opts.queue or opts.dlq:
            scenario = dataclasses.replace(scenario, cluster=dataclasses.replace(
                scenario.cluster, queue=opts.queue or scenario.cluster.queue,
                dead_letter_queue=opts.dlq or scenario.cluster.dead_letter_queue))
        if opts.params:
            merged = {c: dict(p) for c, p in scenario.params.items()}
            for claim, over in opts.params.items():
                merged.setdefault(claim, {}).update(over)
            scenario = dataclasses.replace(scenario, params=merged)
        self.scenario = scenario
        self.opts = opts
        self.console = console
        self.seed = opts.seed if opts.seed is not None else new_seed()
        self.rng = random.Random(self.seed)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", scenario.name)
        self.run_id = f"{stamp}-{os.getpid() % 10000:04d}{self.rng.randrange(16**2):02x}"
        self.run_dir = opts.out / f"{stamp}-{safe}"
        n = 1
        while self.run_dir.exists():
            n += 1
            self.run_dir = opts.out / f"{stamp}-{safe}-{n}"
        (self.run_dir / "logs").mkdir(parents=True)
        self.recorder = Recorder(self.run_dir / "history.jsonl")
        self.live = LiveState()
        self.recorder.add_listener(self.live.on_event)
        self.problems: list[str] = []
        self.vhost: ScratchVhost | DedicatedVhost | None = None
        self.cluster: Cluster | None = None
        self.admin: BrokerAdmin | None = None
        self.nemesis: Nemesis | None = None
        self.schedule: Schedule | None = None
        self.endpoint: BrokerEndpoint | None = None
        self.spec: WorkerSpec | None = None
        self.prober: HealthProber | None = None
        self._worker_seq = 0
        self._stopping = threading.Event()
        self._killed: set[str] = set()  # killed, exit not seen yet
        self._exited: set[str] = set()  # exited on request, cause not seen yet

    # -- helpers -------------------------------------------------------------------
    def worker_spec(self) -> WorkerSpec:
        env = worker_env(self.scenario)
        # Marks every process of this run, so leak checks (and people) can find them.
        env["RMQ_HARNESS_RUN"] = self.run_id
        if self.opts.reporting != "full" and not self.opts.brought_worker:
            env["WORKER_EVENTS"] = self.opts.reporting
        command: tuple[str, ...] = ()  # the backend's default: the reference worker
        if self.opts.worker_cmd:
            command = tuple(shlex.split(self.opts.worker_cmd))
        return WorkerSpec(command=command, image=self.opts.worker_image, env=env,
                          events=self.opts.events)

    def add_worker(self) -> str:
        assert self.cluster is not None and self.spec is not None
        self._worker_seq += 1
        name = f"worker-{self._worker_seq}"
        self.cluster.start_worker(name, self.spec)
        return name

    def scale(self, count: int) -> list[str]:
        """Scale to ``count`` running workers: start new ones, or SIGTERM the newest
        (all at once, like a Deployment scaling down), each recorded as a
        ``terminate`` fault. Returns the names started or terminated."""
        assert self.cluster is not None and self.nemesis is not None
        running = [w for w in self.cluster.workers() if self.cluster.is_running(w)]
        started = [self.add_worker() for _ in range(count - len(running))]
        victims = sorted(running, key=lambda w: int(w.rsplit("-", 1)[-1]))[count:]
        nemesis = self.nemesis
        threads = [threading.Thread(target=nemesis.invoke, args=("terminate", name),
                                    daemon=True) for name in victims]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.scenario.cluster.grace_s + 30)
        return started + victims

    def _on_event_restart(self, ev: Event) -> None:
        """``restart_policy: always``: start a crashed or killed worker again, like
        compose's ``restart: always`` does (not one that was terminated: a
        scale-down, nor any at the end of the run). A kill's ``fault`` event and
        the ``worker_exited`` it causes arrive in either order."""
        if self.scenario.cluster.restart_policy != "always" or self._stopping.is_set():
            return
        name: str | None = None
        if ev.type == vocab.FAULT and ev.get("fault") == "kill" and ev.get("ok"):
            target = str(ev.get("target"))
            if target in self._exited:
                name = target
            else:
                self._killed.add(target)
        elif ev.type == vocab.WORKER_EXITED and ev.worker:
            if ev.get("requested") is False or ev.worker in self._killed:
                name = ev.worker
            else:
                self._exited.add(ev.worker)
        elif ev.type == vocab.WORKER_STARTED and ev.worker:
            self._exited.discard(ev.worker)
        if name is None:
            return
        self._killed.discard(name)
        self._exited.discard(name)
        restart_name = name

        def later() -> None:
            if self._stopping.wait(1.0) or self.cluster is None:
                return
            with contextlib.suppress(ClusterError, OSError):
                self.cluster.restart(restart_name)

        threading.Thread(target=later, daemon=True).start()

    def wait_workers_ready(self, names: list[str]) -> None:
        """Until every worker consumes (bounded). If some never do while others
        already consume, go on after PARTIAL_READY_GRACE_S and record it: a worker
        that cannot consume (an exclusive consumer's peers) is a finding for the
        checkers, not an infrastructure error."""
        assert self.admin is not None and self.cluster is not None
        queue = self.scenario.cluster.queue
        deadline = time.monotonic() + WORKERS_READY_TIMEOUT_S
        want = set(names)
        first_ready_at: float | None = None
        while time.monotonic() < deadline:
            if self.live.wait_for(lambda s: want <= s.ready, 1.0):
                return
            info = self.admin.queue_info(queue)
            if info is not None and info.consumers >= len(names):
                return
            dead = [w for w in names if not self.cluster.is_running(w)]
            if dead:
                raise ClusterError(
                    f"worker {dead[0]} exited during start-up: see "
                    f"{self.run_dir / 'logs' / (dead[0] + '.log')}")
            # Some consume: by their ready events, or by the broker's consumer count
            # (a worker that reports no ready).
            consumers = info.consumers if info is not None else 0
            if self.live.ready & want or consumers > 0:
                first_ready_at = first_ready_at or time.monotonic()
                if time.monotonic() - first_ready_at > PARTIAL_READY_GRACE_S:
                    missing = (sorted(want - self.live.ready) if self.live.ready & want
                               else [f"{len(names) - consumers} of {len(names)} (no ready "
                                     "events: counted by the broker)"])
                    self.recorder.record(vocab.WORKERS_NOT_READY, "harness", workers=missing,
                                         waited_s=PARTIAL_READY_GRACE_S)
                    self.problems.append(
                        f"worker(s) {', '.join(missing)} never consumed: see their logs")
                    return
        missing = sorted(want - self.live.ready)
        raise ClusterError(
            f"workers not consuming after {WORKERS_READY_TIMEOUT_S:.0f} s: {', '.join(missing)}; "
            f"see {self.run_dir / 'logs'}")

    def wait_recovered(self) -> None:
        """After the faults, give every running worker the time to consume again
        (reconnect backoff after a broker restart or a cut), so the history
        covers the recovery the checkers judge. Bounded; not a failure if it
        does not happen: health-check and partition-recovery judge that.
        Recovered: every running worker wrote ``ready`` since, or the broker counts
        as many consumers on the queue (a worker that reports no ``ready``)."""
        assert self.cluster is not None and self.admin is not None
        deadline = time.monotonic() + RECOVERY_WAIT_S
        while time.monotonic() < deadline:
            # Asked outside the live state's lock: a docker backend answers over HTTP.
            running = frozenset(w for w in self.cluster.workers() if self.cluster.is_running(w))
            if self.live.wait_for(_all_ready(running), 0.5):
                return
            if self.live.events_by_type.get(vocab.READY, 0):
                continue  # the worker reports ready: its word is the finer signal here
            with contextlib.suppress(ClusterError, OSError):
                info = self.admin.queue_info(self.scenario.cluster.queue)
                if info is not None and info.consumers >= len(running):
                    return
        self.recorder.record(vocab.RECOVERY_WAIT, "harness", complete=False,
                             waited_s=RECOVERY_WAIT_S)

    def wait_drained(self, timeout_s: float, longest_task_s: float = 0.0) -> bool:
        """Until the broker says the work is done (bounded by ``timeout_s``).

        The broker decides: the main and retry queues empty and nothing unacked on
        the main queue, over polls spanning twice the statistics interval; and the
        workers quiet (no event for max(DRAIN_QUIET_MIN_S, 3 x the longest task)),
        so a consumer that still holds deliveries the lagging counters do not show
        yet keeps the drain open. A worker's self-reported in-flight set extends
        the wait by at most DRAIN_SELF_REPORT_EXTRA_S. When the bound expires with
        the queues empty but deliveries held unacked by live connections, the
        holders are recorded (``drain.held``): the worker's failure, for
        exactly-once-ack to judge, not a missing observation."""
        assert self.admin is not None
        queue = self.scenario.cluster.queue
        stats_s = (STATS_INTERVAL_DEFAULT_S if self.opts.broker_url
                   else STATS_INTERVAL_OWNED_S)
        stable_s = max(DRAIN_STABLE_POLLS * DRAIN_POLL_S, 2 * stats_s)
        # Bounded by a quarter of the drain bound: very long tasks must not make the
        # drain impossible.
        quiet_s = max(DRAIN_QUIET_MIN_S, min(3 * longest_task_s, timeout_s / 4))
        extra_s = max(DRAIN_SELF_REPORT_EXTRA_S, 3 * longest_task_s)
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        empty_since: float | None = None
        unacked = depth = retry = 0
        while time.monotonic() < deadline:
            try:
                depth = self.admin.passive_depth(queue) or 0
                # Retry queues by name from the management API, their depth over AMQP:
                # the API's counts lag (seen: 0 for a TTL queue holding 30 messages).
                retry = sum(max(q.messages, self.admin.passive_depth(q.name) or 0)
                            for q in self.admin.list_queues(f"{queue}.retry."))
                info = self.admin.queue_info(queue)
                unacked = info.unacked if info is not None else 0
            except (ClusterError, OSError) as exc:
                self.recorder.record(vocab.DRAIN_POLL_ERROR, "harness", error=str(exc))
                depth, retry, unacked = 1, 0, 0
            now = time.monotonic()
            if depth + retry + unacked == 0:
                empty_since = empty_since if empty_since is not None else now
            else:
                empty_since = None
            quiet = self.live.quiet_for() >= quiet_s
            self_reported = self.live.total_in_flight()
            if (empty_since is not None and now - empty_since >= stable_s and quiet
                    and (self_reported == 0 or now - empty_since >= extra_s)):
                self.recorder.record(vocab.DRAIN, "harness", complete=True,
                                     waited_s=round(now - started, 3),
                                     self_reported_in_flight=self_reported)
                return True
            time.sleep(DRAIN_POLL_S)
        held: list[dict[str, Any]] = []
        # Held: the broker's queues empty (main and retry: a message waiting out its
        # delay would come back to the main queue on its own), deliveries unacked,
        # the workers idle.
        if depth == 0 and retry == 0 and unacked > 0 and self.live.quiet_for() >= quiet_s:
            with contextlib.suppress(ClusterError, OSError):
                held = [{"connection": c.name or c.mgmt_name, "unacked": c.unacked,
                         "peer": f"{c.peer_host}:{c.peer_port}"}
                        for c in self.admin.connections() if c.unacked > 0]
        reason = (f"{unacked} deliveries held unacked by live consumers after {timeout_s} s "
                  "with the queues empty" if held else f"queues not empty after {timeout_s} s")
        self.recorder.record(vocab.DRAIN, "harness", complete=False, waited_s=timeout_s,
                             reason=reason, held=held, unacked=unacked)
        return False

    def wait_windows(self) -> None:
        """Until no judged claim is undecided only because the record ends too soon
        (a health bound, a partition's recovery bound): bounded by WINDOW_WAIT_MAX_S,
        so a bug cannot escape to ``unknown`` by the run finishing early."""
        from harness.checkers import check_all
        from harness.checkers.index import NEEDED_UNTIL

        # Only the claims with observation windows: judging every claim of a large
        # history (a poison task looping) on every poll would cost more than it waits.
        claims = [c for c in self.scenario.claims if c in WINDOWED_CLAIMS]
        if not claims:
            return
        deadline = time.monotonic() + WINDOW_WAIT_MAX_S
        waited = False
        while time.monotonic() < deadline:
            # The record reaches "now" only through events: the harness's own mark
            # extends it while nothing else happens (a probe that never changes).
            if waited:
                self.recorder.record(vocab.WINDOW_WAIT, "harness")
            results = check_all(self.recorder.snapshot(), claims, self.scenario.params)
            needed = [float(r.evidence[NEEDED_UNTIL]) for r in results
                      if r.valid is None and isinstance(r.evidence.get(NEEDED_UNTIL), int | float)]
            if not needed:
                if waited:
                    self.recorder.record(vocab.WINDOWS_CLOSED, "harness")
                return
            waited = True
            time.sleep(min(WINDOW_POLL_S, max(0.0, max(needed) - time.time()) + 0.05))
        self.recorder.record(vocab.WINDOW_WAIT, "harness")
        self.recorder.record(vocab.WINDOWS_CLOSED, "harness", complete=False,
                             waited_s=WINDOW_WAIT_MAX_S)

    def live_drain_held(self) -> bool:
        """Did the drain end with deliveries held by idle consumers (``drain.held``)?"""
        drains = list(self.recorder.snapshot().of_type(vocab.DRAIN))
        return bool(drains and drains[-1].get("held"))

    def _main_queue_ids(self) -> int:
        return sum(len(ev.get("ids") or ()) for ev in self.recorder.snapshot().of_type(
            vocab.FINAL_QUEUE) if ev.get("role") == "main")

    def _check_contradiction(self) -> None:
        """A drain the broker called complete leaves nothing in the main queue: a
        final read that finds tasks there says the drain's evidence was wrong, so
        the run cannot count them as "still queued, so not lost"."""
        found = [ev for ev in self.recorder.snapshot().of_type(vocab.FINAL_QUEUE)
                 if ev.get("role") == "main" and ev.get("ids")]
        if found:
            n = sum(len(ev.get("ids") or ()) for ev in found)
            self.recorder.record(vocab.DRAIN_CONTRADICTION, "harness", tasks=n)
            self.problems.append(f"the drain was declared complete, yet the final read found "
                                 f"{n} task(s) in the main queue")

    def capture_final_state(self) -> None:
        """Record what is left in every queue the scenario names (destructive read)."""
        assert self.admin is not None
        c = self.scenario.cluster
        queues: list[tuple[str, str]] = [(c.queue, "main"), (c.dlq, "dlq")]
        try:
            queues += [(q.name, "retry") for q in self.admin.list_queues(f"{c.queue}.retry.")]
        except (ClusterError, OSError) as exc:
            self.problems.append(f"could not list the retry queues: {exc}")
        for name, role in queues:
            try:
                before = self.admin.passive_depth(name)
                ids = self.admin.drain_ids(name, FINAL_DRAIN_MAX)
                # depth is the broker's count; ids may be fewer only if the read was cut
                # off at FINAL_DRAIN_MAX, which checkers then treat as partial.
                self.recorder.record(vocab.FINAL_QUEUE, "harness", queue=name, role=role, ids=ids,
                                     depth=max(before or 0, len(ids)), ok=True,
                                     exists=before is not None or bool(ids),
                                     partial=(before or 0) > len(ids))
            except (ClusterError, OSError) as exc:
                self.recorder.record(vocab.FINAL_QUEUE, "harness", queue=name, role=role, ids=[],
                                     depth=0, ok=False, error=str(exc))
                self.problems.append(f"could not read queue {name}: {exc}")

    # -- the run -----------------------------------------------------------------------
    def execute(self) -> list[ClaimResult]:
        sc = self.scenario
        wl = sc.workload
        caps = self.opts.effective_capabilities()
        c = sc.cluster
        self.recorder.record(
            vocab.RUN_STARTED, "harness", seed=self.seed, scenario=sc.name,
            backend=self.opts.backend, run_id=self.run_id, path=sc.path, claims=list(sc.claims),
            cluster={"workers": c.workers, "concurrency": c.concurrency, "queue": c.queue,
                     "dlq": c.dlq, "retry_base_ms": c.retry_base_ms,
                     "max_attempts": c.max_attempts, "heartbeat_s": c.heartbeat_s,
                     "grace_s": c.grace_s, "queue_type": c.queue_type,
                     "restart_policy": c.restart_policy},
            capabilities={"directives": "directives" in caps, "health": "health" in caps,
                          "events": "regex" if self.opts.events.startswith("regex:")
                          else "json"},
            worker_under_test={"cmd": self.opts.worker_cmd, "image": self.opts.worker_image,
                               "reference": not self.opts.brought_worker})
        if self.opts.backend == "docker" and not self.opts.worker_image:
            # The reference worker's image must match the source tree (cached: a
            # no-op when nothing changed; a rebuild of ~20 s when worker code did).
            from harness.images import ensure_images

            ensure_images()
        self.cluster = make_cluster(self.opts.backend, self.run_id, self.run_dir, self.recorder,
                                    self.opts.shared_broker)
        self.recorder.add_listener(self._on_event_restart)
        self.spec = self.worker_spec()
        names: list[str] = []

        def start_workers() -> None:
            names.extend(self.add_worker() for _ in range(sc.cluster.workers))

        self.endpoint = self.cluster.start_broker(self.external_broker(),
                                                  while_booting=start_workers)
        self.admin = BrokerAdmin(self.endpoint)
        self.nemesis = Nemesis(self.cluster, self.recorder, sc.cluster.grace_s)
        self.nemesis.setup()
        if "health" in caps:
            self.prober = HealthProber(self.cluster, self.recorder)
            self.prober.start()
        self.wait_workers_ready(names)

        tasks = make_tasks(wl, self.rng, id_prefix=f"t{self.run_id[-6:]}")
        self.schedule = Schedule(sc.schedule, self.cluster, self.nemesis, self.live,
                                 self.recorder, self.rng, scale=self.scale)
        # --no-progress: the display writes to nowhere rather than being special-cased.
        progress = report.Progress(self.console if self.opts.progress
                                   else Console(file=io.StringIO()))
        self.recorder.add_listener(progress.on_event)
        progress.start(len(tasks))
        try:
            self.recorder.record(vocab.PUBLISH_STARTED, "harness", tasks=len(tasks))
            self.schedule.start()
            publisher = Publisher(self.endpoint.amqp_url, sc.cluster.queue, self.recorder,
                                  timeout_s=wl.publish_timeout_s)
            stats = publisher.publish(tasks, rate_per_s=wl.rate_per_s)
            self.recorder.record(vocab.PUBLISH_FINISHED, "harness", ok=stats.ok, fail=stats.fail,
                                 unknown=stats.unknown, elapsed_s=round(stats.elapsed_s, 3))
            bound = sum((s.when.after_s or s.when.timeout_s) + (s.duration_s or 0) + 30
                        for s in sc.schedule)
            if not self.schedule.join(bound):
                self.problems.append("the schedule did not finish in time")
                self.schedule.stop.set()
            if self.schedule.error is not None:
                self.problems.append(f"the schedule failed: {self.schedule.error}")
            self.nemesis.heal(None)  # a fault without duration ends with the schedule
            self.wait_recovered()
            longest_s = max((float(v) for t in tasks
                             if isinstance(v := t.directives.get("sleep_ms"), int | float)),
                            default=0.0) / 1000.0
            drained = self.wait_drained(wl.drain_timeout_s, longest_s)
            self.wait_windows()
        finally:
            progress.stop()
        held = self.live_drain_held()
        for i, ok in self.schedule.fired:
            if not ok:
                s = sc.schedule[i]
                self.problems.append(
                    f"schedule step {i + 1} ({s.fault} {s.target}, line {s.line}) "
                    "did not take effect")
        if len(self.schedule.fired) < len(sc.schedule):
            self.problems.append("not every schedule step ran")
        if stats.ok == 0:
            self.problems.append("no task was confirmed by the broker")
        if self.live.processed == 0:
            self.problems.append("no task was processed")

        self._stopping.set()
        self.nemesis.teardown()
        if self.prober is not None:
            self.prober.stop()
        # Stop the workers all at once (a SIGTERM each, like a deployment deleted):
        # one by one costs a second per worker on docker.
        cluster = self.cluster
        stoppers = [threading.Thread(target=cluster.terminate, args=(name, sc.cluster.grace_s),
                                     daemon=True)
                    for name in cluster.workers() if cluster.is_running(name)]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(sc.cluster.grace_s + 30)
        self.capture_final_state()
        if drained:
            self._check_contradiction()
        elif not (held and self._main_queue_ids()):
            # A held drain is the worker's failure only when the holders' deliveries
            # came back (exactly-once-ack names them); else it did not finish.
            self.problems.append(f"the drain did not finish within {wl.drain_timeout_s} s")
        self.recorder.record(vocab.RUN_FINISHED, "harness")
        return self.judge()

    def judge(self) -> list[ClaimResult]:
        self.recorder.flush()
        return judge_history(self.recorder.snapshot(), self.scenario.claims,
                             self.scenario.params, self.problems)

    def external_broker(self) -> BrokerEndpoint | None:
        """With ``--broker-url``: the run's own vhost on that broker (a scratch vhost
        with a lease, or the ``--vhost`` the user dedicated), never its ``/``."""
        if not self.opts.broker_url:
            return None
        try:
            base = parse_broker_url(self.opts.broker_url, os.environ.get("HARNESS_MANAGEMENT_URL"))
        except ValueError as e:
            raise ClusterError(f"{e}; fix --broker-url") from None
        credentials.register(base.password, base.user)
        BrokerAdmin(base).wait_ready(EXTERNAL_READY_TIMEOUT_S)
        c = self.scenario.cluster
        if self.opts.vhost:
            dedicated = DedicatedVhost(base, self.opts.vhost)
            ep = dedicated.open((c.queue, c.dlq), f"{c.queue}.retry.")
            self.vhost = dedicated
            self.recorder.record(vocab.VHOST, "harness", name=dedicated.name, scratch=False)
            return ep
        scratch = ScratchVhost(base, self.run_id)
        ep = scratch.open()
        self.vhost = scratch
        self.recorder.record(vocab.VHOST, "harness", name=scratch.name, scratch=True,
                             lease_s=LEASE_S, swept=scratch.swept)
        return ep

    def close_vhost(self) -> None:
        """Delete the scratch vhost (or the dedicated vhost's run queues); once."""
        vhost, self.vhost = self.vhost, None
        if vhost is None:
            return
        c = self.scenario.cluster
        problem = (vhost.close() if isinstance(vhost, ScratchVhost)
                   else vhost.close((c.queue, c.dlq), f"{c.queue}.retry."))
        if problem:
            self.problems.append(problem)
            self.console.print(f"[yellow]{problem}[/yellow]")

    def cleanup(self) -> None:
        self._stopping.set()
        with _signals_ignored():
            if self.schedule is not None:
                self.schedule.stop.set()
            if self.prober is not None:
                self.prober.stop()
            if self.nemesis is not None:
                with contextlib.suppress(Exception):
                    self.nemesis.teardown()
            if self.admin is not None:
                with contextlib.suppress(Exception):
                    self.admin.close()
            if self.cluster is not None:
                self.cluster.stop()
            self.close_vhost()
            self.recorder.close()


@contextlib.contextmanager
def suite_broker(opts: RunOptions) -> Iterator[RunOptions]:
    """For a suite of runs on docker (audit, mutants): one broker for all of them,
    one vhost per run (a broker boot costs ~9 s here). Yields the options to run
    with; the broker and its network are removed on exit, also on Ctrl-C."""
    if opts.backend != "docker" or opts.broker_url or opts.shared_broker is not None:
        yield opts
        return
    from harness.cluster.docker import SharedDockerBroker
    from harness.images import ensure_images

    if not opts.worker_image:
        ensure_images()
    shared = SharedDockerBroker()
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
        shared.start(opts.out)
        yield dataclasses.replace(opts, shared_broker=shared)
    finally:
        with _signals_ignored():
            shared.stop()


def run_scenario(scenario: Scenario, opts: RunOptions, console: Console) -> RunOutcome:
    backend = opts.backend
    run = Run(scenario, opts, console)
    rerun = rerun_command(scenario, opts, run.seed, backend)
    console.print(f"[bold]{scenario.name}[/bold]  seed={run.seed}  backend={backend}  "
                  f"run dir={run.run_dir}")
    results: list[ClaimResult] = []
    try:
        with _signals_raise():
            results = run.execute()
    except ClusterError as exc:
        run.problems.append(str(exc))
        console.print(f"[red]error:[/red] {exc}")
    except Exception as exc:  # noqa: BLE001 - a harness bug: undecided, with the trace on file
        trace = run.run_dir / "harness-error.txt"
        trace.write_text(traceback.format_exc())
        run.problems.append(f"internal error: {type(exc).__name__}: {exc} (trace in {trace})")
        console.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc} "
                      f"(trace in {trace})")
    except (Interrupted, KeyboardInterrupt) as exc:
        run.problems.append(f"interrupted ({exc or 'SIGINT'})")
        console.print("[yellow]interrupted: cleaning up[/yellow]")
        run.cleanup()
        _write_result(run, results, 2, rerun)
        _scrub(run)
        raise Interrupted(str(exc)) from None
    finally:
        run.cleanup()
    code = verdicts.overall_exit_code(results, set(opts.gate) if opts.gate else None) \
        if results else 2
    if results:
        report.render_results(console, scenario.name, results, verdicts.run_word(code))
    for claim in verdicts.not_gated(results, opts.gate):
        console.print(f"[dim]not gated: {claim} (its checker says this worker's events "
                      "cannot show it; name it in --gate to require it)[/dim]")
    for p in run.problems:
        console.print(f"[yellow]run problem:[/yellow] {p}")
    _write_result(run, results, code, rerun)
    _scrub(run)
    console.print(f"seed={run.seed}  history={run.run_dir / 'history.jsonl'}")
    console.print(f"rerun: {rerun}")
    return RunOutcome(scenario, run.run_dir, run.seed, results, code, run.problems, rerun)


def _scrub(run: Run) -> None:
    """The safety net of ``harness.credentials``: no file of the run directory
    keeps the broker's password (a worker may print its own configuration)."""
    for problem in credentials.scrub_tree(run.run_dir):
        run.console.print(f"[yellow]{problem}[/yellow]")


def _write_result(run: Run, results: list[ClaimResult], code: int, rerun: str) -> None:
    report.write_result_json(run.run_dir / "result.json",
                             _result_payload(run, results, code, rerun))


def _result_payload(run: Run, results: list[ClaimResult], code: int,
                    rerun: str) -> dict[str, Any]:
    return {
        "scenario": run.scenario.name,
        "scenario_path": run.scenario.path,
        "run_id": run.run_id,
        "seed": run.seed,
        "backend": run.opts.backend,
        "verdict": verdicts.run_word(code),
        "exit_code": code,
        "problems": run.problems,
        "rerun": rerun,
        "not_gated": verdicts.not_gated(results, run.opts.gate),
        "claims": [
            {**r.to_dict(), "invariant": vocab.word(invariant_verdict(r))}
            for r in results
        ],
        "params": run.scenario.params,
    }
