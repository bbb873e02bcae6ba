"""The ``local`` backend: a private RabbitMQ node and worker processes on this host.

Broker
    ``start_broker(None)`` starts a private node (``harness-<run_id>@localhost``)
    on free ports (AMQP, distribution, management and its own epmd), with its
    own data, log and cookie under ``<run_dir>/broker`` (or under
    ``/tmp/rmq-harness/nodes/`` when the run directory is not reachable by the
    ``rabbitmq`` user or its path is long). On stop the node's logs are copied to
    ``<run_dir>/logs/broker/`` and its data (mnesia) is removed.
    ``/usr/lib/rabbitmq/bin/rabbitmq-server``
    is run directly as the ``rabbitmq`` user (not through the Debian wrapper,
    which would ``su`` and share ``/var/lib/rabbitmq``'s cookie and logs).

    ``start_broker(endpoint)`` uses an existing broker (``--broker-url``, parsed
    by ``broker.parse_broker_url``; the runner narrows it to the run's scratch
    vhost first, see ``harness.scratch``).

Workers
    Each worker leads its own process group (``kill``/``pause`` act on the group)
    and gets SIGKILL if the harness dies (``PR_SET_PDEATHSIG``; all processes are
    forked by one long-lived spawner thread, since the signal follows the thread
    that forked). Its stdout/stderr go to ``<run_dir>/logs/<name>.log``; JSON event
    lines (or regex matches) are recorded in the history.

Nothing leaks: a state file per run lets ``procs.sweep_stale()`` (called by every
new LocalCluster) kill what a dead harness left behind.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import psutil

import harness
from harness import procs, vocab
from harness.broker import BrokerAdmin, amqp_display
from harness.cluster.base import (
    BrokerEndpoint,
    Cluster,
    ClusterError,
    WorkerSpec,
    contract_env,
)
from harness.cluster.lines import LineReader
from harness.history import Recorder

RABBITMQ_SERVER: Final = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQ_USER: Final = "rabbitmq"
NODE_START_TIMEOUT_S: Final = 60.0
URL_READY_TIMEOUT_S: Final = 15.0
NODE_STOP_TIMEOUT_S: Final = 30.0
MAX_BASE_PATH_CHARS: Final = 100
_NODE_DIR_ROOT: Final = Path("/tmp/rmq-harness/nodes")
# The plugins a private node runs (its enabled_plugins file, and plugin_farm's set).
ENABLED_PLUGINS: Final = ("rabbitmq_management",)
_PRUNE_SCRIPT: Final = Path(harness.__file__).resolve().parent / "build_contexts" / "rabbitmq" / \
    "prune_plugins.py"
_READER_JOIN_S: Final = 2.0
_LOG_TAIL_LINES: Final = 40
_MAX_LINE_BYTES: Final = 1 << 20  # a longer line is split (and not parsed as an event)

T = TypeVar("T")


# Listening ports are drawn below the kernel's ephemeral range (32768-60999 by
# default): a port picked by bind(0) is ephemeral, and any outgoing connection
# made meanwhile (pika, urllib, docker) can take it before the node binds it.
LISTEN_PORT_MIN: Final = 20000
LISTEN_PORT_MAX: Final = 32000
_port_rng = random.Random()


def plugin_farm(farm: Path, server: str = RABBITMQ_SERVER,
                enabled: tuple[str, ...] = ENABLED_PLUGINS) -> Path | None:
    """Make ``farm`` a RABBITMQ_HOME whose ``plugins/`` holds symlinks to just the
    plugins a node with ``enabled`` needs, and return its ``sbin`` (to pass as
    ``RABBITMQ_SCRIPTS_DIR``); or None, and the node boots from the package as is.

    Why: every plugin directory is on the Erlang code path, and OTP 25's code
    server searches the whole path for each module it loads. Debian ships 71
    plugin directories, the management plugin needs 25; with the short path a
    private node boots in ~8 s instead of ~14 s on 2 busy cores
    (``benchmarks/bench_local_boot.py``). The broker image prunes the same way
    (``harness/build_contexts/rabbitmq/prune_plugins.py``, whose ``needed()`` this uses).
    Made fresh inside the node's own directory for every node (a few dozen
    symlinks): no shared cache that another user could plant or a cleaner could
    half-delete. Never fatal.
    """
    import importlib.util

    try:
        home = Path(os.path.realpath(server)).parent.parent  # .../rabbitmq_server-X.Y.Z
        spec = importlib.util.spec_from_file_location("_prune_plugins", _PRUNE_SCRIPT)
        if spec is None or spec.loader is None or not (home / "plugins").is_dir():
            return None
        prune = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(prune)
        keep, missing = prune.needed(home / "plugins", list(enabled))
        if missing:
            return None
        if farm.exists():
            shutil.rmtree(farm)
        (farm / "sbin").mkdir(parents=True)
        (farm / "plugins").mkdir()
        for f in (home / "sbin").iterdir():
            (farm / "sbin" / f.name).symlink_to(f)
        (farm / "escript").symlink_to(home / "escript")
        for d in keep.values():
            (farm / "plugins" / d.name).symlink_to(d)
        for d in (farm, farm / "sbin", farm / "plugins"):
            os.chmod(d, 0o755)  # root's, readable by the rabbitmq user
        return farm / "sbin"
    except (OSError, ValueError, AttributeError):
        return None


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 right now, outside the ephemeral range
    (never 5672/15672/25672/4369)."""
    banned = {4369, 5672, 15672, 25672} | (exclude or set())
    for _ in range(200):
        port = _port_rng.randint(LISTEN_PORT_MIN, LISTEN_PORT_MAX)
        if port in banned:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise ClusterError("no free TCP port found on 127.0.0.1 after 200 tries; free some ports")


