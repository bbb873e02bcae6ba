"""The engine's swarm mode as the ``swarm`` backend needs it: made a single-node
swarm when it is not one, and left as it was found.

- ``SwarmLease``: a run holds a shared ``flock`` on a lock file for as long as it
  uses the swarm; the kernel drops it when the process dies, so a SIGKILLed
  harness never keeps a swarm alive. Making the swarm takes the lock
  exclusively, and so does leaving it: a run never leaves a swarm another
  harness process is using.
- A swarm the harness made is marked on its node (label ``rmq-harness.swarm``).
  When the last run releases it and no object of the harness is left, the engine
  leaves the swarm and the ``docker_gwbridge`` network the harness created
  before ``swarm init`` is removed (``swarm leave`` leaves that network behind).
  A swarm the engine already had is never left.
- The harness creates ``docker_gwbridge`` itself before ``swarm init`` (Docker's
  documented way to customise it), without IP masquerade: the host reaches the
  containers' gateway addresses, the containers reach nothing beyond the host.

Written by hand: neither the Docker SDK nor testcontainers manages the engine's
swarm membership.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import IO, Any, Final

from harness.cluster.base import ClusterError
from harness.cluster.docker.engine import LABEL, docker_errors, owner_gone

GWBRIDGE: Final = "docker_gwbridge"
# On the node of a swarm the harness made; never on a swarm it found.
NODE_LABEL: Final = "rmq-harness.swarm"
# The advertise address of a single-node swarm: nothing outside the host joins it.
ADVERTISE_ADDR: Final = "127.0.0.1"
# Fixed, not $TMPDIR: every harness process on the host must find the same file.
LOCK_PATH: Final = Path("/tmp/rmq-harness-swarm.lock")
LOCK_TIMEOUT_S: Final = 60.0
LEAVE_ATTEMPTS: Final = 30
LABEL_ATTEMPTS: Final = 5


def swarm_state(client: Any) -> str:
    """The engine's ``LocalNodeState``: inactive, active, pending, error or locked."""
    try:
        info = client.info()
    except docker_errors().APIError as exc:
        raise ClusterError(f"cannot read the engine's swarm state: {exc.explanation}") from exc
    return str((info.get("Swarm") or {}).get("LocalNodeState") or "inactive")


def _is_manager(client: Any) -> bool:
    return bool((client.info().get("Swarm") or {}).get("ControlAvailable"))


def _node_labels(client: Any) -> dict[str, str]:
    node_id = (client.info().get("Swarm") or {}).get("NodeID")
    node = client.nodes.get(node_id)
    return dict(node.attrs.get("Spec", {}).get("Labels") or {})


def made_by_harness(client: Any) -> bool:
    """True when the engine is a swarm the harness made (its node carries the label)."""
    try:
        return swarm_state(client) == "active" and _node_labels(client).get(NODE_LABEL) == "1"
    except Exception:
        return False


