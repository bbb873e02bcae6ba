"""The Docker engine as the docker backend sees it: image and label names,
connecting (with a one-line error that says how to fix it), and sweeping what a
killed harness left behind, found by label, never by name."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psutil

from harness.cluster.base import (
    ClusterError,
)

BROKER_IMAGE: Final = "rmq-harness/rabbitmq:latest"
WORKER_IMAGE: Final = "rmq-harness/worker:latest"
BROKER_ALIAS: Final = "rabbitmq"
AMQP_PORT: Final = 5672
MGMT_PORT: Final = 15672
LABEL: Final = "rmq-harness"
LABEL_RUN: Final = "rmq-harness.run"
LABEL_PID: Final = "rmq-harness.pid"
LABEL_PIDSTART: Final = "rmq-harness.pidstart"
LABEL_HOST: Final = "rmq-harness.host"
LABEL_ROLE: Final = "rmq-harness.role"
LABEL_SHARED: Final = "rmq-harness.shared"
SHARED_PREFIX: Final = "shared-"
MGMT_TIMEOUT_S: Final = 10.0
MGMT_ATTEMPTS: Final = 3
GUEST_AUTH: Final = "Basic Z3Vlc3Q6Z3Vlc3Q="  # guest:guest

BROKER_START_TIMEOUT_S: Final = 60.0
BROKER_STOP_TIMEOUT_S: Final = 15
ENGINE_TIMEOUT_S: Final = 60
THREAD_JOIN_TIMEOUT_S: Final = 10.0
RESTART_GRACE_S: Final = 10.0
SWEEP_WAIT_S: Final = 10.0  # for a container another sweeper is removing
LOG_TAIL_LINES: Final = 30
POOL_SIZE: Final = 256
PIDSTART_TOLERANCE_S: Final = 1.0
NETWORK_CREATE_ATTEMPTS: Final = 5
# Held shared by each docker-backend cluster (a run's, a shared broker's) from before
# its first container until its last is gone; a swarm leave takes it exclusively and
# never waits. Docker's ``swarm leave`` drops the embedded-DNS names of the containers
# running at that moment, on every network (moby/moby#45144; measured on 20.10.24: a
# docker run whose workers started 2 s before a swarm run's leave never resolved its
# broker). Fixed, not $TMPDIR: every harness process on the host must find the file.
ENGINE_LOCK_PATH: Final = Path("/tmp/rmq-harness-engine.lock")
ENGINE_LOCK_TIMEOUT_S: Final = 60.0  # a leave holds it for seconds
RUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def docker_errors() -> Any:
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
    except docker_errors().ImageNotFound as exc:
        raise ClusterError(
            f"image {image} not found: run `harness images build --offline`"
        ) from exc
    except docker_errors().APIError as exc:
        raise ClusterError(f"cannot inspect image {image}: {exc.explanation}") from exc


def harness_identity() -> dict[str, str]:
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


def owner_gone(labels: dict[str, str]) -> bool:
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
        return abs(started - float(recorded)) > PIDSTART_TOLERANCE_S  # pid reused
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
    contested: list[Any] = []
    for c in containers:
        try:
            if owner_gone(c.labels or {}):
                c.remove(force=True, v=True)
                removed.append(f"container:{c.name}")
        except Exception:
            # Most often another harness process sweeping the same object at the
            # same moment (the engine answers 409 "removal in progress"): wait for
            # it below, or its network is still in use and stays behind.
            contested.append(c)
    _wait_gone(client, contested)
    try:
        networks = client.networks.list(filters={"label": f"{LABEL}=1"})
    except Exception:
        return removed
    for n in networks:
        try:
            if owner_gone(n.attrs.get("Labels") or {}):
                n.remove()
                removed.append(f"network:{n.name}")
        except Exception:
            continue
    return removed


def _wait_gone(client: Any, containers: list[Any]) -> None:
    """Wait, at most ``SWEEP_WAIT_S`` in all, for containers another sweeper removes."""
    deadline = time.monotonic() + SWEEP_WAIT_S
    for c in containers:
        while time.monotonic() < deadline:
            try:
                client.containers.get(c.id)
            except Exception:  # NotFound: gone (any other error: nothing to wait for)
                break
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
            time.sleep(0.2)


def parse_docker_ts(text: str) -> int | None:
    """``2026-11-28T03:55:41.123456789Z`` -> nanoseconds since the epoch."""
    try:
        main, _, frac = text.rstrip("Z").partition(".")
        secs = int(datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
        digits = "".join(ch for ch in frac if ch.isdigit())[:9]
        return secs * 1_000_000_000 + int(digits.ljust(9, "0") or "0")
    except ValueError:
        return None
