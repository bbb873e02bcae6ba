"""The engine's swarm mode as the ``swarm`` backend needs it: made a single-node
swarm when it is not one, and left as it was found.

- ``SwarmLease``: a run holds a shared ``flock`` on a lock file for as long as it
  uses the swarm; the kernel drops it when the process dies, so a SIGKILLed
  harness never keeps a swarm alive. Making the swarm takes the lock
  exclusively, and so does leaving it: a run never leaves a swarm another
  harness process is using.
- A swarm the harness made is marked on its node (label ``rmq-harness.swarm``).
  When the last run releases it and no service is left, the engine leaves the
  swarm and the ``docker_gwbridge`` network the harness created before ``swarm
  init`` is removed (``swarm leave`` leaves that network behind). A swarm the
  engine already had is never left.
- Unless leaving would harm a running container: ``swarm leave`` drops the
  embedded-DNS names of every container running at that moment, on every network
  (moby/moby#45144). The swarm then stays, the run says why, and the next harness
  run that ends with none of them running leaves it (a docker-backend run too).
  Docker-backend runs hold the engine lock (``engine.ENGINE_LOCK_PATH``) shared
  while they have containers; a leave takes it exclusively or does not happen.
- The harness creates ``docker_gwbridge`` itself before ``swarm init`` (Docker's
  documented way to customise it), without IP masquerade: the host reaches the
  containers' gateway addresses, the containers reach nothing beyond the host.

Written by hand: neither the Docker SDK nor testcontainers manages the engine's
swarm membership.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Any, Final

from harness.cluster.base import ClusterError
from harness.cluster.docker.engine import (
    ENGINE_LOCK_PATH,
    LABEL,
    docker_errors,
    owner_gone,
)
from harness.flock import FileLock

GWBRIDGE: Final = "docker_gwbridge"
# On the node of a swarm the harness made; never on a swarm it found.
NODE_LABEL: Final = "rmq-harness.swarm"
# The advertise address of a single-node swarm: nothing outside the host joins it.
ADVERTISE_ADDR: Final = "127.0.0.1"
# Fixed, not $TMPDIR: every harness process on the host must find the same file.
LOCK_PATH: Final = Path("/tmp/rmq-harness-swarm.lock")
LOCK_TIMEOUT_S: Final = 60.0
LEAVE_TIMEOUT_S: Final = 20.0
GWBRIDGE_REMOVE_TIMEOUT_S: Final = 30.0
RETRY_PAUSE_S: Final = 0.5
LEAVE_SETTLE_S: Final = 2.0
LABEL_ATTEMPTS: Final = 5
DEPENDENTS_SHOWN: Final = 3
# Seen once here (Docker 20.10.24, the swarm tests' CI run): the daemon crashed,
# and every container on the engine with it, on a nil task in swarmkit's
# SetServiceTasksRemove (as in moby/swarmkit#3216 and its PR #3222; not fixed in
# this engine), which lists a removed service's tasks and then updates each: the
# task reaper had deleted one in between. The reaper deletes a slot's old tasks 250 ms
# after the tasks' last change (a scale-down, a restart). So a service is removed
# only once its tasks have stood still this long, nothing desired ``remove``
# among them; bounded, then removed anyway.
TASKS_QUIET_S: Final = 1.0
TASKS_QUIET_TIMEOUT_S: Final = 15.0
TASKS_POLL_S: Final = 0.2
# Networks without Docker's embedded DNS (``swarm leave`` cannot harm a container on
# them); ``docker_gwbridge`` only carries a task's gateway.
NO_DNS_NETWORKS: Final = frozenset({"bridge", "host", "none", GWBRIDGE})


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

    def __init__(self, client: Any, lock_path: Path = LOCK_PATH,
                 engine_lock_path: Path = ENGINE_LOCK_PATH) -> None:
        self.client = client
        self.lock_path = lock_path
        self.engine_lock_path = engine_lock_path
        self._file = FileLock(lock_path)
        self.created = False  # this lease ran ``swarm init``
        # Why the last release kept a swarm the harness made and nothing uses, if it
        # did (a line for the run's output); empty otherwise.
        self.kept = ""

    def acquire(self) -> None:
        """Make the engine a single-node swarm if it is not one; hold it shared.

        Shared first (runs share a swarm); only a run that finds no swarm lets go and
        takes the lock exclusively to make one, and checks again once it has it
        (another may have made it meanwhile). No run waits for another's whole run."""
        if not self._file.take(fcntl.LOCK_SH, LOCK_TIMEOUT_S):
            raise ClusterError(f"another harness process holds {self.lock_path} for over "
                               f"{LOCK_TIMEOUT_S:.0f} s while it joins or leaves the swarm")
        try:
            if swarm_state(self.client) == "inactive":
                self._file.unlock()
                if not self._file.take(fcntl.LOCK_EX, LOCK_TIMEOUT_S):
                    raise ClusterError(f"another harness process holds {self.lock_path} "
                                       f"for over {LOCK_TIMEOUT_S:.0f} s while it uses the "
                                       "swarm it is leaving")
                if swarm_state(self.client) == "inactive":
                    self._init()
                # Downgrade (not atomic in flock(2): another may take it exclusively in
                # between, and finds this run's swarm in use only once it has objects).
                if not self._file.take(fcntl.LOCK_SH, LOCK_TIMEOUT_S):
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
            self._file.close()
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
            kept = ""
            if self.created:
                try:
                    kept = leave_harmlessly(self.client, self.engine_lock_path)
                except Exception as exc:  # noqa: BLE001 - the first failure is the one to say
                    kept = str(exc)
                self.created = False
            if kept:
                # Labelled or not, said: the run's error follows this line.
                self.kept = f"{kept} (after a failed start); leave it with `docker swarm " \
                            "leave --force` once nothing runs beside it"
            else:
                remove_own_gwbridge(self.client)  # the harness's, made now or before
            raise

    def release(self) -> bool:
        """Stop using the swarm; leave it when the harness made it, no other harness
        process uses it, and leaving harms nothing (``leave_if_unused``). True if
        left; ``kept`` says why a swarm nothing of the harness uses stays. Never
        raises."""
        self.kept = ""
        try:
            self._file.unlock()
            if not self._file.take(fcntl.LOCK_EX, 0.0):
                return False  # another run holds it shared: it leaves it, later
            sweep_stale_swarm(self.client)  # the last user: killed runs' objects first
            left, self.kept = leave_if_unused(self.client, self.engine_lock_path)
            return left
        except Exception:
            return False
        finally:
            self._file.close()