class SwarmLease:
    """One run's use of the engine's swarm; ``release`` restores what was found."""

    def __init__(self, client: Any, lock_path: Path = LOCK_PATH) -> None:
        self.client = client
        self.lock_path = lock_path
        self._fh: IO[str] | None = None
        self.created = False  # this lease ran ``swarm init``

    def _lock(self, mode: int, timeout_s: float = LOCK_TIMEOUT_S) -> bool:
        if self._fh is None:
            self._fh = self.lock_path.open("a+", encoding="utf-8")
            with contextlib.suppress(OSError):
                os.chmod(self.lock_path, 0o666)  # another user's harness shares it
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._fh, mode | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)

    def acquire(self) -> None:
        """Make the engine a single-node swarm if it is not one; hold it shared.

        Shared first (runs share a swarm); only a run that finds no swarm lets go and
        takes the lock exclusively to make one, and checks again once it has it
        (another may have made it meanwhile). No run waits for another's whole run."""
        if not self._lock(fcntl.LOCK_SH):
            raise ClusterError(f"another harness process holds {self.lock_path} for over "
                               f"{LOCK_TIMEOUT_S:.0f} s while it joins or leaves the swarm")
        try:
            if swarm_state(self.client) == "inactive":
                fcntl.flock(self._fh, fcntl.LOCK_UN)  # type: ignore[arg-type]
                if not self._lock(fcntl.LOCK_EX):
                    raise ClusterError(f"another harness process holds {self.lock_path} "
                                       f"for over {LOCK_TIMEOUT_S:.0f} s while it uses the "
                                       "swarm it is leaving")
                if swarm_state(self.client) == "inactive":
                    self._init()
                # Downgrade (not atomic in flock(2): another may take it exclusively in
                # between, and finds this run's swarm in use only once it has objects).
                if not self._lock(fcntl.LOCK_SH):
                    raise ClusterError(f"cannot hold {self.lock_path} shared after making the "
                                       "swarm")
            state = swarm_state(self.client)
            if state != "active":
                raise ClusterError(f"the Docker engine's swarm is {state}: fix it (`docker swarm "
                                   "leave --force` or `docker swarm unlock`) and run again")
            if not _is_manager(self.client):
                raise ClusterError("the Docker engine is a swarm worker node: run the swarm "
                                   "backend on a manager (services are created there)")
        except BaseException:
            self._unlock()
            raise

    def _init(self) -> None:
        """``docker swarm init`` (after making ``docker_gwbridge``), and the node's
        label that says the harness made it. Any failure on the way, Ctrl-C too,
        undoes both: a swarm without the label would never be left."""
        errors = docker_errors()
        try:
            try:
                self.client.networks.get(GWBRIDGE)
            except errors.NotFound:
                # Before ``swarm init``: otherwise the engine makes one that masquerades.
                self.client.networks.create(
                    GWBRIDGE, driver="bridge", labels={LABEL: "1", NODE_LABEL: "1"},
                    options={"com.docker.network.bridge.name": GWBRIDGE,
                             "com.docker.network.bridge.enable_icc": "false",
                             "com.docker.network.bridge.enable_ip_masquerade": "false"})
            try:
                self.client.swarm.init(advertise_addr=ADVERTISE_ADDR,
                                       listen_addr=f"{ADVERTISE_ADDR}:2377")
            except errors.APIError as exc:
                raise ClusterError(f"docker swarm init failed: {exc.explanation}") from exc
            self.created = True
            for attempt in range(LABEL_ATTEMPTS):
                node = self.client.nodes.get((self.client.info().get("Swarm") or {})["NodeID"])
                spec = dict(node.attrs["Spec"])
                spec["Labels"] = {**(spec.get("Labels") or {}), NODE_LABEL: "1"}
                try:
                    node.update(spec)
                    break
                except errors.APIError:  # "update out of sequence": the node's first update
                    if attempt + 1 == LABEL_ATTEMPTS:
                        raise
                    time.sleep(0.2)
        except BaseException:
            if self.created:
                with contextlib.suppress(Exception):
                    self.client.swarm.leave(force=True)
                self.created = False
            self._remove_gwbridge()  # the harness's (labelled), made now or before
            raise

    def _remove_gwbridge(self) -> None:
        with contextlib.suppress(Exception):
            _remove_own_gwbridge(self.client)

    def _unlock(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def release(self) -> bool:
        """Stop using the swarm; leave it when the harness made it, no other harness
        process uses it, and none of the harness's objects is left. True if left.
        Never raises."""
        try:
            if self._fh is None:
                self._fh = self.lock_path.open("a+", encoding="utf-8")
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            if not self._lock(fcntl.LOCK_EX, timeout_s=0.0):
                return False  # another run holds it shared: it leaves it, later
            return leave_if_unused(self.client)
        except Exception:
            return False
        finally:
            self._unlock()


def harness_objects(client: Any) -> list[str]:
    """The swarm objects of the harness still there (services, swarm networks)."""
    out = [f"service:{s.name}" for s in client.services.list(filters={"label": f"{LABEL}=1"})]
    out += [f"network:{n.name}" for n in client.networks.list(filters={"label": f"{LABEL}=1"})
            if n.attrs.get("Scope") == "swarm"]
    return out


def leave_if_unused(client: Any) -> bool:
    """Leave a swarm the harness made when nothing of the harness is on it (the
    caller holds the lock exclusively). True if the engine left the swarm."""
    if not made_by_harness(client) or harness_objects(client):
        return False
    errors = docker_errors()
    for _ in range(LEAVE_ATTEMPTS):
        try:
            client.swarm.leave(force=True)
            break
        except errors.APIError:
            time.sleep(0.5)
    else:
        return False
    for _ in range(LEAVE_ATTEMPTS):
        try:
            _remove_own_gwbridge(client)
            break
        except errors.APIError:
            time.sleep(0.5)  # a container's endpoint is still being released
    return True


def _remove_own_gwbridge(client: Any) -> None:
    """Remove ``docker_gwbridge`` if the harness made it (its label); the engine's
    own is left alone. ``swarm leave`` keeps the ingress sandbox's endpoint on it:
    Docker's documented removal disconnects that by force first."""
    errors = docker_errors()
    try:
        net = client.networks.get(GWBRIDGE)
    except errors.NotFound:
        return
    if (net.attrs.get("Labels") or {}).get(NODE_LABEL) != "1":
        return
    for key, ep in (net.attrs.get("Containers") or {}).items():
        if key == "ingress-sbox":
            with contextlib.suppress(errors.NotFound):
                net.disconnect(str(ep.get("Name") or "gateway_ingress-sbox"), force=True)
    net.remove()


def sweep_stale_swarm(client: Any) -> list[str]:
    """Remove the services, swarm networks, volumes, secrets and configs of runs
    whose harness process is gone (labels as ``engine.sweep_stale``). Never raises."""
    removed: list[str] = []
    if swarm_state(client) != "active":
        return removed
    kinds: list[tuple[str, Any]] = [("service", client.services), ("secret", client.secrets),
                                    ("config", client.configs)]
    for kind, coll in kinds:
        try:
            found = coll.list(filters={"label": f"{LABEL}=1"})
        except Exception:
            continue
        for obj in found:
            labels = obj.attrs.get("Spec", {}).get("Labels") or {}
            if owner_gone(labels):
                with contextlib.suppress(Exception):
                    obj.remove()
                    removed.append(f"{kind}:{obj.name}")
    with contextlib.suppress(Exception):
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
            if owner_gone(c.labels or {}):
                with contextlib.suppress(Exception):
                    c.remove(force=True, v=True)
    with contextlib.suppress(Exception):
        for n in client.networks.list(filters={"label": f"{LABEL}=1"}):
            if n.attrs.get("Scope") == "swarm" and owner_gone(n.attrs.get("Labels") or {}):
                with contextlib.suppress(Exception):
                    n.remove()
                    removed.append(f"network:{n.name}")
    with contextlib.suppress(Exception):
        for v in client.volumes.list(filters={"label": f"{LABEL}=1"}):
            if owner_gone(v.attrs.get("Labels") or {}):
                with contextlib.suppress(Exception):
                    v.remove(force=True)
                    removed.append(f"volume:{v.name}")
    return removed
