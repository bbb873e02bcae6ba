"""Process-group helpers and the stale-run sweeper of the ``local`` backend.

Every process the local backend starts (workers, the RabbitMQ node, its epmd)
leads its own process group. A run writes a small state file,
``/tmp/rmq-harness/local/<run_id>.json``, naming the harness's pid and the
process groups it owns, each with its leader's start time. ``sweep_stale()``
kills the groups of runs whose harness is gone (SIGKILL, Ctrl-C twice, OOM) and
removes their files and temporary broker directories.

A group is only killed when it is provably the run's own: Linux never hands out
a pid that is still some process's pgid, so while any member of the group is
alive the number is ours; when a process with pid == pgid exists but started at
another time than recorded, the group was emptied and the number reused, and it
is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import psutil

STATE_DIR: Final = Path(os.environ.get("HARNESS_STATE_DIR", "/tmp/rmq-harness/local"))
_START_TOLERANCE_S: Final = 0.05
_PR_SET_PDEATHSIG: Final = 1

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that forked it dies.

    Loaded before the fork (no imports in the child). Linux only; elsewhere a no-op.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def start_time(pid: int) -> float | None:
    """The process's start time (as psutil reports it), or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def same_process(pid: int, started: float | None) -> bool:
    """True if ``pid`` is alive and is the process that started at ``started``."""
    now = start_time(pid)
    if now is None:
        return False
    if started is None:
        return True
    return abs(now - started) <= _START_TOLERANCE_S


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``."""
    out: list[int] = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def group_alive(pgid: int) -> bool:
    """True while some process (zombies aside) is in the group."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return bool(group_members(pgid))


def group_is_ours(pgid: int, leader_started: float | None) -> bool:
    """True if the group ``pgid`` is still the one whose leader started then."""
    leader_now = start_time(pgid)
    if leader_now is not None and leader_started is not None:
        return abs(leader_now - leader_started) <= _START_TOLERANCE_S
    # Leader gone: the number cannot have been reused while members remain.
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False if it has no member any more."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int, wait_s: float = 5.0) -> bool:
    """SIGKILL (and SIGCONT, for stopped members) the group; wait until it is empty.

    Returns True when the group is empty within ``wait_s``.
    """
    signal_group(pgid, signal.SIGKILL)
    signal_group(pgid, signal.SIGCONT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return not group_alive(pgid)


class StateFile:
    """The per-run record of what to clean up if this harness dies."""

    def __init__(self, run_id: str, state_dir: Path | None = None) -> None:
        self.dir = state_dir or STATE_DIR
        self.path = self.dir / f"{run_id}.json"
        self._lock = threading.Lock()
        me = os.getpid()
        self._data: dict[str, Any] = {
            "run_id": run_id,
            "harness_pid": me,
            "harness_started": start_time(me),
            "groups": {},  # label -> {"pgid": int, "started": float}
            "dirs": [],  # temporary directories to remove
            "node": None,
        }

    def set_group(self, label: str, pgid: int, started: float | None) -> None:
        with self._lock:
            self._data["groups"][label] = {"pgid": pgid, "started": started}
            self._write()

    def drop_group(self, label: str) -> None:
        with self._lock:
            if self._data["groups"].pop(label, None) is not None:
                self._write()

    def add_dir(self, path: Path) -> None:
        with self._lock:
            self._data["dirs"].append(str(path))
            self._write()

    def set_node(self, node: str) -> None:
        with self._lock:
            self._data["node"] = node
            self._write()

    def remove(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.path.unlink()

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self._data), encoding="utf-8")
        os.replace(tmp, self.path)


def _harness_alive(data: dict[str, Any]) -> bool:
    pid = data.get("harness_pid")
    if not isinstance(pid, int):
        return False
    started = data.get("harness_started")
    return same_process(pid, float(started) if isinstance(started, int | float) else None)


def sweep_stale(state_dir: Path | None = None, max_files: int = 200) -> list[int]:
    """Kill the process groups of runs whose harness is dead; remove their state.

    Returns the pgids that were signalled. Never raises.
    """
    killed: list[int] = []
    d = state_dir or STATE_DIR
    try:
        files = sorted(d.glob("*.json"))[:max_files]
    except OSError:
        return killed
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or _harness_alive(data):
                continue
            groups: Iterable[Any] = (data.get("groups") or {}).values()
            for g in groups:
                pgid = g.get("pgid") if isinstance(g, dict) else None
                if not isinstance(pgid, int) or pgid <= 1 or pgid == os.getpgrp():
                    continue
                started = g.get("started")
                if not group_alive(pgid):
                    continue
                if not group_is_ours(pgid, float(started) if started is not None else None):
                    continue
                kill_group(pgid, wait_s=5.0)
                killed.append(pgid)
            for p in data.get("dirs") or []:
                if isinstance(p, str) and p.startswith("/tmp/rmq-harness/"):
                    shutil.rmtree(p, ignore_errors=True)
            f.unlink(missing_ok=True)
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return killed
