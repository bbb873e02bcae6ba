"""Scenario loading: every shipped scenario loads; every error names file:line: field."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from harness.model import CLAIMS, CRASH_POINTS, FAULTS, Distribution
from harness.scenario import ScenarioError, apply_overrides, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

GOOD = """\
name: t
claims: [no-loss, exactly-once-ack]
cluster:
  workers: 3
  concurrency: 10
workload:
  tasks: 10
  directives: {sleep_ms: {uniform: [1, 2]}}
  groups:
    - {count: 2, poison: true}
schedule:
  - when: {processed: 5}
    fault: kill
    target: busiest
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return info.value


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    s = load_scenario(path)
    assert s.name == path.stem
    assert s.description and s.guide
    assert s.claims and all(c in CLAIMS for c in s.claims)
    assert sum(g.count for g in s.workload.groups) <= s.workload.tasks


def test_shipped_scenarios_match_the_guide_tests() -> None:
    names = {p.stem for p in SCENARIOS.glob("*.yaml")}
    assert {"no-duplicates", "crash-recovery", "load-balancing", "crash-after-process"} <= names
    crash = load_scenario(SCENARIOS / "crash-recovery.yaml")
    assert crash.cluster.workers == 3 and crash.cluster.concurrency == 10
    assert crash.workload.tasks == 50
    assert crash.workload.directives["sleep_ms"] == Distribution("uniform", (200, 600))
    (step,) = crash.schedule
    assert (step.fault, step.target, step.when.processed) == ("kill", "busiest", 10)
    assert "redelivery-after-crash" in crash.claims
    cap = load_scenario(SCENARIOS / "crash-after-process.yaml")
    assert [(g.count, g.directives["crash"].values) for g in cap.workload.groups] == [
        (3, ("after_process",))
    ]
    lb = load_scenario(SCENARIOS / "load-balancing.yaml")
    assert (lb.cluster.workers, lb.workload.tasks) == (5, 1000)
    assert "even-distribution" in lb.claims


def test_good_scenario_maps_to_model(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD))
    assert s.path == str(tmp_path / "s.yaml")
    assert s.claims == ("no-loss", "exactly-once-ack")
    assert s.workload.groups[0].poison is True
    assert s.schedule[0].line == 12
    assert s.schedule[0].when.timeout_s == 60.0


def test_full_format(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, """\
        name: full
        description: d
        guide: g
        claims: [no-loss, even-distribution, retry-backoff]
        cluster: {workers: 4, concurrency: 5, queue: q, dead_letter_queue: q.dead,
                  retry_base_ms: 200, max_attempts: 3, heartbeat_s: 5, grace_s: 2.5,
                  restart_policy: always, queue_type: quorum, env: {A: 1, B: yes, C: x}}
        workload:
          tasks: 20
          rate_per_s: 50
          drain_timeout_s: 30
          publish_timeout_s: 10.5
          directives: {fail_times: {choice: [0, 1, 2]}, fail_always: false}
          groups:
            - {count: 1, directives: {crash: during}}
            - {count: 2, directives: {crash: {choice: [during, after_process]}}}
        schedule:
          - when: {after_s: 0}
            fault: pause
            target: worker-4
            duration_s: 3
          - when: {holding_unacked: 5, timeout_s: 10}
            fault: scale
            count: 6
          - when: {after_s: 1}
            fault: kill
            target: worker-6
        params:
          even-distribution: {max_deviation: 0.25}
          retry-backoff:
        """))
    assert s.cluster.extra_env == {"A": "1", "B": "true", "C": "x"}
    assert s.cluster.dlq == "q.dead" and s.cluster.queue_type == "quorum"
    assert s.workload.rate_per_s == 50.0
    assert s.workload.directives["fail_times"] == Distribution("choice", (0, 1, 2))
    assert s.workload.directives["fail_always"] == Distribution("const", (False,))
    assert s.schedule[1].count == 6 and s.schedule[1].when.holding_unacked == 5
    assert s.schedule[0].duration_s == 3.0
    assert s.params == {"even-distribution": {"max_deviation": 0.25}, "retry-backoff": {}}


