"""Test-only helpers for the worker's integration tests: a private RabbitMQ node
and a worker process wrapper. (The harness's real broker starter lives in
``harness/cluster/local/``; this one only serves ``test_worker_*.py``.)

The node gets its own free ports (AMQP, distribution and epmd), its own node
name and directories under /tmp owned by the ``rabbitmq`` user, no plugins
(so nothing binds 15672), and ``loopback_users = none``. ``stop()`` asks the
node to stop, then kills what remains of the process group it started and its
private epmd, and removes its directories.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pika
import pika.exceptions

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    # Below the ephemeral range, so an outgoing connection cannot take it first.
    from harness.cluster.local import free_port as pick

    return pick()


def wait_until(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return pred()


class PrivateBroker:
    def __init__(self) -> None:
        self.name = f"wt{uuid.uuid4().hex[:10]}"
        self.node = f"{self.name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"worker-it-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._uid = pwd.getpwnam("rabbitmq").pw_uid
        self._gid = grp.getgrnam("rabbitmq").gr_gid
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self._setup_dirs()

    def _setup_dirs(self) -> None:
        os.chmod(self.base, 0o755)
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir()
        (self.base / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        for p in [self.base, *self.base.rglob("*")]:
            os.chown(p, self._uid, self._gid)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME="/var/lib/rabbitmq",  # the rabbitmq user's Erlang cookie
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
        )
        return env

    def start(self, timeout_s: float = 60.0) -> None:
        self._log = (self.base / "server.out").open("ab")
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env(), cwd=str(self.base), user=self._uid, group=self._gid,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_until(self._answers, timeout_s, 0.25):
            tail = (self.base / "server.out").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"private RabbitMQ did not start in {timeout_s} s: {tail}")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}")
        try:
            params = pika.URLParameters(self.url)
            params.socket_timeout = 1
            params.connection_attempts = 1
            pika.BlockingConnection(params).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def ctl(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(), cwd=str(self.base), user=self._uid, group=self._gid,
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )

    def stop_node(self, timeout_s: float = 60.0) -> None:
        """Stop the node (keeps its data: ``start()`` brings it back)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ctl("stop", timeout_s=timeout_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        # Whatever remains of the process group we started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self.stop_node()
        # The node started an epmd on our private port (it daemonizes out of our group).
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"],
                           capture_output=True, timeout=10, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- client helpers ---------------------------------------------------------------
    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def publish(self, queue: str, tasks: list[tuple[str, bytes]]) -> None:
        """Publish (message_id, body) pairs persistently, with confirms."""
        conn = self.connect()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for mid, body in tasks:
                ch.basic_publish(
                    "", queue, body,
                    pika.BasicProperties(message_id=mid, content_type="application/json",
                                         delivery_mode=2),
                    mandatory=True,
                )
        finally:
            conn.close()

    def drain_queue(self, queue: str, limit: int = 10_000) -> list[tuple[str | None, bytes]]:
        """Get and ack every message of ``queue`` (up to ``limit``)."""
        out: list[tuple[str | None, bytes]] = []
        conn = self.connect()
        try:
            ch = conn.channel()
            for _ in range(limit):
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                out.append((props.message_id, body))
        finally:
            conn.close()
        return out

    def depth(self, queue: str) -> int:
        conn = self.connect()
        try:
            ok = conn.channel().queue_declare(queue, passive=True)
            return int(ok.method.message_count)
        finally:
            conn.close()


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
