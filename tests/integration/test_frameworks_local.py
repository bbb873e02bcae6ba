"""Celery and Dramatiq workers nobody here wrote, under the harness (local backend):
the example apps (examples/), tasks published by each framework's own client
(``--format``), events from harness_events. The kill in crash-recovery.yaml tells
Celery's default (acknowledge when the task starts) from ``task_acks_late``, and Dramatiq
(acknowledge after the actor) passes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Their own xdist group: local runs, not timing-bound, beside the other groups.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frameworks")]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def celery_worker(*env: str, level: str = "warning") -> str:
    celery = shutil.which("celery", path=str(BIN)) or "celery"
    # The scenario's concurrency reaches the app as WORKER_CONCURRENCY (no -c here).
    return " ".join(["env", *env, celery, "-A", "examples.celery_app.tasks", "worker",
                     "-Q", "go.logger", "--pool", "threads", "--without-gossip",
                     "--without-mingle", "--without-heartbeat", "-l", level])


DRAMATIQ_WORKER = (f"{sys.executable} -m dramatiq examples.dramatiq_app.tasks --processes 1 "
                   f"--threads 4 --queues go.logger --path {ROOT}")


def run(fmt: str, worker_cmd: str, out: Path, scenario: str = "crash-recovery.yaml",
        events: str = "json", params: tuple[str, ...] = (), args: tuple[str, ...] = ()
        ) -> tuple[int, dict[str, dict[str, object]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(ROOT / "scenarios" / scenario),
         "--backend", "local", "--format", fmt, "--worker-cmd", worker_cmd,
         "--events", events, "--capabilities", "directives", "--out", str(out),
         "--no-progress", *(a for p in params for a in ("--param", p)), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    results = sorted(out.glob("*/result.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(results[-1].read_text())
    return proc.returncode, {c["claim"]: c for c in data["claims"]}


def test_dramatiq_keeps_every_task_through_a_kill(tmp_path: Path) -> None:
    code, claims = run("dramatiq", DRAMATIQ_WORKER, tmp_path)
    assert code == 0, claims
    for claim in ("no-loss", "exactly-once-ack", "redelivery-after-crash"):
        assert claims[claim]["valid"] == "true", claims[claim]
    # A kill between a task's side effect and its ack gives an explained duplicate:
    # the guide's words false, the invariant (what gates) true.
    assert claims["no-duplicate-processing"]["invariant"] == "true"


def test_celery_countdown_retries_back_off(tmp_path: Path) -> None:
    code, claims = run("celery", celery_worker(), tmp_path, "retry-backoff.yaml")
    assert claims["retry-backoff"]["valid"] == "true", claims["retry-backoff"]
    assert code == 0


def test_celery_app_without_the_integration_read_from_its_log_lines(tmp_path: Path) -> None:
    """``--events celery``: the app as it is (HARNESS_EVENTS=off), its own INFO lines
    read through the preset; the loss of its default acknowledgement (when a task
    starts: the tasks running at the kill are gone) is caught from them alone."""
    code, claims = run("celery", celery_worker("HARNESS_EVENTS=off", level="info"), tmp_path,
                       events="celery")
    assert code == 1, claims
    assert claims["no-loss"]["valid"] == "false", claims["no-loss"]
    assert claims["redelivery-after-crash"]["valid"] == "false"
    assert claims["exactly-once-ack"]["valid"] == "unknown"  # Celery logs no ack
    evidence = claims["no-loss"]["evidence"]
    assert isinstance(evidence, dict) and int(evidence["processed"]) > 0  # lines were read


def celery_prefork(*env: str) -> str:
    return celery_worker(*env).replace("--pool threads", "--pool prefork")


def test_celery_prefork_child_crash_needs_reject_on_worker_lost(tmp_path: Path) -> None:
    """A crash inside a task under the prefork pool kills only the pool's child:
    with acks_late alone Celery acknowledges the task as failed (lost); with
    task_reject_on_worker_lost it is requeued and processed."""
    code, claims = run("celery", celery_prefork("CELERY_ACKS_LATE=true"), tmp_path / "late",
                       "crash-during.yaml")
    assert claims["no-loss"]["valid"] == "false", claims["no-loss"]
    assert code == 1
    code, claims = run("celery", celery_prefork("CELERY_ACKS_LATE=true",
                                                "CELERY_REJECT_ON_WORKER_LOST=true"),
                       tmp_path / "reject", "crash-during.yaml")
    assert claims["no-loss"]["valid"] == "true", claims["no-loss"]
    assert code == 0


def test_dramatiq_dead_letters_to_its_xq(tmp_path: Path) -> None:
    """Dramatiq's own topology: what fails for good is in <queue>.XQ, the DLQ the
    format names, once each."""
    code, claims = run("dramatiq", DRAMATIQ_WORKER, tmp_path, "dead-letter-tasks.yaml")
    assert code == 0, claims
    assert claims["dead-letter"]["valid"] == "true", claims["dead-letter"]


def test_dramatiq_backoff_judged_as_dramatiq_draws_it(tmp_path: Path) -> None:
    """Dramatiq's delay: min_backoff x 2^(a-1) x U(1, 2), equal jitter below 2 x that,
    released by a worker that polls every 100 ms (dramatiq_worker_timeout)."""
    code, claims = run("dramatiq", f"env dramatiq_worker_timeout=100 {DRAMATIQ_WORKER}",
                       tmp_path, "retry-backoff-jitter.yaml",
                       params=("retry-backoff.base_ms=400", "retry-backoff.jitter=equal"))
    assert claims["retry-backoff"]["valid"] == "true", claims["retry-backoff"]
    assert code == 0


def test_celery_app_with_its_own_dlq_named_by_dlq(tmp_path: Path) -> None:
    """A Celery app that declares a dead-letter queue of its own (the x-dead-letter-*
    recipe) and rejects what fails (acks_on_failure_or_timeout=False): ``--dlq``
    names it, and what failed for good is found there."""
    worker = celery_worker("CELERY_ACKS_LATE=true", "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT=false",
                           "CELERY_DLQ=go.logger.failed")
    code, claims = run("celery", worker, tmp_path, "dead-letter-tasks.yaml",
                       args=("--dlq", "go.logger.failed"))
    assert claims["dead-letter"]["valid"] == "true", claims["dead-letter"]
    assert claims["no-loss"]["valid"] == "true", claims["no-loss"]
    assert code == 0, claims
