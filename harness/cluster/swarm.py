"""The ``swarm`` backend: the broker and the workers as Docker Swarm services on
this machine's engine, faults through the orchestrator where it has them.

Layout of one run ``<run_id>`` (labels as the docker backend's, so the sweeps
find everything by label, never by name):

- the engine is a single-node swarm for the run (``harness.cluster.swarm_engine``:
  made one if it was not, and left as it was found);
- overlay network ``rmq-harness-<run_id>`` (``internal``): the only path between
  the workers and the broker; the broker has the alias ``rabbitmq`` there;
- overlay networks ``rmq-harness-<run_id>-gw`` (the broker's) and
  ``...-workers-gw`` (the workers'), not internal: they give each task an address
  on ``docker_gwbridge``, which the host routes to; the harness reaches the broker
  and the workers' health ports there. Two, so that the workers share no network
  but the internal one with the broker (on a shared one the broker's name would
  resolve there too: a second path, around the network faults; and
  ``docker_gwbridge`` itself does not let containers talk). This kernel has no IPVS,
  so virtual-IP endpoints and the routing mesh do not work here: every service
  is ``endpoint_mode=dnsrr`` and publishes no port;
- service ``rmq-harness-<run_id>-rabbitmq`` (one replica, hostname ``rabbitmq`` so
  the node's name and its data directory survive a new task) with the volume
  ``rmq-harness-<run_id>-rabbitmq-data``; the harness's own clients reach it
  through two relays on 127.0.0.1 (``harness.relay``), retargeted when swarm
  replaces the broker's task (its address changes, the endpoint does not);
- service ``rmq-harness-<run_id>-worker``: one spec, N replicas; the worker image's
  HEALTHCHECK; restart policy ``any`` for ``restart_policy: always``, else
  ``none``. Worker ``worker-<slot>`` is the task in that slot (``WORKER_ID`` and
  the hostname are the template ``worker-{{.Task.Slot}}``); a task that replaces
  another in its slot is a new incarnation of that worker (``worker_started`` with
  ``task``, ``slot`` and ``replaces``: the task before and how it ended).

Faults: ``kill``, ``terminate``, ``pause`` act on the task's container (swarm then
does what its restart policy says; a paused task is not probed by the engine's
HEALTHCHECK, so it stays in place, a zombie as on docker, measured on Docker
20.10.24; a lasting fault a replacement ends is said in the run's notes,
``harness.replacements``); ``restart`` stops
the task and lets swarm start the next (restart policy ``any`` only); ``scale``
is ``docker service scale``; ``broker-restart`` is ``docker service update
--force`` of the broker's service; ``blackhole`` and ``reset`` are the docker
backend's iptables sidecars in the task's network namespace. ``partition`` is not
offered: swarm owns a task's network attachments.

Who stopped a task is the orchestrator's record, not the worker's word: a task
that swarm shut down (a scale-down, an update, the run's end) ends ``shutdown``;
one that died ends ``failed`` (``requested`` False, a crash) unless the harness
itself signalled that container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from pathlib import Path
from typing import Any, Final

from harness import vocab
from harness.cluster.base import (
    BrokerEndpoint,
    ClusterError,
    ScaleDone,
    WorkerSpec,
)
from harness.cluster.docker.cluster import DockerCluster, _Worker
from harness.cluster.docker.engine import (
    AMQP_PORT,
    BROKER_ALIAS,
    BROKER_START_TIMEOUT_S,
    BROKER_STOP_TIMEOUT_S,
    LABEL_ROLE,
    LABEL_RUN,
    MGMT_PORT,
    RESTART_GRACE_S,
    THREAD_JOIN_TIMEOUT_S,
    docker_errors,
    parse_docker_ts,
    require_image,
)
from harness.cluster.lines import LineReader
from harness.cluster.swarm_engine import (
    GWBRIDGE,
    SwarmLease,
    remove_services_quietly,
    sweep_stale_swarm,
)
from harness.history import Recorder
from harness.relay import Relay

# Swarm polls, it does not stream: how often the harness reads the service's tasks.
WATCH_INTERVAL_S: Final = 0.2
# A new task's container appears within this (image present, no registry lookup).
TASK_START_TIMEOUT_S: Final = 60.0
SCALE_ATTEMPTS: Final = 3  # a scale refused as "update out of sequence" is read and sent again
# A task's final state reaches the manager within this after its container exits.
TASK_STATE_WAIT_S: Final = 3.0
# Swarm starts a task again after this (compose's restart: always waits a little too).
RESTART_DELAY_S: Final = 1.0
# Removing a run's objects: overlay networks are released a moment after their tasks.
REMOVE_ATTEMPTS: Final = 60
REMOVE_RETRY_S: Final = 0.5
WORKERS_MAX: Final = 256
# The reference worker's liveness check under swarm: a hang is replaced within
# WORKER_LIVENESS_STALE_S + LIVENESS_RETRIES * LIVENESS_INTERVAL_S.
LIVENESS_INTERVAL_S: Final = 2.0
LIVENESS_RETRIES: Final = 3
SLOT_NAME_RE: Final = re.compile(r"^worker-([1-9][0-9]{0,3})$")
# Task states after which a task never runs again.
TERMINAL: Final = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})
# Task states whose container has been started.
STARTED: Final = frozenset({"starting", "running", "complete", "shutdown", "failed"})


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


LIVENESS_TIMEOUT_S: Final = 5.0
# GET /livez on the worker's health port; exit 0 on a 200 only.
LIVEZ_PROBE: Final = (
    "import os, socket, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(os.environ.get('HEALTH_PORT', '8080'))), 4)\n"
    "s.settimeout(4)\n"
    "s.sendall(b'GET /livez HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n')\n"
    "f = s.makefile('rb')\n"
    "ok = f.readline(256).split(b' ')[1:2] == [b'200']\n"
    "f.read(65536)\n"  # the rest: the worker's server writes its body undisturbed
    "sys.exit(0 if ok else 1)\n")


def _liveness() -> Any:
    """The reference worker's HEALTHCHECK as swarm acts on it: ``/livez``, not the
    image's ``/healthcheck``. Swarm replaces a task whose check fails, which makes
    it a liveness probe: ``/healthcheck`` (readiness) answers 503 on every worker
    while the broker is away, and swarm would replace the whole fleet during a
    broker restart for nothing. A brought image keeps its own HEALTHCHECK."""
    import docker.types as dt

    # A probe is a process started in the container every interval: with 25 tasks
    # on 2 cores, `python3 -c "import urllib.request ..."` (~0.1 s of CPU each)
    # missed its 2 s timeout three times running, and swarm stopped a correct,
    # busy worker as unhealthy. The interpreter without site (-S -I) and a raw
    # socket cost a fraction of that; the probe's timeout is 5 s.
    return dt.Healthcheck(
        test=["CMD", "python3", "-S", "-I", "-c", LIVEZ_PROBE],
        interval=_ns(LIVENESS_INTERVAL_S), timeout=_ns(LIVENESS_TIMEOUT_S),
        retries=LIVENESS_RETRIES, start_period=_ns(10.0))


def exit_requested(signalled: bool, ordered: bool, error: Any, health: Any = None) -> bool:
    """Was a task's exit asked for? Only when the harness signalled that container
    before it exited, or saw swarm order its task down (a scale, the run's end)
    while it still ran: swarm marks *every* task that ends as desired
    ``shutdown``, so its final record says nothing about who ended it. Swarm's
    replacement of an unhealthy task is the worker's failure either way (swarm's error
    says so when it had to kill it; the engine's last HEALTHCHECK verdict says so
    when the worker drained and exited 0 on swarm's SIGTERM)."""
    if "unhealthy" in str(error or "") or health == "unhealthy":
        return False
    return signalled or ordered


class SwarmCluster(DockerCluster):
    """Cluster backend ``swarm``. See the module docstring for the layout."""

    backend = vocab.SWARM
    # Its containers are swarm tasks: its lease keeps the swarm (and them) from a leave.
    guards_engine = False

    def __init__(self, run_id: str, run_dir: Path, recorder: Recorder, *,
                 client: Any = None, broker_timeout_s: float = BROKER_START_TIMEOUT_S,
                 restart_policy: str = "never", grace_s: float = RESTART_GRACE_S) -> None:
        super().__init__(run_id, run_dir, recorder, client=client,
                         broker_timeout_s=broker_timeout_s)
        self.restart_policy = restart_policy
        self.grace_s = grace_s
        self.lease = SwarmLease(self.client)
        # Two: a network the workers shared with the broker would be a second path
        # to it (its name resolves there too), around the internal one's faults.
        self.gw_network_name = f"{self.prefix}-gw"
        self.workers_gw_network_name = f"{self.prefix}-workers-gw"
        self.volume_name = f"{self.prefix}-rabbitmq-data"
        self._service: Any = None  # the workers'
        self._broker_service: Any = None
        self._gw_network: Any = None
        self._workers_gw_network: Any = None
        self._replicas = 0
        self._seen: set[str] = set()  # containers whose incarnation began
        # One reader of the task records at a time (the watcher and scale_to both
        # read): two readers both saw a new container and followed its log twice,
        # every event of it recorded twice (a false duplicate-processing FAIL).
        self._read_lock = threading.Lock()
        self._task_of: dict[str, dict[str, Any]] = {}  # container id -> its task, last read
        # Container id -> when the harness itself signalled it (kill, terminate).
        self._signalled: dict[str, float] = {}
        # Containers whose task swarm was seen ordered down (desired state no longer
        # running) while they still ran: after the harness's scale or the run's end.
        self._ordered: set[str] = set()
        # When the harness ordered each scale (its own clock): a task swarm then
        # marked "remove" and that ended after the order was scaled away, even if
        # no read saw it running under the order (an idle worker stops at once).
        self._scale_issued: list[float] = []
        self._broker_containers: list[Any] = []  # every broker task's, for its log
        # Container id -> the engine's last HEALTHCHECK verdict (its health_status events).
        self._health: dict[str, str] = {}
        self._health_stream: Any = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._amqp_relay: Relay | None = None
        self._mgmt_relay: Relay | None = None
        self._leased = False
        self._gateways: dict[str, str] = {}  # container id -> its docker_gwbridge address
        self._placement: list[str] = []
        self._paused: set[str] = set()  # workers the harness paused (not resumed yet)

    def orchestrate(self, restart_policy: str, grace_s: float) -> None:
        if self._service is not None:
            raise ClusterError("orchestrate: the workers' service exists already")
        self.restart_policy, self.grace_s = restart_policy, grace_s

    @property
    def restarts_itself(self) -> bool:
        return self.restart_policy == "always"

    # -- the broker -----------------------------------------------------------------
    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Any = None) -> BrokerEndpoint:
        import docker.types as dt

        if external is not None:
            raise ClusterError("--backend swarm starts a broker of its own: --broker-url needs "
                               "--backend docker or local")
        if self._endpoint is not None:
            return self._endpoint
        require_image(self.client, self.broker_image)
        require_image(self.client, self.worker_image)
        self._leased = True  # stop() releases whatever acquire() got to
        self.lease.acquire()
        self.swept += sweep_stale_swarm(self.client)
        self._check_stopped("start_broker")
        # Tasks on this engine only: a swarm the engine already was may have other
        # nodes, whose containers the harness could neither follow nor fault.
        node_id = (self.client.info().get("Swarm") or {}).get("NodeID")
        self._placement = [f"node.id=={node_id}"]
        errors = docker_errors()
        try:
            self._network = self.client.networks.create(
                self.network_name, driver="overlay", internal=True, labels=self.labels)
            self._gw_network = self.client.networks.create(
                self.gw_network_name, driver="overlay", labels=self.labels)
            self._workers_gw_network = self.client.networks.create(
                self.workers_gw_network_name, driver="overlay", labels=self.labels)
            erl = self.broker_settings.erl_args()
            self._broker_service = self.client.services.create(
                self.broker_image, name=f"{self.prefix}-{BROKER_ALIAS}", hostname=BROKER_ALIAS,
                env=[f"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS={erl}"] if erl else None,
                labels={**self.labels, LABEL_ROLE: "broker"},
                container_labels={**self.labels, LABEL_ROLE: "broker"},
                networks=[dt.NetworkAttachmentConfig(self._network.id, aliases=[BROKER_ALIAS]),
                          dt.NetworkAttachmentConfig(self._gw_network.id)],
                endpoint_spec=dt.EndpointSpec(mode="dnsrr"),
                restart_policy=dt.RestartPolicy(condition="any", delay=_ns(RESTART_DELAY_S)),
                stop_grace_period=_ns(BROKER_STOP_TIMEOUT_S),
                mounts=[dt.Mount("/var/lib/rabbitmq", self.volume_name, type="volume",
                                 labels=self.labels)],
                constraints=self._placement,
            )
        except errors.APIError as exc:
            raise ClusterError(f"cannot create the broker service: {exc.explanation}") from exc
        # Started once they have the broker's address (retargeted by each new task).
        self._amqp_relay = Relay("127.0.0.1", "", AMQP_PORT)
        self._mgmt_relay = Relay("127.0.0.1", "", MGMT_PORT)
        if while_booting is not None:
            while_booting()
        self._await_broker_task(exclude=None)
        try:
            amqp_port, mgmt_port = self._amqp_relay.start(), self._mgmt_relay.start()
        except OSError as exc:
            raise ClusterError(f"cannot listen on 127.0.0.1 for the broker relays: "
                               f"{exc.strerror}") from None
        self._endpoint = BrokerEndpoint(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{amqp_port}/%2F",
            management_url=f"http://127.0.0.1:{mgmt_port}")
        self.recorder.record(vocab.BROKER_STARTED, "cluster", container=self._broker.short_id,
                             host=self._broker_ip, backend=self.backend,
                             service=self._broker_service.name)
        return self._endpoint

    def _tasks(self, service: Any) -> list[dict[str, Any]]:
        try:
            return list(self.client.api.tasks(filters={"service": service.id}))
        except Exception:
            return []

    def _await_broker_task(self, exclude: str | None) -> None:
        """Until the broker service runs a task whose container is not ``exclude`` and
        the broker answers through the relays (retargeted at its gateway address)."""
        deadline = time.monotonic() + self.broker_timeout_s
        container: Any = None
        while container is None:
            self._check_stopped("waiting for the broker")
            for t in self._tasks(self._broker_service):
                cid = (t.get("Status", {}).get("ContainerStatus") or {}).get("ContainerID")
                if cid and cid != exclude and t.get("DesiredState") == "running":
                    with contextlib.suppress(Exception):
                        container = self.client.containers.get(cid)
            if container is None:
                if time.monotonic() >= deadline:
                    raise ClusterError(f"swarm started no broker task within "
                                       f"{self.broker_timeout_s:.0f} s: "
                                       f"{self._task_errors(self._broker_service)}")
                time.sleep(WATCH_INTERVAL_S)
        self._broker = container
        self._broker_containers.append(container)
        gw = self._gateway_of(container.id, deadline)
        self._wait_broker_ready(gw, deadline)
        assert self._amqp_relay is not None and self._mgmt_relay is not None
        self._amqp_relay.retarget(gw, AMQP_PORT)
        self._mgmt_relay.retarget(gw, MGMT_PORT)
        self._gateway_ip = gw
        # Where the workers reach it (the network faults' rules name this address).
        self._broker_ip = self._overlay_ip(container)

    def broker_log(self) -> str | None:
        """Every broker task's log in order (a broker restart starts a new container,
        and the old one's lines, its consumer-timeout closes, stay evidence)."""
        parts: list[str] = []
        for c in self._broker_containers:
            with contextlib.suppress(Exception):
                raw = c.logs(stdout=True, stderr=True)
                parts.append(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes)
                             else str(raw))
        return "".join(parts) if parts else None

    def _overlay_ip(self, container: Any) -> str | None:
        with contextlib.suppress(Exception):
            container.reload()
        nets = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        ip = (nets.get(self.network_name) or {}).get("IPAddress")
        return str(ip) if ip else None

    def _gateway_of(self, container_id: str, deadline: float) -> str:
        """The container's address on ``docker_gwbridge`` (the host routes to it)."""
        while True:
            with contextlib.suppress(Exception):
                net = self.client.networks.get(GWBRIDGE)
                entry = (net.attrs.get("Containers") or {}).get(container_id)
                if entry and entry.get("IPv4Address"):
                    return str(entry["IPv4Address"]).split("/")[0]
            if time.monotonic() >= deadline:
                raise ClusterError(f"container {container_id[:12]} has no address on "
                                   f"{GWBRIDGE}: the harness cannot reach it")
            time.sleep(WATCH_INTERVAL_S)

    def restart_broker(self, stop_timeout_s: int = BROKER_STOP_TIMEOUT_S) -> None:
        """``docker service update --force`` of the broker's service: swarm stops its
        task (SIGTERM, the service's stop grace period) and starts a new one on the
        same volume and hostname; the harness's relays follow the new address."""
        if self._broker_service is None or self._broker is None:
            raise ClusterError("restart_broker: no broker started")
        old = self._broker
        try:
            self._broker_service.reload()
            self._broker_service.force_update()
        except docker_errors().APIError as exc:
            raise ClusterError(f"broker restart (service update --force) failed: "
                               f"{exc.explanation}") from exc
        with contextlib.suppress(Exception):
            old.wait(timeout=stop_timeout_s + THREAD_JOIN_TIMEOUT_S)
        self.recorder.record(vocab.BROKER_STOPPED, "cluster", container=old.short_id)
        self._await_broker_task(exclude=old.id)
        # The new task has a new address: an active blackhole or reset names the old
        # one in its rules, so it is laid again on the new one (the same fault goes on).
        with self._lock:
            active = [(name, f.name) for name, fs in self._faults.items() for f in fs]
        for name, kind in active:
            self._net_fault(kind, name)
        self.recorder.record(vocab.BROKER_STARTED, "cluster", container=self._broker.short_id,
                             host=self._broker_ip, restarted=True)

    # -- workers --------------------------------------------------------------------
    def start_worker(self, name: str, spec: WorkerSpec) -> None:
        """Worker ``worker-<k>`` is slot k of the workers' service: the first creates
        the service, each next one scales it by one."""
        import docker.types as dt

        m = SLOT_NAME_RE.match(name)
        if m is None or int(m.group(1)) != self._replicas + 1:
            raise ClusterError(f"worker {name!r}: the swarm backend names workers by task slot, "
                               f"next is worker-{self._replicas + 1}")
        if self._stopped:
            raise ClusterError("start_worker: the cluster is stopped")
        if self._broker_service is None:
            raise ClusterError("start_worker: start the broker first")
        if self._default_spec is not None and spec != self._default_spec:
            raise ClusterError("the swarm backend runs one spec for every worker (one service)")
        if self._replicas >= WORKERS_MAX:
            raise ClusterError(f"at most {WORKERS_MAX} workers")
        spec.events_pattern()  # a bad pattern fails here, before the service exists
        errors = docker_errors()
        self._default_spec = spec  # the one spec of the workers' service
        self._add_slot(name)
        try:
            if self._service is None:
                self._service = self.client.services.create(
                    spec.image or self.worker_image,
                    command=list(spec.command) if spec.command else None,
                    name=f"{self.prefix}-worker", hostname="worker-{{.Task.Slot}}",
                    env=[f"{k}={v}" for k, v in self._worker_env("worker-{{.Task.Slot}}",
                                                                 spec).items()],
                    labels={**self.labels, LABEL_ROLE: "worker"},
                    container_labels={**self.labels, LABEL_ROLE: "worker"},
                    networks=[dt.NetworkAttachmentConfig(self._network.id),
                              dt.NetworkAttachmentConfig(self._workers_gw_network.id)],
                    endpoint_spec=dt.EndpointSpec(mode="dnsrr"),
                    restart_policy=dt.RestartPolicy(
                        condition="any" if self.restarts_itself else "none",
                        delay=_ns(RESTART_DELAY_S)),
                    stop_grace_period=_ns(self.grace_s),
                    mode=dt.ServiceMode("replicated", replicas=1),
                    healthcheck=None if spec.image else _liveness(),
                    constraints=self._placement,
                )
                self._watcher = threading.Thread(target=self._watch, name="swarm-tasks",
                                                 daemon=True)
                self._watcher.start()
                threading.Thread(target=self._watch_health, name="swarm-health",
                                 daemon=True).start()
            else:
                self._set_replicas(self._replicas + 1)
        except errors.APIError as exc:
            raise ClusterError(f"cannot run worker {name} as a swarm task: "
                               f"{exc.explanation}") from exc
        self._replicas += 1
        deadline = time.monotonic() + TASK_START_TIMEOUT_S
        w = self._get(name)
        while w.container is None:
            self._check_stopped(f"start worker {name}")
            if time.monotonic() >= deadline:
                why = self._task_errors(self._service)
                raise ClusterError(f"swarm started no task for {name} within "
                                   f"{TASK_START_TIMEOUT_S:.0f} s: {why}")
            time.sleep(WATCH_INTERVAL_S)

    def _set_replicas(self, count: int) -> None:
        """``docker service scale``: the service's spec as the engine holds it, with
        only the replica count changed. (The SDK's ``Service.scale`` merges its own
        defaults into the task template, which swarm takes for a new spec and rolls
        out, restarting the running tasks one by one.)"""
        svc = self._service
        for attempt in range(SCALE_ATTEMPTS):
            try:
                svc.reload()
                spec = svc.attrs["Spec"]
                self.client.api.update_service(
                    svc.id, svc.version, task_template=spec["TaskTemplate"],
                    name=spec["Name"], labels=spec.get("Labels"),
                    mode={"Replicated": {"Replicas": count}},
                    update_config=spec.get("UpdateConfig"),
                    rollback_config=spec.get("RollbackConfig"),
                    endpoint_spec=spec.get("EndpointSpec"), fetch_current_spec=False)
                return
            except docker_errors().APIError as exc:
                # Swarm versions a service's spec: an update of the version read a
                # moment before is refused if swarm wrote the service since (its own
                # update status): read it again and retry, bounded.
                if "out of sequence" in str(exc) and attempt + 1 < SCALE_ATTEMPTS:
                    time.sleep(0.2)
                    continue
                raise ClusterError(f"docker service scale to {count} failed: "
                                   f"{exc.explanation}") from exc
            except Exception as exc:  # the engine's connection, not an API answer
                raise ClusterError(f"docker service scale to {count} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc

    def _add_slot(self, name: str) -> _Worker:
        with self._lock:
            w = self._workers.get(name)
            if w is None:
                spec = self._default_spec or WorkerSpec()
                w = _Worker(name=name, spec=spec, container=None,
                            log_path=self.run_dir / "logs" / f"{name}.log",
                            reader=LineReader(self.recorder, name, spec.events_pattern(),
                                              translate=spec.event_translator()))
                self._workers[name] = w
            return w

    def _task_errors(self, service: Any) -> str:
        errs = sorted({str(t.get("Status", {}).get("Err") or t.get("Status", {}).get("State"))
                       for t in self._tasks(service)})
        return "; ".join(errs) or "no task"

    def _watch(self) -> None:
        """Each new task container of the workers' service: an incarnation of its slot;
        and each task swarm orders down while it runs (``_ordered``)."""
        while not self._watch_stop.wait(WATCH_INTERVAL_S):
            try:
                self._read_tasks()
            except Exception:  # noqa: BLE001 - one bad read must not end the watch
                continue

    def _watch_health(self) -> None:
        """The engine's ``health_status`` events of the run's containers."""
        try:
            stream = self._health_stream = self.client.events(
                decode=True, filters={"type": "container", "event": "health_status",
                                      "label": f"{LABEL_RUN}={self.run_id}"})
            for ev in stream:
                status = str(ev.get("status") or "").split(":", 1)[-1].strip()
                if ev.get("id") and status:
                    with self._lock:
                        self._health[str(ev["id"])] = status
        except Exception:  # noqa: BLE001 - the stream closed at stop, or the engine went
            return

    def _read_tasks(self) -> list[dict[str, Any]]:
        """One read of the workers' tasks: record orders and new incarnations."""
        if self._service is None:
            return []
        with self._read_lock:
            return self._read_tasks_once(self._service)

    def _read_tasks_once(self, service: Any) -> list[dict[str, Any]]:
        tasks = sorted(self._tasks(service),
                       key=lambda t: parse_docker_ts(str(t.get("CreatedAt") or "")) or 0)
        for t in tasks:
            cid = (t.get("Status", {}).get("ContainerStatus") or {}).get("ContainerID")
            if not cid:
                continue
            state = t.get("Status", {}).get("State")
            with self._lock:
                self._task_of[cid] = t
                if t.get("DesiredState") not in (None, "running") and state in ("starting",
                                                                                 "running"):
                    self._ordered.add(cid)
                # A container is created before it starts: follow it once started
                # (or over, if it died between two reads: its log is still there).
                new = cid not in self._seen and state in STARTED
            if new and self._incarnation(t, cid):
                with self._lock:
                    self._seen.add(cid)
        return tasks

    def _incarnation(self, task: dict[str, Any], cid: str) -> bool:
        """Follow a new task's container: True once done (False: retry next read)."""
        errors = docker_errors()
        try:
            container = self.client.containers.get(cid)
        except errors.NotFound:
            # Removed before it could be followed: its start and exit from swarm's record.
            name = f"worker-{task.get('Slot')}"
            status = task.get("Status", {})
            self.recorder.record(vocab.WORKER_STARTED, "cluster", worker=name, container=cid[:12],
                                 task=task.get("ID"), slot=task.get("Slot"), lost=True)
            self.recorder.record(vocab.WORKER_EXITED, "cluster", worker=name, code=None,
                                 requested=exit_requested(False, cid in self._ordered,
                                                          status.get("Err")),
                                 container=cid[:12], task_state=status.get("State"),
                                 task_error=status.get("Err"), lost=True)
            return True
        except Exception:
            return False  # the engine did not answer: the next read tries again
        if container.status == "created":
            # Swarm says "starting" before the engine starts the container: its log
            # cannot be followed yet and wait() would return at once (a false exit).
            return False
        name = f"worker-{task.get('Slot')}"
        w = self._add_slot(name)
        started_ns = parse_docker_ts(str(container.attrs.get("State", {}).get("StartedAt", "")))
        with self._lock:
            prev = w.container
            prev_ns = (parse_docker_ts(str(prev.attrs.get("State", {}).get("StartedAt", "")))
                       if prev is not None else None)
            newer = prev is None or (started_ns or 0) >= (prev_ns or 0)
            if newer:
                w.container = container
            before = self._task_of.get(prev.id) if prev is not None and newer else None
        replaces: dict[str, Any] | None = None
        if before is not None:
            status = before.get("Status", {})
            # The engine's last HEALTHCHECK verdict on the old container: swarm's
            # record loses "unhealthy" when the worker drained and exited 0.
            health = self._health.get(prev.id) if prev is not None else None
            replaces = {"task": before.get("ID"), "state": status.get("State"),
                        "error": status.get("Err"), "health": health}
            with self._lock:
                by_harness = prev is not None and prev.id in self._signalled
            # The harness's own kill, terminate or restart ended the old task: the
            # faults end with it, but not by the orchestrator's doing.
            self._end_faults(name, via="restarted" if by_harness else "replaced")
        self.recorder.record(vocab.WORKER_STARTED, "cluster", worker=name,
                             container=container.short_id, image=w.spec.image or self.worker_image,
                             task=task.get("ID"), slot=task.get("Slot"), replaces=replaces,
                             ts=started_ns / 1e9 if started_ns else None)
        # Generation 0: each container's follower reads its log to the end (a new task
        # is another container, nothing is read twice), so a crash's last lines stay.
        # Each incarnation its own line reader: swarm can start a slot's new task
        # while the old one still drains (a scale down then up), and a reader's
        # state (a framework's open attempt, keyed by pid and thread) must not mix
        # two containers' lines.
        view = dataclasses.replace(
            w, reader=LineReader(self.recorder, name, w.spec.events_pattern(),
                                 translate=w.spec.event_translator()),
            log_lock=threading.Lock(), threads=[], last_ns=0)
        t_log = threading.Thread(target=self._follow_logs, args=(view, container, 0, 0),
                                 name=f"swarm-logs-{name}", daemon=True)
        t_wait = threading.Thread(target=self._wait_exit, args=(w, container),
                                  name=f"swarm-wait-{name}", daemon=True)
        with self._lock:
            w.threads = [t for t in w.threads if t.is_alive()] + [t_log, t_wait]
        t_log.start()
        t_wait.start()
        return True

    def _end_faults(self, name: str, via: str) -> None:
        """A slot's new task has no pause and no iptables rule of the old one: the
        lasting faults on that worker end here (recorded, so no fault window of the
        old task spans the new one)."""
        with self._lock:
            net = [f.name for f in self._faults.pop(name, [])]
            paused = name in self._paused
            self._paused.discard(name)
        for fault in (["pause"] if paused else []) + net:
            self.recorder.record(vocab.FAULT, "cluster", fault=fault, target=name, phase="heal",
                                 ok=True, via=via)

    def _exit_facts(self, w: _Worker, container: Any) -> tuple[bool, dict[str, Any]]:
        """Requested: the harness signalled this container before it exited, or saw
        swarm order its task down while it ran; never the worker's word."""
        deadline = time.monotonic() + TASK_STATE_WAIT_S
        with self._lock:
            task = self._task_of.get(container.id, {})
        while time.monotonic() < deadline:
            listed = False
            for t in self._tasks(self._service):
                cid = (t.get("Status", {}).get("ContainerStatus") or {}).get("ContainerID")
                if cid == container.id:
                    task, listed = t, True
                    with self._lock:
                        self._task_of[cid] = t
            # A scale-down removes its tasks once stopped: the last read stands.
            if task.get("Status", {}).get("State") in TERMINAL or not listed:
                break
            time.sleep(WATCH_INTERVAL_S)
        status = task.get("Status", {})
        finished_ns = None
        with contextlib.suppress(Exception):
            container.reload()
            finished_ns = parse_docker_ts(str(container.attrs["State"]["FinishedAt"]))
        # The last HEALTHCHECK verdict the engine announced while it ran (inspect
        # after the exit says "unhealthy" for every stopped container).
        health = self._health.get(container.id)
        with self._lock:
            sig_ts = self._signalled.get(container.id)
            ordered = container.id in self._ordered or (
                task.get("DesiredState") == "remove" and finished_ns is not None
                and any(t <= finished_ns / 1e9 + 0.05 for t in self._scale_issued))
            if w.container is container:
                self._paused.discard(w.name)
        # A signal after the container had already exited (a crash first) excuses nothing.
        signalled = sig_ts is not None and (not finished_ns or sig_ts <= finished_ns / 1e9 + 0.05)
        err = status.get("Err")
        return exit_requested(signalled, ordered, err, health), {
            "task_state": status.get("State"), "task_error": err, "health": health}

    def health_url(self, name: str) -> str | None:
        w = self._get(name)
        if w.container is None:
            return None
        cid = w.container.id
        gw = self._gateways.get(cid)
        if gw is None:
            try:
                gw = self._gateways[cid] = self._gateway_of(cid, time.monotonic())
            except ClusterError:
                return None
        return f"http://{gw}:{w.spec.health_port}/healthcheck"

    def is_running(self, name: str) -> bool:
        w = self._get(name)
        return w.container is not None and super().is_running(name)

    # -- faults -----------------------------------------------------------------------
    def _signal(self, name: str, sig: str) -> Any:
        """Send ``sig`` to the worker's current container if it runs (a paused one is
        unpaused first), noting the time first; the container, or None if it did not
        run (then nothing is noted: a crash before the signal stays a crash)."""
        w = self._get(name)
        with self._lock:
            c = w.container
        if c is None:
            return None
        try:
            c.reload()
            status = str(c.status)
        except Exception:
            return None
        if status not in ("running", "paused"):
            return None
        with self._lock:
            self._signalled[c.id] = time.time()
            if status == "paused":
                self._paused.discard(name)  # its end is the signal's, not a replacement's
        try:
            if status == "paused":
                c.unpause()
            c.kill(signal=sig)
        except docker_errors().APIError as exc:
            if "is not running" not in str(exc):
                raise ClusterError(f"{sig} to {name} failed: {exc.explanation}") from exc
        return c

    def kill(self, name: str) -> None:
        self._signal(name, "SIGKILL")

    def terminate(self, name: str, grace_s: float) -> int | None:
        """SIGTERM, up to ``grace_s``, then SIGKILL (the container the SIGTERM went to)."""
        c = self._signal(name, "SIGTERM")
        if c is None:
            return None
        try:
            return int(c.wait(timeout=max(grace_s, 0.01))["StatusCode"])
        except Exception:
            pass  # still running after grace_s
        with contextlib.suppress(docker_errors().APIError):
            c.kill(signal="SIGKILL")
        try:
            return int(c.wait(timeout=THREAD_JOIN_TIMEOUT_S)["StatusCode"])
        except Exception:
            return None

    def pause(self, name: str) -> None:
        super().pause(name)
        with self._lock:
            self._paused.add(name)

    def resume(self, name: str) -> None:
        super().resume(name)
        with self._lock:
            self._paused.discard(name)

    def restart(self, name: str, grace_s: float = RESTART_GRACE_S) -> None:
        """Stop the task's container and let swarm start the slot's next task."""
        if not self.restarts_itself:
            raise ClusterError("restart on --backend swarm needs restart_policy: always (swarm "
                               "starts a slot's next task only under a restart policy)")
        w = self._get(name)
        old = w.container.id if w.container is not None else None
        if self.is_running(name):
            self.terminate(name, grace_s)
        deadline = time.monotonic() + TASK_START_TIMEOUT_S
        while w.container is None or w.container.id == old:
            self._check_stopped(f"restart {name}")
            if time.monotonic() >= deadline:
                raise ClusterError(f"swarm did not replace {name}'s task within "
                                   f"{TASK_START_TIMEOUT_S:.0f} s")
            time.sleep(WATCH_INTERVAL_S)

    def partition(self, name: str) -> None:
        raise ClusterError("partition: swarm owns a task's network attachments; use blackhole")

    def scale_to(self, count: int, queue: str, grace_s: float) -> ScaleDone:
        """``docker service scale``: swarm picks which tasks stop (SIGTERM, the stop
        grace period). The harness reads which it did from the task records: the
        tasks it ordered down while they ran (``terminated``) and the tasks created
        after the order (``started``); it waits until swarm has converged on them."""
        if self._service is None:
            raise ClusterError("scale: no workers' service yet")
        if not 0 <= count <= WORKERS_MAX:
            raise ClusterError(f"scale: count must be 0..{WORKERS_MAX}")
        issued = time.time()
        with self._lock:
            self._scale_issued.append(issued)
            ordered_before = set(self._ordered)
            known = set(self._task_of)
        self._set_replicas(count)
        self._replicas = max(self._replicas, count)
        deadline = time.monotonic() + grace_s + TASK_START_TIMEOUT_S
        while True:
            # Read at once and often: an idle worker stops within a poll of its order.
            tasks = self._read_tasks()
            up = [t for t in tasks if t.get("DesiredState") == "running"]
            settled = all(t.get("Status", {}).get("State") in TERMINAL
                          for t in tasks if t.get("DesiredState") != "running")
            running = [t for t in up if t.get("Status", {}).get("State") == "running"]
            if len(up) == count and len(running) == count and settled:
                break
            if time.monotonic() >= deadline:
                raise ClusterError(f"scale to {count}: swarm did not converge within "
                                   f"{grace_s + TASK_START_TIMEOUT_S:.0f} s: "
                                   f"{self._task_errors(self._service)}")
            time.sleep(0.05)
        with self._lock:
            stopped = self._ordered - ordered_before
            names = {cid: f"worker-{t.get('Slot')}" for cid, t in self._task_of.items()}
        started = {f"worker-{t.get('Slot')}" for t in running
                   if ((t.get("Status", {}).get("ContainerStatus") or {}).get("ContainerID")
                       not in known)}
        return ScaleDone(issued_ts=issued, started=tuple(sorted(started)),
                         terminated=tuple(sorted(names[c] for c in stopped if c in names)))

    def stop_workers(self, grace_s: float) -> bool:
        """The run's end: scale the workers' service to 0 (swarm stops every task with
        SIGTERM and the stop grace period), so no task is started again. False when
        swarm did not: the supervisor then terminates each worker itself."""
        if self._service is None:
            return True
        try:
            self.scale_to(0, "", grace_s)
        except ClusterError:
            return False
        with self._lock:
            threads = [t for w in self._workers.values() for t in w.threads]
        for t in threads:  # their exits recorded while swarm still lists the tasks
            t.join(THREAD_JOIN_TIMEOUT_S)
        return True

    # -- teardown -------------------------------------------------------------------
    def stop(self) -> None:
        """Services, containers, volume, networks, relays; then the swarm as found.
        Idempotent, never raises."""
        self._stopped = True
        self._watch_stop.set()
        if self._health_stream is not None:
            with contextlib.suppress(Exception):
                self._health_stream.close()
        with contextlib.suppress(Exception):
            self.heal_all()
        with contextlib.suppress(Exception), \
                (self.run_dir / "logs" / "rabbitmq.log").open("wb") as out:
            for c in self._broker_containers:
                with contextlib.suppress(Exception):
                    out.write(c.logs(stdout=True, stderr=True, timestamps=True))
        remove_services_quietly([svc for svc in (self._service, self._broker_service)
                                 if svc is not None])
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self.recorder.record(vocab.BROKER_STOPPED, "cluster",
                                     container=self._broker.short_id)
        self._service = self._broker_service = None
        if self._leased:
            with contextlib.suppress(Exception):
                remove_services_quietly(self.client.services.list(
                    filters={"label": f"{LABEL_RUN}={self.run_id}"}))
        with contextlib.suppress(Exception):
            for c in self.client.containers.list(
                    all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}):
                with contextlib.suppress(Exception):
                    c.remove(force=True, v=True)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            with contextlib.suppress(Exception):
                self._join(w)
        if self._watcher is not None:
            self._watcher.join(THREAD_JOIN_TIMEOUT_S)
        for relay in (self._amqp_relay, self._mgmt_relay):
            if relay is not None:
                with contextlib.suppress(Exception):
                    relay.stop()
        self._amqp_relay = self._mgmt_relay = None
        self._broker = None
        self._endpoint = None
        self._remove_leftovers()
        self._network = self._gw_network = self._workers_gw_network = None
        if self._leased:
            self._leased = False
            self.lease.release()
            if self.lease.kept:
                self.notices.append(
                    f"the engine stays a swarm node (a swarm the harness made): "
                    f"{self.lease.kept}; the next harness run to end on this engine "
                    "without such containers leaves it")

    def _remove_leftovers(self) -> None:
        """The run's volume and networks, once swarm has let go of them (bounded)."""
        errors = docker_errors()
        for _ in range(REMOVE_ATTEMPTS):
            left = 0
            with contextlib.suppress(Exception):
                for c in self.client.containers.list(
                        all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}):
                    left += 1
                    with contextlib.suppress(Exception):
                        c.remove(force=True, v=True)
            try:
                for v in self.client.volumes.list(filters={"label": f"{LABEL_RUN}={self.run_id}"}):
                    left += 1
                    with contextlib.suppress(errors.APIError):
                        v.remove(force=True)
                for n in self.client.networks.list(
                        filters={"label": f"{LABEL_RUN}={self.run_id}"}):
                    left += 1
                    with contextlib.suppress(errors.APIError):
                        n.remove()
            except Exception:
                left += 1
            if not left:
                return
            time.sleep(REMOVE_RETRY_S)
