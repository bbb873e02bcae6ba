"""``LocalCluster``: worker processes on this host, one process group each, and
the broker side of ``harness.cluster.local.node`` (see the package doc)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil

import harness
from harness import procs, vocab
from harness.broker import BrokerAdmin, ConnectionInfo
from harness.cluster import base
from harness.cluster.base import BrokerEndpoint, Cluster, ClusterError, WorkerSpec
from harness.cluster.lines import LineReader
from harness.cluster.local.node import (
    MAX_LINE_BYTES,
    READER_JOIN_S,
    Node,
    NodeSide,
    Spawner,
    free_port,
    sanitize,
)
from harness.history import Recorder


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



class LocalCluster(NodeSide, Cluster):
    """Backend ``local``: see the module docstring."""

    backend = "local"

    def __init__(self, run_id: str, run_dir: Path, recorder: Recorder,
                 state_dir: Path | None = None) -> None:
        super().__init__(run_id, run_dir, recorder)
        self.swept_pgids = procs.sweep_stale(state_dir)
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._spawner = Spawner()
        self._state = procs.StateFile(sanitize(run_id) + f"-{os.getpid()}", state_dir)
        self._node: Node | None = None
        self.endpoint: BrokerEndpoint | None = None
        self.admin: BrokerAdmin | None = None
        self._stopped = False
        self.stop_errors: list[str] = []
        self.logs_dir = run_dir / "logs"

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
        env.update(base.contract_env(name, host=u.hostname or "127.0.0.1", port=u.port or 5672,
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
        translate = spec.event_translator()
        reader = LineReader(self.recorder, name, matcher, translate=translate)
        readers = [
            threading.Thread(target=self._read, args=(w, proc.stdout, log_path, log_lock,
                                                       "", reader),
                             name=f"{name}-stdout", daemon=True),
            # A framework's log lines (a preset) go to stderr; contract events to stdout.
            threading.Thread(target=self._read, args=(w, proc.stderr, log_path, log_lock,
                                                       "[stderr] ",
                                                       reader if translate is not None else None),
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
        A line longer than MAX_LINE_BYTES arrives in pieces: none of them is an event."""
        overlong = False
        try:
            with log_path.open("a", encoding="utf-8") as log:
                for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    with log_lock:
                        log.write(prefix + line + "\n")
                        log.flush()
                    # A piece without its newline is the cap at work, or the stream's end.
                    complete = raw.endswith(b"\n") or len(raw) < MAX_LINE_BYTES
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
        deadline = time.monotonic() + READER_JOIN_S
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
            return base.worker_entry(dict(self._workers), name)

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
            with contextlib.suppress(ClusterError, OSError):
                self.resume(name)

    def _port_owners(self) -> dict[int, str]:
        """Local TCP port -> worker, from the workers' own processes and their
        children (psutil: a framework's pool, e.g. Dramatiq's, holds the broker
        connections in child processes)."""
        owners: dict[int, str] = {}
        for n in self.workers():
            w = self._workers.get(n)
            if w is None or w.proc.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error, OSError):
                main = psutil.Process(w.proc.pid)
                for p in (main, *main.children(recursive=True)):
                    with contextlib.suppress(psutil.Error, OSError):
                        for pc in p.net_connections(kind="tcp"):
                            if pc.laddr:
                                owners[pc.laddr.port] = n
        return owners

    def connection_owners(self) -> dict[str, str]:
        return {f"127.0.0.1:{port}": name for port, name in self._port_owners().items()}

    def broker_log(self) -> str | None:
        node = self._node
        if node is None:
            return None
        path = node.base / "log" / f"{node.name}.log"
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def worker_connections(self, name: str) -> tuple[BrokerAdmin, list[ConnectionInfo]]:
        if self.admin is None:
            raise ClusterError("worker_connections: no broker started")
        self._get(name)
        owners = self._port_owners()
        return self.admin, [c for c in self.admin.tracked_connections()
                            if owners.get(c.peer_port) == name]

    def busiest_by_connection(self) -> str | None:
        """The worker whose AMQP connection holds most unacked deliveries (management API).

        Matches a connection by its ``connection_name`` (the worker's name), else by
        the peer's port belonging to the worker's process. None when nobody holds any.
        """
        if self.admin is None:
            return None
        conns = self.admin.connections()
        names = set(self.workers())
        port_owner = self._port_owners()
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
        # The run is over and its final read is done: nothing of the node's data is
        # needed, so SIGKILL its group rather than wait the ~6 s of a clean shutdown
        # (a restart fault mid-run stays clean; see restart_broker).
        self._guard("stop broker", lambda: self._stop_node(record=True, hard=True))
        node = self._node
        if node is not None and node.epmd is not None:
            epmd = node.epmd
            self._guard("epmd", lambda: procs.kill_group(epmd.pid, wait_s=3.0))
            with contextlib.suppress(Exception):
                epmd.wait(timeout=2)
            self._state.drop_group("epmd")
        for w in workers:
            for t in w.threads:
                t.join(timeout=READER_JOIN_S)
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