def harness_objects(client: Any) -> list[str]:
    """The swarm objects of the harness still there (services, swarm networks)."""
    out = [f"service:{s.name}" for s in client.services.list(filters={"label": f"{LABEL}=1"})]
    out += [f"network:{n.name}" for n in client.networks.list(filters={"label": f"{LABEL}=1"})
            if n.attrs.get("Scope") == "swarm"]
    return out


def dns_dependents(client: Any) -> list[str]:
    """The running containers ``swarm leave`` would harm: those on a network with
    Docker's embedded DNS (any but ``bridge``, ``host``, ``none`` and
    ``docker_gwbridge``), whose names the leave drops from that DNS for as long as
    they run (moby/moby#45144, measured on 20.10.24). A swarm task is not one: it
    goes with the swarm (and a swarm with a service is never left)."""
    out: list[str] = []
    for c in client.containers.list(sparse=True):  # running (and paused) ones
        attrs = c.attrs or {}
        if "com.docker.swarm.task.id" in (attrs.get("Labels") or {}):
            continue
        nets = set((attrs.get("NetworkSettings") or {}).get("Networks") or {})
        if nets - NO_DNS_NETWORKS:
            names = attrs.get("Names") or [c.id[:12]]
            out.append(str(names[0]).lstrip("/"))
    return sorted(out)


def leave_if_unused(client: Any,
                    engine_lock_path: Path = ENGINE_LOCK_PATH) -> tuple[bool, str]:
    """Leave a swarm the harness made when nothing is on it and leaving harms no
    running container (the caller holds the swarm lock exclusively). Returns
    (True, "") if the engine left the swarm, else (False, why it stays) with an
    empty why when a service or another run still uses it. A ``docker_gwbridge``
    of the harness that an earlier leave left behind goes too."""
    if swarm_state(client) == "inactive":
        remove_own_gwbridge(client)
        return False, ""
    if not made_by_harness(client) or harness_objects(client) or client.services.list():
        return False, ""
    why = leave_harmlessly(client, engine_lock_path)
    if why:
        return False, why
    remove_own_gwbridge(client)  # without the engine lock: no container is on it
    return True, ""


