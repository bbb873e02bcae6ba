"""Publish throughput: raw pika without confirms vs the harness Publisher with confirms.

    python3 benchmarks/bench_publish.py [--tasks 20000] [--broker-url amqp://...]

Without --broker-url it starts a private RabbitMQ node on free ports (and always
stops it). Both measurements run in the same run against the same broker, each to
a fresh durable queue with persistent ~100-byte messages; the queues are deleted
afterwards. Prints both rates and their ratio (the target is >= 0.5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import pika
import pika.exceptions

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.cluster.base import ClusterError  # noqa: E402
from harness.history import Recorder  # noqa: E402
from harness.tasks import Task  # noqa: E402
from harness.workload import Publisher  # noqa: E402

SERVER_BIN = "/usr/lib/rabbitmq/bin/rabbitmq-server"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
MAX_TASKS = 1_000_000
BODY_SIZE = 100


def free_port() -> int:
    # Below the ephemeral range, so an outgoing connection cannot take it first.
    from harness.cluster.local import free_port as pick

    return pick()


class PrivateBroker:
    """A throw-away RabbitMQ node on free loopback ports (Debian's rabbitmq-server).

    Runs as the ``rabbitmq`` user in its own process group under a temporary
    directory; ``stop`` ends it (SIGTERM, then SIGKILL of the group) and removes
    the directory. The shared ``epmd`` daemon, if the node starts one, is left.
    """

    def __init__(
        self,
        management: bool = False,
        name_prefix: str = "bench",
        extra_conf: tuple[str, ...] = (),
    ) -> None:
        self.management = management
        self.extra_conf = extra_conf
        self.name = f"{name_prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.node = f"{self.name}@localhost"
        self.port = 0
        self.mgmt_port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    def start(self) -> PrivateBroker:
        if not os.path.exists(SERVER_BIN):
            raise ClusterError(
                f"{SERVER_BIN} not found; install it with: apt-get install -y rabbitmq-server"
            )
        try:
            user = pwd.getpwnam("rabbitmq")
        except KeyError:
            raise ClusterError("no 'rabbitmq' user; install rabbitmq-server") from None
        self.port, dist_port = free_port(), free_port()
        self.mgmt_port = free_port() if self.management else 0
        self.dir = Path(tempfile.mkdtemp(prefix=f"rmq-{self.name}-"))
        os.chmod(self.dir, 0o755)
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        conf = [f"listeners.tcp.default = {self.port}", "loopback_users = none"]
        if self.management:
            conf.append(f"management.tcp.port = {self.mgmt_port}")
            conf.append("management.tcp.ip = 127.0.0.1")
        conf.extend(self.extra_conf)
        (self.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        plugins = "[rabbitmq_management]." if self.management else "[]."
        (self.dir / "enabled_plugins").write_text(plugins + "\n")
        for p in [self.dir, *self.dir.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": user.pw_dir,
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
        }
        log = (self.dir / "log" / "stdout.log").open("wb")
        try:
            self.proc = subprocess.Popen(
                [SERVER_BIN],
                cwd=str(self.dir),
                env=env,
                user=user.pw_uid,
                group=user.pw_gid,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise ClusterError(f"private RabbitMQ node exited at start-up: {tail}")
            if self._answers():
                return self
            time.sleep(0.5)
        self.stop()
        raise ClusterError(
            f"private RabbitMQ node did not answer on port {self.port} "
            f"within {START_TIMEOUT_S:.0f} s"
        )

    def _answers(self) -> bool:
        try:
            params = pika.URLParameters(self.amqp_url)
            params.socket_timeout = 2
            params.connection_attempts = 1
            conn = pika.BlockingConnection(params)
        except pika.exceptions.AMQPError:
            return False
        except OSError:
            return False
        with contextlib.suppress(Exception):
            conn.close()
        if self.management:
            import urllib.request

            try:
                with urllib.request.urlopen(f"{self.management_url}/api/overview", timeout=2):
                    pass
            except OSError as e:
                # 401 means it answers (HTTPError is an OSError with a code)
                return getattr(e, "code", None) == 401
        return True

    def _log_tail(self) -> str:
        if self.dir is None:
            return ""
        p = self.dir / "log" / "stdout.log"
        try:
            lines = p.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])[:400]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT_S)
        if proc is not None:
            # The group may hold helpers (erl_child_setup, inet_gethost).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def make_bench_tasks(n: int) -> list[Task]:
    tasks = []
    for i in range(n):
        tid = f"bench-{i:06d}"
        body = json.dumps({"id": tid, "task": "logger", "payload": {"n": i}, "directives": {}})
        raw = body.encode().ljust(BODY_SIZE, b" ")
        tasks.append(Task(tid, raw, {}, False))
    return tasks


def _declare(url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
    finally:
        conn.close()


def _depth_and_delete(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        depth = int(ch.queue_declare(queue, passive=True).method.message_count)
        ch.queue_purge(queue)
        ch.queue_delete(queue)
        return depth
    finally:
        conn.close()


def bench_raw(url: str, tasks: list[Task]) -> float:
    queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
    _declare(url, queue)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        t0 = time.monotonic()
        for t in tasks:
            props = pika.BasicProperties(
                message_id=t.id, delivery_mode=2, content_type="application/json"
            )
            ch.basic_publish("", queue, t.body, props)
        # Make sure everything left the client: a round trip after the last publish.
        ch.queue_declare(queue, passive=True)
        elapsed = time.monotonic() - t0
    finally:
        conn.close()
    depth = _depth_and_delete(url, queue)
    print(f"raw pika (no confirms): {len(tasks)} msgs in {elapsed:.2f} s "
          f"= {len(tasks) / elapsed:,.0f} msg/s (queue depth afterwards {depth})")
    return len(tasks) / elapsed


def bench_publisher(url: str, tasks: list[Task], window: int) -> float:
    queue = f"bench.confirm.{uuid.uuid4().hex[:8]}"
    _declare(url, queue)
    rec = Recorder(None)
    stats = Publisher(url, queue, rec, window=window, timeout_s=300).publish(tasks)
    depth = _depth_and_delete(url, queue)
    print(f"harness Publisher (confirms, window {window}): {stats.ok} ok, {stats.fail} fail, "
          f"{stats.unknown} unknown in {stats.elapsed_s:.2f} s = {stats.rate:,.0f} confirmed msg/s "
          f"(queue depth afterwards {depth})")
    return stats.rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000, help="messages per measurement")
    ap.add_argument("--broker-url", default=None, help="amqp:// URL of a broker to use")
    ap.add_argument("--window", type=int, default=1000, help="Publisher confirm window")
    args = ap.parse_args(argv)
    if not 1 <= args.tasks <= MAX_TASKS:
        print(f"--tasks must be between 1 and {MAX_TASKS}", file=sys.stderr)
        return 2
    tasks = make_bench_tasks(args.tasks)
    broker: PrivateBroker | None = None
    cluster: Any = None
    try:
        if args.broker_url:
            url = args.broker_url
        else:
            local: Any
            try:
                import harness.cluster.local as local
            except ImportError:
                local = None
            if local is not None:
                run_dir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
                cluster = local.LocalCluster(f"benchpub-{uuid.uuid4().hex[:6]}", run_dir,
                                       Recorder(None))
                url = cluster.start_broker().amqp_url
                print(f"private broker (harness.cluster.local) at {url}")
            else:
                broker = PrivateBroker(name_prefix="benchpub").start()
                url = broker.amqp_url
                print(f"private broker {broker.node} on port {broker.port}")
        raw = bench_raw(url, tasks)
        confirmed = bench_publisher(url, tasks, args.window)
        ratio = confirmed / raw if raw else 0.0
        print(f"ratio confirmed/raw = {ratio:.2f} (target >= 0.50)")
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (pika.exceptions.AMQPError, OSError) as e:
        print(f"error: broker unreachable or failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if broker is not None:
            broker.stop()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
