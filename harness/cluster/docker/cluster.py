"""``DockerCluster``: one run's network, broker and worker containers (the layout
is in the package doc, ``harness.cluster.docker``)."""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from harness import vocab
from harness.broker import BrokerAdmin, ConnectionInfo
from harness.cluster.base import (
    BrokerEndpoint,
    Cluster,
    ClusterError,
    WorkerSpec,
    contract_env,
    worker_entry,
)
from harness.cluster.docker.brokerside import BrokerSide
from harness.cluster.lines import LineReader
from harness.flock import FileLock
from harness.history import Recorder
from harness.netfault import NET_FAULTS as _NET_FAULTS
from harness.netfault import SIDECAR_IMAGE, NetEnv, NetFault, Partition
from harness.relay import Relay

if TYPE_CHECKING:
    from harness.cluster.docker.shared import SharedDockerBroker

from harness.cluster.docker.engine import (
    AMQP_PORT,
    BROKER_ALIAS,
    BROKER_IMAGE,
    BROKER_START_TIMEOUT_S,
    ENGINE_LOCK_PATH,
    ENGINE_LOCK_TIMEOUT_S,
    LABEL,
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_SHARED,
    NAME_RE,
    RESTART_GRACE_S,
    RUN_ID_RE,
    SHARED_PREFIX,
    THREAD_JOIN_TIMEOUT_S,
    WORKER_IMAGE,
    connect,
    docker_errors,
    harness_identity,
    parse_docker_ts,
    require_image,
    sweep_stale,
)


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
    # Held while a line is handled and while a new start takes over the log: a
    # follower of an earlier start whose join timed out must not feed the lines the
    # new follower reads again from ``last_ns`` (one event, never two).
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0  # bumped by each start; a follower of an older one stops
    last_exit_code: int | None = None


