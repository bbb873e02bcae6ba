"""The Cluster role: one broker and N workers. A backend starts, stops and reaches
things; it never judges.

Every backend records what it does into the run's ``Recorder``:
- each line a worker writes on stdout goes through one
  ``harness.cluster.lines.LineReader`` per worker (JSON or regex, one line cap,
  one timestamp rule, only contract v1 event types), and every raw line
  (stdout and stderr) is appended to ``<run_dir>/logs/<worker>.log``;
- ``worker_started`` / ``worker_exited`` (with ``requested`` False for a crash)
  and ``broker_started`` / ``broker_stopped`` under source ``cluster``.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import quote

from harness import vocab
from harness.history import Recorder

W = TypeVar("W")
# A broker the harness does not own (--broker-url) must answer within this.
EXTERNAL_READY_TIMEOUT_S: Final = 15.0
# How long close-connections waits for the broker to list a worker's connection.
CONNECTIONS_LISTED_WAIT_S: Final = 6.0
# A closed connection leaves the broker's tracking within this (it is milliseconds).
CONNECTIONS_CLOSED_WAIT_S: Final = 5.0

if TYPE_CHECKING:
    from harness.broker import BrokerAdmin, ConnectionInfo
    from harness.formats import FrameworkPublisher
    from harness.presets import Translate
    from harness.workload import Publisher


class ClusterError(Exception):
    """An infrastructure failure: the run's verdict becomes unknown (exit 2).

    The message is one line that says what failed and how to fix it.
    """


@dataclass(frozen=True)
class BrokerEndpoint:
    """How the harness (not the workers) reaches the broker."""

    amqp_url: str  # amqp://user:pass@host:port/vhost-quoted
    management_url: str  # http://host:port  (management HTTP API)
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"


# A channel checks its consumer timeout on its tick (RabbitMQ's default tick is 60 s,
# which would let a 5 s timeout fire up to a minute late).
CHANNEL_TICK_MS: Final = 1000


@dataclass(frozen=True)
class BrokerSettings:
    """Settings of a broker the harness starts (a scenario's ``cluster``), given to
    the node as Erlang application flags at boot, the same on every backend."""

    consumer_timeout_ms: int | None = None

    def erl_args(self) -> str:
        """``-rabbit KEY VALUE`` flags (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS); empty
        when nothing differs from the broker's defaults."""
        if self.consumer_timeout_ms is None:
            return ""
        return (f"-rabbit consumer_timeout {int(self.consumer_timeout_ms)} "
                f"-rabbit channel_tick_interval {CHANNEL_TICK_MS}")


@dataclass(frozen=True)
class WorkerSpec:
    """What to run as one worker.

    ``command`` for process backends; ``image`` for container backends. ``env`` is
    the worker contract v1 environment minus what the backend adds itself
    (``RABBITMQ_HOST``/``PORT``/``URL`` as the worker reaches the broker, and
    ``WORKER_ID``).
    """

    command: tuple[str, ...] = ()
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    events: str = "json"  # "json" or "regex:PATTERN"
    health_port: int = 8080

    def events_pattern(self) -> re.Pattern[str] | None:
        """None for contract v1's JSON lines, else the compiled ``regex:`` pattern.

        Raises ValueError with a one-line reason for anything else, or a regex
        without the named group ``id``.
        """
        if self.events == "json":
            return None
        from harness.presets import PRESETS

        if self.events in PRESETS:
            return PRESETS[self.events].compiled()
        if not self.events.startswith("regex:"):
            raise ValueError(f"events {self.events!r}: use 'json', 'regex:PATTERN' or a "
                             f"preset ({', '.join(PRESETS)})")
        try:
            pattern = re.compile(self.events[len("regex:"):])
        except re.error as exc:
            raise ValueError(f"events regex {self.events!r}: {exc}") from None
        if "id" not in pattern.groupindex:
            raise ValueError(f"events regex {self.events!r} needs a named group (?P<id>...)")
        return pattern

    def event_translator(self) -> Translate | None:
        """A preset's translation of its lines into contract events, new for each
        worker (it may keep state per worker); None for ``json`` and ``regex:``."""
        from harness.presets import preset

        found = preset(self.events)
        return found.translator() if found is not None else None


def contract_env(name: str, *, host: str, port: int, user: str, password: str, vhost: str,
                 health_port: int) -> dict[str, str]:
    """The variables of worker contract v1 that a backend sets for one worker: how
    it reaches the broker (as parts and as a URL), its id and its health port."""
    url = (f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
           f"{quote(vhost, safe='')}")
    return {
        "RABBITMQ_HOST": host, "RABBITMQ_PORT": str(port), "RABBITMQ_USER": user,
        "RABBITMQ_PASSWORD": password, "RABBITMQ_VHOST": vhost, "RABBITMQ_URL": url,
        "WORKER_ID": name, "HEALTH_PORT": str(health_port),
    }


@dataclass(frozen=True)
class ScaleDone:
    """What an orchestrator's scale did, as the harness saw it: the workers that
    started and those it terminated (their exits are recorded by the cluster), from
    ``issued_ts`` (the command's start)."""

    issued_ts: float
    started: tuple[str, ...] = ()
    terminated: tuple[str, ...] = ()


class Cluster(abc.ABC):
    """Base class of the backends (``local``, ``docker``, ``external``)."""

    backend: str = "?"
    # The harness started the workers and owns the queues: it stops the one at the
    # end and reads the others destructively. False for ``--backend external``.
    owned: bool = True

    def __init__(self, run_id: str, run_dir: Path, recorder: Recorder) -> None:
        self.run_id = run_id
        self.run_dir = run_dir
        self.recorder = recorder
        # For the broker this cluster starts (set before ``start_broker``).
        self.broker_settings = BrokerSettings()
        # Lines about the engine the run's output ends with (``stop`` adds them).
        self.notices: list[str] = []

    # -- lifecycle -----------------------------------------------------------
    @abc.abstractmethod
    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Callable[[], None] | None = None) -> BrokerEndpoint:
        """Start a private broker, or check that ``external`` answers (bounded): a
        broker the harness does not own, already narrowed to the run's own vhost
        (``harness.scratch``).

        ``while_booting``, if given, is called once the broker is starting but before
        it answers (a backend that cannot overlap calls it after): the runner starts
        the workers there, so their start-up overlaps the broker's ~10 s boot.
        Raises ClusterError with a one-line message on failure.
        """

    @abc.abstractmethod
    def start_worker(self, name: str, spec: WorkerSpec) -> None:
        """Start one worker named ``name`` and begin collecting its events."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Tear everything down: workers, broker (if owned), sidecars, networks.

        Idempotent; never raises; safe to call from a signal handler path.
        """

    # -- what is there --------------------------------------------------------
    @abc.abstractmethod
    def workers(self) -> list[str]:
        """Names of the workers started and not yet removed (running or not)."""

    @abc.abstractmethod
    def is_running(self, name: str) -> bool:
        """True while the worker's process/container is alive (paused counts)."""

    def health_url(self, name: str) -> str | None:
        """Where the harness can GET the worker's /healthcheck, if reachable."""
        return None

    # -- faults (the nemesis calls these) -------------------------------------
    @abc.abstractmethod
    def kill(self, name: str) -> None:
        """SIGKILL the worker."""

    @abc.abstractmethod
    def terminate(self, name: str, grace_s: float) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns the exit code."""

    @abc.abstractmethod
    def pause(self, name: str) -> None:
        """Freeze the worker (SIGSTOP / docker pause)."""

    @abc.abstractmethod
    def resume(self, name: str) -> None:
        """Unfreeze the worker. A no-op when it is not paused."""

    @abc.abstractmethod
    def restart(self, name: str) -> None:
        """Start the worker again with its spec (after a kill, a crash, or live)."""

    def restart_broker(self) -> None:
        raise ClusterError(f"the {self.backend} backend cannot restart the broker")

    # -- the broker's evidence (``harness.brokerlog``) ---------------------------
    def broker_log(self) -> str | None:
        """The log of the broker this cluster started (None: it started none, or the
        backend cannot read it). Read before ``stop``."""
        return None

    def connection_owners(self) -> dict[str, str]:
        """Peer address as the broker sees a worker's connection (``host:port``, or
        the host alone where it tells a worker) -> the worker, from what the backend
        knows of its workers (their processes, their containers), never their word."""
        return {}

    # -- the harness's own broker clients (a fake backend brings fakes) ---------
    def broker_admin(self, endpoint: BrokerEndpoint) -> BrokerAdmin:
        """The harness's observer of the run's broker."""
        from harness.broker import BrokerAdmin

        return BrokerAdmin(endpoint)

    def publisher(self, endpoint: BrokerEndpoint, queue: str, recorder: Recorder,
                  timeout_s: float, task_format: str = vocab.FORMAT_CONTRACT_V1
                  ) -> Publisher | FrameworkPublisher:
        """The harness's publisher of the run's tasks: its own for contract v1, the
        framework's client for a framework format (``harness.formats``)."""
        if task_format != vocab.FORMAT_CONTRACT_V1:
            from harness.formats import publisher_for

            def queue_exists(name: str) -> bool:
                admin = self.broker_admin(endpoint)
                try:
                    return admin.passive_depth(name) is not None
                finally:
                    admin.close()

            return publisher_for(task_format, endpoint.amqp_url, queue, recorder, timeout_s,
                                 queue_exists=queue_exists)
        from harness.workload import Publisher

        return Publisher(endpoint.amqp_url, queue, recorder, timeout_s=timeout_s)

    def worker_connections(self, name: str) -> tuple[BrokerAdmin, list[ConnectionInfo]]:
        """The broker's admin and the AMQP connections it has open for worker
        ``name``, matched by what the backend knows of the worker (its process's
        local ports, its container's address), never by the worker's word."""
        raise ClusterError(f"the {self.backend} backend cannot tell a worker's connections")

    def close_connections(self, name: str) -> int:
        """The broker closes every connection of worker ``name`` (management API
        ``DELETE /api/connections/...``), as an operator or a node drain would: the
        worker's unacked deliveries are requeued. Returns how many it closed."""
        # From the broker's connection tracking (``BrokerAdmin.tracked_connections``),
        # which lists a connection at once; a worker reconnecting right now has none
        # for a moment.
        deadline = time.monotonic() + CONNECTIONS_LISTED_WAIT_S
        admin, conns = self.worker_connections(name)
        while not conns and time.monotonic() < deadline:
            time.sleep(0.1)
            admin, conns = self.worker_connections(name)
        if not conns:
            raise ClusterError(f"the broker lists no connection of {name} "
                               f"(waited {CONNECTIONS_LISTED_WAIT_S:g} s)")
        for c in conns:
            admin.close_connection(c.mgmt_name, "rmq-harness fault close-connections")
        # The broker's word that they are gone, not the API's 204 alone.
        names = {c.mgmt_name for c in conns}
        gone_by = time.monotonic() + CONNECTIONS_CLOSED_WAIT_S
        while names & {c.mgmt_name for c in admin.tracked_connections()}:
            if time.monotonic() >= gone_by:
                raise ClusterError(f"the broker still lists a connection of {name} "
                                   f"{CONNECTIONS_CLOSED_WAIT_S:g} s after closing it")
            time.sleep(0.1)
        return len(conns)

    def orchestrate(self, restart_policy: str, grace_s: float) -> None:  # noqa: B027
        """The scenario's restart policy and stop grace period, for a backend whose
        orchestrator applies them itself (swarm); before any worker starts."""

    @property
    def restarts_itself(self) -> bool:
        """True when the backend's orchestrator starts a dead worker again (swarm's
        restart policy): the supervisor's own restart policy then stands aside."""
        return False

    def stop_workers(self, grace_s: float) -> bool:
        """Stop every worker at the run's end through the orchestrator; False (the
        default): the backend has none, and the supervisor terminates each."""
        return False

    def scale_to(self, count: int, queue: str, grace_s: float) -> ScaleDone | None:
        """Scale the workers to ``count`` through the backend's orchestrator. None (the
        default): the backend has none, and the supervisor starts and terminates
        workers itself. ClusterError when the orchestrator's scale was not seen to
        happen."""
        return None

    def heal_all(self) -> None:  # noqa: B027 - optional hook: a backend may have nothing to heal
        """Undo every fault this backend can have applied (resume paused, etc.)."""


def worker_entry(table: Mapping[str, W], name: str) -> W:
    """The backend's record of worker ``name``; ClusterError (one line) naming the
    workers there are when it has none (both backends, one message)."""
    w = table.get(name)
    if w is None:
        raise ClusterError(f"no worker named {name!r} (workers: {', '.join(table) or 'none'})")
    return w
