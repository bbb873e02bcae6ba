"""The run's workers: names and spec, start-up, the restart policy, scaling, and
stopping them all. The one place that knows which worker is which; the
backends only start, signal and watch processes or containers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from harness import vocab
from harness.broker import BrokerAdmin
from harness.cluster.base import Cluster, ClusterError, WorkerSpec
from harness.history import Event, Recorder
from harness.live import LiveState
from harness.model import Scenario
from harness.nemesis import Nemesis

WORKERS_READY_TIMEOUT_S: Final = 60.0
# Once one worker consumes, how long the others get before the run goes on without
# them (docker starts a container in ~0.5 s, a loaded machine in a few seconds).
PARTIAL_READY_GRACE_S: Final = 15.0
# Reconnect backoff is capped at 5 s in the reference worker; a broker takes up
# to ~20 s to boot under load: give recovery that, and a margin.
RECOVERY_WAIT_S: Final = 35.0


# restart_policy always: a dead worker starts again after this (compose waits a
# little too; an instant restart would race the exit's own bookkeeping).
RESTART_DELAY_S: Final = 1.0


def _all_ready(names: frozenset[str]) -> Callable[[LiveState], bool]:
    return lambda s: names <= s.ready


class Supervisor:
    """See the module doc. ``admin`` and ``nemesis`` are set once the broker
    answers (the workers start while it boots)."""

    def __init__(self, cluster: Cluster, scenario: Scenario, spec: WorkerSpec,
                 recorder: Recorder, live: LiveState, run_dir: Path,
                 problems: list[str]) -> None:
        self.cluster = cluster
        self.scenario = scenario
        self.spec = spec
        self.recorder = recorder
        self.live = live
        self.run_dir = run_dir
        self.problems = problems
        self.admin: BrokerAdmin | None = None
        self.nemesis: Nemesis | None = None
        self._worker_seq = 0
        self._stopping = threading.Event()
        self._killed: set[str] = set()  # killed, exit not seen yet
        self._exited: set[str] = set()  # exited on request, cause not seen yet
        self.restart_delay_s = RESTART_DELAY_S
        recorder.add_listener(self.on_event)

    def stop_all(self) -> None:
        """The end of the run: no more restarts, then a SIGTERM to every running
        worker at once (like a deployment deleted: one by one costs a second per
        worker on docker), each bounded by the grace period and a margin."""
        self._stopping.set()
        if not self.cluster.owned:
            return  # the deployment's workers keep running
        grace_s = self.scenario.cluster.grace_s
        cluster = self.cluster
        if cluster.stop_workers(grace_s):
            return  # the orchestrator stopped them (and starts none again)
        stoppers = [threading.Thread(target=cluster.terminate, args=(name, grace_s), daemon=True)
                    for name in cluster.workers() if cluster.is_running(name)]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(grace_s + 30)

    def stop_restarting(self) -> None:
        self._stopping.set()

    def add_worker(self) -> str:
        self._worker_seq += 1
        name = f"worker-{self._worker_seq}"
        self.cluster.start_worker(name, self.spec)
        return name

    def scale(self, count: int) -> list[str]:
        """Scale to ``count`` running workers: start new ones, or SIGTERM the newest
        (all at once, like a Deployment scaling down), each recorded as a
        ``terminate`` fault. Returns the names started or terminated."""
        assert self.nemesis is not None
        grace_s = self.scenario.cluster.grace_s
        done = self.cluster.scale_to(count, self.scenario.cluster.queue, grace_s)
        if done is not None:  # the orchestrator scaled (--backend external)
            for name in done.terminated:
                self.nemesis.observed("terminate", name, done.issued_ts, via="scale")
            return [*done.started, *done.terminated]
        running = [w for w in self.cluster.workers() if self.cluster.is_running(w)]
        started = [self.add_worker() for _ in range(count - len(running))]
        victims = sorted(running, key=lambda w: int(w.rsplit("-", 1)[-1]))[count:]
        nemesis = self.nemesis
        threads = [threading.Thread(target=nemesis.invoke, args=("terminate", name),
                                    daemon=True) for name in victims]
        for t in threads:
            t.start()
        for t in threads:
            t.join(grace_s + 30)
        return started + victims

    def on_event(self, ev: Event) -> None:
        """``restart_policy: always``: start a crashed or killed worker again, like
        compose's ``restart: always`` does (not one that was terminated: a
        scale-down, nor any at the end of the run). A kill's ``fault`` event and
        the ``worker_exited`` it causes arrive in either order."""
        if (self.scenario.cluster.restart_policy != "always" or self._stopping.is_set()
                or self.cluster.restarts_itself):
            return  # never, the run's end, or the orchestrator restarts (swarm)
        name: str | None = None
        if ev.type == vocab.FAULT and ev.get("fault") == "kill" and ev.get("ok"):
            target = str(ev.get("target"))
            if target in self._exited:
                name = target
            else:
                self._killed.add(target)
        elif ev.type == vocab.WORKER_EXITED and ev.worker:
            if ev.get("requested") is False or ev.worker in self._killed:
                name = ev.worker
            else:
                self._exited.add(ev.worker)
        elif ev.type == vocab.WORKER_STARTED and ev.worker:
            self._exited.discard(ev.worker)
        if name is None:
            return
        self._killed.discard(name)
        self._exited.discard(name)
        restart_name = name

        def later() -> None:
            if self._stopping.wait(self.restart_delay_s):
                return
            with contextlib.suppress(ClusterError, OSError):
                self.cluster.restart(restart_name)

        threading.Thread(target=later, daemon=True).start()

    def wait_ready(self, names: list[str]) -> None:
        """Until every worker consumes (bounded). If some never do while others
        already consume, go on after PARTIAL_READY_GRACE_S and record it: a worker
        that cannot consume (an exclusive consumer's peers) is a finding for the
        checkers, not an infrastructure error."""
        assert self.admin is not None
        queue = self.scenario.cluster.queue
        deadline = time.monotonic() + WORKERS_READY_TIMEOUT_S
        if not self.cluster.owned:
            # A deployment runs as many workers as it does: one consumer is enough.
            while time.monotonic() < deadline:
                with contextlib.suppress(ClusterError, OSError):
                    info = self.admin.queue_info(queue)
                    if info is not None and info.consumers > 0:
                        return
                time.sleep(1.0)
            raise ClusterError(f"nothing consumes from queue {queue!r} of the deployment "
                               f"after {WORKERS_READY_TIMEOUT_S:.0f} s: are its workers up?")
        want = set(names)
        first_ready_at: float | None = None
        while time.monotonic() < deadline:
            if self.live.wait_for(lambda s: want <= s.ready, 1.0):
                return
            info = self.admin.queue_info(queue)
            if info is not None and info.consumers >= len(names):
                return
            dead = [w for w in names if not self.cluster.is_running(w)]
            if dead:
                raise ClusterError(
                    f"worker {dead[0]} exited during start-up: see "
                    f"{self.run_dir / 'logs' / (dead[0] + '.log')}")
            # Some consume: by their ready events, or by the broker's consumer count
            # (a worker that reports no ready).
            consumers = info.consumers if info is not None else 0
            if self.live.ready & want or consumers > 0:
                first_ready_at = first_ready_at or time.monotonic()
                if time.monotonic() - first_ready_at > PARTIAL_READY_GRACE_S:
                    missing = (sorted(want - self.live.ready) if self.live.ready & want
                               else [f"{len(names) - consumers} of {len(names)} (no ready "
                                     "events: counted by the broker)"])
                    self.recorder.record(vocab.WORKERS_NOT_READY, "harness", workers=missing,
                                         waited_s=PARTIAL_READY_GRACE_S)
                    self.problems.append(
                        f"worker(s) {', '.join(missing)} never consumed: see their logs")
                    return
        missing = sorted(want - self.live.ready)
        raise ClusterError(
            f"workers not consuming after {WORKERS_READY_TIMEOUT_S:.0f} s: {', '.join(missing)}; "
            f"see {self.run_dir / 'logs'}")

    def wait_recovered(self) -> None:
        """After the faults, give every running worker the time to consume again
        (reconnect backoff after a broker restart or a cut), so the history
        covers the recovery the checkers judge. Bounded; not a failure if it
        does not happen: health-check and partition-recovery judge that.
        Recovered: every running worker wrote ``ready`` since, or the broker counts
        as many consumers on the queue (a worker that reports no ``ready``)."""
        assert self.admin is not None
        deadline = time.monotonic() + RECOVERY_WAIT_S
        while time.monotonic() < deadline:
            # Asked outside the live state's lock: a docker backend answers over HTTP.
            running = frozenset(w for w in self.cluster.workers() if self.cluster.is_running(w))
            if self.live.wait_for(_all_ready(running), 0.5):
                return
            if self.live.events_by_type.get(vocab.READY, 0):
                continue  # the worker reports ready: its word is the finer signal here
            with contextlib.suppress(ClusterError, OSError):
                info = self.admin.queue_info(self.scenario.cluster.queue)
                if info is not None and info.consumers >= len(running):
                    return
        self.recorder.record(vocab.RECOVERY_WAIT, "harness", complete=False,
                             waited_s=RECOVERY_WAIT_S)
