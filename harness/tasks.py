"""The tasks of a run: a scenario's ``Workload`` made into a seeded list of
``Task`` (ids, directives drawn from their distributions, poison bodies at
seeded positions), and the body of one task in worker contract v1."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from harness.model import Distribution, Workload

POISON_PREFIX: Final = b"\x00not-json {"


@dataclass(frozen=True)
class Task:
    id: str
    body: bytes
    directives: dict[str, Any]
    poison: bool = False


def sample(dist: Distribution, rng: random.Random) -> Any:
    """Draw one value of a directive's distribution with ``rng``."""
    if dist.kind == "const":
        if len(dist.values) != 1:
            raise ValueError(f"a const distribution needs one value, got {len(dist.values)}")
        return dist.values[0]
    if dist.kind == "uniform":
        if len(dist.values) != 2:
            raise ValueError(f"uniform needs [lo, hi], got {list(dist.values)!r}")
        lo, hi = dist.values
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
            raise ValueError(f"uniform needs numbers, got {list(dist.values)!r}")
        if lo > hi:
            raise ValueError(f"uniform needs lo <= hi, got {list(dist.values)!r}")
        if isinstance(lo, int) and isinstance(hi, int):
            return rng.randint(lo, hi)
        return rng.uniform(float(lo), float(hi))
    if dist.kind == "choice":
        if not dist.values:
            raise ValueError("choice needs at least one value")
        return rng.choice(dist.values)
    raise ValueError(f"unknown distribution kind {dist.kind!r} (const, uniform or choice)")


def _draw(directives: dict[str, Distribution], rng: random.Random) -> dict[str, Any]:
    return {name: sample(directives[name], rng) for name in sorted(directives)}


def task_body(task_id: str, n: int, directives: dict[str, Any], poison: bool = False) -> bytes:
    if poison:
        return POISON_PREFIX + task_id.encode("utf-8")
    obj = {"id": task_id, "task": "logger", "payload": {"n": n}, "directives": directives}
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def make_tasks(workload: Workload, rng: random.Random, id_prefix: str) -> list[Task]:
    """The workload's tasks, identical for the same rng seed.

    Group tasks take seeded random positions among the ``workload.tasks`` tasks; the
    others use ``workload.directives``. Directive values are drawn per task.
    """
    n = workload.tasks
    if n < 0:
        raise ValueError(f"workload.tasks must be >= 0, got {n}")
    for g in workload.groups:
        if g.count < 0:
            raise ValueError(f"a task group's count must be >= 0, got {g.count}")
    grouped = sum(g.count for g in workload.groups)
    if grouped > n:
        raise ValueError(f"task groups hold {grouped} tasks but workload.tasks is only {n}")
    positions = rng.sample(range(n), grouped)
    group_at: dict[int, int] = {}
    k = 0
    for gi, g in enumerate(workload.groups):
        for pos in positions[k : k + g.count]:
            group_at[pos] = gi
        k += g.count
    tasks: list[Task] = []
    for i in range(n):
        task_id = f"{id_prefix}-{i:06d}"
        which = group_at.get(i)
        if which is None:
            directives = _draw(workload.directives, rng)
            poison = False
        else:
            group = workload.groups[which]
            directives = _draw(group.directives, rng)
            poison = group.poison
        tasks.append(Task(task_id, task_body(task_id, i, directives, poison), directives, poison))
    return tasks


def longest_task_s(tasks: Sequence[Task]) -> float:
    """The longest ``sleep_ms`` or ``sleep_first_ms`` directive among ``tasks``, in
    seconds (0 without)."""
    return max((float(v) for t in tasks for key in ("sleep_ms", "sleep_first_ms")
                if isinstance(v := t.directives.get(key), int | float)
                and not isinstance(v, bool)),
               default=0.0) / 1000.0