def leave_harmlessly(client: Any, engine_lock_path: Path = ENGINE_LOCK_PATH) -> str:
    """``swarm leave --force`` unless it would harm a running container; empty if
    the engine left, else why not. Holds the engine lock exclusively from the check
    to the leave's end (seconds; a docker-backend run waits up to
    ``ENGINE_LOCK_TIMEOUT_S`` for it), never waiting for it."""
    engine = FileLock(engine_lock_path)
    try:
        # A docker-backend run holds it shared while it has containers, also while
        # they are being created (which the check below could miss).
        if not engine.take(fcntl.LOCK_EX, 0.0):
            return ("a docker-backend run of the harness is using the engine, and Docker's "
                    "`swarm leave` drops the DNS names of running containers")
        why = _harmed(client)
        if why:
            return why
        # Measured (20.10.24): a leave within a second of removing containers that
        # ran when the swarm was made left the engine's ``ingress`` network listed
        # (not removable without a swarm) until the next ``swarm init``. Then the
        # check again: a container may have started meanwhile.
        time.sleep(LEAVE_SETTLE_S)
        why = _harmed(client)
        if why:
            return why
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while swarm_state(client) != "inactive":
            if time.monotonic() >= deadline:
                return f"`docker swarm leave --force` did not end in {LEAVE_TIMEOUT_S:.0f} s"
            with contextlib.suppress(Exception):  # an API error or a client timeout
                client.swarm.leave(force=True)
            time.sleep(RETRY_PAUSE_S)
        return ""
    finally:
        engine.close()


def _harmed(client: Any) -> str:
    harmed = dns_dependents(client)
    if not harmed:
        return ""
    shown = ", ".join(harmed[:DEPENDENTS_SHOWN]) + (
        ", ..." if len(harmed) > DEPENDENTS_SHOWN else "")
    return (f"leaving it now would drop the DNS names of {len(harmed)} running "
            f"container(s) ({shown}): Docker's `swarm leave` does (moby/moby#45144)")


def leave_kept_swarm(client: Any, lock_path: Path = LOCK_PATH,
                     engine_lock_path: Path = ENGINE_LOCK_PATH) -> str:
    """At the end of a docker-backend run: leave a swarm a swarm run of the harness
    made and had to keep (``SwarmLease.kept``) if nothing uses it now. A line to
    print if it left, else empty. Never raises."""
    if made_by_harness(client) and SwarmLease(client, lock_path, engine_lock_path).release():
        return "the engine left the swarm an earlier harness run made and had to keep"
    return ""


def remove_own_gwbridge(client: Any) -> None:
    """Remove ``docker_gwbridge`` if the harness made it (its label); the engine's
    own is left alone. ``swarm leave`` keeps endpoints on it (the ingress sandbox's,
    a task's the engine has not released yet): Docker's documented removal
    disconnects them by force first. Bounded, never raises."""
    errors = docker_errors()
    deadline = time.monotonic() + GWBRIDGE_REMOVE_TIMEOUT_S
    while True:
        try:
            net = client.networks.get(GWBRIDGE)
            if (net.attrs.get("Labels") or {}).get(NODE_LABEL) != "1":
                return
            for key, ep in (net.attrs.get("Containers") or {}).items():
                with contextlib.suppress(errors.NotFound, errors.APIError):
                    net.disconnect(str(ep.get("Name") or key), force=True)
            net.remove()
            return
        except errors.NotFound:
            return
        except Exception:  # an API error ("active endpoints") or a client timeout
            if time.monotonic() >= deadline:
                return
            time.sleep(RETRY_PAUSE_S)


def remove_services_quietly(services: list[Any], quiet_s: float = TASKS_QUIET_S,
                            timeout_s: float = TASKS_QUIET_TIMEOUT_S) -> None:
    """Remove ``services`` once their tasks have stood still for ``quiet_s``
    (``TASKS_QUIET_S``: why), at most ``timeout_s`` after the call. Never raises."""
    deadline = time.monotonic() + timeout_s
    last: tuple[tuple[str, str, str], ...] | None = None
    since = time.monotonic()
    while services and time.monotonic() < deadline:
        try:
            now = tuple(sorted(
                (str(t.get("ID")), str(t.get("DesiredState")),
                 str((t.get("Status") or {}).get("State")))
                for svc in services for t in svc.tasks()))
        except Exception:  # an API error, a service gone: nothing to wait for
            break
        if now != last:
            last, since = now, time.monotonic()
        elif (time.monotonic() - since >= quiet_s
              and not any(desired == "remove" for _, desired, _ in now)):
            break
        time.sleep(TASKS_POLL_S)
    for svc in services:
        with contextlib.suppress(Exception):
            svc.remove()


def sweep_stale_swarm(client: Any) -> list[str]:
    """Remove the services, swarm networks, volumes, secrets and configs of runs
    whose harness process is gone (labels as ``engine.sweep_stale``). Never raises."""
    removed: list[str] = []
    if swarm_state(client) != "active":
        return removed
    with contextlib.suppress(Exception):
        gone = [svc for svc in client.services.list(filters={"label": f"{LABEL}=1"})
                if owner_gone(svc.attrs.get("Spec", {}).get("Labels") or {})]
        remove_services_quietly(gone)
        removed.extend(f"service:{svc.name}" for svc in gone)
    kinds: list[tuple[str, Any]] = [("secret", client.secrets), ("config", client.configs)]
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