class DockerCluster(BrokerSide, Cluster):
    """Cluster backend ``docker``. See the module docstring for the layout."""

    backend = "docker"
    # Holds the engine lock shared (ENGINE_LOCK_PATH): its containers are not swarm
    # tasks, and a swarm leave would drop their DNS names.
    guards_engine: ClassVar[bool] = True

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
        self._default_spec: WorkerSpec | None = None
        self._shared = shared
        self._vhost: str | None = None  # the run's vhost on the shared broker
        self._started_wall: float | None = None  # when the run's window on it began
        if not RUN_ID_RE.match(run_id):
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
        self.labels = {LABEL: "1", LABEL_RUN: run_id, **harness_identity()}
        if shared is not None:
            self.network_name = shared.network_name
            self.labels[LABEL_SHARED] = shared.session_id
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if client is None and shared is not None:
            client = shared.client
        self.client = client if client is not None else connect()
        # Before the first container: a swarm leave would drop their DNS names.
        self._engine_use = FileLock(ENGINE_LOCK_PATH)
        if self.guards_engine and not self._engine_use.take(fcntl.LOCK_SH,
                                                             ENGINE_LOCK_TIMEOUT_S):
            raise ClusterError(f"another harness process held {ENGINE_LOCK_PATH} for over "
                               f"{ENGINE_LOCK_TIMEOUT_S:.0f} s while it left the swarm; "
                               "run again")
        self.swept = sweep_stale(self.client)

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
        errors = docker_errors()
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
        if not NAME_RE.match(name):
            raise ValueError(f"worker name {name!r}: use letters, digits, '.', '_', '-'")
        if self._stopped:
            raise ClusterError("start_worker: the cluster is stopped")
        if self._broker is None and self._external is None:
            raise ClusterError("start_worker: start the broker first")
        with self._lock:
            if name in self._workers:
                raise ValueError(f"worker {name!r} already exists")
        regex = spec.events_pattern()
        container = self._create_container(name, spec)
        w = _Worker(
            name=name, spec=spec, container=container,
            log_path=self.run_dir / "logs" / f"{name}.log",
            reader=LineReader(self.recorder, name, regex,
                              translate=spec.event_translator()),
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
        except docker_errors().APIError as exc:
            raise ClusterError(f"cannot start worker {w.name}: {exc.explanation}") from exc
        w.exit_requested = False
        self.recorder.record(
            vocab.WORKER_STARTED, "cluster", worker=w.name, container=w.container.short_id,
            image=w.spec.image or self.worker_image,
        )
        with w.log_lock:
            w.generation += 1
            generation, since_ns = w.generation, w.last_ns
        t_log = threading.Thread(
            target=self._follow_logs, args=(w, w.container, since_ns, generation),
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

    def _follow_logs(self, w: _Worker, container: Any, since_ns: int,
                     generation: int = 0) -> None:
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
                        with w.log_lock:
                            if generation and w.generation != generation:
                                return  # superseded: the new start's follower reads on
                            self._handle_line(w, line, out, since_ns)
                if buf:
                    with w.log_lock:
                        if not generation or w.generation == generation:
                            self._handle_line(w, buf, out, since_ns)
        except Exception:
            return  # the container was removed, or the engine went away

    def _handle_line(self, w: _Worker, raw: bytes, out: IO[bytes], since_ns: int) -> None:
        """One line of the container's log. A line stamped at or before ``since_ns``
        (the last line read before this start of the container) was read before.
        Not a running maximum: the engine stamps stdout and stderr as it reads each,
        and a stderr line relayed late (a framework's log) can come in the stream
        before a stdout event stamped earlier, which must not be dropped."""
        text = raw.decode("utf-8", "replace").rstrip("\r")
        stamp, sep, rest = text.partition(" ")
        ns = parse_docker_ts(stamp) if sep else None
        if ns is None:
            rest, ns = text, 0
        elif ns <= since_ns:
            return  # seen before the container was started again
        else:
            w.last_ns = max(w.last_ns, ns)
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
        returned_ts = time.time()  # if the engine's FinishedAt cannot be read (removed)
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
        if exit_ts is None and code is not None:
            exit_ts = returned_ts
        requested, facts = self._exit_facts(w, container)
        self.recorder.record(
            vocab.WORKER_EXITED, "cluster", worker=w.name, code=code,
            signal=(code - 128) if code is not None and code > 128 else None,
            requested=requested, container=container.short_id, ts=exit_ts, **facts,
        )

    def _exit_facts(self, w: _Worker, container: Any) -> tuple[bool, dict[str, Any]]:
        """Whether the exit was asked for (by the harness; an orchestrator's backend
        adds its own record), and what else the exit event carries."""
        return w.exit_requested, {}

    def _get(self, name: str) -> _Worker:
        with self._lock:
            return worker_entry(dict(self._workers), name)

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

    def worker_connections(self, name: str) -> tuple[BrokerAdmin, list[ConnectionInfo]]:
        if self._endpoint is None:
            raise ClusterError("worker_connections: no broker started")
        ip = self.container_ip(name)
        admin = BrokerAdmin(self._endpoint)
        if ip is None:
            return admin, []
        # Through the relay (an external broker) every worker's peer is the host:
        # its connections cannot be told apart by address.
        if self._external is not None:
            raise ClusterError("close-connections: through the external broker's relay the "
                               "broker sees one peer for every worker")
        return admin, [c for c in admin.tracked_connections() if c.peer_host == ip]

    def connection_owners(self) -> dict[str, str]:
        if self._external is not None:  # one peer, the relay, for every worker
            return {}
        out: dict[str, str] = {}
        for name in self.workers():
            ip = self.container_ip(name)
            if ip is not None:
                out[ip] = name
        return out

    def broker_log(self) -> str | None:
        if self._broker is None:  # shared or external: not this run's broker
            return None
        try:
            raw = self._broker.logs(stdout=True, stderr=True)
        except Exception:
            return None
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)

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
        except docker_errors().APIError as exc:
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
        except docker_errors().APIError as exc:
            if "is not running" not in str(exc):
                raise ClusterError(f"terminate {name} failed: {exc.explanation}") from exc
        try:
            return int(w.container.wait(timeout=max(grace_s, 0.01))["StatusCode"])
        except Exception:
            pass  # still running after grace_s
        with contextlib.suppress(docker_errors().APIError):
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
        except docker_errors().APIError as exc:
            raise ClusterError(f"pause {name} failed: {exc.explanation}") from exc

    def resume(self, name: str) -> None:
        w = self._get(name)
        if self._status(w) != "paused":
            return
        try:
            w.container.unpause()
        except docker_errors().APIError as exc:
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
        self._engine_use.close()
        if self._shared is None:  # a shared broker's owner holds the engine still
            # Here, not at the top: swarm_engine imports this package.
            from harness.cluster.swarm_engine import leave_kept_swarm

            left = leave_kept_swarm(self.client)
            if left:
                self.notices.append(left)