# (snippet, line, field, words the message must contain)
BROKEN: list[tuple[str, str, int, str, str]] = [
    ("wrong-type-int", GOOD.replace("tasks: 10", "tasks: ten"), 7, "workload.tasks",
     "expected a positive integer, got 'ten'"),
    ("bool-not-int", GOOD.replace("workers: 3", "workers: true"), 4, "cluster.workers",
     "got true (a boolean)"),
    ("quoted-int", GOOD.replace("workers: 3", "workers: '3'"), 4, "cluster.workers",
     "expected a positive integer, got '3'"),
    ("workers-range", GOOD.replace("workers: 3", "workers: 65"), 4, "cluster.workers",
     "1..64"),
    ("concurrency-range", GOOD.replace("concurrency: 10", "concurrency: 0"), 5,
     "cluster.concurrency", "1..1000"),
    ("tasks-range", GOOD.replace("tasks: 10", "tasks: 1000001"), 7, "workload.tasks",
     "1..1000000"),
    ("unknown-key-suggest", GOOD.replace("workers: 3", "wokers: 3"), 4, "cluster.wokers",
     "unknown field 'wokers'; did you mean 'workers'?"),
    ("unknown-top-key", GOOD + "schedul: []\n", 15, "schedul",
     "did you mean 'schedule'?"),
    ("unknown-key-no-suggest", GOOD + "zzz: 1\n", 15, "zzz", "known fields: name"),
    ("bad-claim", GOOD.replace("exactly-once-ack]", "exactly-once-akc]"), 2, "claims[1]",
     "unknown claim 'exactly-once-akc'; did you mean 'exactly-once-ack'?"),
    ("repeated-claim", GOOD.replace("exactly-once-ack]", "no-loss]"), 2, "claims[1]",
     "already listed"),
    ("empty-claims", GOOD.replace("[no-loss, exactly-once-ack]", "[]"), 2, "claims",
     "at least one"),
    ("missing-claims", GOOD.replace("claims: [no-loss, exactly-once-ack]\n", ""), 1,
     "claims", "missing required field 'claims'"),
    ("bad-fault", GOOD.replace("fault: kill", "fault: kil"), 13, "schedule[0].fault",
     "unknown fault 'kil'; did you mean 'kill'?"),
    ("bad-target", GOOD.replace("target: busiest", "target: busiset"), 14,
     "schedule[0].target", "did you mean 'busiest'?"),
    ("target-worker-out-of-range", GOOD.replace("target: busiest", "target: worker-4"), 14,
     "schedule[0].target", "worker-1..worker-3"),
    ("target-worker-zero", GOOD.replace("target: busiest", "target: worker-0"), 14,
     "schedule[0].target", "does not exist"),
    ("two-keys-in-when", GOOD.replace("{processed: 5}", "{processed: 5, after_s: 1}"), 12,
     "schedule[0].when", "exactly one of after_s, processed, holding_unacked"),
    ("no-key-in-when", GOOD.replace("{processed: 5}", "{timeout_s: 5}"), 12,
     "schedule[0].when", "got none"),
    ("processed-over-tasks", GOOD.replace("{processed: 5}", "{processed: 11}"), 12,
     "schedule[0].when.processed", "never fire"),
    ("holding-over-concurrency", GOOD.replace("{processed: 5}", "{holding_unacked: 11}"), 12,
     "schedule[0].when.holding_unacked", "cluster.concurrency"),
    ("negative-timeout", GOOD.replace("{processed: 5}", "{processed: 5, timeout_s: 0}"), 12,
     "schedule[0].when.timeout_s", "> 0"),
    ("huge-timeout", GOOD.replace("tasks: 10", "tasks: 10\n  drain_timeout_s: 100000"), 8,
     "workload.drain_timeout_s", "<= 86400"),
    ("exponent-is-text", GOOD.replace("tasks: 10", "tasks: 10\n  drain_timeout_s: 1e9"), 8,
     "workload.drain_timeout_s", "YAML reads this as text"),
    ("missing-fault", GOOD.replace("    fault: kill\n", ""), 12, "schedule[0].fault",
     "missing required field"),
    ("unknown-directive", GOOD.replace("sleep_ms:", "sleepms:"), 8,
     "workload.directives.sleepms", "did you mean 'sleep_ms'?"),
    ("uniform-lo-gt-hi", GOOD.replace("[1, 2]", "[5, 2]"), 8,
     "workload.directives.sleep_ms.uniform", "lo <= hi"),
    ("uniform-one-bound", GOOD.replace("[1, 2]", "[5]"), 8,
     "workload.directives.sleep_ms.uniform", "[lo, hi]"),
    ("uniform-typo", GOOD.replace("{uniform:", "{unifrom:"), 8,
     "workload.directives.sleep_ms.unifrom", "did you mean 'uniform'?"),
    ("bad-crash-point", GOOD.replace("{count: 2, poison: true}",
                                     "{count: 2, directives: {crash: after}}"), 10,
     "workload.groups[0].directives.crash", "crash point"),
    ("uniform-bool", GOOD.replace("{sleep_ms: {uniform: [1, 2]}}",
                                  "{fail_always: {uniform: [0, 1]}}"), 8,
     "workload.directives.fail_always.uniform", "not uniform"),
    ("empty-choice", GOOD.replace("{uniform: [1, 2]}", "{choice: []}"), 8,
     "workload.directives.sleep_ms.choice", "at least one"),
    ("group-counts-over-tasks", GOOD.replace("{count: 2, poison: true}",
                                             "{count: 6}\n    - {count: 5}"), 11,
     "workload.groups[1].count", "add up to 11, more than workload.tasks (10)"),
    ("poison-not-bool", GOOD.replace("poison: true", "poison: 1"), 10,
     "workload.groups[0].poison", "expected true or false"),
    ("params-not-claim", GOOD + "params: {even-distributon: {}}\n", 15,
     "params.even-distributon", "did you mean 'even-distribution'?"),
    ("params-claim-not-listed", GOOD + "params: {even-distribution: {x: 1}}\n", 15,
     "params.even-distribution", "not in claims"),
    ("duplicate-key", GOOD.replace("  workers: 3\n", "  workers: 3\n  workers: 4\n"), 5,
     "cluster.workers", "duplicate key"),
    ("scale-without-count", GOOD.replace("fault: kill", "fault: scale"), 12,
     "schedule[0].count", "needs count"),
    ("count-not-scale", GOOD.replace("target: busiest", "target: busiest\n    count: 2"), 15,
     "schedule[0].count", "only for the 'scale' fault"),
    ("duration-on-restart", GOOD.replace("fault: kill", "fault: restart").replace(
        "target: busiest", "target: killed\n    duration_s: 3"), 15,
     "schedule[0].duration_s", "remove duration_s"),
    ("schedule-not-list", GOOD.split("schedule:")[0] + "schedule: {fault: kill}\n", 11,
     "schedule", "expected a list of steps, got a mapping"),
    ("cluster-not-mapping", GOOD.replace("cluster:\n  workers: 3\n  concurrency: 10\n",
                                         "cluster: 3\n"), 3, "cluster",
     "expected a mapping"),
    ("bad-name", GOOD.replace("name: t", "name: 'a b'"), 1, "name", "letters, digits"),
    ("name-number", GOOD.replace("name: t", "name: 12"), 1, "name", "quote it"),
    ("bad-queue-type", GOOD.replace("concurrency: 10", "concurrency: 10\n  queue_type: quorom"),
     6, "cluster.queue_type", "did you mean 'quorum'?"),
    ("delivery-limit-classic", GOOD.replace("concurrency: 10",
                                            "concurrency: 10\n  delivery_limit: 3"),
     6, "cluster.delivery_limit", "needs queue_type: quorum"),
    ("delivery-limit-zero", GOOD.replace(
        "concurrency: 10", "concurrency: 10\n  queue_type: quorum\n  delivery_limit: 0"),
     7, "cluster.delivery_limit", "1..1000"),
    ("consumer-timeout-too-short", GOOD.replace(
        "concurrency: 10", "concurrency: 10\n  consumer_timeout_ms: 500"),
     6, "cluster.consumer_timeout_ms", "1000..3600000"),
    ("crash-always-uniform", GOOD.replace("{sleep_ms: {uniform: [1, 2]}}",
                                          "{crash_always: {uniform: [0, 1]}}"),
     8, "workload.directives.crash_always.uniform", "not uniform"),
    ("amq-queue", GOOD.replace("concurrency: 10", "concurrency: 10\n  queue: amq.x"), 6,
     "cluster.queue", "reserved"),
    ("yaml-syntax", GOOD.replace("  tasks: 10", "  tasks: 10\n   bad: [1, 2"), 8,
     "YAML syntax", "check indentation"),
    ("yaml-tab", "name: t\nclaims: [no-loss]\ncluster:\n\tworkers: 3\n", 4, "YAML syntax", ""),
    ("merge-key", "base: &b {workers: 3}\n", 1, "base", "unknown field"),
    ("merge-key-cluster", "name: t\nclaims: [no-loss]\ncluster:\n  <<: {workers: 3}\n", 4,
     "cluster", "merge keys"),
    ("top-level-list", "- name: t\n", 1, "scenario", "got a list"),
    ("top-level-scalar", "just text\n", 1, "scenario", "expected a mapping"),
    ("empty-file", "", 1, "scenario", "empty"),
    ("comments-only", "# nothing\n", 1, "scenario", "empty"),
    ("two-documents", "name: t\n---\nname: u\n", 2, "YAML syntax", "single document"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"),
                         [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_snippet_names_file_line_field(tmp_path: Path, text: str, line: int,
                                              field: str, words: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    err = load_error(path)
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: {field}: "), message
    assert words in message
    assert (err.file, err.line, err.field) == (str(path), line, field)


def test_brief_example_message(tmp_path: Path) -> None:
    text = GOOD.replace("tasks: 10", "tasks: ten")
    path = write(tmp_path, text, "x.yaml")
    assert str(load_error(path)) == (
        f"{path}:7: workload.tasks: expected a positive integer, got 'ten'")


def test_unreadable_and_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(load_error(missing)).startswith(f"{missing}:1: file: cannot read")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert str(load_error(directory)).startswith(f"{directory}:1: file: ")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: t\nclaims: [\xff]\n")
    assert str(load_error(binary)) == f"{binary}:2: file: not UTF-8 text; save it as UTF-8"


def test_all_model_vocabulary_is_accepted(tmp_path: Path) -> None:
    claims = ", ".join(CLAIMS)
    steps = "".join(
        f"  - when: {{after_s: 1}}\n    fault: {f}\n"
        + ("    count: 2\n" if f == "scale" else "")
        for f in FAULTS)
    crash = ", ".join(CRASH_POINTS)
    workload = f"workload: {{directives: {{crash: {{choice: [{crash}]}}}}}}\n"
    s = load_scenario(write(tmp_path, f"name: all\nclaims: [{claims}]\n{workload}"
                                      f"schedule:\n{steps}"))
    assert s.claims == CLAIMS
    assert tuple(st.fault for st in s.schedule) == FAULTS


def test_apply_overrides(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD.replace("target: busiest", "target: worker-3")))
    assert apply_overrides(s, None) is s
    more = apply_overrides(s, 8)
    assert more.cluster.workers == 8 and more.cluster.concurrency == 10
    assert dataclasses.replace(more, cluster=s.cluster) == s
    with pytest.raises(ScenarioError) as info:
        apply_overrides(s, 2)
    assert str(info.value).startswith(f"{s.path}:12: schedule[0].target: 'worker-3' does not")
    for bad in (0, 65):
        with pytest.raises(ValueError, match="--workers"):
            apply_overrides(s, bad)