def _sanitize(run_id: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]", "-", run_id).strip("-")
    return (s or "run")[:60]


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in data.splitlines() if ln.strip()][-lines:]


def _reachable_by(path: Path, uid: int) -> bool:
    """True if user ``uid`` can traverse every ancestor of ``path`` (as far as it exists)."""
    p = path.resolve()
    for d in [*reversed(p.parents)]:
        try:
            st = d.stat()
        except OSError:
            return False
        if st.st_uid != uid and not st.st_mode & 0o001:
            return False
    return True


class _Spawner:
    """One long-lived thread that forks every child (PR_SET_PDEATHSIG follows it)."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="harness-spawner")
            pool = self._pool
        return pool.submit(fn).result(timeout=30)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


class _Worker:
    def __init__(self, name: str, spec: WorkerSpec, proc: subprocess.Popen[bytes],
                 health_port: int, started: float | None) -> None:
        self.name = name
        self.spec = spec
        self.proc = proc
        self.pgid = proc.pid
        self.health_port = health_port
        self.started = started
        self.requested = False  # the harness asked it to end (kill/terminate/stop)
        self.paused = False
        self.exited = threading.Event()
        self.threads: list[threading.Thread] = []


class _Node:
    """A private RabbitMQ node: where it lives and how it is reached."""

    def __init__(self, name: str, base: Path, temp: bool, amqp_port: int, dist_port: int,
                 mgmt_port: int, epmd_port: int) -> None:
        self.name = name
        self.base = base
        self.temp = temp
        self.amqp_port = amqp_port
        self.dist_port = dist_port
        self.mgmt_port = mgmt_port
        self.epmd_port = epmd_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.scripts_dir: Path | None = None  # RABBITMQ_SCRIPTS_DIR (plugin_farm), if made
        self.stdout_log = base / "log" / "server-stdout.log"
        self.node_log = base / "log" / f"{name}.log"
        self.startup_s: float | None = None


class LocalCluster(Cluster):
    """Backend ``local``: see the module docstring."""

    backend = "local"

    def __init__(self, run_id: str, run_dir: Path, recorder: Recorder,
                 state_dir: Path | None = None) -> None:
        super().__init__(run_id, run_dir, recorder)
        self.swept_pgids = procs.sweep_stale(state_dir)
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._spawner = _Spawner()
        self._state = procs.StateFile(_sanitize(run_id) + f"-{os.getpid()}", state_dir)
        self._node: _Node | None = None
        self.endpoint: BrokerEndpoint | None = None
        self.admin: BrokerAdmin | None = None
        self._stopped = False
        self.stop_errors: list[str] = []
        self.logs_dir = run_dir / "logs"

    # -- broker ----------------------------------------------------------------
    def start_broker(self, external: BrokerEndpoint | None = None,
                     while_booting: Callable[[], None] | None = None) -> BrokerEndpoint:
        """The node must answer before workers start here (they would only spin in
        their reconnect backoff), so ``while_booting`` runs once it does."""
        endpoint = self._start_broker(external)
        if while_booting is not None:
            while_booting()
        return endpoint

    def _start_broker(self, external: BrokerEndpoint | None) -> BrokerEndpoint:
        if self.endpoint is not None:
            raise ClusterError("broker already started for this run; start_broker is called once")
        if external is not None:
            ep = external
            admin = BrokerAdmin(ep)
            waited = admin.wait_ready(URL_READY_TIMEOUT_S)
            self.endpoint, self.admin = ep, admin
            self.recorder.record(vocab.BROKER_STARTED, "cluster", owned=False,
                                 url=amqp_display(ep.amqp_url),
                                 management_url=ep.management_url, startup_s=round(waited, 3))
            return ep
        for attempt in range(2):  # a port taken between choosing and binding: once more
            self._node = self._prepare_node()
            ep = BrokerEndpoint(
                amqp_url=f"amqp://guest:guest@127.0.0.1:{self._node.amqp_port}/%2F",
                management_url=f"http://127.0.0.1:{self._node.mgmt_port}",
            )
            self.endpoint, self.admin = ep, BrokerAdmin(ep)
            try:
                self._start_node()
                return ep
            except ClusterError as e:
                tail = " ".join(getattr(e, "log_tail", [])).lower()
                if attempt == 1 or not ("eaddrinuse" in tail or "already_used" in tail):
                    raise
                self._discard_node()
        raise AssertionError("unreachable")  # pragma: no cover

    def _discard_node(self) -> None:
        """Forget a node that failed to start (its server is already stopped)."""
        node, self._node = self._node, None
        self.endpoint = None
        if node is None:
            return
        if node.epmd is not None:
            procs.kill_group(node.epmd.pid, wait_s=3.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.epmd.wait(timeout=2)
            self._state.drop_group("epmd")
        if node.temp:
            shutil.rmtree(node.base, ignore_errors=True)

    def _prepare_node(self) -> _Node:
        if not os.path.exists(RABBITMQ_SERVER):
            raise ClusterError(f"{RABBITMQ_SERVER} not found; apt-get install -y rabbitmq-server "
                               "or pass --broker-url")
        try:
            pw = pwd.getpwnam(RABBITMQ_USER)
        except KeyError:
            raise ClusterError("user 'rabbitmq' does not exist; apt-get install -y "
                               "rabbitmq-server or pass --broker-url") from None
        if os.geteuid() not in (0, pw.pw_uid):
            raise ClusterError("a private RabbitMQ node needs root or the rabbitmq user "
                               "(the node runs as rabbitmq); run as root or pass --broker-url")
        rid = _sanitize(self.run_id)
        ports: set[int] = set()
        for _ in range(4):
            ports.add(free_port(ports))
        amqp_port, dist_port, mgmt_port, epmd_port = sorted(ports)
        name = f"harness-{rid}@localhost"
        base = (self.run_dir / "broker").resolve()
        temp = len(str(base)) > MAX_BASE_PATH_CHARS or not _reachable_by(base, pw.pw_uid)
        if temp:
            _NODE_DIR_ROOT.mkdir(parents=True, exist_ok=True)
            os.chmod(_NODE_DIR_ROOT.parent, 0o755)
            os.chmod(_NODE_DIR_ROOT, 0o755)
            base = _NODE_DIR_ROOT / f"{rid[:40]}-{secrets.token_hex(4)}"
            self._state.add_dir(base)
        node = _Node(name, base, temp, amqp_port, dist_port, mgmt_port, epmd_port)
        self._state.set_node(name)
        for sub in ("mnesia", "log", "home"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            "collect_statistics_interval = 500\n"
            f"listeners.tcp.local = 127.0.0.1:{amqp_port}\n"
            f"management.tcp.port = {mgmt_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            "log.file.level = info\n"
            "log.console = false\n",
            encoding="utf-8",
        )
        (base / "enabled_plugins").write_text(f"[{','.join(ENABLED_PLUGINS)}].\n",
                                              encoding="utf-8")
        (base / "rabbitmq-env.conf").write_text("# private node: no settings\n",
                                                encoding="utf-8")
        cookie = base / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper(), encoding="ascii")
        for root, dirs, files in os.walk(base):
            for n in [*dirs, *files]:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(cookie, 0o400)
        # After the chown above (it would follow the links into the package).
        node.scripts_dir = plugin_farm(base / "rabbitmq-home")
        return node

    def _node_env(self, node: _Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_", "HARNESS_"))}
        env.update({
            "HOME": str(node.base / "home"),
            "ERL_EPMD_PORT": str(node.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(node.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(node.base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(node.base / "rabbitmq.pid"),
            # Erlang distribution on loopback only (like AMQP, management and epmd).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        })
        if node.scripts_dir is not None:  # the short code path (plugin_farm)
            env["RABBITMQ_SCRIPTS_DIR"] = str(node.scripts_dir)
        return env

    def _spawn_as_rabbitmq(self, argv: list[str], env: dict[str, str], cwd: Path,
                           out: IO[bytes] | int, stdin: int = subprocess.DEVNULL
                           ) -> subprocess.Popen[bytes]:
        def go() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv, env=env, cwd=str(cwd), stdin=stdin, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                user=RABBITMQ_USER, group=RABBITMQ_USER, extra_groups=[],
                preexec_fn=procs.die_with_parent,
            )
        return self._spawner.run(go)

    def _start_node(self) -> None:
        node = self._node
        assert node is not None and self.admin is not None
        env = self._node_env(node)
        t0 = time.monotonic()
        with open(node.stdout_log, "ab") as out:
            if node.epmd is None or node.epmd.poll() is not None:
                node.epmd = self._spawn_as_rabbitmq(
                    ["epmd", "-port", str(node.epmd_port), "-address", "127.0.0.1"],
                    env, node.base, out)
                self._state.set_group("epmd", node.epmd.pid, procs.start_time(node.epmd.pid))
            node.proc = self._spawn_as_rabbitmq([RABBITMQ_SERVER], env, node.base, out)
        self._state.set_group("broker", node.proc.pid, procs.start_time(node.proc.pid))
        self._start_watchdog(node)
        deadline = t0 + NODE_START_TIMEOUT_S
        reason = "no attempt made"
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                reason = f"rabbitmq-server exited with code {node.proc.returncode}"
                break
            reason = self.admin.probe(min(3.0, max(0.5, deadline - time.monotonic()))) or ""
            if not reason:
                node.startup_s = time.monotonic() - t0
                self.recorder.record(
                    vocab.BROKER_STARTED, "cluster", owned=True, node=node.name,
                    amqp_port=node.amqp_port, management_port=node.mgmt_port,
                    pid=node.proc.pid, startup_s=round(node.startup_s, 3))
                return
            time.sleep(0.5)
        self._stop_node(record=False)
        raise self._start_failure(node, reason, time.monotonic() - t0)

    def _start_failure(self, node: _Node, reason: str, took_s: float) -> ClusterError:
        """A one-line error naming the node log's first errors; the tails attached."""
        node_lines = _tail(node.node_log, 400)
        out_lines = _tail(node.stdout_log, 400)
        errors = [ln for ln in node_lines
                  if "[error]" in ln and ("reason:" in ln or "Failed" in ln)]
        errors += [ln for ln in out_lines if "BOOT FAILED" in ln or "Error during startup" in ln]
        text = "\n".join(node_lines + out_lines)
        if "eaddrinuse" in text:
            reason += " (a port was already in use: eaddrinuse)"
        shown = " | ".join(" ".join(ln.split())[:200] for ln in errors[:2])
        shown = shown or " | ".join(" ".join(ln.split())[:160] for ln in node_lines[-2:])
        err = ClusterError(
            f"private RabbitMQ node {node.name} not ready after {took_s:.0f} s: {reason}; "
            f"see {self.logs_dir / 'broker'} (first errors: {shown or 'no log lines'})")
        tail = [*errors[:20], "--- stdout ---", *out_lines[-_LOG_TAIL_LINES:],
                "--- node log ---", *node_lines[-_LOG_TAIL_LINES:]]
        err.log_tail = tail  # type: ignore[attr-defined]
        return err

    def _start_watchdog(self, node: _Node) -> None:
        """A tiny process that SIGKILLs the node's groups when the harness dies.

        Its stdin is a pipe held only by the harness: EOF means the harness is gone
        (the broker's script forks beam, so PR_SET_PDEATHSIG does not reach it).
        """
        assert node.proc is not None
        if node.watchdog is not None:
            self._end_watchdog(node)
        pgids = [str(node.proc.pid)] + ([str(node.epmd.pid)] if node.epmd else [])
        script = "read _x; kill -KILL " + " ".join(f"-{p}" for p in pgids) + " 2>/dev/null"

        def go() -> subprocess.Popen[bytes]:
            return subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        node.watchdog = self._spawner.run(go)
        self._state.set_group("watchdog", node.watchdog.pid,
                              procs.start_time(node.watchdog.pid))

    def _end_watchdog(self, node: _Node) -> None:
        wd, node.watchdog = node.watchdog, None
        if wd is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(wd.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            if wd.stdin is not None:
                wd.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            wd.wait(timeout=2)
        self._state.drop_group("watchdog")

    def _stop_node(self, record: bool, hard: bool = False) -> None:
        """Stop the node's server (SIGTERM: a clean shutdown; SIGKILL after 30 s)."""
        node = self._node
        if node is None or node.proc is None:
            return
        proc = node.proc
        self._end_watchdog(node)
        if proc.poll() is None:
            procs.signal_group(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=NODE_STOP_TIMEOUT_S)
        # The beam and its helpers are in the script's group: make sure it is empty.
        if procs.group_alive(proc.pid):
            procs.kill_group(proc.pid, wait_s=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._state.drop_group("broker")
        if self.admin is not None:
            self.admin.close()
        if record:
            self.recorder.record(vocab.BROKER_STOPPED, "cluster", node=node.name, hard=hard)

    def restart_broker(self, hard: bool = False) -> None:
        """Stop the private node (clean, or SIGKILL with ``hard``) and start it again.

        Same ports and data directory: durable queues and persistent messages survive.
        """
        if self._node is None:
            raise ClusterError("the local backend restarts only its own broker; this run "
                               "uses --broker-url")
        self._stop_node(record=True, hard=hard)
        self._start_node()

    @property
    def broker_startup_s(self) -> float | None:
        return self._node.startup_s if self._node else None

    # -- workers ---------------------------------------------------------------
    def _worker_env(self, name: str, spec: WorkerSpec, health_port: int) -> dict[str, str]:
        ep = self.endpoint
        if ep is None:
            raise ClusterError("start_broker must come before start_worker")
        u = urllib.parse.urlsplit(ep.amqp_url)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if not spec.command:
            root = str(Path(harness.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env.update(spec.env)
        env.update(contract_env(name, host=u.hostname or "127.0.0.1", port=u.port or 5672,
                                user=ep.user, password=ep.password, vhost=ep.vhost,
                                health_port=health_port))
        env["RABBITMQ_URL"] = ep.amqp_url  # as given: an external URL may carry parameters
        return env

    def start_worker(self, name: str, spec: WorkerSpec) -> None:
        with self._lock:
            if self._stopped:
                raise ClusterError("cluster already stopped; start a new run")
            old = self._workers.get(name)
            if old is not None and old.proc.poll() is None:
                raise ClusterError(f"worker {name!r} is already running; pick another name")
            self._spawn_worker(name, spec)

    def _spawn_worker(self, name: str, spec: WorkerSpec) -> _Worker:
        try:
            matcher = spec.events_pattern()
        except ValueError as e:
            raise ValueError(f"worker {name}: {e}") from None
        argv = list(spec.command) or [sys.executable, "-m", "worker"]
        health_port = free_port()
        env = self._worker_env(name, spec, health_port)
        self.logs_dir.mkdir(parents=True, exist_ok=True)

        def go() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=procs.die_with_parent)
        try:
            proc = self._spawner.run(go)
        except OSError as e:
            raise ClusterError(f"cannot start worker {name} ({argv[0]}): {e.strerror or e}; "
                               "fix the worker command") from None
        w = _Worker(name, spec, proc, health_port, procs.start_time(proc.pid))
        self._state.set_group(f"worker:{name}", w.pgid, w.started)
        self._workers[name] = w
        self.recorder.record(vocab.WORKER_STARTED, "cluster", worker=name, pid=proc.pid,
                             health_port=health_port)
        log_lock = threading.Lock()
        log_path = self.logs_dir / f"{name}.log"
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=self._read, args=(w, proc.stdout, log_path, log_lock,
                                                       "", LineReader(self.recorder, name,
                                                                      matcher)),
                             name=f"{name}-stdout", daemon=True),
            threading.Thread(target=self._read, args=(w, proc.stderr, log_path, log_lock,
                                                       "[stderr] ", None),
                             name=f"{name}-stderr", daemon=True),
        ]
        waiter = threading.Thread(target=self._wait, args=(w, readers), name=f"{name}-waiter",
                                  daemon=True)
        w.threads = [*readers, waiter]
        for t in w.threads:
            t.start()
        return w

    def _read(self, w: _Worker, stream: IO[bytes], log_path: Path, log_lock: threading.Lock,
              prefix: str, reader: LineReader | None) -> None:
        """Copy one stream to the worker's log; stdout lines go to the line reader.
        A line longer than _MAX_LINE_BYTES arrives in pieces: none of them is an event."""
        overlong = False
        try:
            with log_path.open("a", encoding="utf-8") as log:
                for raw in iter(lambda: stream.readline(_MAX_LINE_BYTES), b""):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    with log_lock:
                        log.write(prefix + line + "\n")
                        log.flush()
                    # A piece without its newline is the cap at work, or the stream's end.
                    complete = raw.endswith(b"\n") or len(raw) < _MAX_LINE_BYTES
                    skip, overlong = overlong or not complete, not complete
                    if reader is None or skip:
                        continue
                    try:
                        reader.feed(line)
                    except Exception as e:  # a failing listener must not stop the reader
                        with log_lock:
                            log.write(f"[harness] could not record line: {e}\n")
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _wait(self, w: _Worker, readers: list[threading.Thread]) -> None:
        rc = w.proc.wait()
        deadline = time.monotonic() + _READER_JOIN_S
        for t in readers:  # the process's last lines come before its exit event
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        code: int | None = rc if rc >= 0 else None
        sig: str | None = None
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = str(-rc)
        with contextlib.suppress(Exception):  # a closed recorder: nothing to do
            self.recorder.record(vocab.WORKER_EXITED, "cluster", worker=w.name, pid=w.proc.pid,
                                 code=code, signal=sig, requested=w.requested)
        self._state.drop_group(f"worker:{w.name}")
        w.exited.set()

    def _get(self, name: str) -> _Worker:
        with self._lock:
            w = self._workers.get(name)
        if w is None:
            raise ValueError(f"no worker named {name!r} (workers: {', '.join(self.workers())})")
        return w

    def workers(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def is_running(self, name: str) -> bool:
        with self._lock:
            w = self._workers.get(name)
        return w is not None and w.proc.poll() is None

    def is_paused(self, name: str) -> bool:
        with self._lock:
            w = self._workers.get(name)
        return w is not None and w.paused and w.proc.poll() is None

    def pid(self, name: str) -> int | None:
        w = self._get(name)
        return w.proc.pid if w.proc.poll() is None else None

    def health_url(self, name: str) -> str | None:
        with self._lock:
            w = self._workers.get(name)
        return f"http://127.0.0.1:{w.health_port}/healthcheck" if w else None

    def kill(self, name: str) -> None:
        w = self._get(name)
        if w.proc.poll() is not None:
            return
        w.requested = True
        procs.signal_group(w.pgid, signal.SIGKILL)
        procs.signal_group(w.pgid, signal.SIGCONT)
        w.paused = False
        w.exited.wait(timeout=5.0)

    def terminate(self, name: str, grace_s: float) -> int | None:
        w = self._get(name)
        if w.proc.poll() is None:
            w.requested = True
            procs.signal_group(w.pgid, signal.SIGTERM)
            if w.paused:  # a stopped process only sees SIGTERM once it runs again
                procs.signal_group(w.pgid, signal.SIGCONT)
                w.paused = False
            try:
                w.proc.wait(timeout=max(0.0, grace_s))
            except subprocess.TimeoutExpired:
                procs.signal_group(w.pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.proc.wait(timeout=5.0)
        # Leftover children of the group go too (the worker's own helpers).
        if procs.group_alive(w.pgid):
            procs.kill_group(w.pgid, wait_s=2.0)
        w.exited.wait(timeout=5.0)
        return w.proc.returncode

    def pause(self, name: str) -> None:
        w = self._get(name)
        if w.proc.poll() is None:
            procs.signal_group(w.pgid, signal.SIGSTOP)
            w.paused = True

    def resume(self, name: str) -> None:
        w = self._get(name)
        if w.paused:
            procs.signal_group(w.pgid, signal.SIGCONT)
            w.paused = False

    def restart(self, name: str, grace_s: float = 5.0) -> None:
        """Start the worker again with its spec; a live one is terminated first."""
        w = self._get(name)
        if w.proc.poll() is None:
            self.terminate(name, grace_s)
        with self._lock:
            if self._stopped:
                raise ClusterError("cluster already stopped; start a new run")
            self._spawn_worker(name, w.spec)

    def remove_worker(self, name: str, grace_s: float = 5.0) -> int | None:
        """Scale down: terminate the worker and forget it (it leaves ``workers()``)."""
        code = self.terminate(name, grace_s)
        with self._lock:
            self._workers.pop(name, None)
        return code

    def heal_all(self) -> None:
        for name in self.workers():
            with contextlib.suppress(ValueError, OSError):
                self.resume(name)

    def busiest_by_connection(self) -> str | None:
        """The worker whose AMQP connection holds most unacked deliveries (management API).

        Matches a connection by its ``connection_name`` (the worker's name), else by
        the peer's port belonging to the worker's process. None when nobody holds any.
        """
        if self.admin is None:
            return None
        conns = self.admin.connections()
        names = set(self.workers())
        port_owner: dict[int, str] = {}
        for n in names:
            w = self._workers.get(n)
            if w is None or w.proc.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error, OSError):
                for pc in psutil.Process(w.proc.pid).net_connections(kind="tcp"):
                    if pc.laddr:
                        port_owner[pc.laddr.port] = n
        best: tuple[int, str] | None = None
        for c in conns:
            owner = c.name if c.name in names else port_owner.get(c.peer_port)
            if owner and c.unacked > 0 and (best is None or c.unacked > best[0]):
                best = (c.unacked, owner)
        return best[1] if best else None

    # -- teardown ----------------------------------------------------------------
    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            workers = list(self._workers.values())
        self._guard("resume", lambda: [procs.signal_group(w.pgid, signal.SIGCONT)
                                       for w in workers if w.paused])
        live = [w for w in workers if w.proc.poll() is None]
        for w in live:
            w.requested = True
            w.paused = False
            self._guard("sigterm", functools.partial(procs.signal_group, w.pgid, signal.SIGTERM))
        deadline = time.monotonic() + 3.0
        for w in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for w in workers:
            if procs.group_alive(w.pgid):
                self._guard("kill", functools.partial(procs.kill_group, w.pgid, 3.0))
        self._guard("stop broker", lambda: self._stop_node(record=True))
        node = self._node
        if node is not None and node.epmd is not None:
            epmd = node.epmd
            self._guard("epmd", lambda: procs.kill_group(epmd.pid, wait_s=3.0))
            with contextlib.suppress(Exception):
                epmd.wait(timeout=2)
            self._state.drop_group("epmd")
        for w in workers:
            for t in w.threads:
                t.join(timeout=_READER_JOIN_S)
        if self.admin is not None:
            self._guard("admin", self.admin.close)
        if node is not None:
            def keep_logs() -> None:
                dest = self.logs_dir / "broker"
                dest.mkdir(parents=True, exist_ok=True)
                for f in (node.base / "log").glob("*.log"):
                    shutil.copy2(f, dest / f.name)
            self._guard("copy broker logs", keep_logs)
            # The node's data can be large (every persistent message): not kept.
            shutil.rmtree(node.base if node.temp else node.base / "mnesia", ignore_errors=True)
        self._spawner.close()
        self._state.remove()

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:
            self.stop_errors.append(f"{what}: {type(e).__name__}: {e}")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
