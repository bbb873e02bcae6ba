"""The root docker-compose.yml: the guide's compose example with the built
images; `--scale worker=3` consumes tasks published by the harness's own
publisher (publisher confirms), and `down` leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from compose import compose_cmd, free_port

from harness.broker import BrokerAdmin
from harness.cluster.base import BrokerEndpoint, ClusterError
from harness.history import Recorder
from harness.model import Distribution, Workload
from harness.tasks import make_tasks
from harness.workload import Publisher

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

ROOT = Path(__file__).resolve().parents[2]
TASKS = 60
UP_TIMEOUT_S = 120
PROCESS_TIMEOUT_S = 90


def test_compose_scale_3_consumes_harness_tasks(tmp_path: Path) -> None:
    project = f"rmqh-compose-{os.getpid()}"
    amqp, mgmt = free_port(), free_port()
    env = dict(os.environ, RMQ_AMQP_PORT=str(amqp), RMQ_MANAGEMENT_PORT=str(mgmt))
    base = [*compose_cmd(), "-p", project, "-f", str(ROOT / "docker-compose.yml")]
    try:
        up = subprocess.run([*base, "up", "-d", "--scale", "worker=3"], env=env,
                            capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False)
        assert up.returncode == 0, up.stderr[-2000:]
        url = f"amqp://guest:guest@127.0.0.1:{amqp}/%2F"
        # All three replicas consume before the tasks go out (compose starts them
        # together, but one may be a second or two late).
        admin = BrokerAdmin(BrokerEndpoint(url, f"http://127.0.0.1:{mgmt}"))
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            try:
                info = admin.queue_info("go.logger")
            except ClusterError:
                info = None
            if info is not None and info.consumers >= 3:
                break
            assert time.monotonic() < deadline, "three workers never consumed"
            time.sleep(1)
        admin.close()
        workload = Workload(tasks=TASKS, directives={"sleep_ms": Distribution("const", (200,))})
        import random

        tasks = make_tasks(workload, random.Random(1), id_prefix="compose")
        rec = Recorder(tmp_path / "history.jsonl")
        # The workers declare the queue once they are up; until then publishes are
        # returned (mandatory), so retry the whole batch until all are confirmed.
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            stats = Publisher(url, "go.logger", rec, timeout_s=20).publish(tasks)
            if stats.ok == TASKS:
                break
            assert time.monotonic() < deadline, f"publishing never confirmed: {stats}"
            time.sleep(2)
        want = {t.id for t in tasks}
        seen: set[str] = set()
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        workers: set[str] = set()
        while time.monotonic() < deadline and not want <= seen:
            logs = subprocess.run([*base, "logs", "--no-color", "worker"], env=env,
                                  capture_output=True, text=True, timeout=60, check=False)
            for line in logs.stdout.splitlines():
                _, _, payload = line.partition("| ")
                try:
                    ev = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(ev, dict) and ev.get("event") == "processed":
                    seen.add(str(ev.get("id")))
                    workers.add(str(ev.get("worker")))
            time.sleep(1)
        assert want <= seen, f"not processed: {sorted(want - seen)[:5]}"
        assert len(workers) == 3, workers  # three replicas shared the queue
    finally:
        subprocess.run([*base, "down", "-v", "--remove-orphans"], env=env,
                       capture_output=True, timeout=120, check=False)
    label = f"label=com.docker.compose.project={project}"
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label],
                          capture_output=True, text=True, check=False)
    assert left.stdout.strip() == ""
