"""The Schedule role: when faults happen, and to whom.

Steps run in order in one thread. Each step's ``when`` is measured from the end
of the previous step (for the first step: from the start of publishing):
``after_s`` seconds; ``processed`` = the run's count of ``processed`` events
reaches N; ``holding_unacked`` = some worker holds at least N unacked tasks.
A condition not met within its ``timeout_s`` is recorded as a ``fault`` event
with ``ok: false`` (the fault did not take effect), which turns the claims that
needed it into ``unknown`` rather than a pass.

One seeded ``random.Random`` makes every choice (random targets, tie breaks),
so a rerun with the same seed makes the same choices given the same events.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Final

from harness.cluster.base import Cluster
from harness.history import Recorder
from harness.live import LiveState
from harness.model import Step
from harness.nemesis import BROKER_TARGET, Nemesis

# The faults after which a worker no longer consumes until healed or restarted.
_STOPS_A_WORKER: Final = frozenset({"kill", "terminate", "pause", "partition", "blackhole"})


class TargetError(Exception):
    pass


class Schedule:
    def __init__(
        self,
        steps: tuple[Step, ...],
        cluster: Cluster,
        nemesis: Nemesis,
        live: LiveState,
        recorder: Recorder,
        rng: random.Random,
        scale: Callable[[int], list[str]] | None = None,
        guard_last_worker: bool = False,
    ) -> None:
        self.steps = steps
        # harness explore's run-time guard: a step that would leave no worker running
        # (kill, terminate, pause of the last ones) is not taken, and recorded so.
        self.guard_last_worker = guard_last_worker
        self.cluster = cluster
        self.nemesis = nemesis
        self.live = live
        self.recorder = recorder
        self.rng = rng
        self.scale = scale
        self.stop = threading.Event()
        self.fired: list[tuple[int, bool]] = []  # (step index, took effect)
        self.killed: list[str] = []
        self._last: list[str] = []
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- targets ----------------------------------------------------------------
    def resolve(self, step: Step) -> list[str]:
        if step.fault == "broker-restart":
            return [BROKER_TARGET]
        running = sorted(w for w in self.cluster.workers() if self.cluster.is_running(w))
        word = step.target
        if word == "last":
            if not self._last or self._last == [BROKER_TARGET]:
                raise TargetError("no earlier step hit a worker")
            return list(self._last)
        if word == "killed":
            if not self.killed:
                raise TargetError("no worker was killed before this step")
            return [self.killed[-1]]
        if word == "all":
            return running
        if not running:
            raise TargetError("no running worker to target")
        if word == "one":
            return [running[0]]
        if word == "random":
            return [self.rng.choice(running)]
        if word == "busiest":
            held = self.live.unacked_by_worker()
            top = max(held.get(w, 0) for w in running)
            best = [w for w in running if held.get(w, 0) == top]
            return [self.rng.choice(best)]
        if word in self.cluster.workers():
            return [word]
        raise TargetError(f"no worker named '{word}'")

    # -- conditions ---------------------------------------------------------------
    def _wait(self, step: Step) -> bool:
        w = step.when
        if w.after_s is not None:
            return not self.stop.wait(w.after_s)
        if w.processed is not None:
            base = self.live.processed if self.fired else 0
            n = w.processed
            return self.live.wait_for(lambda s: s.processed - base >= n, w.timeout_s, self.stop)
        if w.holding_unacked is not None:
            n = w.holding_unacked
            return self.live.wait_for(
                lambda s: max(s.unacked_by_worker().values(), default=0) >= n,
                w.timeout_s,
                self.stop,
            )
        return True

    def _run_step(self, index: int, step: Step) -> None:
        if not self._wait(step):
            if self.stop.is_set():
                return
            self.nemesis.not_taken(step.fault, step.target,
                                   f"condition {step.when} not met within "
                                   f"{step.when.timeout_s} s", index)
            self.fired.append((index, False))
            return
        if step.fault == "heal":
            self.nemesis.heal(None)
            self.fired.append((index, True))
            return
        if step.fault == "scale":
            self.fired.append((index, self.nemesis.scale(step.count, self.scale, index)))
            return
        try:
            targets = self.resolve(step)
        except TargetError as exc:
            self.nemesis.not_taken(step.fault, step.target, str(exc), index)
            self.fired.append((index, False))
            return
        if self.guard_last_worker and step.fault in _STOPS_A_WORKER:
            running = {w for w in self.cluster.workers() if self.cluster.is_running(w)}
            if running and running <= set(targets):
                self.nemesis.not_taken(step.fault, step.target,
                                       "guard: it would leave no worker running", index)
                self.fired.append((index, False))
                return
        ok_all = bool(targets)
        for target in targets:
            ok = self.nemesis.invoke(step.fault, target)
            ok_all = ok_all and ok
            if ok and step.fault == "kill":
                self.killed.append(target)
        self._last = targets
        self.fired.append((index, ok_all))
        if step.duration_s is not None:
            self.stop.wait(step.duration_s)
            for target in targets:
                self.nemesis.heal(target)

    def run(self) -> None:
        try:
            for i, step in enumerate(self.steps):
                if self.stop.is_set():
                    break
                self._run_step(i, step)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="schedule", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def all_fired(self) -> bool:
        return len(self.fired) == len(self.steps) and all(ok for _, ok in self.fired)

    def problems(self) -> list[str]:
        """One line per step that did not take effect or did not run: the run's
        problems (the claims that needed them become unknown)."""
        out = [f"schedule step {i + 1} ({self.steps[i].fault} {self.steps[i].target}, "
               f"line {self.steps[i].line}) did not take effect"
               for i, ok in self.fired if not ok]
        if len(self.fired) < len(self.steps):
            out.append("not every schedule step ran")
        return out
