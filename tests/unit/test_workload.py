"""Unit tests of harness.workload.make_tasks (no broker)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from harness.cluster.base import ClusterError
from harness.history import Recorder
from harness.model import Distribution, TaskGroup, Workload
from harness.tasks import POISON_PREFIX, make_tasks, sample
from harness.workload import Publisher, PublishStats


def _wl(**kw: object) -> Workload:
    return Workload(**kw)  # type: ignore[arg-type]


MIXED = Workload(
    tasks=200,
    directives={"sleep_ms": Distribution("uniform", (100, 400))},
    groups=(
        TaskGroup(count=10, directives={"fail_always": Distribution("const", (True,))}),
        TaskGroup(count=5, poison=True),
        TaskGroup(
            count=7, directives={"crash": Distribution("choice", ("during", "after_process"))}
        ),
    ),
)


def test_ids_and_count() -> None:
    tasks = make_tasks(_wl(tasks=12), random.Random(1), "run7")
    assert [t.id for t in tasks] == [f"run7-{i:06d}" for i in range(12)]


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    a = make_tasks(MIXED, random.Random(42), "r")
    b = make_tasks(MIXED, random.Random(42), "r")
    c = make_tasks(MIXED, random.Random(43), "r")
    assert a == b
    assert [t.body for t in a] == [t.body for t in b]
    assert a != c


def test_group_counts_and_seeded_placement() -> None:
    tasks = make_tasks(MIXED, random.Random(7), "r")
    fail_always = [i for i, t in enumerate(tasks) if t.directives.get("fail_always") is True]
    poison = [i for i, t in enumerate(tasks) if t.poison]
    crash = [i for i, t in enumerate(tasks) if "crash" in t.directives]
    plain = [i for i, t in enumerate(tasks) if "sleep_ms" in t.directives]
    assert (len(fail_always), len(poison), len(crash)) == (10, 5, 7)
    assert len(plain) == 200 - 22
    assert not set(fail_always) & set(poison) and not set(poison) & set(crash)
    # Placement is random, not a block at the start or the end.
    group_positions = sorted(fail_always + poison + crash)
    assert group_positions != list(range(22))
    assert group_positions != list(range(178, 200))
    # ... and it depends on the seed.
    other = make_tasks(MIXED, random.Random(8), "r")
    assert [i for i, t in enumerate(other) if t.poison] != poison


def test_group_tasks_do_not_get_default_directives() -> None:
    tasks = make_tasks(MIXED, random.Random(3), "r")
    for t in tasks:
        if t.poison or "fail_always" in t.directives or "crash" in t.directives:
            assert "sleep_ms" not in t.directives


def test_bodies() -> None:
    tasks = make_tasks(MIXED, random.Random(5), "r")
    for i, t in enumerate(tasks):
        if t.poison:
            assert t.body.startswith(POISON_PREFIX)
            assert t.id.encode() in t.body
            with pytest.raises(ValueError):
                json.loads(t.body)
        else:
            obj = json.loads(t.body)
            assert obj == {"id": t.id, "task": "logger", "payload": {"n": i},
                           "directives": t.directives}


def test_all_poison_and_zero_tasks() -> None:
    tasks = make_tasks(_wl(tasks=3, groups=(TaskGroup(count=3, poison=True),)),
                       random.Random(0), "p")
    assert all(t.poison for t in tasks)
    assert make_tasks(_wl(tasks=0), random.Random(0), "z") == []


def test_uniform_int_within_bounds_and_covers_range() -> None:
    wl = _wl(tasks=2000, directives={"sleep_ms": Distribution("uniform", (1, 5))})
    values = [t.directives["sleep_ms"] for t in make_tasks(wl, random.Random(9), "u")]
    assert all(isinstance(v, int) for v in values)
    assert set(values) == {1, 2, 3, 4, 5}


def test_uniform_float_within_bounds() -> None:
    wl = _wl(tasks=500, directives={"x": Distribution("uniform", (0.5, 1.5))})
    values = [t.directives["x"] for t in make_tasks(wl, random.Random(9), "u")]
    assert all(isinstance(v, float) and 0.5 <= v <= 1.5 for v in values)
    assert max(values) - min(values) > 0.5


def test_choice_and_const() -> None:
    wl = _wl(tasks=300, directives={
        "crash": Distribution("choice", ("during", "after_process")),
        "fail_times": Distribution("const", (2,)),
    })
    tasks = make_tasks(wl, random.Random(11), "c")
    assert Counter(t.directives["crash"] for t in tasks).keys() == {"during", "after_process"}
    assert {t.directives["fail_times"] for t in tasks} == {2}


@pytest.mark.parametrize(
    "dist",
    [
        Distribution("uniform", (5, 1)),
        Distribution("uniform", (1,)),
        Distribution("uniform", ("a", "b")),
        Distribution("choice", ()),
        Distribution("const", ()),
        Distribution("normal", (0, 1)),
    ],
)
def test_bad_distributions_raise_value_error(dist: Distribution) -> None:
    with pytest.raises(ValueError):
        sample(dist, random.Random(0))


def test_groups_larger_than_tasks_raise_value_error() -> None:
    with pytest.raises(ValueError, match="task groups hold 5"):
        make_tasks(_wl(tasks=4, groups=(TaskGroup(count=5),)), random.Random(0), "x")


def test_publisher_rejects_bad_arguments() -> None:
    rec = Recorder(None)
    with pytest.raises(ValueError):
        Publisher("amqp://guest:guest@127.0.0.1:1/%2F", "q", rec, window=0)
    with pytest.raises(ValueError):
        Publisher("amqp://guest:guest@127.0.0.1:1/%2F", "q", rec, timeout_s=0)
    pub = Publisher("amqp://guest:guest@127.0.0.1:1/%2F", "q", rec)
    with pytest.raises(ValueError):
        pub.publish([], rate_per_s=0)


def test_publish_nothing_needs_no_broker() -> None:
    rec = Recorder(None)
    stats = Publisher("amqp://guest:guest@127.0.0.1:1/%2F", "q", rec).publish([])
    assert isinstance(stats, PublishStats)
    assert (stats.ok, stats.fail, stats.unknown) == (0, 0, 0)
    assert len(rec.snapshot()) == 0


def test_unreachable_broker_raises_cluster_error_and_records_nothing() -> None:
    rec = Recorder(None)
    tasks = make_tasks(_wl(tasks=3), random.Random(0), "x")
    pub = Publisher("amqp://guest:guest@127.0.0.1:1/%2F", "q", rec, timeout_s=10)
    with pytest.raises(ClusterError, match="cannot open an AMQP connection"):
        pub.publish(tasks)
    assert len(rec.snapshot()) == 0
