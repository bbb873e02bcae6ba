"""``--backend external`` against this project's docker-compose.yml deployment (three
reference workers that the harness neither starts nor stops): the guide's crash
test through a ``docker kill`` hook, the workers' logs followed through
``docker compose logs``, and the deployment left as found: its queues hold what
they held, every worker runs again (the ``restart`` hook), nothing of the
harness's is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from compose import Deployment

pytestmark = [pytest.mark.docker, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300


def queues(dep: Deployment) -> dict[str, int]:
    """Every queue of the deployment's vhost and its message count (a passive declare:
    the management API's counts lag)."""
    admin = dep.admin()
    try:
        names = [q.name for q in admin.list_queues("")]
        return {name: admin.passive_depth(name) or 0 for name in names}
    finally:
        admin.close()


SCALE_DOWN = """\
name: scale-down-external
description: The deployment scaled from 3 workers to 1 while they work.
claims: [no-loss, exactly-once-ack, graceful-shutdown]
cluster: {workers: 3, queue: go.logger, grace_s: 10}
workload:
  tasks: 60
  drain_timeout_s: 90
  publish_timeout_s: 30
  directives: {sleep_ms: {uniform: [300, 600]}}
schedule:
  - when: {processed: 10}
    fault: scale
    count: 1
"""


def run_external(dep: Deployment, scenario: Path, out: Path, *hooks: str
                 ) -> tuple[subprocess.CompletedProcess[str], Path, dict[str, Any]]:
    """``harness run SCENARIO --backend external`` on the deployment, its logs
    followed through Compose, with the ``--fault-cmd`` hooks given: (the process, the
    run directory, claim -> its row of result.json)."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(scenario), "--backend", "external",
         "--broker-url", f"{dep.url}?management_port={dep.mgmt_port}",
         "--worker-logs", " ".join([*dep.base, "logs", "-f", "--no-color", "--tail=0",
                                    "worker"]),
         *[a for hook in hooks for a in ("--fault-cmd", hook)],
         "--capabilities", "directives", "--out", str(out), "--no-progress"],
        cwd=ROOT, env=dep.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        check=False)
    results = sorted(out.glob("*/result.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(results[-1].read_text())
    return proc, results[-1].parent, {c["claim"]: c for c in data["claims"]}


def scale_down_through_compose(dep: Deployment, out: Path, before_queues: dict[str, int],
                               before_running: list[str]) -> None:
    """The HPA's "scales back" through Compose's own scale: the workers Compose stops
    are named by its follower ("..._worker_3 exited with code 0") and counted by the
    broker; each is a termination, judged by graceful-shutdown; nothing is lost, and the
    end of the run scales the deployment back to three."""
    scenario = out / "scale-down.yaml"
    out.mkdir()
    scenario.write_text(SCALE_DOWN)
    proc, _, claims = run_external(
        dep, scenario, out, "scale=" + " ".join([*dep.base, "up", "-d", "--no-recreate",
                                                  "--scale", "worker={n}", "worker"]))
    assert claims["no-loss"]["valid"] == "true", claims["no-loss"]
    assert claims["exactly-once-ack"]["valid"] == "true", claims["exactly-once-ack"]
    shutdown = claims["graceful-shutdown"]
    assert shutdown["valid"] == "true", shutdown
    assert shutdown["evidence"]["terminations"] == 2, shutdown["evidence"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert queues(dep) == before_queues
    assert dep.containers() == before_running  # scaled back to three


def test_crash_recovery_on_a_compose_deployment_through_its_hooks(tmp_path: Path) -> None:
    dep = Deployment(f"rmqh-ext-{os.getpid()}")
    try:
        dep.up(workers=3)
        before_queues = queues(dep)
        before_running = dep.containers()
        assert len(before_running) == 4  # the broker and three workers
        sep = dep.separator
        proc, run_dir, claims = run_external(
            dep, ROOT / "scenarios" / "crash-recovery.yaml", tmp_path,
            f"kill=docker kill {dep.project}{sep}{{worker}}",
            f"restart=docker start {dep.project}{sep}{{worker}}")
        # The docker backend's verdicts on the reference worker: every invariant holds.
        for claim in ("no-loss", "exactly-once-ack", "redelivery-after-crash",
                      "no-duplicate-processing"):
            assert claims[claim]["invariant"] == "true", claims[claim]
        evidence = claims["redelivery-after-crash"]["evidence"]
        assert evidence["kills"] == 1 and evidence["in_flight"] > 0, evidence
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert "guest:guest" not in proc.stdout + proc.stderr  # the password is never printed
        history = (run_dir / "history.jsonl").read_text()
        assert "guest:guest" not in history
        # The workers are named by Compose's log prefixes, the harness's record of them.
        killed = evidence["per_kill"][0]["worker"]
        assert killed.startswith("worker"), evidence
        # Left as found: the queues hold what they held (the harness never consumes
        # from them), and every worker runs again.
        assert queues(dep) == before_queues
        assert dep.containers() == before_running
        scale_down_through_compose(dep, tmp_path / "scale", before_queues, before_running)
    finally:
        dep.down()
    assert dep.containers(running_only=False) == []
