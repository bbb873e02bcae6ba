"""The broker side of ``LocalCluster``: a private RabbitMQ node (its own ports,
data, logs, cookie and epmd, run as the ``rabbitmq`` user, watched so it dies
with the harness) or an external broker's endpoint, and the helpers a node
needs (free ports, the plugin farm). A mixin: ``LocalCluster`` holds the state
(declared here for the type checker) and the worker side."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final, TypeVar

import harness
from harness import procs, vocab
from harness.broker import BrokerAdmin, amqp_display
from harness.cluster.base import (
    EXTERNAL_READY_TIMEOUT_S,
    BrokerEndpoint,
    BrokerSettings,
    ClusterError,
)
from harness.history import Recorder

RABBITMQ_SERVER: Final = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQ_USER: Final = "rabbitmq"
NODE_START_TIMEOUT_S: Final = 60.0
NODE_STOP_TIMEOUT_S: Final = 30.0
MAX_BASE_PATH_CHARS: Final = 100
NODE_DIR_ROOT: Final = Path("/tmp/rmq-harness/nodes")
# The plugins a private node runs (its enabled_plugins file, and plugin_farm's set).
ENABLED_PLUGINS: Final = ("rabbitmq_management",)
PRUNE_SCRIPT: Final = Path(harness.__file__).resolve().parent / "build_contexts" / "rabbitmq" / \
    "prune_plugins.py"
READER_JOIN_S: Final = 2.0
LOG_TAIL_LINES: Final = 40
MAX_LINE_BYTES: Final = 1 << 20  # a longer line is split (and not parsed as an event)

T = TypeVar("T")


# Listening ports are drawn below the kernel's ephemeral range (32768-60999 by
# default): a port picked by bind(0) is ephemeral, and any outgoing connection
# made meanwhile (pika, urllib, docker) can take it before the node binds it.
LISTEN_PORT_MIN: Final = 20000
LISTEN_PORT_MAX: Final = 32000
_port_rng = random.Random()
# A port handed out is kept from every other harness process this long: a node
# or a worker binds its ports within seconds of the pick.
PORT_HOLD_S: Final = 600.0
PORT_LEDGER_NAME: Final = "rmq-harness-ports.json"


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
        spec = importlib.util.spec_from_file_location("_prune_plugins", PRUNE_SCRIPT)
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
    (never 5672/15672/25672/4369), and not handed out by this function to any
    process of this host in the last PORT_HOLD_S.

    A port found free is only free until someone binds it: two processes that
    pick the same random port (two xdist workers, two runs) would race for it
    (seen once in a fresh-clone CI run: a worker's health port taken between the
    pick and the bind). So every pick is recorded, under a lock, in a file all
    harness processes share, and a recent pick is never handed out again."""
    banned = {4369, 5672, 15672, 25672} | (exclude or set())
    with _port_ledger() as recent:
        for _ in range(200):
            port = _port_rng.randint(LISTEN_PORT_MIN, LISTEN_PORT_MAX)
            if port in banned or port in recent:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            recent[port] = time.time()
            return port
    raise ClusterError("no free TCP port found on 127.0.0.1 after 200 tries; free some ports")


@contextlib.contextmanager
def _port_ledger() -> Iterator[dict[int, float]]:
    """The ports handed out lately (port -> when), read and written back under
    an exclusive lock; entries older than PORT_HOLD_S are dropped. A ledger that
    cannot be read or written costs the guarantee, never the port."""
    import fcntl
    import json

    path = Path(os.environ.get("TMPDIR", "/tmp")) / PORT_LEDGER_NAME
    try:
        f = open(path, "a+")  # noqa: SIM115 - held open across the lock's lifetime
    except OSError:
        yield {}
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            try:
                raw = json.loads(f.read() or "{}")
            except ValueError:
                raw = {}
            now = time.time()
            recent = {int(p): float(t) for p, t in raw.items()
                      if isinstance(t, int | float) and now - t < PORT_HOLD_S}
            yield recent
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
                f.write(json.dumps({str(p): t for p, t in recent.items()}))
                f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sanitize(run_id: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]", "-", run_id).strip("-")
    return (s or "run")[:60]


def tail_lines(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in data.splitlines() if ln.strip()][-lines:]


def reachable_by(path: Path, uid: int) -> bool:
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


class Spawner:
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


class Node:
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




class NodeSide:
    """See the module doc."""

    # The state LocalCluster.__init__ sets (see there).
    run_id: str
    run_dir: Path
    recorder: Recorder
    logs_dir: Path
    endpoint: BrokerEndpoint | None
    admin: BrokerAdmin | None
    stop_errors: list[str]
    _lock: threading.RLock
    _spawner: Spawner
    _state: procs.StateFile
    _node: Node | None
    _stopped: bool
    broker_settings: BrokerSettings

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
            waited = admin.wait_ready(EXTERNAL_READY_TIMEOUT_S)
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

    def _prepare_node(self) -> Node:
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
        rid = sanitize(self.run_id)
        ports: set[int] = set()
        for _ in range(4):
            ports.add(free_port(ports))
        amqp_port, dist_port, mgmt_port, epmd_port = sorted(ports)
        name = f"harness-{rid}@localhost"
        base = (self.run_dir / "broker").resolve()
        temp = len(str(base)) > MAX_BASE_PATH_CHARS or not reachable_by(base, pw.pw_uid)
        if temp:
            NODE_DIR_ROOT.mkdir(parents=True, exist_ok=True)
            os.chmod(NODE_DIR_ROOT.parent, 0o755)
            os.chmod(NODE_DIR_ROOT, 0o755)
            base = NODE_DIR_ROOT / f"{rid[:40]}-{secrets.token_hex(4)}"
            self._state.add_dir(base)
        node = Node(name, base, temp, amqp_port, dist_port, mgmt_port, epmd_port)
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

    def _node_env(self, node: Node) -> dict[str, str]:
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
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": " ".join(filter(None, (
                "-kernel inet_dist_use_interface {127,0,0,1}", self.broker_settings.erl_args()))),
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

    def _start_failure(self, node: Node, reason: str, took_s: float) -> ClusterError:
        """A one-line error naming the node log's first errors; the tails attached."""
        node_lines = tail_lines(node.node_log, 400)
        out_lines = tail_lines(node.stdout_log, 400)
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
        tail = [*errors[:20], "--- stdout ---", *out_lines[-LOG_TAIL_LINES:],
                "--- node log ---", *node_lines[-LOG_TAIL_LINES:]]
        err.log_tail = tail  # type: ignore[attr-defined]
        return err

    def _start_watchdog(self, node: Node) -> None:
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

    def _end_watchdog(self, node: Node) -> None:
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

    def stop_broker(self, hard: bool = False) -> None:
        """Stop the private node and leave it down until ``start_stopped_broker``: an
        outage longer than a restart (the worker's own tests use it)."""
        if self._node is None:
            raise ClusterError("the local backend stops only its own broker")
        self._stop_node(record=True, hard=hard)

    def start_stopped_broker(self) -> None:
        """Start the node ``stop_broker`` stopped: same ports, same data."""
        if self._node is None:
            raise ClusterError("the local backend starts only its own broker")
        self._start_node()

    @property
    def broker_startup_s(self) -> float | None:
        return self._node.startup_s if self._node else None

