"""The broker side of ``DockerCluster``: the run's internal network, the broker
container (start, readiness, restart, logs), a shared broker's vhost, and an
external broker reached through the relay. A mixin: ``DockerCluster`` holds the
state (declared here for the type checker) and the worker side."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import vocab
from harness.broker import BrokerAdmin, amqp_display
from harness.cluster.base import (
    EXTERNAL_READY_TIMEOUT_S,
    BrokerEndpoint,
    BrokerSettings,
    ClusterError,
)
from harness.history import Recorder
from harness.relay import Relay

if TYPE_CHECKING:
    from harness.cluster.docker.shared import SharedDockerBroker

from harness.cluster.docker.engine import (
    AMQP_PORT,
    BROKER_ALIAS,
    BROKER_STOP_TIMEOUT_S,
    LABEL_ROLE,
    LOG_TAIL_LINES,
    MGMT_PORT,
    NETWORK_CREATE_ATTEMPTS,
    docker_errors,
    require_image,
)


class BrokerSide:
    """See the module doc."""

    # The state DockerCluster.__init__ sets (see there).
    backend: str
    run_id: str
    run_dir: Path
    recorder: Recorder
    client: Any
    labels: dict[str, str]
    prefix: str
    network_name: str
    broker_image: str
    broker_timeout_s: float
    _broker: Any
    _broker_ip: str | None
    _gateway_ip: str | None
    _external: BrokerEndpoint | None
    _relay: Relay | None
    _network: Any
    _endpoint: BrokerEndpoint | None
    _shared: SharedDockerBroker | None
    _vhost: str | None
    broker_settings: BrokerSettings
    _started_wall: float | None
    _stopped: bool
    _lock: threading.RLock

    def _check_stopped(self, what: str) -> None:
        raise NotImplementedError  # DockerCluster's

    def _ensure_network(self) -> Any:
        if self._network is not None:
            return self._network
        import docker.types

        errors = docker_errors()
        with contextlib.suppress(errors.NotFound):
            old = self.client.networks.get(self.network_name)
            old.remove()  # left by an earlier try of this very run id
        last_error = ""
        for _ in range(NETWORK_CREATE_ATTEMPTS):
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
        errors = docker_errors()
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
                environment=({"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": erl_args}
                             if (erl_args := self.broker_settings.erl_args()) else None),
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
        errors = docker_errors()
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

    def _wait_broker_ready(self, host: str | None = None, deadline: float | None = None) -> None:
        """Until the broker accepts an AMQP login and answers its management API, at
        ``host`` (default: its address on the run's network) before ``deadline``."""
        import pika

        host = host or self._broker_ip
        assert host is not None
        timeout_s = self.broker_timeout_s
        deadline = deadline if deadline is not None else time.monotonic() + timeout_s
        params = pika.ConnectionParameters(
            host=host, port=AMQP_PORT,
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
                    f"http://{host}:{MGMT_PORT}/api/overview",
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
        errors = docker_errors()
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
