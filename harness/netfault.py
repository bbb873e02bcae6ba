"""Network faults of the ``docker`` backend, one small class per fault.

Each fault has ``inject(target)`` and ``heal()``:

- ``inject`` heals first (a fault object holds at most one active injection), then
  applies the fault to the worker named ``target``;
- ``heal`` undoes it, is idempotent and never leaves a rule, a sidecar or a
  disconnected container behind when it returns normally.

``Partition``  disconnects the worker's container from the run's network (its
               own, or a ``SharedDockerBroker``'s: only the target container is
               touched, never the network or other runs' containers); heal
               reconnects it with the same aliases.
``Blackhole``  drops every packet between the worker and the broker (iptables
               DROP in the worker's network namespace, both directions).
``Reset``      answers every packet of the worker's AMQP connection with a TCP
               reset (iptables REJECT --reject-with tcp-reset, both directions).

The iptables faults run ``iptables`` in a sidecar container that shares the
worker's network namespace (``network_mode=container:<id>``) and has NET_ADMIN;
the worker container itself stays unprivileged. Rules live in the namespace, not
in the sidecar: when the worker container stops or restarts, its namespace and
the rules in it are gone, and heal only removes the sidecar.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from harness.cluster.base import ClusterError
from harness.imagekit import SIDECAR_IMAGE as SIDECAR_IMAGE

# The sidecar only lives while a fault is active; it exits by itself after this.
SIDECAR_MAX_LIFE_S: Final = 6 * 3600
_EXEC_TIMEOUT_S: Final = 15.0


@dataclass
class NetEnv:
    """What a network fault needs to know about the cluster.

    ``resolve(name)`` returns the worker's docker ``Container`` (or raises
    ClusterError); ``aliases(name)`` the network aliases it is reached by;
    ``broker_ip`` the broker's address on ``network_name`` (which may be shared by
    several runs: ``labels`` and ``sidecar_prefix`` are the run's, so its cleanup
    finds its sidecars).
    """

    client: Any  # docker.DockerClient
    network_name: str
    broker_ip: str
    amqp_port: int
    resolve: Callable[[str], Any]
    aliases: Callable[[str], Sequence[str]]
    labels: Mapping[str, str] = field(default_factory=dict)
    sidecar_prefix: str = "rmq-harness-sidecar"
    sidecar_image: str = SIDECAR_IMAGE


class NetFault(abc.ABC):
    """One network fault on one worker at a time."""

    name: str = "?"

    def __init__(self, env: NetEnv) -> None:
        self.env = env
        self.target: str | None = None

    @property
    def active(self) -> bool:
        return self.target is not None

    def inject(self, target: str) -> None:
        self.heal()
        container = self.env.resolve(target)
        container.reload()
        if container.status == "paused":
            raise ClusterError(f"{self.name} on {target}: the container is paused; resume it first")
        if container.status != "running":
            raise ClusterError(f"{self.name} on {target}: the container is {container.status}")
        self.target = target
        try:
            self._inject(container)
        except Exception:
            # Leave nothing half-applied behind.
            with contextlib.suppress(Exception):
                self.heal()
            raise

    def heal(self) -> None:
        if self.target is None:
            return
        self._heal()
        self.target = None

    @abc.abstractmethod
    def _inject(self, container: Any) -> None: ...

    @abc.abstractmethod
    def _heal(self) -> None: ...


class Partition(NetFault):
    """Disconnect the worker from the run's network (it keeps only loopback)."""

    name = "partition"

    def _inject(self, container: Any) -> None:
        assert self.target is not None
        network = self.env.client.networks.get(self.env.network_name)
        network.disconnect(container, force=True)

    def _heal(self) -> None:
        assert self.target is not None
        try:
            container = self.env.resolve(self.target)
        except ClusterError:
            return  # removed meanwhile: nothing to reconnect
        network = self.env.client.networks.get(self.env.network_name)
        try:
            network.connect(container, aliases=list(self.env.aliases(self.target)))
        except Exception as exc:
            text = str(exc)
            if "already exists" in text or "already attached" in text:
                return
            if "No such container" in text:
                return
            raise ClusterError(f"partition heal of {self.target} failed: {text}") from exc


