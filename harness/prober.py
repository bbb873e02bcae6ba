"""Health probing: the harness GETs every worker's ``/healthcheck`` the way a
Kubernetes liveness probe would, and records what it saw.

A ``health`` event (source ``harness``) is recorded for each worker at its first
observation and whenever ``ok`` changes: ``status`` (the HTTP status, or None
when the request failed), ``ok`` (status == 200) and ``error``. The
``health-check`` checker judges these against broker outages.

Plain ``urllib``: one GET with a short timeout is all a probe is.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any, Final

from harness import vocab
from harness.cluster.base import Cluster
from harness.history import Recorder

POLL_INTERVAL_S: Final = 0.25
REQUEST_TIMEOUT_S: Final = 1.0
WORKERS_MAX: Final = 256  # one polling thread each: a bound on threads


def probe(url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int | None, str | None]:
    """(status, error): status None when no HTTP answer came."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), None
    except urllib.error.HTTPError as exc:
        return int(exc.code), None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"[:200]


class HealthProber:
    def __init__(self, cluster: Cluster, recorder: Recorder,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._supervisor: threading.Thread | None = None

    def _poll(self, name: str) -> None:
        last_ok: bool | None = None
        while not self.stop_event.is_set():
            url = self.cluster.health_url(name)
            if url is not None and self.cluster.is_running(name):
                status, error = probe(url)
                ok = status == 200
                if ok != last_ok:
                    extra: dict[str, Any] = {"error": error} if error else {}
                    self.recorder.record(vocab.HEALTH, "harness", worker=name, status=status, ok=ok,
                                         **extra)
                    last_ok = ok
            self.stop_event.wait(self.interval_s)

    def _supervise(self) -> None:
        while not self.stop_event.is_set():
            for name in self.cluster.workers():
                if name not in self._threads and len(self._threads) < WORKERS_MAX:
                    t = threading.Thread(target=self._poll, args=(name,), daemon=True,
                                         name=f"health-{name}")
                    self._threads[name] = t
                    t.start()
            self.stop_event.wait(0.5)

    def start(self) -> None:
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name="health-supervisor")
        self._supervisor.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for t in [self._supervisor, *self._threads.values()]:
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
