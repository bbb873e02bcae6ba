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
import time
import traceback
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from rich.console import Console

from harness import credentials, htmlreport, replacements, report, verdicts, vocab
from harness.broker import BrokerAdmin
from harness.brokerlog import OwnerSampler, record_consumer_timeouts, unparsed_timeouts
from harness.checkers.base import ClaimResult
from harness.cluster.base import BrokerEndpoint, BrokerSettings, Cluster, ClusterError
from harness.drain import BrokerWatch
from harness.history import Recorder
from harness.live import LiveState
from harness.model import Scenario
from harness.nemesis import Nemesis
from harness.options import (
    RunOptions,
    RunOutcome,
    apply_options,
    make_cluster,
    new_seed,
    rerun_command,
    run_started,
    task_id_prefix,
    worker_identity,
    worker_spec,
)
from harness.prober import HealthProber
from harness.schedule import Schedule
from harness.scratch import DedicatedVhost, ScratchVhost, close_run_vhost, open_run_vhost
from harness.signals import Interrupted, signals_ignored, signals_raise
from harness.supervisor import Supervisor
from harness.tasks import longest_task_s, make_tasks
from harness.verdicts import judge_history


class Run:
    """The state of one run; ``execute`` drives it."""

    def __init__(self, scenario: Scenario, opts: RunOptions, console: Console) -> None:
        self.scenario = scenario = apply_options(scenario, opts)
        self.opts = opts
        self.console = console
        self.seed = opts.seed if opts.seed is not None else new_seed()
        self.started_at = time.time()
        self.rng = random.Random(self.seed)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", scenario.name)
        self.run_id = f"{stamp}-{os.getpid() % 10000:04d}{self.rng.randrange(16**2):02x}"
        self.id_prefix = task_id_prefix(self.run_id, opts.backend)
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
        self.broker_semantics: dict[str, Any] | None = None
        self.vhost: ScratchVhost | DedicatedVhost | None = None
        self.cluster: Cluster | None = None
        self.supervisor: Supervisor | None = None
        self.admin: BrokerAdmin | None = None
        self.nemesis: Nemesis | None = None
        self.schedule: Schedule | None = None
        self.endpoint: BrokerEndpoint | None = None
        self.prober: HealthProber | None = None
        self.owners: OwnerSampler | None = None


    # -- the run -----------------------------------------------------------------------
    def execute(self) -> list[ClaimResult]:
        sc = self.scenario
        wl = sc.workload
        caps = self.opts.effective_capabilities()
        self.recorder.record(vocab.RUN_STARTED, "harness", **run_started(
            sc, self.opts, self.seed, self.run_id, caps))
        if self.opts.backend in (vocab.DOCKER, vocab.SWARM) and not self.opts.worker_image:
            # The reference worker's image must match the source tree (cached: a
            # no-op when nothing changed; a rebuild of ~20 s when worker code did).
            from harness.images import ensure_images

            ensure_images()
        self.cluster = make_cluster(
            self.opts.backend, self.run_id, self.run_dir, self.recorder,
            self.opts.shared_broker, self.opts, self.id_prefix,
            BrokerSettings(consumer_timeout_ms=sc.cluster.consumer_timeout_ms))
        self.cluster.orchestrate(sc.cluster.restart_policy, sc.cluster.grace_s)
        sup = self.supervisor = Supervisor(
            self.cluster, sc, worker_spec(sc, self.opts, self.run_id), self.recorder, self.live,
            self.run_dir, self.problems)
        names: list[str] = []

        def start_workers() -> None:
            names.extend(sup.add_worker() for _ in range(sc.cluster.workers))

        self.endpoint = self.cluster.start_broker(self.external_broker(),
                                                  while_booting=start_workers)
        self.admin = sup.admin = self.cluster.broker_admin(self.endpoint)
        self.nemesis = sup.nemesis = Nemesis(self.cluster, self.recorder, sc.cluster.grace_s)
        self.nemesis.setup()
        watch = BrokerWatch(self.admin, sc, self.recorder, self.live, self.problems,
                            owned_broker=not self.opts.broker_url,
                            read_ids=self.cluster.owned)
        if "health" in caps:
            self.prober = HealthProber(self.cluster, self.recorder)
            self.prober.start()
        if sc.cluster.consumer_timeout_ms is not None:
            # Whose channel a consumer timeout closes: the broker's log names a peer.
            self.owners = OwnerSampler(self.cluster.connection_owners, self.recorder).start()
        sup.wait_ready(names)

        tasks = make_tasks(wl, self.rng, id_prefix=self.id_prefix)
        self.schedule = Schedule(sc.schedule, self.cluster, self.nemesis, self.live,
                                 self.recorder, self.rng, scale=sup.scale,
                                 guard_last_worker=self.opts.steps_optional)
        # --no-progress: the display writes to nowhere rather than being special-cased.
        progress = report.Progress(self.console if self.opts.progress
                                   else Console(file=io.StringIO()))
        self.recorder.add_listener(progress.on_event)
        progress.start(len(tasks))
        try:
            self.recorder.record(vocab.PUBLISH_STARTED, "harness", tasks=len(tasks))
            self.schedule.start()
            publisher = self.cluster.publisher(self.endpoint, sc.cluster.queue, self.recorder,
                                               wl.publish_timeout_s, sc.cluster.task_format)
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
            # Nothing to recover from without a fault or a worker that exited (a
            # crash directive's worker is restarted).
            if sc.schedule or self.live.events_by_type.get(vocab.WORKER_EXITED, 0):
                sup.wait_recovered()
            drained = watch.wait_drained(wl.drain_timeout_s, longest_task_s(tasks))
            watch.wait_windows()
        finally:
            progress.stop()
        held = watch.drain_held()
        if self.opts.steps_optional:
            for note in self.schedule.problems():
                self.console.print(f"[dim]explore: {note} (not a problem here)[/dim]")
        else:
            self.problems.extend(self.schedule.problems())
        if stats.ok == 0:
            self.problems.append("no task was confirmed by the broker")
        if self.live.processed == 0:
            self.problems.append("no task was processed")

        sup.stop_restarting()
        self.nemesis.teardown()
        if self.prober is not None:
            self.prober.stop()
        sup.stop_all()
        if self.owners is not None:
            self.owners.stop()
        watch.capture_final_state()
        self.broker_semantics = watch.semantics
        self.read_broker_log()
        if drained:
            watch.check_contradiction()
        elif not (held and watch.main_queue_ids()):
            # A held drain is the worker's failure only when the holders' deliveries
            # came back (exactly-once-ack names them); else it did not finish.
            self.problems.append(f"the drain did not finish within {wl.drain_timeout_s} s")
        self.recorder.record(vocab.RUN_FINISHED, "harness")
        return self.judge()

    def read_broker_log(self) -> None:
        """The broker's word on what it closed (``harness.brokerlog``): with a
        consumer timeout set, every channel it closed for it, as history events."""
        if self.scenario.cluster.consumer_timeout_ms is None or self.cluster is None:
            return
        text = self.cluster.broker_log()
        if text is None:
            self.problems.append("the broker's log could not be read: consumer timeouts "
                                 "are unknown")
            return
        # Kept beside the history: the evidence a reader checks a verdict against.
        with contextlib.suppress(OSError):
            (self.run_dir / "broker.log").write_text(credentials.redact(text), encoding="utf-8")
        vhost = self.endpoint.vhost if self.endpoint is not None else "/"
        history = self.recorder.snapshot()
        record_consumer_timeouts(self.recorder, text, vhost,
                                 list(history.of_type(vocab.CONNECTION_OWNER)),
                                 list(history.of_type(vocab.WORKER_EXITED)))
        missed = unparsed_timeouts(text)
        if missed:
            self.problems.append(f"the broker's log announces {missed} consumer timeout(s) "
                                 "whose channel close the harness could not read: which "
                                 "deliveries they requeued is unknown")

    def judge(self) -> list[ClaimResult]:
        self.recorder.flush()
        return judge_history(self.recorder.snapshot(), self.scenario.claims,
                             self.scenario.params, self.problems)

    def external_broker(self) -> BrokerEndpoint | None:
        """With ``--broker-url``: the run's own vhost there (``harness.scratch``); for
        workers the harness does not own, the URL's own vhost, theirs."""
        if not self.opts.broker_url:
            return None
        if self.opts.backend == vocab.EXTERNAL:
            from harness.broker import parse_broker_url

            try:
                ep = parse_broker_url(self.opts.broker_url,
                                      os.environ.get("HARNESS_MANAGEMENT_URL"))
            except ValueError as e:
                raise ClusterError(f"{e}; fix --broker-url") from None
            credentials.register(ep.password, ep.user)
            return ep
        self.vhost, ep = open_run_vhost(self.opts.broker_url, self.opts.vhost,
                                        self.scenario, self.run_id, self.recorder)
        return ep

    def close_vhost(self) -> None:
        """Delete the scratch vhost (or the dedicated vhost's run queues); once."""
        vhost, self.vhost = self.vhost, None
        problem = close_run_vhost(vhost, self.scenario) if vhost is not None else None
        if problem:
            self.problems.append(problem)
            self.console.print(f"[yellow]{problem}[/yellow]")

    def cleanup(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop_restarting()
        with signals_ignored():
            if self.schedule is not None:
                self.schedule.stop.set()
            if self.prober is not None:
                self.prober.stop()
            if self.owners is not None:
                self.owners.stop()
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
def suite_broker(opts: RunOptions, console: Console | None = None) -> Iterator[RunOptions]:
    """For a suite of runs on docker (audit, mutants, explore): one broker for all of
    them, one vhost per run (a broker boot costs ~9 s here). Yields the options to
    run with; the broker and its network are removed on exit, also on Ctrl-C. Then
    ``console`` (if any) gets what the broker's stop said about the engine
    (``Cluster.notices``: a swarm it had to keep, or left)."""
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
        with signals_ignored():
            shared.stop()
        if console is not None:
            # Never instead of the suite's own exception (a closed pipe, say).
            with contextlib.suppress(Exception):
                print_engine_notices(shared.notices, console)


def run_scenario(scenario: Scenario, opts: RunOptions, console: Console) -> RunOutcome:
    backend = opts.backend
    run = Run(scenario, opts, console)
    rerun = rerun_command(scenario, opts, run.seed, backend)
    console.print(f"[bold]{scenario.name}[/bold]  seed={run.seed}  backend={backend}  "
                  f"run dir={run.run_dir}")
    results: list[ClaimResult] = []
    try:
        with signals_raise():
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
        _print_notices(run, console)
        _write_result(run, results, 2, rerun)
        credentials.scrub_run_dir(run.run_dir, run.console)
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
    for n in replacements.notes(run.recorder.snapshot()):
        console.print(f"[cyan]orchestrator:[/cyan] {n}")
    _print_notices(run, console)
    _write_result(run, results, code, rerun)
    htmlreport.write_run_report_or_say(run.run_dir, console, run.recorder.snapshot())
    credentials.scrub_run_dir(run.run_dir, run.console)
    console.print(f"seed={run.seed}  history={run.run_dir / 'history.jsonl'}")
    console.print(f"rerun: {rerun}")
    return RunOutcome(scenario, run.run_dir, run.seed, results, code, run.problems, rerun,
                      run.broker_semantics)


def _print_notices(run: Run, console: Console) -> None:
    print_engine_notices(run.cluster.notices if run.cluster is not None else [], console)


def print_engine_notices(notices: list[str], console: Console) -> None:
    """What a backend's stop said about the engine (a swarm it had to keep)."""
    for n in notices:
        console.print(f"[cyan]engine:[/cyan] {n}")


def _write_result(run: Run, results: list[ClaimResult], code: int, rerun: str) -> None:
    opts = run.opts
    worker = worker_identity(opts)
    report.write_result_json(run.run_dir / "result.json", report.result_payload(
        run.scenario, run.run_id, run.seed, opts.backend, results, code, run.problems,
        rerun, opts.gate, run.started_at, worker, run.broker_semantics,
        replacements.notes(run.recorder.snapshot())))
