"""The ``docker`` backend: a RabbitMQ container and N worker containers on a
private, internal Docker network.

Layout of one run ``<run_id>``:

- network ``rmq-harness-<run_id>`` (``internal=True``: nothing reaches outside),
  with a subnet fixed at creation so the broker keeps one static address across
  restarts; dynamic addresses come from the upper half of the subnet only;
- broker ``rmq-harness-<run_id>-rabbitmq`` (image ``rmq-harness/rabbitmq:latest``),
  alias and hostname ``rabbitmq``; the harness reaches it from the host at its
  address on the network (the host routes to a bridge's subnet, internal or not);
- workers ``rmq-harness-<run_id>-<name>`` with the worker contract v1 environment,
  alias ``<name>``, unprivileged (no added capability), PID 1 is the worker itself
  as in a Kubernetes pod (so a worker must handle SIGTERM itself);
- sidecars for iptables faults (see ``harness.netfault``).

Every object carries the labels ``rmq-harness=1``, ``rmq-harness.run=<run_id>``,
``rmq-harness.pid=<harness pid>``, ``rmq-harness.pidstart=<its start time>`` and
``rmq-harness.host=<hostname>``; ``sweep_stale`` removes the objects of runs whose
harness process is gone.

Shared broker (``SharedDockerBroker``): one network and one broker container for a
session ``shared-<hex>`` (same layout and labels as a run, plus
``rmq-harness.shared=<session>``), reused by several ``DockerCluster(shared=...)``
runs. Such a run creates no network and no broker: it gets a vhost named after its
run id (its endpoint and its workers' ``RABBITMQ_VHOST``/``RABBITMQ_URL`` point at
it), its workers and sidecars join the shared network (labels of the run, plus
``rmq-harness.shared``), and its ``stop`` removes only them and the vhost. The
shared objects carry the harness pid like any run, so ``sweep_stale`` leaves them
alone while that process lives. A broker restart from a run is refused while
another run uses the shared broker (it would be an unrecorded fault there).

External broker (``start_broker(endpoint)``, ``--broker-url``): no broker
container. The run's network stays internal; its workers reach the broker
through a relay in the harness process that listens on the host's address on
that network (``harness.relay``), with the user, password and vhost of the
endpoint (the runner's scratch vhost, ``harness.scratch``) in their
environment. A broker restart is refused: the broker is not the harness's.

The broker is started with the plain Docker SDK rather than testcontainers'
``RabbitMqContainer``: that class waits on a *published* port (internal networks
publish none), adds its own labels and session, and cannot give a static address
or a network alias at creation; the SDK is one dependency fewer on this path and
gives full control over stop/start of the same container.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import psutil

from harness import vocab
from harness.broker import BrokerAdmin, amqp_display
from harness.cluster.base import (
    BrokerEndpoint,
    Cluster,
    ClusterError,
    WorkerSpec,
    contract_env,
)
from harness.cluster.lines import LineReader
from harness.history import Recorder
from harness.netfault import NET_FAULTS as _NET_FAULTS
from harness.netfault import SIDECAR_IMAGE, NetEnv, NetFault, Partition
from harness.relay import Relay

BROKER_IMAGE: Final = "rmq-harness/rabbitmq:latest"
WORKER_IMAGE: Final = "rmq-harness/worker:latest"
BROKER_ALIAS: Final = "rabbitmq"
AMQP_PORT: Final = 5672
MGMT_PORT: Final = 15672
LABEL: Final = "rmq-harness"
LABEL_RUN: Final = "rmq-harness.run"
LABEL_PID: Final = "rmq-harness.pid"
# A broker the harness does not own must answer within this.
EXTERNAL_READY_TIMEOUT_S: Final = 15.0
LABEL_PIDSTART: Final = "rmq-harness.pidstart"
LABEL_HOST: Final = "rmq-harness.host"
LABEL_ROLE: Final = "rmq-harness.role"
LABEL_SHARED: Final = "rmq-harness.shared"
SHARED_PREFIX: Final = "shared-"
MGMT_TIMEOUT_S: Final = 10.0
_MGMT_ATTEMPTS: Final = 3
_GUEST_AUTH: Final = "Basic Z3Vlc3Q6Z3Vlc3Q="  # guest:guest

BROKER_START_TIMEOUT_S: Final = 60.0
BROKER_STOP_TIMEOUT_S: Final = 15
ENGINE_TIMEOUT_S: Final = 60
THREAD_JOIN_TIMEOUT_S: Final = 10.0
RESTART_GRACE_S: Final = 10.0
LOG_TAIL_LINES: Final = 30
POOL_SIZE: Final = 256
_PIDSTART_TOLERANCE_S: Final = 1.0
_NETWORK_CREATE_ATTEMPTS: Final = 5
_RUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _docker_errors() -> Any:
    import docker.errors

    return docker.errors


def engine_url() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def connect(timeout_s: int = ENGINE_TIMEOUT_S) -> Any:
    """A ``docker.DockerClient`` that answered a ping, or ClusterError."""
    import docker

    try:
        # Each worker holds two connections for good (log stream, wait): a big pool.
        client = docker.from_env(timeout=timeout_s, max_pool_size=POOL_SIZE)
        client.ping()
    except Exception as exc:
        raise ClusterError(
            f"Docker engine not reachable at {engine_url()}: start it with "
            f"`.ci/docker-setup.sh` or `dockerd &` ({type(exc).__name__})"
        ) from exc
    return client


def require_image(client: Any, image: str) -> None:
    """ClusterError unless ``image`` exists locally (the harness never pulls)."""
    try:
        client.images.get(image)
    except _docker_errors().ImageNotFound as exc:
        raise ClusterError(
            f"image {image} not found: run `harness images build --offline`"
        ) from exc
    except _docker_errors().APIError as exc:
        raise ClusterError(f"cannot inspect image {image}: {exc.explanation}") from exc


def _harness_identity() -> dict[str, str]:
    pid = os.getpid()
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:  # pragma: no cover
        started = 0.0
    return {
        LABEL_PID: str(pid),
        LABEL_PIDSTART: f"{started:.3f}",
        LABEL_HOST: socket.gethostname(),
    }


def _owner_gone(labels: dict[str, str]) -> bool:
    """True when the labels name a harness process on this host that is gone."""
    if labels.get(LABEL_HOST) != socket.gethostname():
        return False
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return False
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    recorded = labels.get(LABEL_PIDSTART)
    if recorded is None:
        return False
    try:
        return abs(started - float(recorded)) > _PIDSTART_TOLERANCE_S  # pid reused
    except ValueError:
        return False


def sweep_stale(client: Any) -> list[str]:
    """Remove containers and networks of runs whose harness process is gone.

    Only objects labelled ``rmq-harness=1`` whose ``rmq-harness.host`` is this
    host and whose ``rmq-harness.pid`` is dead (or reused by a process started at
    another time). Returns what was removed (``container:<name>``,
    ``network:<name>``). Never raises.
    """
    removed: list[str] = []
    try:
        containers = client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
    except Exception:
        return removed
    for c in containers:
        try:
            if _owner_gone(c.labels or {}):
                c.remove(force=True, v=True)
                removed.append(f"container:{c.name}")
        except Exception:
            continue
    try:
        networks = client.networks.list(filters={"label": f"{LABEL}=1"})
    except Exception:
        return removed
    for n in networks:
        try:
            if _owner_gone(n.attrs.get("Labels") or {}):
                n.remove()
                removed.append(f"network:{n.name}")
        except Exception:
            continue
    return removed


def parse_docker_ts(text: str) -> int | None:
    """``2026-11-28T03:55:41.123456789Z`` -> nanoseconds since the epoch."""
    try:
        main, _, frac = text.rstrip("Z").partition(".")
        secs = int(datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
        digits = "".join(ch for ch in frac if ch.isdigit())[:9]
        return secs * 1_000_000_000 + int(digits.ljust(9, "0") or "0")
    except ValueError:
        return None


@dataclass
class _Worker:
    name: str
    spec: WorkerSpec
    container: Any
    log_path: Path
    reader: LineReader
    exit_requested: bool = False
    last_ns: int = 0  # docker timestamp of the last log line handled
    threads: list[threading.Thread] = field(default_factory=list)
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    last_exit_code: int | None = None


class DockerCluster(Cluster):
    """Cluster backend ``docker``. See the module docstring for the layout."""

    backend = "docker"

    def __init__(
        self,
        run_id: str,
        run_dir: Path,
        recorder: Recorder,
        *,
        broker_image: str = BROKER_IMAGE,
        worker_image: str = WORKER_IMAGE,
        sidecar_image: str = SIDECAR_IMAGE,
        client: Any = None,
        broker_timeout_s: float = BROKER_START_TIMEOUT_S,
        shared: SharedDockerBroker | None = None,
    ) -> None:
        """``shared``: use that started broker and network (one vhost for this run)
        instead of creating a private network and broker."""
        super().__init__(run_id, run_dir, recorder)
        # Everything stop() looks at exists before anything can fail.
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._faults: dict[str, list[NetFault]] = {}
        self._broker: Any = None
        self._broker_ip: str | None = None
        self._gateway_ip: str | None = None  # the host's address on the run's network
        # A broker the harness does not own, reached through a relay on the host.
        self._external: BrokerEndpoint | None = None
        self._relay: Relay | None = None
        self._network: Any = None
        self._endpoint: BrokerEndpoint | None = None
        self._stopped = False
        self._broker_log_thread: threading.Thread | None = None
        self._next_index = 0
        self._default_spec: WorkerSpec | None = None
        self._shared = shared
        self._vhost: str | None = None  # the run's vhost on the shared broker
        self._started_wall: float | None = None  # when the run's window on it began
        if not _RUN_ID_RE.match(run_id):
            raise ValueError(f"run id {run_id!r}: use letters, digits, '.', '_', '-' (max 63)")
        if shared is not None and run_id.startswith(SHARED_PREFIX):
            raise ValueError(f"run id {run_id!r}: the prefix {SHARED_PREFIX!r} is for shared "
                             "brokers; pick another run id")
        self.broker_image = broker_image
        self.worker_image = worker_image
        self.sidecar_image = sidecar_image
        self.broker_timeout_s = broker_timeout_s
        self.network_name = f"rmq-harness-{run_id}"
        self.prefix = f"rmq-harness-{run_id}"
        self.labels = {LABEL: "1", LABEL_RUN: run_id, **_harness_identity()}
        if shared is not None:
            self.network_name = shared.network_name
            self.labels[LABEL_SHARED] = shared.session_id
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if client is None and shared is not None:
            client = shared.client
        self.client = client if client is not None else connect()
        self.swept = sweep_stale(self.client)

    # -- network ------------------------------------------------------------------
    def _ensure_network(self) -> Any:
        if self._network is not None:
            return self._network
        import docker.types

        errors = _docker_errors()
        with contextlib.suppress(errors.NotFound):
            old = self.client.networks.get(self.network_name)
            old.remove()  # left by an earlier try of this very run id
        last_error = ""
        for _ in range(_NETWORK_CREATE_ATTEMPTS):
            # Let the engine pick a free subnet, then fix it so the broker can have
            # a static address (user-given addresses need a user-given subnet).
            probe = self.client.networks.create(
                self.network_name, driver="bridge", internal=True, labels=self.labels
            )
            try:
                probe.reload()
                cfg = (probe.attrs.get("IPAM", {}).get("Config") or [{}])[0]
                subnet = ipaddress.IPv4Network(cfg["Subnet"])
                gateway = str(cfg.get("Gateway") or next(subnet.hosts()))
            finally:
                probe.remove()
            lower, upper = list(subnet.subnets(prefixlen_diff=1))
            hosts = (str(h) for h in lower.hosts())
            broker_ip = next(h for h in hosts if h != gateway)
            ipam = docker.types.IPAMConfig(
                pool_configs=[
                    docker.types.IPAMPool(subnet=str(subnet), gateway=gateway, iprange=str(upper))
                ]
            )
            try:
                self._network = self.client.networks.create(
                    self.network_name, driver="bridge", internal=True, labels=self.labels,
                    ipam=ipam,
                )
            except errors.APIError as exc:  # another engine user took the subnet meanwhile
                last_error = str(exc.explanation)
                continue
            self._broker_ip = broker_ip
            self._gateway_ip = gateway
            return self._network
        raise ClusterError(f"cannot create network {self.network_name}: {last_error}")

    # -- broker ---------------------------------------------------------------------
    @property
    def endpoint(self) -> BrokerEndpoint | None:
        return self._endpoint

    @property
    def broker_ip(self) -> str | None:
        return self._broker_ip

    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Callable[[], None] | None = None) -> BrokerEndpoint:
        if external is not None and (self._shared is not None or self._broker is not None):
            raise ClusterError("an external broker is for a cluster without a broker of its own "
                               "(not shared, not started): one broker per run")
        if self._endpoint is not None:
            return self._endpoint
        if external is not None:
            return self._start_external(external, while_booting)
        if self._shared is not None:
            endpoint = self._start_on_shared(self._shared)
            if while_booting is not None:
                while_booting()
            return endpoint
        require_image(self.client, self.broker_image)
        self._ensure_network()
        assert self._broker_ip is not None
        name = f"{self.prefix}-{BROKER_ALIAS}"
        errors = _docker_errors()
        with contextlib.suppress(errors.NotFound):
            self.client.containers.get(name).remove(force=True, v=True)
        try:
            self._broker = self.client.containers.create(
                self.broker_image,
                name=name,
                hostname=BROKER_ALIAS,
                labels={**self.labels, LABEL_ROLE: "broker"},
                network=self.network_name,
                networking_config={
                    self.network_name: self.client.api.create_endpoint_config(
                        aliases=[BROKER_ALIAS], ipv4_address=self._broker_ip
                    )
                },
                detach=True,
            )
            self._check_stopped("start_broker")
            self._broker.start()
        except errors.APIError as exc:
            raise ClusterError(f"cannot start the broker container: {exc.explanation}") from exc
        ip = self._broker_ip
        endpoint = BrokerEndpoint(
            amqp_url=f"amqp://guest:guest@{ip}:{AMQP_PORT}/%2F",
            management_url=f"http://{ip}:{MGMT_PORT}",
        )
        if while_booting is not None:
            while_booting()  # workers start, and retry, while the broker boots
        self._wait_broker_ready()
        self._endpoint = endpoint
        self.recorder.record(
            vocab.BROKER_STARTED, "cluster", container=self._broker.short_id, host=ip,
            backend=self.backend,
        )
        return self._endpoint

    def _start_external(self, external: BrokerEndpoint,
                        while_booting: Callable[[], None] | None) -> BrokerEndpoint:
        """A broker the harness does not own: the run's network stays internal and
        its workers reach the broker through a relay on the host's address on that
        network (``harness.relay``), and nothing else."""
        self._check_stopped("start_broker")
        self._ensure_network()
        assert self._gateway_ip is not None
        target = urllib.parse.urlsplit(external.amqp_url)
        host = target.hostname or "localhost"
        port = target.port or (5671 if target.scheme == "amqps" else 5672)
        BrokerAdmin(external).wait_ready(min(self.broker_timeout_s, EXTERNAL_READY_TIMEOUT_S))
        relay = Relay(self._gateway_ip, host, port)
        try:
            relay.start()
        except OSError as exc:
            raise ClusterError(f"cannot listen on {self._gateway_ip} for the broker relay: "
                               f"{exc.strerror}") from None
        self._relay, self._external, self._endpoint = relay, external, external
        self.recorder.record(vocab.BROKER_STARTED, "cluster", owned=False, backend=self.backend,
                             url=amqp_display(external.amqp_url),
                             relay=f"{self._gateway_ip}:{relay.port}")
        if while_booting is not None:
            while_booting()
        return external

    @property
    def shared(self) -> SharedDockerBroker | None:
        return self._shared

    @property
    def vhost(self) -> str | None:
        """The run's vhost on the shared broker (None with a broker of its own)."""
        return self._vhost

    def _start_on_shared(self, shared: SharedDockerBroker) -> BrokerEndpoint:
        """No network, no broker: a fresh vhost named after the run on ``shared``."""
        if self._stopped:
            raise ClusterError("start_broker: the cluster is stopped")
        container_id, ip = shared.container_id, shared.broker_ip
        if container_id is None or ip is None:
            raise ClusterError(
                "the shared broker is not started: call SharedDockerBroker.start() first"
            )
        errors = _docker_errors()
        try:
            broker = self.client.containers.get(container_id)
            network = self.client.networks.get(self.network_name)
        except errors.NotFound as exc:
            raise ClusterError(
                f"the shared broker {shared.session_id} is gone (container or network "
                "removed): start a new SharedDockerBroker"
            ) from exc
        except errors.APIError as exc:
            raise ClusterError(f"cannot inspect the shared broker: {exc.explanation}") from exc
        self._started_wall = time.time()
        endpoint = shared.new_vhost(self.run_id)
        shared._attach(self.run_id)
        with self._lock:
            self._vhost = self.run_id
            self._broker, self._broker_ip, self._network = broker, ip, network
            self._endpoint = endpoint
        self.recorder.record(
            vocab.BROKER_STARTED, "cluster", container=broker.short_id, host=ip,
            backend=self.backend, owned=False, shared=shared.session_id, vhost=self.run_id,
        )
        self._check_stopped("start_broker")
        return endpoint

    def _broker_tail(self) -> str:
        try:
            raw = self._broker.logs(tail=LOG_TAIL_LINES, stdout=True, stderr=True)
            text = re.sub(r"\x1b\[[0-9;]*m", "", raw.decode("utf-8", "replace"))
            lines = text.strip().splitlines()
            return " | ".join(ln.strip() for ln in lines if ln.strip()) or "(none yet)"
        except Exception:
            return "(no logs)"

    def _wait_broker_ready(self) -> None:
        """Until the broker accepts an AMQP login and answers its management API."""
        import pika

        assert self._broker_ip is not None
        timeout_s = self.broker_timeout_s
        deadline = time.monotonic() + timeout_s
        params = pika.ConnectionParameters(
            host=self._broker_ip, port=AMQP_PORT,
            credentials=pika.PlainCredentials("guest", "guest"),
            socket_timeout=2, blocked_connection_timeout=2, connection_attempts=1,
            stack_timeout=3,
        )
        amqp_ok = False
        last = ""
        while time.monotonic() < deadline:
            self._check_stopped("waiting for the broker")
            self._broker.reload()
            if self._broker.status not in ("running", "created", "restarting"):
                raise ClusterError(
                    f"the broker container exited ({self._broker.status}); last log lines: "
                    f"{self._broker_tail()}"
                )
            try:
                if not amqp_ok:
                    pika.BlockingConnection(params).close()
                    amqp_ok = True
                req = urllib.request.Request(
                    f"http://{self._broker_ip}:{MGMT_PORT}/api/overview",
                    headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},  # guest:guest
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:
                last = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:200]
            time.sleep(0.3)
        raise ClusterError(
            f"the broker did not answer within {timeout_s:.0f} s ({last}); last log lines: "
            f"{self._broker_tail()}"
        )

    def restart_broker(self, stop_timeout_s: int = BROKER_STOP_TIMEOUT_S) -> None:
        """Stop the broker container (SIGTERM, then SIGKILL after ``stop_timeout_s``)
        and start the same container again: its data persists, its address and its
        alias ``rabbitmq`` stay; workers reconnect by name."""
        if self._external is not None:
            raise ClusterError("restart_broker: the broker is not the harness's (--broker-url); "
                               "a broker fault needs a broker of its own")
        if self._broker is None:
            raise ClusterError("restart_broker: no broker started")
        if self._shared is not None:
            others = sorted(set(self._shared.attached_runs()) - {self.run_id})
            if others:
                raise ClusterError(
                    f"restart_broker: the shared broker is also in use by {', '.join(others)}; "
                    "run broker restarts in sequence or with a broker of their own"
                )
        errors = _docker_errors()
        try:
            self._broker.stop(timeout=stop_timeout_s)
            self.recorder.record(vocab.BROKER_STOPPED, "cluster", container=self._broker.short_id)
            self._broker.start()
        except errors.APIError as exc:
            raise ClusterError(f"broker restart failed: {exc.explanation}") from exc
        self._wait_broker_ready()
        self._broker.reload()
        net = self._broker.attrs["NetworkSettings"]["Networks"].get(self.network_name) or {}
        aliases = net.get("Aliases") or []
        if net.get("IPAddress") != self._broker_ip or BROKER_ALIAS not in aliases:
            raise ClusterError(
                f"after restart the broker is at {net.get('IPAddress')} with aliases "
                f"{net.get('Aliases')}, expected {self._broker_ip} / {BROKER_ALIAS}"
            )
        self.recorder.record(
            vocab.BROKER_STARTED, "cluster", container=self._broker.short_id, host=self._broker_ip,
            restarted=True,
        )

    # -- workers ----------------------------------------------------------------------
    def container_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _worker_env(self, name: str, spec: WorkerSpec) -> dict[str, str]:
        env: dict[str, str] = {
            "RABBITMQ_USER": "guest",
            "RABBITMQ_PASSWORD": "guest",
            "RABBITMQ_VHOST": "/",
        }
        env.update({str(k): str(v) for k, v in spec.env.items()})
        if self._vhost is not None:
            env["RABBITMQ_VHOST"] = self._vhost  # the run's own vhost on a shared broker
        host, port = BROKER_ALIAS, AMQP_PORT
        if self._external is not None and self._relay is not None:
            ext = self._external
            env.update(RABBITMQ_USER=ext.user, RABBITMQ_PASSWORD=ext.password,
                       RABBITMQ_VHOST=ext.vhost)
            assert self._gateway_ip is not None
            host, port = self._gateway_ip, self._relay.port
        env.update(contract_env(name, host=host, port=port,
                                user=env["RABBITMQ_USER"], password=env["RABBITMQ_PASSWORD"],
                                vhost=env["RABBITMQ_VHOST"], health_port=spec.health_port))
        env["PYTHONUNBUFFERED"] = env.get("PYTHONUNBUFFERED", "1")
        return env

    def _create_container(self, name: str, spec: WorkerSpec) -> Any:
        image = spec.image or self.worker_image
        require_image(self.client, image)
        errors = _docker_errors()
        cname = self.container_name(name)
        with contextlib.suppress(errors.NotFound):
            self.client.containers.get(cname).remove(force=True, v=True)
        try:
            return self.client.containers.create(
                image,
                command=list(spec.command) if spec.command else None,
                name=cname,
                hostname=name,
                environment=self._worker_env(name, spec),
                labels={**self.labels, LABEL_ROLE: "worker", "rmq-harness.worker": name},
                network=self.network_name,
                networking_config={
                    self.network_name: self.client.api.create_endpoint_config(aliases=[name])
                },
                detach=True,
                privileged=False,
            )
        except errors.APIError as exc:
            raise ClusterError(f"cannot create worker {name}: {exc.explanation}") from exc

    def start_worker(self, name: str, spec: WorkerSpec) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"worker name {name!r}: use letters, digits, '.', '_', '-'")
        if self._stopped:
            raise ClusterError("start_worker: the cluster is stopped")
        if self._broker is None:
            raise ClusterError("start_worker: start the broker first")
        with self._lock:
            if name in self._workers:
                raise ValueError(f"worker {name!r} already exists")
        regex = spec.events_pattern()
        container = self._create_container(name, spec)
        w = _Worker(
            name=name, spec=spec, container=container,
            log_path=self.run_dir / "logs" / f"{name}.log",
            reader=LineReader(self.recorder, name, regex),
        )
        with self._lock:
            self._workers[name] = w
            self._default_spec = spec
        self._launch(w)

    def _check_stopped(self, what: str) -> None:
        if self._stopped:
            # stop() ran meanwhile (another thread, a signal): clean up what was made since.
            self._stopped = False
            self.stop()
            raise ClusterError(f"{what}: the cluster was stopped meanwhile")

    def _launch(self, w: _Worker) -> None:
        """Start the (created or exited) container and its log and wait threads."""
        self._check_stopped(f"start worker {w.name}")
        try:
            w.container.start()
            w.container.reload()
        except _docker_errors().APIError as exc:
            raise ClusterError(f"cannot start worker {w.name}: {exc.explanation}") from exc
        w.exit_requested = False
        self.recorder.record(
            vocab.WORKER_STARTED, "cluster", worker=w.name, container=w.container.short_id,
            image=w.spec.image or self.worker_image,
        )
        since_ns = w.last_ns
        t_log = threading.Thread(
            target=self._follow_logs, args=(w, w.container, since_ns),
            name=f"docker-logs-{w.name}", daemon=True,
        )
        t_wait = threading.Thread(
            target=self._wait_exit, args=(w, w.container),
            name=f"docker-wait-{w.name}", daemon=True,
        )
        w.threads = [t_log, t_wait]
        t_log.start()
        t_wait.start()

    def _join(self, w: _Worker) -> None:
        for t in w.threads:
            if t is not threading.current_thread():
                t.join(THREAD_JOIN_TIMEOUT_S)

    def _follow_logs(self, w: _Worker, container: Any, since_ns: int) -> None:
        kwargs: dict[str, Any] = {}
        if since_ns:
            kwargs["since"] = max(since_ns / 1e9 - 0.001, 1.0)
        buf = b""
        try:
            stream = container.logs(
                stream=True, follow=True, timestamps=True, stdout=True, stderr=True, **kwargs
            )
            with w.log_path.open("ab") as out:
                for chunk in stream:
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self._handle_line(w, line, out)
                if buf:
                    self._handle_line(w, buf, out)
        except Exception:
            return  # the container was removed, or the engine went away

    def _handle_line(self, w: _Worker, raw: bytes, out: IO[bytes]) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        stamp, sep, rest = text.partition(" ")
        ns = parse_docker_ts(stamp) if sep else None
        if ns is None:
            rest, ns = text, 0
        elif ns <= w.last_ns:
            return  # seen before the container was started again
        else:
            w.last_ns = ns
        out.write(rest.encode("utf-8") + b"\n")
        out.flush()
        ts = ns / 1e9 if ns else None
        try:
            w.reader.feed(rest, ts)
        except Exception:
            return  # a listener failed; the raw line is kept in the log

    def _wait_exit(self, w: _Worker, container: Any) -> None:
        code: int | None
        try:
            code = int(container.wait()["StatusCode"])
        except Exception:
            code = None
        w.last_exit_code = code
        # The engine's State.FinishedAt is when the process died; wait() returns
        # ~100 ms later, by when the broker may already have requeued its
        # deliveries. Checkers order by ts, so use the engine's time.
        exit_ts: float | None = None
        try:
            container.reload()
            ns = parse_docker_ts(str(container.attrs["State"]["FinishedAt"]))
            if ns is not None and ns > 0:
                exit_ts = ns / 1e9
        except Exception:
            exit_ts = None
        self.recorder.record(
            vocab.WORKER_EXITED, "cluster", worker=w.name, code=code,
            signal=(code - 128) if code is not None and code > 128 else None,
            requested=w.exit_requested, container=container.short_id, ts=exit_ts,
        )

    def _get(self, name: str) -> _Worker:
        with self._lock:
            w = self._workers.get(name)
        if w is None:
            raise ClusterError(f"no worker named {name!r} (have: {', '.join(self.workers())})")
        return w

    def _status(self, w: _Worker) -> str:
        try:
            w.container.reload()
            return str(w.container.status)
        except Exception:
            return "removed"

    # -- what is there ------------------------------------------------------------------
    def workers(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def is_running(self, name: str) -> bool:
        return self._status(self._get(name)) in ("running", "paused", "restarting")

    def container_ip(self, name: str) -> str | None:
        w = self._get(name)
        try:
            w.container.reload()
        except Exception:
            return None
        nets = w.container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        ip = (nets.get(self.network_name) or {}).get("IPAddress")
        return str(ip) if ip else None

    def health_url(self, name: str) -> str | None:
        ip = self.container_ip(name)
        if ip is None:
            return None
        return f"http://{ip}:{self._get(name).spec.health_port}/healthcheck"

    # -- faults -------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL the worker (a paused one is unpaused first). No-op when not running."""
        w = self._get(name)
        status = self._status(w)
        if status not in ("running", "paused"):
            return
        w.exit_requested = True
        try:
            if status == "paused":
                w.container.unpause()
            w.container.kill(signal="SIGKILL")
        except _docker_errors().APIError as exc:
            if "is not running" not in str(exc):
                raise ClusterError(f"kill {name} failed: {exc.explanation}") from exc

    def terminate(self, name: str, grace_s: float) -> int | None:
        """SIGTERM, up to ``grace_s`` for the worker to exit, then SIGKILL.

        Returns the exit code (also when it was not running)."""
        w = self._get(name)
        status = self._status(w)
        if status not in ("running", "paused"):
            return self._exit_code(w)
        w.exit_requested = True
        try:
            if status == "paused":
                w.container.unpause()
            w.container.kill(signal="SIGTERM")
        except _docker_errors().APIError as exc:
            if "is not running" not in str(exc):
                raise ClusterError(f"terminate {name} failed: {exc.explanation}") from exc
        try:
            return int(w.container.wait(timeout=max(grace_s, 0.01))["StatusCode"])
        except Exception:
            pass  # still running after grace_s
        with contextlib.suppress(_docker_errors().APIError):
            w.container.kill(signal="SIGKILL")
        try:
            return int(w.container.wait(timeout=THREAD_JOIN_TIMEOUT_S)["StatusCode"])
        except Exception:
            return self._exit_code(w)

    def _exit_code(self, w: _Worker) -> int | None:
        try:
            w.container.reload()
            return int(w.container.attrs["State"]["ExitCode"])
        except Exception:
            return w.last_exit_code

    def pause(self, name: str) -> None:
        w = self._get(name)
        status = self._status(w)
        if status == "paused":
            return
        if status != "running":
            raise ClusterError(f"pause {name}: the container is {status}")
        try:
            w.container.pause()
        except _docker_errors().APIError as exc:
            raise ClusterError(f"pause {name} failed: {exc.explanation}") from exc

    def resume(self, name: str) -> None:
        w = self._get(name)
        if self._status(w) != "paused":
            return
        try:
            w.container.unpause()
        except _docker_errors().APIError as exc:
            raise ClusterError(f"resume {name} failed: {exc.explanation}") from exc

    def restart(self, name: str, grace_s: float = RESTART_GRACE_S) -> None:
        """Start the worker again: a live one is terminated first (``grace_s``); a
        killed or crashed one is started again (same container, same spec); a
        removed container is re-created from the spec."""
        w = self._get(name)
        status = self._status(w)
        if status in ("running", "paused", "restarting"):
            self.terminate(name, grace_s)
        self._join(w)
        # iptables faults lived in the old network namespace: they are gone.
        self._drop_iptables_faults(name)
        if status == "removed":
            w.container = self._create_container(name, w.spec)
        self._launch(w)

    def add_worker(self, spec: WorkerSpec | None = None, name: str | None = None) -> str:
        """Start one more worker (``worker-<n>`` unless named) with ``spec`` or the
        spec of the last worker started."""
        spec = spec or self._default_spec
        if spec is None:
            raise ClusterError("add_worker: no spec given and no worker started yet")
        with self._lock:
            if name is None:
                while True:
                    self._next_index += 1
                    name = f"worker-{self._next_index}"
                    if name not in self._workers:
                        break
        self.start_worker(name, spec)
        return name

    def remove_worker(self, name: str, grace_s: float = RESTART_GRACE_S) -> int | None:
        """Terminate (SIGTERM, ``grace_s``, SIGKILL) and remove a worker; its exit code."""
        w = self._get(name)
        self.heal_network(name)
        code = self.terminate(name, grace_s)
        self._join(w)
        with contextlib.suppress(Exception):
            w.container.remove(force=True, v=True)
        with self._lock:
            self._workers.pop(name, None)
            self._faults.pop(name, None)
        return code

    def scale(self, n: int, spec: WorkerSpec | None = None, grace_s: float = RESTART_GRACE_S
              ) -> list[str]:
        """Add or remove (the last started first) workers until there are ``n``.
        Returns the names added or removed."""
        if n < 0:
            raise ValueError(f"scale: n must be >= 0, got {n}")
        changed: list[str] = []
        while len(self.workers()) < n:
            changed.append(self.add_worker(spec))
        while len(self.workers()) > n:
            name = self.workers()[-1]
            self.remove_worker(name, grace_s)
            changed.append(name)
        return changed

    # -- network faults -------------------------------------------------------------------
    def _net_env(self) -> NetEnv:
        if self._broker_ip is None or self._network is None:
            raise ClusterError("network faults need the broker started first")

        def resolve(name: str) -> Any:
            w = self._get(name)
            try:
                w.container.reload()
            except Exception as exc:
                raise ClusterError(f"worker {name} has no container") from exc
            return w.container

        return NetEnv(
            client=self.client, network_name=self.network_name, broker_ip=self._broker_ip,
            amqp_port=AMQP_PORT, resolve=resolve, aliases=lambda name: [name],
            labels=self.labels, sidecar_prefix=f"{self.prefix}-sidecar",
            sidecar_image=self.sidecar_image,
        )

    def _net_fault(self, kind: str, name: str) -> NetFault:
        self._get(name)
        with self._lock:
            faults = self._faults.setdefault(name, [])
            for f in faults:
                if f.name == kind:
                    f.heal()
                    faults.remove(f)
                    break
        fault = _NET_FAULTS[kind](self._net_env())
        fault.inject(name)
        with self._lock:
            self._faults.setdefault(name, []).append(fault)
        return fault

    def partition(self, name: str) -> None:
        """Disconnect the worker from the network (heal: reconnect, same alias)."""
        self._net_fault("partition", name)

    def blackhole(self, name: str) -> None:
        """Drop all packets between the worker and the broker (both ways)."""
        self._net_fault("blackhole", name)

    def reset_connections(self, name: str) -> None:
        """TCP-reset every packet of the worker's AMQP connection (both ways)."""
        self._net_fault("reset", name)

    def active_faults(self) -> dict[str, list[str]]:
        with self._lock:
            return {n: [f.name for f in fs] for n, fs in self._faults.items() if fs}

    def heal_network(self, name: str) -> None:
        """Heal every network fault on ``name``; raises ClusterError if one fails."""
        with self._lock:
            faults = list(self._faults.get(name, []))
        errors: list[str] = []
        for f in faults:
            try:
                f.heal()
            except Exception as exc:
                errors.append(f"{f.name}: {exc}")
                continue
            with self._lock, contextlib.suppress(ValueError):
                self._faults.get(name, []).remove(f)
        if errors:
            raise ClusterError(f"heal of {name} failed: {'; '.join(errors)}")

    def _drop_iptables_faults(self, name: str) -> None:
        with self._lock:
            faults = [f for f in self._faults.get(name, []) if not isinstance(f, Partition)]
        for f in faults:
            with contextlib.suppress(Exception):
                f.heal()
            with self._lock, contextlib.suppress(ValueError):
                self._faults.get(name, []).remove(f)

    def heal_all(self) -> None:
        """Heal every network fault and unpause every paused worker."""
        errors: list[str] = []
        for name in list(self._faults):
            try:
                self.heal_network(name)
            except ClusterError as exc:
                errors.append(str(exc))
        for name in self.workers():
            try:
                self.resume(name)
            except ClusterError as exc:
                errors.append(str(exc))
        if errors:
            raise ClusterError("; ".join(errors))

    # -- teardown ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Heal, remove workers, sidecars, broker and network. Idempotent, never raises."""
        self._stopped = True
        with contextlib.suppress(Exception):
            self.heal_all()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.exit_requested = True
            with contextlib.suppress(Exception):
                w.container.remove(force=True, v=True)
        for w in workers:
            with contextlib.suppress(Exception):
                self._join(w)
        with self._lock:
            self._workers.clear()
            self._faults.clear()
        if self._shared is not None:
            self._leave_shared(self._shared)
        elif self._broker is not None:
            with contextlib.suppress(Exception):
                raw = self._broker.logs(stdout=True, stderr=True, timestamps=True)
                (self.run_dir / "logs" / "rabbitmq.log").write_bytes(raw)
            with contextlib.suppress(Exception):
                self._broker.remove(force=True, v=True)
                self.recorder.record(vocab.BROKER_STOPPED, "cluster",
                                     container=self._broker.short_id)
        self._broker = None
        self._endpoint = None
        if self._relay is not None:
            with contextlib.suppress(Exception):
                self._relay.stop()
            self._relay = None
        # Whatever else carries this run's label (sidecars, half-created objects).
        with contextlib.suppress(Exception):
            for c in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}
            ):
                with contextlib.suppress(Exception):
                    c.remove(force=True, v=True)
        for _ in range(5):
            try:
                nets = self.client.networks.list(filters={"label": f"{LABEL_RUN}={self.run_id}"})
                for n in nets:
                    n.remove()
                break
            except Exception:
                time.sleep(0.5)
        self._network = None

    def _leave_shared(self, shared: SharedDockerBroker) -> None:
        """Drop the run's vhost and keep the broker's log of the run's window."""
        vhost, since = self._vhost, self._started_wall
        if vhost is not None:
            with contextlib.suppress(Exception):
                shared.delete_vhost(vhost)
            self._vhost = None
        shared._detach(self.run_id)
        if self._broker is not None and since is not None:
            with contextlib.suppress(Exception):
                # The engine stamps lines with the host clock, as time.time() is.
                raw = self._broker.logs(stdout=True, stderr=True, timestamps=True, since=since)
                (self.run_dir / "logs" / "rabbitmq.log").write_bytes(raw)