class _IptablesFault(NetFault):
    """Base of the faults applied with iptables from a NET_ADMIN sidecar."""

    def __init__(self, env: NetEnv) -> None:
        super().__init__(env)
        self._sidecar: Any = None
        self._worker_started_at: str | None = None
        self._worker_id: str | None = None

    @abc.abstractmethod
    def rules(self) -> list[list[str]]:
        """Rule specs (without -I/-D) in the worker's namespace."""

    def _inject(self, container: Any) -> None:
        self._worker_id = container.id
        self._worker_started_at = container.attrs.get("State", {}).get("StartedAt")
        self._sidecar = self._start_sidecar(container)
        for rule in self.rules():
            chain, *spec = rule
            self._iptables(["-I", chain, *spec])

    def _heal(self) -> None:
        sidecar = self._sidecar
        try:
            if sidecar is not None and self._same_namespace():
                for rule in self.rules():
                    chain, *spec = rule
                    # Delete every copy; -C fails when none is left.
                    for _ in range(8):
                        if self._iptables(["-C", chain, *spec], check=False) != 0:
                            break
                        self._iptables(["-D", chain, *spec])
                left = self.leftover_rules()
                if left:
                    raise ClusterError(
                        f"{self.name} heal on {self.target}: rules still present: {left}"
                    )
        finally:
            if sidecar is not None:
                with contextlib.suppress(Exception):
                    sidecar.remove(force=True)
            self._sidecar = None

    def leftover_rules(self) -> list[str]:
        """Lines of ``iptables -S`` that mention the broker (needs the sidecar)."""
        code, out = self._exec(["iptables", "-S"])
        if code != 0:
            raise ClusterError(f"{self.name}: iptables -S failed in the sidecar: {out.strip()}")
        return [ln for ln in out.splitlines() if self.env.broker_ip in ln]

    # -- helpers ----------------------------------------------------------------
    def _same_namespace(self) -> bool:
        """True while the worker still runs in the namespace the rules were put in."""
        if self._worker_id is None:
            return False
        try:
            worker = self.env.client.containers.get(self._worker_id)
        except Exception:
            return False
        state = worker.attrs.get("State", {})
        return bool(state.get("Running")) and state.get("StartedAt") == self._worker_started_at

    def _start_sidecar(self, container: Any) -> Any:
        name = f"{self.env.sidecar_prefix}-{self.name}-{self.target}"
        with contextlib.suppress(Exception):
            self.env.client.containers.get(name).remove(force=True)
        try:
            sidecar = self.env.client.containers.create(
                self.env.sidecar_image,
                command=["sleep", str(SIDECAR_MAX_LIFE_S)],
                name=name,
                network_mode=f"container:{container.id}",
                cap_add=["NET_ADMIN"],
                labels={**self.env.labels, "rmq-harness.role": "sidecar"},
                detach=True,
            )
        except Exception as exc:
            if type(exc).__name__ == "ImageNotFound":
                image = self.env.sidecar_image
                raise ClusterError(
                    f"image {image} not found: run `harness images build --offline`"
                ) from exc
            raise ClusterError(f"{self.name}: cannot create the sidecar: {exc}") from exc
        self._sidecar = sidecar
        sidecar.start()
        return sidecar

    def _exec(self, cmd: list[str]) -> tuple[int, str]:
        if self._sidecar is None:
            raise ClusterError(f"{self.name}: no sidecar")
        deadline = time.monotonic() + _EXEC_TIMEOUT_S
        res = self._sidecar.exec_run(cmd, stdout=True, stderr=True)
        if time.monotonic() > deadline:
            raise ClusterError(f"{self.name}: `{' '.join(cmd)}` took over {_EXEC_TIMEOUT_S} s")
        out = res.output.decode("utf-8", "replace") if res.output else ""
        return int(res.exit_code or 0), out

    def _iptables(self, args: list[str], check: bool = True) -> int:
        code, out = self._exec(["iptables", "-w", "5", *args])
        if check and code != 0:
            raise ClusterError(
                f"{self.name} on {self.target}: iptables {' '.join(args)} failed: {out.strip()}"
            )
        return code


class Blackhole(_IptablesFault):
    """Drop every packet between the worker and the broker, both ways."""

    name = "blackhole"

    def rules(self) -> list[list[str]]:
        ip = self.env.broker_ip
        return [["INPUT", "-s", ip, "-j", "DROP"], ["OUTPUT", "-d", ip, "-j", "DROP"]]


class Reset(_IptablesFault):
    """Answer the worker's AMQP traffic with TCP resets, both ways."""

    name = "reset"

    def rules(self) -> list[list[str]]:
        ip, port = self.env.broker_ip, str(self.env.amqp_port)
        # Resets themselves pass: the one REJECT makes for the worker's own socket
        # comes in through INPUT, and the one for the broker leaves through OUTPUT,
        # so both ends of the connection see it reset at once.
        rst = ["!", "--tcp-flags", "RST", "RST", "-j", "REJECT", "--reject-with", "tcp-reset"]
        return [
            ["OUTPUT", "-p", "tcp", "-d", ip, "--dport", port, *rst],
            ["INPUT", "-p", "tcp", "-s", ip, "--sport", port, *rst],
        ]


NET_FAULTS: Final[dict[str, type[NetFault]]] = {
    "partition": Partition,
    "blackhole": Blackhole,
    "reset": Reset,
}
