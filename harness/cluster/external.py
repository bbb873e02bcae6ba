"""``--backend external``: workers the harness does not own.

A deployment (Compose, Kubernetes) already runs the workers on its own broker. The
harness publishes its own tasks, tagged with the run's id prefix, to their queue,
follows their logs through a command the user gives (``--worker-logs``), and
injects faults through command templates (``--fault-cmd NAME=TEMPLATE``). It never
starts, stops or consumes for the deployment: at the end the workers keep running
and the queues are only counted (``harness.drain.BrokerWatch`` with
``read_ids=False``), so what needs the final destructive read is judged from the
broker's counts and the events, or is unknown with the reason.

The log follower: one command (``docker compose logs -f --no-color --since {since}
worker``, or a Kubernetes follower that also picks up pods created during the run;
see docs/external.md; ``{since}`` is the run's start, RFC 3339, so nothing written
before the follower attached is missed; without it the run waits for the
follower's first output) whose every stdout line starts with the name of the worker
that wrote it, as both tools write it: Compose's ``NAME  | line`` (v1 and v2) or
``kubectl logs --prefix``'s ``[pod/NAME/CONTAINER] line``. The name is the worker's
identity in the history and the ``{worker}`` of the fault templates. Only events
of this run's tasks (ids with the run's prefix) and id-less worker events are
recorded: the deployment's other traffic is none of the run's business.

A worker is new when its name is first seen, and a new process of a name the
harness killed or terminated when that name writes again more than
``RESTART_SLACK_S`` after the fault returned (a line of the dead process can still
be on its way): both recorded as ``worker_started`` by the harness.

Faults: each template names one fault and is run without a shell (split once,
then ``{worker}`` and ``{n}`` filled in per argument, so a worker's name cannot
inject a command), bounded by ``FAULT_CMD_TIMEOUT_S``. A template whose command is
known to be another fault than its name is refused (``kubectl delete pod`` sends
SIGTERM first, even with ``--grace-period=0 --force``: a terminate, not a kill).
Written by hand: no library follows a deployment's logs by worker and runs an
orchestrator's commands as faults.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from harness import vocab
from harness.cluster.base import BrokerEndpoint, Cluster, ClusterError, ScaleDone, WorkerSpec
from harness.cluster.lines import LineReader
from harness.history import Recorder

# The faults a template can carry (``resume`` heals ``pause``; ``restart`` starts a
# worker again where the scenario's restart policy asks for it; ``scale`` sets the
# number of workers, ``{n}``).
TEMPLATE_FAULTS: Final = ("kill", "terminate", "pause", "resume", "restart", "scale")
PLACEHOLDERS: Final = frozenset({"worker", "n"})
FAULT_CMD_TIMEOUT_S: Final = 60.0
FOLLOWER_STOP_S: Final = 5.0
# A line of a killed worker's old process can still be on its way through the
# follower this long after the kill returned; a JSON worker's ``connected`` or
# ``ready`` written after the kill says sooner that a new process runs.
RESTART_SLACK_S: Final = 5.0
# A kill or terminate counts only when the broker saw a connection of the
# deployment close after it: the management API lists a closed connection's end
# within a statistics interval (RabbitMQ's default 5 s), twice that and a margin.
CLOSE_SEEN_WAIT_S: Final = 12.0
CLOSE_POLL_S: Final = 0.5
# The follower's log of one worker stops growing past this (a busy deployment's own
# traffic goes through it too); the harness's events are not bounded by it.
WORKER_LOG_MAX_BYTES: Final = 64 << 20
LINE_MAX_BYTES: Final = 1 << 20
# The harness's own connections (the admin, the publisher) are named so.
OWN_CONNECTION_PREFIX: Final = "harness-"
# A follower that replays nothing (``--tail 0``) sees only lines written after it
# attached: the run waits for its first output (Compose's "Attaching to ...") up to
# FOLLOWER_ATTACH_S, then FOLLOWER_SETTLE_S for its streams to open, before any task
# goes out. A command with ``{since}`` replays from the run's start and needs none.
FOLLOWER_ATTACH_S: Final = 10.0
FOLLOWER_SETTLE_S: Final = 2.0
SINCE_SLACK_S: Final = 2.0
# A scale-up is done when the broker shows the new count of consumers of the queue;
# an orchestrator pulls nothing here (local images), a pod can take a while.
SCALE_UP_WAIT_S: Final = 90.0
# Compose's own line when a container it follows stops (v1; v2 since 2.27 after
# "\r\x1b[K", see _plain): the follower's observation of the orchestrator, never a
# worker's line (a worker's lines all carry its prefix). " (restarting)" after it
# is a restart policy at work, not a stop: it does not match.
EXIT_LINE: Final = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*) exited with code (?P<code>-?\d+)\s*$")
# The exit codes of a stop by an orchestrator: a clean exit on SIGTERM, the
# default SIGTERM disposition (128 + 15), the SIGKILL after the grace period
# (128 + 9). Any other code during a scale is a crash, which a scale must never
# be taken for: a requested stop explains duplicates, a crash does not.
STOP_EXIT_CODES: Final = frozenset({0, 128 + 15, 128 + 9})
# What the scale command itself says it stopped or created: Compose v1 ("Stopping
# and removing shop_worker_3 ... done", "Creating shop_worker_4 ... done") and v2
# ("Container shop-worker-3  Stopping", "Container shop-worker-4  Created").
_STOPPED_BY_COMMAND: Final = re.compile(
    r"^(?:Stopping and removing|Stopping|Removing) (?P<v1>[\w.-]+)\s+\.\.\."
    r"|^Container (?P<v2>[\w.-]+)\s+(?:Stopping|Stopped|Removing|Removed)\b")
_CREATED_BY_COMMAND: Final = re.compile(
    r"^Creating (?P<v1>[\w.-]+)\s+\.\.\.|^Container (?P<v2>[\w.-]+)\s+(?:Creating|Created)\b")
_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A scale waits this long for an earlier one (the schedule runs one step at a time:
# only a bug makes two); the end of the run waits for one in flight as long as its
# command can take (see ExternalCluster._scale_bound_s).
SCALE_LOCK_WAIT_S: Final = 300.0
# Fresh-process events of worker contract v1.
_FRESH_EVENTS: Final = frozenset({vocab.CONNECTED, vocab.READY})
WORKER_NAME_MAX: Final = 64
# Compose (v1 ``worker_1  | ``, v2 ``worker-1  | ``) or ``kubectl logs --prefix``.
PREFIX_PATTERN: Final = re.compile(
    r"^(?:\[pod/(?P<pod>[^/\]\s]+)/[^\]\s]*\]|(?P<name>[A-Za-z0-9][\w.-]*)\s+\|)\s?(?P<line>.*)$")
# Commands known to be another fault than the one they are given as: (fault given,
# pattern over the command) -> what it really is.
_RUNTIME: Final = r"\b(docker(-compose)?|docker compose|podman|nerdctl)\b"
_SIGNAL_ARG: Final = r"(?<![\w-])(-s|--signal)[ =]'?"
_MISLABELLED: Final = (
    (("kill", "terminate"), re.compile(_RUNTIME + r".*\brm\b"),
     "rm removes the container, which restart cannot bring back: give a kill as "
     "docker kill, a terminate as docker stop"),
    (("kill",), re.compile(r"\bkubectl\b.*\bdelete\b"),
     "kubectl delete sends SIGTERM first, even with --grace-period=0 --force: a "
     "terminate, not a kill (give it as terminate=...; a kill needs the worker not to "
     "be PID 1, e.g. kubectl exec {worker} -- pkill -KILL -f worker: docs/external.md)"),
    (("kill",), re.compile(_RUNTIME + r".*\b(stop|restart)\b"),
     "stop and restart send SIGTERM and kill only after a grace period: a terminate, "
     "not a kill (give it as terminate=...; a kill is docker kill)"),
    (("kill",), re.compile(_RUNTIME + r".*\bkill\b.*" + _SIGNAL_ARG
                           + r"(?!(?:SIG)?(?:KILL|9)\b)\w+"),
     "a kill sends SIGKILL: a kill with another --signal is not one"),
    (("terminate",), re.compile(r"\bkill\b.*(-9\b|-KILL\b|-s\s*KILL\b|SIGKILL)"),
     "SIGKILL is a kill, not a terminate (give it as kill=...)"),
    (("terminate",), re.compile(_RUNTIME + r"\s(?!.*" + _SIGNAL_ARG
                                + r"(?:SIG)?(?:TERM|15)\b).*\bkill\b"),
     "docker kill sends SIGKILL: a kill, not a terminate (give it as kill=..., and a "
     "terminate as docker stop, or docker kill --signal TERM)"),
)


@dataclass(frozen=True)
class FaultCommands:
    """``--fault-cmd NAME=TEMPLATE`` parsed and checked: fault -> argv template."""

    templates: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, items: Iterable[str]) -> FaultCommands:
        """ValueError (one line, what to do) for a malformed or mislabelled item."""
        out: dict[str, tuple[str, ...]] = {}
        for item in items:
            name, sep, template = item.partition("=")
            name = name.strip()
            if not sep or not template.strip():
                raise ValueError(f"--fault-cmd {item!r}: give NAME=COMMAND, e.g. "
                                 "kill='docker kill myapp-{worker}'")
            if name not in TEMPLATE_FAULTS:
                raise ValueError(f"--fault-cmd {name}: not a fault a command can carry; use "
                                 f"{', '.join(TEMPLATE_FAULTS)}")
            if name in out:
                raise ValueError(f"--fault-cmd {name} given twice")
            try:
                argv = tuple(shlex.split(template))
            except ValueError as exc:
                raise ValueError(f"--fault-cmd {name}: {exc}") from None
            if not argv:
                raise ValueError(f"--fault-cmd {name}: the command is empty")
            for arg in argv:
                for field in _fields(arg):
                    if field not in PLACEHOLDERS:
                        raise ValueError(f"--fault-cmd {name}: unknown placeholder {{{field}}}; "
                                         "use {worker} (and {n} for a count)")
                try:  # a conversion or a format spec ({worker!x}, {n:d}) fails here, once
                    arg.format_map({"worker": "w", "n": ""})
                except (ValueError, KeyError, IndexError) as exc:
                    raise ValueError(f"--fault-cmd {name}: {arg!r}: {exc}") from None
            fields = {f for arg in argv for f in _fields(arg)}
            if name == "scale" and ("n" not in fields or "worker" in fields):
                raise ValueError("--fault-cmd scale: the command sets the number of workers: "
                                 "give {n} (and no {worker}), e.g. scale='docker compose -p "
                                 "shop up -d --no-recreate --scale worker={n} worker'")
            for faults, pattern, why in _MISLABELLED:
                if name in faults and pattern.search(template):
                    raise ValueError(f"--fault-cmd {name}: {why}")
            out[name] = argv
        if "pause" in out and "resume" not in out:
            raise ValueError("--fault-cmd pause needs resume=... too: every pause is healed")
        return cls(out)

    def argv(self, fault: str, worker: str, n: int | None = None) -> list[str]:
        """The command of ``fault`` on ``worker``; ClusterError without a template."""
        template = self.templates.get(fault)
        if template is None:
            raise ClusterError(f"no --fault-cmd {fault}=... was given for --backend external")
        values = {"worker": worker, "n": "" if n is None else str(n)}
        return [arg.format_map(values) for arg in template]

    def describe(self) -> dict[str, str]:
        """fault -> its template, as result.json and the rerun name it."""
        return {k: masked(shlex.join(v)) for k, v in sorted(self.templates.items())}


def _fields(arg: str) -> list[str]:
    import string

    try:
        return [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
    except ValueError as exc:
        raise ValueError(f"--fault-cmd: {arg!r}: {exc}") from None


SECRET_ARG: Final = re.compile(
    r"(?i)(--?[\w-]*(token|password|passwd|secret|credential|api-?key)[\w-]*[= ])(\S+)")


def masked(command: str) -> str:
    """``command`` with the value of every secret-looking option (``--token=...``,
    ``--password X``) as ``***``, for the rerun line and result.json."""
    return SECRET_ARG.sub(lambda m: m.group(1) + "***", command)


def split_prefix(line: str) -> tuple[str, str] | None:
    """(worker name, the worker's own line) of a follower's line, or None for a line
    without a worker prefix (the follower's own chatter)."""
    m = PREFIX_PATTERN.match(line)
    if m is None:
        return None
    name = m.group("pod") or m.group("name")
    if not name:
        return None
    return re.sub(r"[^\w.-]", "_", name)[:WORKER_NAME_MAX], m.group("line")


class LogFollower:
    """Runs the ``--worker-logs`` command and hands each line to the reader of the
    worker its prefix names (one ``LineReader`` per name, made on first sight)."""

    def __init__(self, argv: list[str], recorder: Recorder, spec: WorkerSpec,
                 id_prefix: str, log_dir: Path,
                 on_line: Callable[[str, str, float], None],
                 on_exit: Callable[[str, int, float], None] | None = None) -> None:
        self.argv = argv
        self.on_exit = on_exit
        self.recorder = recorder
        self.spec = spec
        self.id_prefix = id_prefix
        self.log_dir = log_dir
        self.on_line = on_line
        self.readers: dict[str, LineReader] = {}
        self._logs: dict[str, IO[str]] = {}
        self._log_bytes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self.unprefixed = 0
        self.replayed = 0
        self.first_output = threading.Event()
        # A follower with ``--since`` re-attaches to a restarted container from that
        # time and replays what its old process wrote: a contract v1 line that carries
        # the worker's own ts and a task id is one event, seen once per worker (its
        # text cannot repeat: the ts moves). Lines without both are never dropped, so
        # a real repeat is never hidden (a replayed one reads as a duplicate: false,
        # never true). Bounded by the run's events.
        self._seen_lines: set[tuple[str, int]] = set()

    def start(self) -> None:
        if not self.argv:
            raise ClusterError("--worker-logs: the command is empty")
        try:
            # Bytes, split on "\n" only: a "\r" inside a worker's line must not start a
            # line that a prefix could claim for another worker.
            proc = self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise ClusterError(f"--worker-logs {masked(shlex.join(self.argv))}: {exc}") from None
        assert proc.stdout is not None and proc.stderr is not None
        out = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        err = threading.Thread(target=self._pump_stderr, args=(proc.stderr,), daemon=True)
        self._threads = [out, err]
        for t in self._threads:
            t.start()

    def feed(self, raw: str, seen: float | None = None) -> None:
        self.first_output.set()
        seen = time.time() if seen is None else seen
        split = split_prefix(raw.rstrip("\n"))
        if split is None:
            self.unprefixed += 1
            self._own_line(raw.rstrip("\n"), seen)
            return
        name, line = split
        if _stamped_event(line):
            key = (name, hash(line))
            with self._lock:
                if key in self._seen_lines:
                    self.replayed += 1
                    return
                self._seen_lines.add(key)
        with self._lock:
            reader = self.readers.get(name)
            if reader is None:
                reader = self.readers[name] = LineReader(
                    self.recorder, name, self.spec.events_pattern(),
                    translate=self.spec.event_translator(), id_prefix=self.id_prefix)
        self.on_line(name, line, seen)
        self._write(name, line + "\n")
        reader.feed(line, seen)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.readers)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(FOLLOWER_STOP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(FOLLOWER_STOP_S)
        for t in self._threads:
            t.join(FOLLOWER_STOP_S)
        with self._lock:
            for f in self._logs.values():
                with contextlib.suppress(OSError):
                    f.close()
            self._logs.clear()

    def note(self, text: str) -> None:
        """A line of the harness's own in follower.log."""
        self._write("follower", text + "\n")

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _pump(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in _lines(stream):
                self.feed(raw)

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in _lines(stream):
                self.first_output.set()
                self._own_line(raw, time.time())

    def _own_line(self, line: str, seen: float) -> None:
        """A line of the follower itself: kept in follower.log; an exit it announces
        goes to ``on_exit``."""
        self._write("follower", line + "\n")
        m = EXIT_LINE.match(_plain(line))
        if m is not None and self.on_exit is not None:
            self.on_exit(m.group("name"), int(m.group("code")), seen)

    def _write(self, name: str, text: str) -> None:
        from harness import credentials

        if credentials.active():  # a line that carries the broker's password
            text = credentials.redact(text)
        with self._lock:
            size = self._log_bytes.get(name, 0)
            if size > WORKER_LOG_MAX_BYTES:
                return
            self._log_bytes[name] = size + len(text)
            if self._log_bytes[name] > WORKER_LOG_MAX_BYTES:
                text = f"[rmq-harness: this log stops at {WORKER_LOG_MAX_BYTES >> 20} MiB]\n"
            f = self._logs.get(name)
            if f is None:
                try:
                    f = self._logs[name] = open(  # noqa: SIM115 - closed in stop()
                        self.log_dir / f"{name}.log", "a", encoding="utf-8")
                except OSError:
                    return
            with contextlib.suppress(OSError, ValueError):
                f.write(text)
                f.flush()


def _lines(stream: IO[bytes]) -> Iterable[str]:
    """The lines of ``stream`` split on "\\n" only, decoded (bad bytes replaced), each
    cut at LINE_MAX_BYTES."""
    for raw in stream:
        yield raw[:LINE_MAX_BYTES].rstrip(b"\n").decode("utf-8", "replace")


class ExternalCluster(Cluster):
    """See the module doc."""

    backend = vocab.EXTERNAL
    owned = False

    def __init__(self, run_id: str, run_dir: Path, recorder: Recorder, worker_logs: str,
                 faults: FaultCommands, id_prefix: str,
                 runner: Callable[[list[str], float], subprocess.CompletedProcess[str]]
                 | None = None,
                 connections: Callable[[], set[str] | None] | None = None,
                 consumers: Callable[[str], int | None] | None = None) -> None:
        super().__init__(run_id, run_dir, recorder)
        self.worker_logs = worker_logs
        self.faults = faults
        self.id_prefix = id_prefix
        self.follower: LogFollower | None = None
        self._run_cmd = runner or _run
        # The deployment's connections to the broker by the management API's name
        # (None: it did not answer); set once the broker answers.
        self._connections = connections
        # The consumers of a queue as the broker counts them (one per worker of
        # contract v1), for ``scale``.
        self._consumers = consumers
        self.replays = "{since}" in worker_logs
        self._lock = threading.Lock()
        # The follower's "NAME exited with code N" lines: (name, code, seen), in order.
        self._exits: list[tuple[str, int, float]] = []
        # The deployment's worker count before the run's first scale: the end of the
        # run scales back to it.
        self._restore_count: int | None = None
        self._scaled = False  # a scale command ran (the scale-back is due)
        # One scale at a time, and the scale-back at the end after it; the end of the
        # run waits for a scale in flight up to its own bound (_scale_bound_s), and
        # tells its waits to give up (_stopping).
        self._scale_lock = threading.Lock()
        self._scale_bound_s = 0.0
        self._stopping = threading.Event()
        # (name, seen) of every worker start the lines showed, in order.
        self._starts: list[tuple[str, float]] = []
        # Names the harness took down (kill, terminate) -> when the fault returned.
        self._down: dict[str, float] = {}
        # Every name it took down and did not start again with the restart template:
        # the end of the run starts them (the deployment is left as found).
        self._to_restart: set[str] = set()
        self._paused: set[str] = set()
        self._seen: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------
    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Callable[[], None] | None = None) -> BrokerEndpoint:
        from harness.broker import BrokerAdmin

        if external is None:
            raise ClusterError("--backend external needs --broker-url: the deployment's broker")
        admin = BrokerAdmin(external)
        try:
            admin.wait_ready(15.0)
        finally:
            admin.close()
        if self._connections is None:
            self._connections = _connection_names(external)
        if self._consumers is None:
            self._consumers = _consumer_count(external)
        if while_booting is not None:
            while_booting()
        return external

    def start_worker(self, name: str, spec: WorkerSpec) -> None:
        """The deployment runs the workers: the first call starts the log follower."""
        with self._lock:
            if self.follower is not None:
                return
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                  time.gmtime(time.time() - SINCE_SLACK_S))
            argv = [a.replace("{since}", since) for a in shlex.split(self.worker_logs)]
            follower = self.follower = LogFollower(argv, self.recorder, spec, self.id_prefix,
                                                   self.run_dir / "logs", self._on_line,
                                                   self._on_exit)
        follower.start()
        if "{since}" not in self.worker_logs:
            follower.first_output.wait(FOLLOWER_ATTACH_S)
            time.sleep(FOLLOWER_SETTLE_S)

    def stop(self) -> None:
        """Stops the follower; the deployment's workers keep running: resumed if the
        harness paused them, and started again with the ``restart`` template if it
        took them down (without one, the orchestrator's policy decides). Never
        raises."""
        try:
            with contextlib.suppress(Exception):
                self.heal_all()
            with self._lock:
                down = sorted(self._to_restart)
            if "restart" in self.faults.templates:
                for name in down:
                    with contextlib.suppress(Exception):
                        self._fault("restart", name)
            self._scale_back()
        finally:
            follower = self.follower
            if follower is not None:
                follower.stop()

    def _scale_back(self) -> None:
        """The deployment's worker count before the run's first scale, restored (the
        command's own word where it named what it stopped or created, else the
        count the step started from). A failure is printed with what to run."""
        self._stopping.set()
        got = self._scale_lock.acquire(timeout=self._scale_bound_s + FAULT_CMD_TIMEOUT_S)
        try:
            if not self._scaled:
                return
            restore = self._restore_count
            if restore is None:
                why = ("rmq-harness: the run scaled the deployment and cannot tell its count "
                       "before (the command did not say what it stopped or created, and the "
                       "broker's consumers and the workers seen disagree): scale it back "
                       "yourself")
                print(why, file=sys.stderr, flush=True)
                if self.follower is not None:
                    self.follower.note(why)
                return
            try:
                self._run_template(self.faults.argv("scale", "", restore), "scale",
                                   f"back to {restore}", FAULT_CMD_TIMEOUT_S)
            except ClusterError as exc:
                why = (f"rmq-harness: the deployment was not scaled back to {restore} "
                       f"worker(s) ({exc}): run your scale command with {restore}")
                print(why, file=sys.stderr, flush=True)
                if self.follower is not None:
                    self.follower.note(why)
        finally:
            if got:
                self._scale_lock.release()

    # -- what is there ---------------------------------------------------------------
    def workers(self) -> list[str]:
        return self.follower.names() if self.follower is not None else []

    def is_running(self, name: str) -> bool:
        with self._lock:
            return name not in self._down

    # -- faults ------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        before = self._open_connections("kill", name)
        self._fault("kill", name)
        self._closed_since(before, "kill", name, CLOSE_SEEN_WAIT_S)
        self._went_down(name, requested=True, signal=9)

    def terminate(self, name: str, grace_s: float) -> int | None:
        before = self._open_connections("terminate", name)
        self._fault("terminate", name, timeout_s=grace_s + FAULT_CMD_TIMEOUT_S)
        self._closed_since(before, "terminate", name, grace_s + CLOSE_SEEN_WAIT_S)
        self._went_down(name, requested=True, signal=15)
        return None

    def pause(self, name: str) -> None:
        self._fault("pause", name)
        with self._lock:
            self._paused.add(name)

    def resume(self, name: str) -> None:
        with self._lock:
            if name not in self._paused:
                return
        self._fault("resume", name)
        with self._lock:
            self._paused.discard(name)

    def restart(self, name: str) -> None:
        """The ``restart`` template, if given: without one the orchestrator's own
        policy starts the worker again, seen when its name writes again."""
        if "restart" in self.faults.templates:
            self._fault("restart", name)
            with self._lock:
                self._to_restart.discard(name)

    def scale_to(self, count: int, queue: str, grace_s: float) -> ScaleDone:
        """The ``scale`` template with ``{n}`` = ``count``, checked by three witnesses,
        none of them a worker: the broker (its consumer count of ``queue``, one per
        contract v1 worker), the follower (Compose's "NAME exited with code N") and
        the command's own output (Compose's "Stopping ..." / "Container ... Stopped").

        A scale-down is done when the broker counts at most ``count`` consumers and
        the follower saw each worker stop that the command says it stopped (where it
        says nothing, as ``kubectl scale``, as many as the count fell), with a stop's
        exit code: those are terminations, recorded with their exits. A scale-up is
        done when the broker counts ``count`` consumers; the new workers are the
        names that then write. ClusterError otherwise: the step did not happen as
        asked, and the claims that need it say so. One scale at a time."""
        if not self._scale_lock.acquire(timeout=SCALE_LOCK_WAIT_S):
            raise ClusterError(f"--fault-cmd scale to {count}: an earlier scale is still running")
        try:
            return self._scale(count, queue, grace_s)
        finally:
            self._scale_lock.release()

    def _scale(self, count: int, queue: str, grace_s: float) -> ScaleDone:
        # Both counts are lower bounds of the workers running (the broker's lags a
        # worker that just connected; the follower's misses one that wrote nothing):
        # the larger says whether the step scales up, and only where they agree is it
        # the count to scale back to (the command's own word is better, below).
        running = [n for n in self.workers() if self.is_running(n)]
        consumers = self._consuming(queue, "scale")
        before = max(consumers, len(running))
        if count > before and not self.replays:
            raise ClusterError(
                f"--fault-cmd scale to {count}: a scale-up on --backend external needs a "
                "follower that replays from the run's start (--worker-logs with {since}): "
                "one that attaches late to a new worker misses its first lines")
        with self._lock:
            mark = len(self._exits)
            starts_mark = len(self._starts)
            self._scale_bound_s = max(self._scale_bound_s,
                                      2 * grace_s + FAULT_CMD_TIMEOUT_S + CLOSE_SEEN_WAIT_S
                                      + SCALE_UP_WAIT_S)
        issued_ts = time.time()
        agreed = before if consumers == len(running) else None
        try:
            out = self._run_template(self.faults.argv("scale", "", count), "scale",
                                     f"to {count}", grace_s + FAULT_CMD_TIMEOUT_S)
        except ClusterError:
            self._remember_count(agreed)  # it may have scaled some of the way
            raise
        stopped = {self._name_of(n) for n in _named(out, _STOPPED_BY_COMMAND)}
        created = _named(out, _CREATED_BY_COMMAND)
        self._remember_count(count + len(stopped) - len(created) if stopped or created
                             else agreed)
        if stopped:
            victims = self._scaled_down(queue, count, stopped, mark, grace_s + CLOSE_SEEN_WAIT_S)
            return ScaleDone(issued_ts, terminated=tuple(victims))
        if count < before:
            raise ClusterError(
                f"--fault-cmd scale to {count}: the command did not say which workers it "
                "stopped (Compose says 'Stopping and removing NAME' or 'Container NAME "
                "Stopped'; kubectl scale says nothing): the terminations cannot be known, and "
                "a crash could pass for one of them")
        if count > before:
            self._await_consumers(queue, count, SCALE_UP_WAIT_S)
        with self._lock:
            started = tuple(dict.fromkeys(n for n, _ in self._starts[starts_mark:]))
        return ScaleDone(issued_ts, started=started)

    def _remember_count(self, workers: int | None) -> None:
        """The count before the run's first scale, for the scale-back at the end
        (None: not known)."""
        with self._lock:
            if not self._scaled:
                self._scaled = True
                self._restore_count = workers

    def _scaled_down(self, queue: str, count: int, expected: set[str], mark: int,
                     wait_s: float) -> list[str]:
        """Wait (bounded) until the broker counts at most ``count`` consumers and the
        follower saw each worker of ``expected`` (the command's word) exit after
        ``mark``; then every exit since ``mark`` must be one of them, once, with a
        stop's code. Records each stop as requested, with the code Compose printed;
        ClusterError when the witnesses disagree."""
        deadline = time.monotonic() + wait_s
        while True:
            now = self._consumers(queue) if self._consumers is not None else None
            with self._lock:
                exits = self._exits[mark:]
            names = [self._name_of(n) for n, _, _ in exits]
            if now is not None and now <= count and expected <= set(names):
                break
            if time.monotonic() >= deadline or self._stopping.is_set():
                counted = "did not answer" if now is None else f"count {now}"
                raise ClusterError(
                    f"--fault-cmd scale to {count}: after {wait_s:g} s the broker's consumers "
                    f"of {queue!r} {counted}, and the follower named "
                    f"{len(expected & set(names))} of the {len(expected)} workers the command "
                    "stopped (it must print 'NAME exited with code N' as docker compose logs "
                    "-f does): the terminations are not known")
            time.sleep(CLOSE_POLL_S)
        extra = sorted(set(names) - expected)
        twice = sorted({n for n in names if names.count(n) > 1})
        crashed = sorted({self._name_of(n) for n, code, _ in exits
                          if code not in STOP_EXIT_CODES})
        if extra or twice or crashed:
            said = (f"{', '.join(extra)} exited besides the {len(expected)} the command "
                    "stopped" if extra else
                    f"{', '.join(twice)} exited more than once" if twice else
                    f"{', '.join(crashed)} exited with a code not a stop's (0, 143, 137)")
            raise ClusterError(f"--fault-cmd scale to {count}: {said}: a crash during a scale "
                               "cannot be told from its stops")
        for name, code, exit_ts in exits:
            self._went_down(self._name_of(name), requested=True, signal=_signal_of(code),
                            ts=exit_ts, code=code, restart=False, how="follower: exited")
        return list(dict.fromkeys(names))

    def _await_consumers(self, queue: str, count: int, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            now = self._consumers(queue) if self._consumers is not None else None
            if now is not None and now >= count:
                return
            if time.monotonic() >= deadline or self._stopping.is_set():
                seen = "did not answer" if now is None else f"count {now}"
                raise ClusterError(f"--fault-cmd scale to {count}: after {wait_s:g} s the "
                                   f"broker's consumers of {queue!r} {seen}")
            time.sleep(CLOSE_POLL_S)

    def _consuming(self, queue: str, fault: str) -> int:
        found = self._consumers(queue) if self._consumers is not None else None
        if found is None:
            raise ClusterError(f"--fault-cmd {fault}: the management API did not list the "
                               f"consumers of {queue!r}, so the fault could not be checked")
        return found

    def _name_of(self, exited: str) -> str:
        """The worker name (the follower's prefix) of a container the follower saw
        exit: Compose names the container ``<project>_worker_1`` (v1) or
        ``<project>-worker-1`` (v2) and prefixes its lines ``worker_1`` /
        ``worker-1``."""
        with self._lock:
            seen = set(self._seen)
        if exited in seen:
            return exited
        match = sorted(n for n in seen if exited.endswith(("_" + n, "-" + n)))
        return max(match, key=len) if match else exited[:WORKER_NAME_MAX]

    def _on_exit(self, name: str, code: int, seen: float) -> None:
        with self._lock:
            self._exits.append((name, code, seen))

    def heal_all(self) -> None:
        with self._lock:
            paused = sorted(self._paused)
        for name in paused:
            with contextlib.suppress(ClusterError):
                self.resume(name)

    # -- internals -----------------------------------------------------------------------
    def _fault(self, fault: str, name: str, timeout_s: float = FAULT_CMD_TIMEOUT_S) -> None:
        self._run_template(self.faults.argv(fault, name), fault, f"on {name}", timeout_s)

    def _run_template(self, argv: list[str], fault: str, what: str,
                      timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            done = self._run_cmd(argv, timeout_s)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"--fault-cmd {fault} {what}: no answer in {timeout_s:g} s "
                               f"({masked(shlex.join(argv))})") from None
        except OSError as exc:
            raise ClusterError(f"--fault-cmd {fault} {what}: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or [""]
            raise ClusterError(f"--fault-cmd {fault} {what} exited {done.returncode}: "
                               f"{tail[0][:300]}")
        return done

    def _open_connections(self, fault: str, name: str) -> set[str]:
        """The deployment's connections before a kill or terminate (ClusterError when
        the broker cannot say: the fault could not be checked, so it is not made)."""
        found = self._connections() if self._connections is not None else None
        if found is None:
            raise ClusterError(f"--fault-cmd {fault} on {name}: the management API did not "
                               "list the connections, so the fault could not be checked")
        return found

    def _closed_since(self, before: set[str], fault: str, name: str, wait_s: float) -> None:
        """The command said it worked; the broker must agree: a connection of the
        deployment that was open before it closed (bounded). A command that exits 0
        and kills nothing (``kill -KILL 1`` inside a container: PID 1 ignores it)
        would otherwise be taken as a kill, and a kill explains duplicates."""
        deadline = time.monotonic() + wait_s
        while True:
            now = self._connections() if self._connections is not None else None
            if now is not None and before - now:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"--fault-cmd {fault} on {name} exited 0, but no connection of the "
                    f"deployment closed within {wait_s:g} s: the command did not end a "
                    "worker (docs/external.md)")
            time.sleep(CLOSE_POLL_S)

    def _went_down(self, name: str, requested: bool, signal: int | None,
                   ts: float | None = None, code: int | None = None, restart: bool = True,
                   how: str = "fault command") -> None:
        now = time.time() if ts is None else ts
        with self._lock:
            self._down[name] = now
            if restart:
                self._to_restart.add(name)
        # The orchestrator said the command worked: the harness records the exit it
        # caused (it cannot watch the process of a worker it does not own).
        self.recorder.record(vocab.WORKER_EXITED, "cluster", worker=name, ts=now,
                             code=code if code is not None else -(signal or 0), signal=signal,
                             requested=requested, seen=how)

    def _on_line(self, name: str, line: str, seen: float) -> None:
        """A line of ``name``: its first ever starts a worker of that name in the
        history; after the harness took it down, a new process of it when the line is
        a contract ``connected`` or ``ready`` stamped after the fault, or any line
        read more than RESTART_SLACK_S after it (a dead process's lines can lag)."""
        with self._lock:
            down_at = self._down.get(name)
            first = name not in self._seen
            self._seen.add(name)
            reborn = down_at is not None and (seen > down_at + RESTART_SLACK_S
                                              or _fresh_after(line, down_at))
            if reborn:
                del self._down[name]
        if first or reborn:
            with self._lock:
                self._starts.append((name, seen))
            self.recorder.record(vocab.WORKER_STARTED, "cluster", worker=name, ts=seen,
                                 seen="log line")


def _stamped_event(line: str) -> bool:
    """A contract v1 JSON line with the worker's own ts and a task id (cheap test)."""
    return line.startswith("{") and '"ts"' in line and '"id"' in line and '"event"' in line


def _fresh_after(line: str, ts: float) -> bool:
    """Is ``line`` a contract v1 ``connected``/``ready`` event the worker stamped after
    ``ts`` (a process that started since)?"""
    if not line.startswith("{") or ('"connected"' not in line and '"ready"' not in line):
        return False
    import json

    try:
        obj = json.loads(line)
    except ValueError:
        return False
    when = obj.get("ts") if isinstance(obj, dict) else None
    return (isinstance(obj, dict) and obj.get("event") in _FRESH_EVENTS
            and isinstance(when, int | float) and not isinstance(when, bool) and when > ts)


def _connection_names(endpoint: BrokerEndpoint) -> Callable[[], set[str] | None]:
    """The management API's names of the open connections of the endpoint's vhost,
    without the harness's own; None when it does not answer."""
    from harness.broker import BrokerAdmin

    def names() -> set[str] | None:
        admin = BrokerAdmin(endpoint)
        try:
            found = admin.connection_names(endpoint.vhost)
        except (ClusterError, OSError):
            return None
        finally:
            admin.close()
        if found is None:
            return None
        return {n for n, label in found if not label.startswith(OWN_CONNECTION_PREFIX)}

    return names


def _consumer_count(endpoint: BrokerEndpoint) -> Callable[[str], int | None]:
    """The consumers of a queue of the endpoint's vhost (the harness consumes none
    there); None when the management API does not answer or the queue is gone."""
    from harness.broker import BrokerAdmin

    def consumers(queue: str) -> int | None:
        admin = BrokerAdmin(endpoint)
        try:
            info = admin.queue_info(queue)
            return None if info is None else info.consumers
        except (ClusterError, OSError):
            return None
        finally:
            admin.close()

    return consumers


def _plain(line: str) -> str:
    """A follower's or command's line without terminal control (Compose v2 writes
    "\\r\\x1b[K" before its status lines, even with --no-color)."""
    return _ANSI.sub("", line).replace("\r", "").strip()


def _named(done: subprocess.CompletedProcess[str], pattern: re.Pattern[str]) -> set[str]:
    """The containers the command's output names with ``pattern``."""
    out: set[str] = set()
    for line in re.split(r"[\r\n]", (done.stdout or "") + "\n" + (done.stderr or "")):
        m = pattern.match(_plain(line))
        if m is not None:
            out.add(m.group("v1") or m.group("v2"))
    return out


def _signal_of(code: int) -> int | None:
    """The signal a container's exit code says ended it (128 + N), if any."""
    return code - 128 if 128 < code < 160 else None


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                          check=False, stdin=subprocess.DEVNULL)
