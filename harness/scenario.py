"""Load and validate a scenario YAML file into ``harness.model.Scenario``.

Every error is a ``ScenarioError`` whose ``str()`` is one line::

    <file>:<line>: <field path>: <what is wrong and what to do>
    scenarios/x.yaml:7: workload.tasks: expected a positive integer, got 'ten'

The file is parsed with ``yaml.compose`` (SafeLoader) so that every key and
value keeps its line. Validation is strict: unknown keys are errors (with the
closest known key suggested), and so are duplicate keys, YAML merge keys
(``<<``), wrong types (``true`` is not a number, ``"10"`` is not an integer) and
values out of range.

The format (keys map 1:1 to the dataclasses of ``harness.model``; the only
renamed key is ``cluster.env`` -> ``ClusterSpec.extra_env``)::

    name: crash-recovery        # required; [A-Za-z0-9][A-Za-z0-9._-]*, at most 64 chars
    description: ...            # optional text
    guide: "Test 2: ..."        # optional: the guide's words this scenario tests
    claims: [no-loss, ...]      # required, non-empty, ids of model.CLAIMS, no repeats
    cluster:                    # optional; defaults of model.ClusterSpec
      workers: 3                # 1..64
      concurrency: 10           # 1..1000 (WORKER_CONCURRENCY, the prefetch)
      queue: go.logger          # AMQP queue name, not 'amq.*'
      dead_letter_queue: go.logger.dlq   # default '<queue>.dlq'
      retry_base_ms: 200        # 1..3_600_000
      max_attempts: 4           # 1..100
      heartbeat_s: 10           # 1..3600
      grace_s: 10               # > 0, <= 3600
      restart_policy: never     # never | always
      queue_type: classic       # classic | quorum
      delivery_limit: 3         # quorum only, 1..1000: x-delivery-limit (RABBITMQ_DELIVERY_LIMIT)
      consumer_timeout_ms: 5000 # the broker's consumer_timeout (1000..3_600_000); needs
                                # a broker the harness starts (not --broker-url)
      env: {K: V}               # extra worker environment; scalar values become strings
    workload:                   # optional; defaults of model.Workload
      tasks: 50                 # 1..1_000_000
      rate_per_s: 100           # optional, > 0, <= 1_000_000
      drain_timeout_s: 60       # > 0, <= 86400
      publish_timeout_s: 60     # > 0, <= 86400
      directives:               # for every task (a group's own directives win)
        sleep_ms: {uniform: [100, 400]}   # number 0..600_000
        sleep_first_ms: 8000              # a first delivery's sleep instead (slow once)
        fail_times: 2                     # integer 0..100
        fail_always: false                # boolean
        crash: after_process              # one of model.CRASH_POINTS
        crash_always: false               # boolean: crash on every delivery (poison)
      groups:                   # sum of counts <= tasks
        - {count: 1, directives: {crash: after_process}}
        - {count: 2, poison: true}
    schedule:                   # optional list of steps, in order
      - when: {processed: 10}   # exactly one of after_s (0..86400) | processed
                                # (1..tasks) | holding_unacked (1..concurrency),
                                # plus optional timeout_s (> 0, <= 86400; default 60)
        fault: kill             # one of model.FAULTS
        target: busiest         # one of model.TARGET_WORDS or worker-<n>, n in 1..workers
                                # (or up to the largest earlier ``scale`` count)
        duration_s: 5           # optional, > 0, <= 86400: heal after; not for
                                # heal/resume/restart/broker-restart/scale
        count: 2                # ``scale`` only, and required there: 0..64
    params:                     # per-claim checker parameters; keys are claim ids
      even-distribution: {max_deviation: 0.25}   # listed in ``claims``

A directive value is a constant, ``{uniform: [lo, hi]}`` (numbers, lo <= hi;
integers for ``fail_times``) or ``{choice: [v, ...]}`` (1..1000 values). Booleans
and crash points take a constant or a choice only.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness import vocab
from harness.model import (
    CLAIMS,
    CRASH_POINTS,
    FAULTS,
    TARGET_WORDS,
    ClusterSpec,
    Distribution,
    Scenario,
    Step,
    TaskGroup,
    When,
    Workload,
)
from harness.yamlcheck import (
    T_INT,
    T_NULL,
    T_STR,
    NodeReader,
    closest,
    join_path,
    line_of,
    one_of,
)
from harness.yamlcheck import (
    ScenarioError as ScenarioError,
)


def scenarios_dir() -> Path:
    """The suite's scenario files: the checkout's top-level ``scenarios/`` (the
    source of truth), else the copy packaged in the wheel (``harness/scenarios``,
    a link to it in the checkout)."""
    here = Path(__file__).resolve().parent
    top = here.parent / "scenarios"
    return top if (top / "crash-recovery.yaml").is_file() else here / "scenarios"


# Limits.
MAX_FILE_BYTES: Final = 1_000_000
MAX_WORKERS: Final = 64
MAX_CONCURRENCY: Final = 1000
MAX_TASKS: Final = 1_000_000
MAX_TIMEOUT_S: Final = 86_400.0
MAX_SLEEP_MS: Final = 600_000
MAX_FAIL_TIMES: Final = 100
MAX_CHOICES: Final = 1000
MAX_STEPS: Final = 1000
MAX_GROUPS: Final = 1000
MAX_DELIVERY_LIMIT: Final = 1000
# The broker checks consumer timeouts on a channel tick the harness sets to a
# second (``BrokerSettings``): a shorter timeout would be rounded up by it.
MIN_CONSUMER_TIMEOUT_MS: Final = 1000
MAX_CONSUMER_TIMEOUT_MS: Final = 3_600_000

DIRECTIVES: Final = ("sleep_ms", "sleep_first_ms", "fail_times", "fail_always", "crash",
                     "crash_always")
# Directives that take a constant or a choice, never ``uniform``.
_DISCRETE_DIRECTIVES: Final = ("fail_always", "crash", "crash_always")
RESTART_POLICIES: Final = ("never", "always")
QUEUE_TYPES: Final = ("classic", "quorum")
# Faults that take effect at once and have nothing to heal after ``duration_s``.
INSTANT_FAULTS: Final = frozenset({"heal", "resume", "restart", "broker-restart", "scale"})

TOP_KEYS: Final = ("name", "description", "guide", "claims", "cluster", "workload",
                   "schedule", "params")
CLUSTER_KEYS: Final = ("workers", "concurrency", "queue", "dead_letter_queue", "retry_base_ms",
                       "max_attempts", "heartbeat_s", "grace_s", "restart_policy", "queue_type",
                       "delivery_limit", "consumer_timeout_ms", "env")
WORKLOAD_KEYS: Final = ("tasks", "rate_per_s", "drain_timeout_s", "publish_timeout_s",
                        "directives", "groups")
GROUP_KEYS: Final = ("count", "directives", "poison")
STEP_KEYS: Final = ("when", "fault", "target", "duration_s", "count")
WHEN_TRIGGERS: Final = ("after_s", "processed", "holding_unacked")
WHEN_KEYS: Final = (*WHEN_TRIGGERS, "timeout_s")
DIST_KINDS: Final = ("uniform", "choice")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WORKER_RE: Final = re.compile(r"worker-([0-9]+)")
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

class _Loader(NodeReader):
    """The scenario format on the strict YAML reader."""

    def timeout(self, node: Node, path: str) -> float:
        return self.number(node, path, 0.0, MAX_TIMEOUT_S, lo_open=True)

    # ---- directives

    def directives(self, node: Node, path: str) -> dict[str, Distribution]:
        entries = self.mapping(node, path, DIRECTIVES)
        return {key: self.distribution(key, vnode, join_path(path, key))
                for key, (_, vnode) in entries.items()}

    def distribution(self, name: str, node: Node, path: str) -> Distribution:
        check = self._directive_check(name)
        if isinstance(node, MappingNode):
            entries = self.mapping(node, path, DIST_KINDS)
            if len(entries) != 1:
                self.fail(node, path, "expected exactly one of {uniform: [lo, hi]} or "
                                      "{choice: [...]}")
            kind, (_, vnode) = next(iter(entries.items()))
            sub = join_path(path, kind)
            if kind == "uniform":
                if name in _DISCRETE_DIRECTIVES:
                    self.fail(vnode, sub, f"{name} takes a constant or {{choice: [...]}}, "
                                          "not uniform")
                items = self.sequence(vnode, sub, "bounds", 2)
                if len(items) != 2:
                    self.fail(vnode, sub, f"expected [lo, hi], got {len(items)} value(s)")
                lo = check(items[0], f"{sub}[0]")
                hi = check(items[1], f"{sub}[1]")
                if lo > hi:
                    self.fail(vnode, sub, f"expected lo <= hi, got [{lo}, {hi}]; swap them")
                return Distribution("uniform", (lo, hi))
            items = self.sequence(vnode, sub, "values", MAX_CHOICES)
            if not items:
                self.fail(vnode, sub, "expected at least one value to choose from")
            return Distribution("choice", tuple(check(n, f"{sub}[{i}]")
                                                for i, n in enumerate(items)))
        if isinstance(node, SequenceNode):
            self.fail(node, path, "expected a constant, {uniform: [lo, hi]} or {choice: [...]}, "
                                  "got a list; write {choice: [...]} to pick among values")
        return Distribution("const", (check(node, path),))

    def _directive_check(self, name: str) -> Callable[[Node, str], Any]:
        def sleep_ms(n: Node, p: str) -> Any:
            v = self.number(n, p, 0, MAX_SLEEP_MS)
            return int(v) if n.tag == T_INT else v

        def fail_times(n: Node, p: str) -> Any:
            return self.integer(n, p, 0, MAX_FAIL_TIMES)

        def fail_always(n: Node, p: str) -> Any:
            return self.boolean(n, p)

        def crash(n: Node, p: str) -> Any:
            if not isinstance(n, ScalarNode) or n.tag != T_STR:
                self.fail(n, p, f"expected one of {', '.join(CRASH_POINTS)}, "
                                f"got {self.describe(n)}")
            text = str(n.value)
            if text not in CRASH_POINTS:
                self.fail(n, p, one_of(text, CRASH_POINTS, "crash point"))
            return text

        return {"sleep_ms": sleep_ms, "fail_times": fail_times,
                "fail_always": fail_always, "crash": crash, "crash_always": fail_always,
                "sleep_first_ms": sleep_ms}[name]

    # ---- sections

    def claims(self, node: Node) -> tuple[str, ...]:
        items = self.sequence(node, "claims", "claim ids", len(CLAIMS))
        if not items:
            self.fail(node, "claims", f"expected at least one claim id of: {', '.join(CLAIMS)}")
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            claim = self.string(item, f"claims[{i}]")
            if claim not in CLAIMS:
                self.fail(item, f"claims[{i}]", one_of(claim, CLAIMS, "claim"))
            if claim in seen:
                self.fail(item, f"claims[{i}]", f"claim {claim!r} is already listed at "
                                                f"claims[{seen[claim]}]; list it once")
            seen[claim] = i
        return tuple(seen)

    def cluster(self, node: Node) -> ClusterSpec:
        e = self.mapping(node, "cluster", CLUSTER_KEYS)
        kw: dict[str, Any] = {}
        ints = {"workers": (1, MAX_WORKERS), "concurrency": (1, MAX_CONCURRENCY),
                "retry_base_ms": (1, 3_600_000), "max_attempts": (1, 100),
                "heartbeat_s": (1, 3600)}
        for key, (lo, hi) in ints.items():
            if key in e:
                kw[key] = self.integer(e[key][1], f"cluster.{key}", lo, hi)
        if "grace_s" in e:
            kw["grace_s"] = self.number(e["grace_s"][1], "cluster.grace_s", 0, 3600, lo_open=True)
        if "queue" in e:
            kw["queue"] = self.queue_name(e["queue"][1], "cluster.queue")
        if "dead_letter_queue" in e:
            vnode = e["dead_letter_queue"][1]
            kw["dead_letter_queue"] = (None if vnode.tag == T_NULL
                                       else self.queue_name(vnode, "cluster.dead_letter_queue"))
        for key, allowed in (("restart_policy", RESTART_POLICIES), ("queue_type", QUEUE_TYPES)):
            if key in e:
                text = self.string(e[key][1], f"cluster.{key}")
                if text not in allowed:
                    self.fail(e[key][1], f"cluster.{key}", one_of(text, allowed, key))
                kw[key] = text
        if "delivery_limit" in e:
            kw["delivery_limit"] = self.integer(e["delivery_limit"][1], "cluster.delivery_limit",
                                                1, MAX_DELIVERY_LIMIT)
        if "consumer_timeout_ms" in e:
            kw["consumer_timeout_ms"] = self.integer(
                e["consumer_timeout_ms"][1], "cluster.consumer_timeout_ms",
                MIN_CONSUMER_TIMEOUT_MS, MAX_CONSUMER_TIMEOUT_MS)
        if "env" in e:
            kw["extra_env"] = self.env(e["env"][1])
        spec = ClusterSpec(**kw)
        if spec.delivery_limit is not None and spec.queue_type != "quorum":
            self.fail(e["delivery_limit"][1], "cluster.delivery_limit",
                      "a delivery limit needs queue_type: quorum (a classic queue counts no "
                      "deliveries)")
        if spec.dlq == spec.queue:
            where = e.get("dead_letter_queue", e.get("queue", (node, node)))[1]
            self.fail(where, "cluster.dead_letter_queue",
                      "the dead-letter queue must differ from the work queue")
        return spec

    def queue_name(self, node: Node, path: str) -> str:
        text = self.string(node, path)
        if text.startswith("amq."):
            self.fail(node, path, f"queue names starting with 'amq.' are reserved by RabbitMQ, "
                                  f"got {text!r}")
        if len(text.encode("utf-8")) > 255:
            self.fail(node, path, "queue names are at most 255 bytes")
        return text

    def env(self, node: Node) -> dict[str, str]:
        if not isinstance(node, MappingNode):
            self.fail(node, "cluster.env", f"expected a mapping NAME: value, "
                                           f"got {self.describe(node)}")
        out: dict[str, str] = {}
        for key, (knode, vnode) in self.raw_mapping(node, "cluster.env").items():
            path = f"cluster.env.{key}"
            if not _ENV_RE.fullmatch(key):
                self.fail(knode, path, "environment names are letters, digits and '_', "
                                       "not starting with a digit")
            if not isinstance(vnode, ScalarNode) or vnode.tag == T_NULL:
                self.fail(vnode, path, f"expected a string, number or boolean, "
                                       f"got {self.describe(vnode)}")
            value = self.value(vnode)
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def workload(self, node: Node) -> tuple[Workload, dict[str, tuple[Node, Node]]]:
        e = self.mapping(node, "workload", WORKLOAD_KEYS)
        kw: dict[str, Any] = {}
        if "tasks" in e:
            kw["tasks"] = self.integer(e["tasks"][1], "workload.tasks", 1, MAX_TASKS)
        if "rate_per_s" in e:
            vnode = e["rate_per_s"][1]
            kw["rate_per_s"] = (None if vnode.tag == T_NULL else
                                self.number(vnode, "workload.rate_per_s", 0, 1_000_000,
                                            lo_open=True))
        for key in ("drain_timeout_s", "publish_timeout_s"):
            if key in e:
                kw[key] = self.timeout(e[key][1], f"workload.{key}")
        if "directives" in e:
            kw["directives"] = self.directives(e["directives"][1], "workload.directives")
        tasks = int(kw.get("tasks", Workload.tasks))
        if "groups" in e:
            gnode = e["groups"][1]
            groups: list[TaskGroup] = []
            total = 0
            for i, item in enumerate(self.sequence(gnode, "workload.groups", "groups",
                                                   MAX_GROUPS)):
                path = f"workload.groups[{i}]"
                g = self.mapping(item, path, GROUP_KEYS, required=("count",))
                count = self.integer(g["count"][1], f"{path}.count", 1, MAX_TASKS)
                total += count
                if total > tasks:
                    self.fail(g["count"][1], f"{path}.count",
                              f"group counts add up to {total}, more than workload.tasks "
                              f"({tasks}); lower the counts or raise tasks")
                directives = (self.directives(g["directives"][1], f"{path}.directives")
                              if "directives" in g else {})
                poison = self.boolean(g["poison"][1], f"{path}.poison") if "poison" in g \
                    else False
                groups.append(TaskGroup(count=count, directives=directives, poison=poison))
            kw["groups"] = tuple(groups)
        return Workload(**kw), e

    def schedule(self, node: Node, cluster: ClusterSpec, workload: Workload) -> tuple[Step, ...]:
        steps: list[Step] = []
        max_workers = cluster.workers
        for i, item in enumerate(self.sequence(node, "schedule", "steps", MAX_STEPS)):
            path = f"schedule[{i}]"
            e = self.mapping(item, path, STEP_KEYS, required=("when", "fault"))
            when = self.when(e["when"][1], f"{path}.when", cluster, workload)
            fnode = e["fault"][1]
            fault = self.string(fnode, f"{path}.fault")
            if fault not in FAULTS:
                self.fail(fnode, f"{path}.fault", one_of(fault, FAULTS, "fault"))
            target = "one"
            if "target" in e:
                target = self.target(e["target"][1], f"{path}.target", max_workers)
            duration: float | None = None
            if "duration_s" in e:
                dnode = e["duration_s"][1]
                if fault in INSTANT_FAULTS:
                    self.fail(dnode, f"{path}.duration_s",
                              f"fault {fault!r} takes effect at once and has nothing to heal; "
                              "remove duration_s")
                duration = self.timeout(dnode, f"{path}.duration_s")
            count: int | None = None
            if "count" in e:
                if fault != "scale":
                    self.fail(e["count"][1], f"{path}.count",
                              f"count is only for the 'scale' fault, not {fault!r}")
                count = self.integer(e["count"][1], f"{path}.count", 0, MAX_WORKERS)
                max_workers = max(max_workers, count)
            elif fault == "scale":
                self.fail(item, f"{path}.count",
                          "the 'scale' fault needs count: the new number of workers")
            steps.append(Step(when=when, fault=fault, target=target, duration_s=duration,
                              count=count, line=line_of(item)))
        return tuple(steps)

    def when(self, node: Node, path: str, cluster: ClusterSpec, workload: Workload) -> When:
        e = self.mapping(node, path, WHEN_KEYS)
        triggers = [k for k in WHEN_TRIGGERS if k in e]
        if len(triggers) != 1:
            got = ", ".join(triggers) if triggers else "none"
            self.fail(node, path, f"expected exactly one of {', '.join(WHEN_TRIGGERS)} "
                                  f"(plus optional timeout_s), got {got}; split into steps")
        key = triggers[0]
        vnode = e[key][1]
        sub = f"{path}.{key}"
        kw: dict[str, Any] = {}
        if key == "after_s":
            kw["after_s"] = self.number(vnode, sub, 0, MAX_TIMEOUT_S)
        elif key == "processed":
            kw["processed"] = self.integer(vnode, sub, 1, MAX_TASKS)
            if kw["processed"] > workload.tasks:
                self.fail(vnode, sub, f"{kw['processed']} is more than workload.tasks "
                                      f"({workload.tasks}): the step would never fire; "
                                      "lower it")
        else:
            kw["holding_unacked"] = self.integer(vnode, sub, 1, MAX_CONCURRENCY)
            if kw["holding_unacked"] > cluster.concurrency:
                self.fail(vnode, sub, f"{kw['holding_unacked']} is more than "
                                      f"cluster.concurrency ({cluster.concurrency}), the most "
                                      "a worker can hold: the step would never fire; lower it")
        if "timeout_s" in e:
            kw["timeout_s"] = self.timeout(e["timeout_s"][1], f"{path}.timeout_s")
        return When(**kw)

    def target(self, node: Node, path: str, workers: int) -> str:
        text = self.string(node, path)
        if text in TARGET_WORDS:
            return text
        m = _WORKER_RE.fullmatch(text)
        if m is not None:
            n = int(m.group(1))
            if 1 <= n <= workers and str(n) == m.group(1):
                return text
            self.fail(node, path, f"{text!r} does not exist: workers are worker-1.."
                                  f"worker-{workers}")
        hint = closest(text, TARGET_WORDS)
        hint_s = f"did you mean {hint!r}? " if hint else ""
        self.fail(node, path, f"unknown target {text!r}; {hint_s}expected one of "
                              f"{', '.join(TARGET_WORDS)} or worker-<n> with n in 1..{workers}")

    def params(self, node: Node, claims: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        if not isinstance(node, MappingNode):
            self.fail(node, "params", f"expected a mapping claim-id: {{param: value}}, "
                                      f"got {self.describe(node)}")
        out: dict[str, dict[str, Any]] = {}
        for key, (knode, vnode) in self.raw_mapping(node, "params").items():
            path = f"params.{key}"
            if key not in CLAIMS:
                self.fail(knode, path, one_of(key, CLAIMS, "claim"))
            if key not in claims:
                self.fail(knode, path, f"claim {key!r} is not in claims; add it there or "
                                       "remove its params")
            if vnode.tag == T_NULL:
                out[key] = {}
                continue
            if not isinstance(vnode, MappingNode):
                self.fail(vnode, path, f"expected a mapping of parameters, "
                                       f"got {self.describe(vnode)}")
            self.raw_mapping(vnode, path)  # string keys, no duplicates
            value = self.value(vnode)
            out[key] = dict(value)
        return out

    # ---- the whole file

    def scenario(self, root: Node) -> Scenario:
        e = self.mapping(root, "", TOP_KEYS, required=("name", "claims"))
        nnode = e["name"][1]
        name = self.string(nnode, "name")
        if not _NAME_RE.fullmatch(name):
            self.fail(nnode, "name", f"expected letters, digits, '.', '_' or '-' (at most 64, "
                                     f"starting with a letter or digit), got {name!r}")
        description = self.string(e["description"][1], "description", allow_empty=True) \
            if "description" in e else ""
        guide = self.string(e["guide"][1], "guide", allow_empty=True) if "guide" in e else ""
        claims = self.claims(e["claims"][1])
        cluster = self.cluster(e["cluster"][1]) if "cluster" in e else ClusterSpec()
        workload = self.workload(e["workload"][1])[0] if "workload" in e else Workload()
        schedule = self.schedule(e["schedule"][1], cluster, workload) if "schedule" in e else ()
        params = self.params(e["params"][1], claims) if "params" in e else {}
        return Scenario(name=name, path=self.file, claims=claims, cluster=cluster,
                        workload=workload, schedule=schedule, description=description.strip(),
                        guide=guide.strip(), params=params)


# --------------------------------------------------------------------------- public API


def _yaml_error(file: str, exc: yaml.YAMLError) -> ScenarioError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        problem = exc.problem or "invalid YAML"
        context = ""
        if exc.context:
            cline = (f" at line {int(exc.context_mark.line) + 1}"
                     if exc.context_mark is not None else "")
            context = f" ({exc.context}{cline})"
        col = f", column {int(mark.column) + 1}" if mark is not None else ""
        return ScenarioError(file, line, "YAML syntax",
                             f"{problem}{context}{col}; check indentation, colons and quoting")
    return ScenarioError(file, 1, "YAML syntax", str(exc))


def load_scenario(path: Path) -> Scenario:
    """Read, parse and validate ``path``; raise ``ScenarioError`` on any problem."""
    file = str(path)
    try:
        raw = path.read_bytes() if path.stat().st_size <= MAX_FILE_BYTES else None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ScenarioError(file, 1, "file", f"cannot read the scenario: {reason}; "
                                             "check the path") from None
    if raw is None:
        raise ScenarioError(file, 1, "file", f"larger than {MAX_FILE_BYTES} bytes; "
                                             "is this a scenario file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(file, line, "file", "not UTF-8 text; save it as UTF-8") from None
    return parse_scenario(text, file)


def scenario_from_dict(data: Mapping[str, Any], file: str = "<dict>") -> Scenario:
    """A scenario given as a mapping (the pytest plugin's ``harness_run``), checked
    by the same loader as a file: the mapping is written as YAML first, so an error
    names the field (and a line of that YAML)."""
    if not isinstance(data, Mapping):
        raise ScenarioError(file, 1, "scenario",
                            f"expected a mapping (name, claims, ...), got {type(data).__name__}")
    try:
        text = yaml.safe_dump(dict(data), sort_keys=False)
    except yaml.YAMLError as exc:
        raise ScenarioError(file, 1, "scenario", f"cannot be written as YAML: {exc}") from None
    return parse_scenario(text, file)


def parse_scenario(text: str, file: str) -> Scenario:
    """Parse and validate a scenario's YAML text; ``file`` names it in errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc) from None
    if root is None:
        raise ScenarioError(file, 1, "scenario", "the file is empty; expected a mapping with "
                                                 "at least 'name' and 'claims'")
    loader = _Loader(file)
    if not isinstance(root, MappingNode):
        loader.fail(root, "scenario", f"expected a mapping at the top level (name, claims, "
                                      f"cluster, ...), got {loader.describe(root)}")
    return loader.scenario(root)


def apply_overrides(scenario: Scenario, workers: int | None = None) -> Scenario:
    """The scenario with the CLI's overrides (``--workers``); ValueError if they do not fit."""
    if workers is None:
        return scenario
    if isinstance(workers, bool) or not isinstance(workers, int) \
            or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers: expected an integer in 1..{MAX_WORKERS}, got {workers!r}")
    reachable = workers
    for i, step in enumerate(scenario.schedule):
        m = _WORKER_RE.fullmatch(step.target)
        if m is not None and int(m.group(1)) > reachable:
            raise ScenarioError(scenario.path, step.line, f"schedule[{i}].target",
                                f"{step.target!r} does not exist with --workers {workers}; "
                                "raise --workers or change the target")
        if step.fault == "scale" and step.count is not None:
            reachable = max(reachable, step.count)
    cluster = dataclasses.replace(scenario.cluster, workers=workers)
    return dataclasses.replace(scenario, cluster=cluster)


def restarts_broker(scenario: Scenario) -> bool:
    """Does the schedule restart the broker (so it needs a broker of its own, never
    one given with --broker-url)?"""
    return any(s.fault == "broker-restart" for s in scenario.schedule)


def backends_for(scenario: Scenario) -> tuple[str, ...]:
    """The backends that can run every fault of the scenario's schedule."""
    return tuple(b for b in vocab.BACKENDS
                 if all(vocab.unsupported(s.fault, b) is None for s in scenario.schedule))


def check_backend(scenario: Scenario, backend: str) -> None:
    """ScenarioError (file, line, field) for the first step ``backend`` cannot run:
    refused before anything starts, not when the run reaches it."""
    for i, step in enumerate(scenario.schedule):
        why = vocab.unsupported(step.fault, backend)
        if why is not None:
            raise ScenarioError(scenario.path, step.line, f"schedule[{i}].fault", why)


# Faults that need no template on --backend external: ``heal`` heals what the
# templates did; every other fault is one of ``cluster.external.TEMPLATE_FAULTS``.
_EXTERNAL_NATIVE: Final = frozenset({"heal"})
# Directives whose tasks end in the deployment's DLQ by design.
_DLQ_DIRECTIVES: Final[tuple[str, ...]] = ("fail_always", "crash_always")


def check_external(scenario: Scenario, templates: Iterable[str], allow_dlq: bool,
                   replays: bool = False) -> None:
    """ScenarioError (file, line, field) for what ``--backend external`` cannot run or
    must not do unasked: a fault without a ``--fault-cmd`` template (or one no
    template can carry: broker and network faults, close-connections), and,
    without ``--allow-dlq``, tasks that end in the deployment's dead-letter queue
    (poison, ``fail_always``, ``fail_times`` reaching ``max_attempts``); and a worker
    restarted during the run (``restart_policy: always``, a ``restart`` step) when
    the follower replays nothing (``replays`` False: no ``{since}``), which would miss
    the new process's first lines (a duplicate among them unseen); for the same
    reason, without ``{since}``, a ``scale`` step above an earlier one's count (a
    scale-up the scenario makes for sure; the first scale's direction is known only
    at run time, where the cluster refuses an up-scale)."""
    given = set(templates)
    if not replays:
        counts = [(i, s) for i, s in enumerate(scenario.schedule)
                  if s.fault == "scale" and s.count is not None]
        for (_, prev), (i, up) in itertools.pairwise(counts):
            assert prev.count is not None and up.count is not None
            if up.count > prev.count:
                raise ScenarioError(
                    scenario.path, up.line, f"schedule[{i}].count",
                    "a scale-up on --backend external needs a follower that replays from "
                    "the run's start (--worker-logs with {since}): one that attaches late "
                    "to a new worker misses its first lines")
    restarts = scenario.cluster.restart_policy == "always" or any(
        s.fault == "restart" for s in scenario.schedule)
    if restarts and not replays:
        step = next((s for s in scenario.schedule if s.fault == "restart"), None)
        raise ScenarioError(
            scenario.path, step.line if step is not None else _line_of_word(
                scenario.path, "restart_policy"),
            "schedule" if step is not None else "cluster.restart_policy",
            "a worker restarted during the run on --backend external needs a follower "
            "that replays from the run's start (--worker-logs with {since}, e.g. docker "
            "compose logs -f --since {since}): one that attaches late misses the new "
            "process's first lines")
    for i, step in enumerate(scenario.schedule):
        if step.fault in ("kill", "terminate") and step.fault in given and "restart" not in given:
            raise ScenarioError(
                scenario.path, step.line, f"schedule[{i}].fault",
                f"{step.fault} on --backend external needs --fault-cmd restart=COMMAND too, so "
                "the run leaves the deployment as it found it (where the orchestrator "
                "restarts workers itself, a command that waits for that)")
        if step.fault in _EXTERNAL_NATIVE or step.fault in given:
            continue
        if step.fault in ("kill", "terminate", "pause", "resume", "restart", "scale"):
            slot = "{n}" if step.fault == "scale" else "{worker}"
            why = (f"{step.fault} on --backend external needs --fault-cmd "
                   f"{step.fault}=COMMAND (with {slot}): see docs/external.md")
        else:
            why = (f"{step.fault} is not available on --backend external: its faults are "
                   "the --fault-cmd templates (kill, terminate, pause, restart, scale)")
        raise ScenarioError(scenario.path, step.line, f"schedule[{i}].fault", why)
    wl = scenario.workload
    sets_all = [("workload.directives", wl.directives)] + [
        (f"workload.groups[{i}]", g.directives) for i, g in enumerate(wl.groups)]
    for where, directives in sets_all:
        crash_word: str | None = next((w for w in ("crash", "crash_always") if w in directives),
                                      None)
        if crash_word is not None:
            raise ScenarioError(
                scenario.path, _line_of_word(scenario.path, crash_word), f"{where}.{crash_word}",
                "a crash directive ends a worker process of the deployment behind the "
                "harness's back (no exit recorded, nothing restarts it): not on --backend "
                "external; kill through --fault-cmd instead")
    if allow_dlq:
        return
    max_attempts = scenario.cluster.max_attempts
    sets = [("workload.directives", wl.directives, False)] + [
        (f"workload.groups[{i}]", g.directives, g.poison) for i, g in enumerate(wl.groups)]
    for where, directives, poison in sets:
        word: str | None = ("poison" if poison else
                            next((d for d in _DLQ_DIRECTIVES if d in directives), None))
        times = directives.get("fail_times")
        if word is None and times is not None and any(
                isinstance(v, int | float) and not isinstance(v, bool) and v >= max_attempts
                for v in times.values):
            word = "fail_times"
        if word is not None:
            raise ScenarioError(
                scenario.path, _line_of_word(scenario.path, word), f"{where}.{word}",
                "these tasks end in the deployment's dead-letter queue, which the harness "
                "does not own; pass --allow-dlq if that queue may receive them")


def _line_of_word(path: str, word: str) -> int:
    """The first line of ``path`` that names ``word`` (0 when unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                if word in text:
                    return n
    except OSError:
        pass
    return 0
