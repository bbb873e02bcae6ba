"""The root docker-compose.yml as a deployment for the tests: up with N workers on
free host ports, the broker's URL, the names Compose gives, and down (nothing left)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.broker import BrokerAdmin
from harness.cluster.base import BrokerEndpoint, ClusterError

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 120
DOWN_TIMEOUT_S = 120


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh)")


def free_port() -> int:
    # Below the ephemeral range, so an outgoing connection cannot take it first.
    from harness.cluster.local import free_port as pick

    return pick()


@dataclass
class Deployment:
    """``docker-compose.yml`` brought up as project ``project``."""

    project: str
    amqp_port: int = field(default_factory=free_port)
    mgmt_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, RMQ_AMQP_PORT=str(self.amqp_port),
                    RMQ_MANAGEMENT_PORT=str(self.mgmt_port))

    @property
    def base(self) -> list[str]:
        return [*compose_cmd(), "-p", self.project, "-f", str(ROOT / "docker-compose.yml")]

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def separator(self) -> str:
        """Compose v1 names containers ``<project>_<service>_<n>``, v2 with dashes."""
        v1 = subprocess.run([*compose_cmd(), "version", "--short"], capture_output=True,
                            text=True, check=False).stdout.strip().startswith("1.")
        return "_" if v1 else "-"

    def admin(self) -> BrokerAdmin:
        return BrokerAdmin(BrokerEndpoint(self.url, f"http://127.0.0.1:{self.mgmt_port}"))

    def up(self, workers: int) -> None:
        up = subprocess.run([*self.base, "up", "-d", "--scale", f"worker={workers}"],
                            env=self.env, capture_output=True, text=True,
                            timeout=UP_TIMEOUT_S, check=False)
        assert up.returncode == 0, up.stderr[-2000:]
        admin = self.admin()
        deadline = time.monotonic() + UP_TIMEOUT_S
        try:
            while True:
                try:
                    info = admin.queue_info("go.logger")
                except ClusterError:
                    info = None
                if info is not None and info.consumers >= workers:
                    return
                assert time.monotonic() < deadline, f"{workers} workers never consumed"
                time.sleep(1)
        finally:
            admin.close()

    def containers(self, running_only: bool = True) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        args = ["docker", "ps", "--format", "{{.Names}}", "--filter", label]
        if not running_only:
            args.insert(2, "-a")
        out = subprocess.run(args, capture_output=True, text=True, check=False).stdout
        return sorted(out.split())

    def down(self) -> None:
        subprocess.run([*self.base, "down", "-v", "--remove-orphans"], env=self.env,
                       capture_output=True, timeout=DOWN_TIMEOUT_S, check=False)
