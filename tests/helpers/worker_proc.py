"""The reference worker as a process for its own tests: ``python -m worker`` with its
stdout events collected by a reader thread, and the task body it reads."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.cluster.local import free_port as free_port

REPO = Path(__file__).resolve().parents[2]


def task_body(task_id: str, **directives: Any) -> bytes:
    return json.dumps({"id": task_id, "task": "logger", "payload": {"n": task_id},
                       "directives": directives}).encode()


class WorkerProc:
    """``python -m worker`` with its stdout events collected by a reader thread."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("RABBITMQ_", "WORKER_", "HEALTH_"))}
        full.update(env)
        full["PYTHONPATH"] = str(REPO)
        self.stderr_path = log_dir / f"worker-{env.get('WORKER_ID', 'w')}.err"
        self._err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=full, cwd=str(REPO),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err,
        )
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict):
                        self.events.append(obj)
                self._cond.notify_all()

    def of(self, event: str, task_id: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events
                    if e.get("event") == event and (task_id is None or e.get("id") == task_id)]

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def wait_event(self, event: str, timeout_s: float, task_id: str | None = None,
                   count: int = 1) -> bool:
        return self.wait_for(
            lambda evs: sum(1 for e in evs if e.get("event") == event
                            and (task_id is None or e.get("id") == task_id)) >= count,
            timeout_s,
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self._err.close()
        return self.proc.returncode


@contextlib.contextmanager
def running_worker(env: dict[str, str], log_dir: Path) -> Iterator[WorkerProc]:
    w = WorkerProc(env, log_dir)
    try:
        yield w
    finally:
        w.stop()


def start_ready(env: dict[str, str], log_dir: Path) -> WorkerProc:
    """A worker process that has started consuming (or an AssertionError with its logs)."""
    w = WorkerProc(env, log_dir)
    if not w.wait_event("ready", 20):
        w.stop()
        raise AssertionError(f"worker not ready: {w.lines[-5:]} {w.stderr()[-2000:]}")
    return w


def health(port: int) -> int:
    """The HTTP status of a worker's /healthcheck (-1 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as r:
            json.loads(r.read())
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return -1