class SharedDockerBroker:
    """One internal network and one broker container shared by several runs.

    ``start(run_dir)`` creates them exactly as a ``DockerCluster`` does for itself
    (session id ``shared-<hex>``, the same labels plus ``rmq-harness.shared``) and
    waits until the broker answers; ``stop()`` removes them, and whatever runs left
    attached, and saves the broker's whole log to ``<run_dir>/logs/rabbitmq.log``.
    Runs use it with ``DockerCluster(..., shared=this)``; each gets its own vhost
    (``new_vhost``). Thread-safe; a context manager (``with SharedDockerBroker() as
    b: b.start(dir)``; ``__exit__`` stops it).
    """

    def __init__(
        self,
        session_id: str | None = None,
        *,
        broker_image: str = BROKER_IMAGE,
        client: Any = None,
        broker_timeout_s: float = BROKER_START_TIMEOUT_S,
        mgmt_timeout_s: float = MGMT_TIMEOUT_S,
    ) -> None:
        sid = session_id or f"{SHARED_PREFIX}{os.urandom(4).hex()}"
        if not sid.startswith(SHARED_PREFIX) or not _RUN_ID_RE.match(sid):
            raise ValueError(
                f"shared session id {sid!r}: use '{SHARED_PREFIX}' then letters, digits, "
                "'.', '_', '-' (max 63 in all)"
            )
        if mgmt_timeout_s <= 0:
            raise ValueError(f"mgmt_timeout_s must be > 0, got {mgmt_timeout_s}")
        self.session_id = sid
        self.network_name = f"rmq-harness-{sid}"
        self.broker_image = broker_image
        self.broker_timeout_s = broker_timeout_s
        self.mgmt_timeout_s = mgmt_timeout_s
        self._client = client
        self._lock = threading.RLock()
        self._owner: DockerCluster | None = None
        self._attached: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect()
        return self._client

    @property
    def started(self) -> bool:
        return self._owner is not None and self._owner.endpoint is not None

    def start(self, run_dir: Path) -> None:
        """Create the network and the broker and wait until it answers (bounded by
        ``broker_timeout_s``). ClusterError on failure, with nothing left behind."""
        with self._lock:
            if self._owner is not None:
                raise ClusterError(f"shared broker {self.session_id} already started")
            owner = DockerCluster(
                self.session_id, run_dir, Recorder(None), broker_image=self.broker_image,
                client=self.client, broker_timeout_s=self.broker_timeout_s,
            )
            owner.labels[LABEL_SHARED] = self.session_id
            self._owner = owner
        try:
            owner.start_broker()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Remove the broker, the network and any container still attached with the
        session's label. Saves the broker log first. Idempotent; never raises."""
        with self._lock:
            owner, self._owner = self._owner, None
            self._attached.clear()
        if owner is None:
            return
        with contextlib.suppress(Exception):
            # Runs that did not stop: their containers hold the network.
            for c in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_SHARED}={self.session_id}"}
            ):
                if (c.labels or {}).get(LABEL_RUN) != self.session_id:
                    with contextlib.suppress(Exception):
                        c.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            owner.stop()  # saves logs/rabbitmq.log, removes broker and network

    def __enter__(self) -> SharedDockerBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what is there ------------------------------------------------------------------
    @property
    def endpoint(self) -> BrokerEndpoint | None:
        """The default vhost ``/`` (for the harness; runs use ``new_vhost``)."""
        owner = self._owner
        return owner.endpoint if owner is not None else None

    @property
    def broker_ip(self) -> str | None:
        owner = self._owner
        return owner.broker_ip if owner is not None else None

    @property
    def container_id(self) -> str | None:
        owner = self._owner
        broker = owner._broker if owner is not None else None
        return str(broker.id) if broker is not None else None

    def attached_runs(self) -> list[str]:
        """Run ids with a vhost and not yet stopped."""
        with self._lock:
            return sorted(self._attached)

    def _attach(self, run_id: str) -> None:
        with self._lock:
            self._attached.add(run_id)

    def _detach(self, run_id: str) -> None:
        with self._lock:
            self._attached.discard(run_id)

    # -- vhosts ---------------------------------------------------------------------------
    def _mgmt(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        """One management API call (a few attempts on connection errors); the status.
        HTTP errors other than 404 raise ClusterError; 404 is returned."""
        ip = self.broker_ip
        if ip is None:
            raise ClusterError(
                "the shared broker is not started: call SharedDockerBroker.start() first"
            )
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": _GUEST_AUTH, "content-type": "application/json"}
        last = ""
        for attempt in range(_MGMT_ATTEMPTS):
            req = urllib.request.Request(
                f"http://{ip}:{MGMT_PORT}{path}", data=data, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(req, timeout=self.mgmt_timeout_s) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return 404
                detail = exc.read().decode("utf-8", "replace")[:200]
                raise ClusterError(
                    f"shared broker {method} {path}: HTTP {exc.code} {detail}".strip()
                ) from None
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))[:200]
                if attempt + 1 < _MGMT_ATTEMPTS:
                    time.sleep(0.5)
        raise ClusterError(
            f"shared broker {method} {path} failed: {last}; is {self.session_id} still "
            "running? (`docker ps --filter label=rmq-harness.shared`)"
        )

    def new_vhost(self, name: str) -> BrokerEndpoint:
        """A fresh vhost ``name`` (an old one of that name is deleted first) where
        ``guest`` may configure, write and read everything; its endpoint."""
        if not _RUN_ID_RE.match(name):
            raise ValueError(f"vhost {name!r}: use letters, digits, '.', '_', '-' (max 63)")
        ip = self.broker_ip
        if ip is None:
            raise ClusterError(
                "the shared broker is not started: call SharedDockerBroker.start() first"
            )
        q = quote(name, safe="")
        self._mgmt("DELETE", f"/api/vhosts/{q}")
        self._mgmt("PUT", f"/api/vhosts/{q}", {})
        try:
            status = self._mgmt(
                "PUT", f"/api/permissions/{q}/guest",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
            if status == 404:
                raise ClusterError(f"shared broker: vhost {name} vanished while being set up")
        except BaseException:
            with contextlib.suppress(Exception):
                self._mgmt("DELETE", f"/api/vhosts/{q}")
            raise
        return BrokerEndpoint(
            amqp_url=f"amqp://guest:guest@{ip}:{AMQP_PORT}/{q}",
            management_url=f"http://{ip}:{MGMT_PORT}",
            vhost=name,
        )

    def delete_vhost(self, name: str) -> None:
        """Delete the vhost and everything in it; a missing one is fine."""
        self._mgmt("DELETE", f"/api/vhosts/{quote(name, safe='')}")
