"""What a run is asked to do: its options, the workers' environment and spec,
the command that reruns it, and what it gives back."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from harness import vocab
from harness.checkers.base import ClaimResult
from harness.cluster.base import BrokerSettings, Cluster, ClusterError, WorkerSpec
from harness.history import Recorder
from harness.model import Scenario

# The CLI reads the broker URL from here when --broker-url is not given; reruns
# refer to it instead of repeating a URL with a password in it.
BROKER_URL_ENV: Final = "HARNESS_BROKER_URL"
SEED_MAX: Final = 2**32 - 1
CAPABILITIES: Final = frozenset({"directives", "health"})
# What the harness itself sets in a worker's environment (the scenario's cluster and
# the backend: ``worker_env``, ``worker_spec``, ``cluster.base.contract_env``):
# ``--worker-env`` may not set these, or a run would not be the scenario it names.
HARNESS_ENV_KEYS: Final = frozenset({
    "RABBITMQ_QUEUE", "WORKER_CONCURRENCY", "WORKER_RETRY_BASE_MS", "WORKER_MAX_ATTEMPTS",
    "RABBITMQ_HEARTBEAT_S", "WORKER_SHUTDOWN_GRACE_S", "RABBITMQ_DLQ", "RABBITMQ_QUEUE_TYPE",
    "WORKER_RECONNECT_MAX_S", "RMQ_HARNESS_RUN", "WORKER_EVENTS", "RABBITMQ_HOST",
    "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_VHOST", "RABBITMQ_URL",
    "WORKER_ID", "HEALTH_PORT",
    # The reference worker's planted bugs are ``harness mutants``' to set.
    "WORKER_BUG",
})
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A ``--worker-env`` value under a name like these is a secret: registered for
# redaction, and a rerun command names the variable instead of repeating it.
_SECRET_KEY = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|URL|URI|DSN",
                         re.IGNORECASE)
# A value that carries a password whatever its name: ``scheme://user:password@host``.
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*:[^/@\s]*@")
MAX_WORKER_ENV: Final = 64


class OptionsError(ValueError):
    """A run option that does not fit: one line that says what to do."""


def parse_gate(value: str) -> frozenset[str]:
    """``a,b`` -> the claims; OptionsError naming an unknown one."""
    from harness.model import CLAIMS

    claims = frozenset(c.strip() for c in value.split(",") if c.strip())
    if not claims:
        raise OptionsError(f"empty gate {value!r}: name at least one claim, or leave the "
                           "gate out for the default")
    unknown = sorted(claims - set(CLAIMS))
    if unknown:
        raise OptionsError(f"unknown claim {unknown[0]!r}; known: {', '.join(CLAIMS)}")
    return claims


def parse_worker_env(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> the brought worker's extra environment; OptionsError
    for a malformed item or a name the harness sets itself (``HARNESS_ENV_KEYS``)."""
    if len(items) > MAX_WORKER_ENV:
        raise OptionsError(f"--worker-env: at most {MAX_WORKER_ENV} variables, got {len(items)}")
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise OptionsError(f"--worker-env {key if sep else item!r}: give NAME=VALUE, "
                               "e.g. CELERY_ACKS_LATE=true")
        if key in HARNESS_ENV_KEYS:
            raise OptionsError(f"--worker-env {key}: the harness sets it from the scenario "
                               "and the backend; change the scenario's cluster instead")
        out[key] = value
    return out


def secret_env_key(key: str, value: str = "") -> bool:
    """Is ``--worker-env KEY=value`` a secret (never printed, never in a file)?"""
    return bool(_SECRET_KEY.search(key) or _USERINFO.match(value))


def parse_capabilities(value: str) -> frozenset[str]:
    """``directives,health`` or ``none`` -> the capabilities; OptionsError otherwise."""
    if value.strip() == "none":
        return frozenset()
    caps = frozenset(c.strip() for c in value.split(",") if c.strip())
    bad = sorted(caps - CAPABILITIES)
    if bad:
        raise OptionsError(f"unknown capability {bad[0]!r}; known: directives, health (or none)")
    return caps


@dataclass
class RunOptions:
    backend: str = "local"
    # Holds a password: never in a repr (a traceback with --showlocals prints one).
    broker_url: str | None = field(default=None, repr=False)
    # With broker_url: a vhost dedicated to the harness (else a scratch vhost per run).
    vhost: str | None = None
    seed: int | None = None
    workers: int | None = None
    out: Path = Path("runs")
    worker_cmd: str | None = None
    worker_image: str | None = None
    events: str = "json"
    gate: frozenset[str] | None = None  # claims whose invariant gates the exit code
    progress: bool = True
    # What the worker can do: "directives" (honours the test hooks in task bodies),
    # "health" (serves /healthcheck). None: all for the reference worker, none for
    # a brought one, so a claim that needs one is unknown rather than a false pass.
    capabilities: frozenset[str] | None = None
    queue: str | None = None  # the worker's queue names, overriding the scenario's
    dlq: str | None = None
    # docker: a broker shared by several runs (one vhost each), to save a boot
    # per scenario in the audit. A ``harness.cluster.docker.SharedDockerBroker``.
    shared_broker: Any = None
    # Checker parameters over the scenario's ``params`` (``--param CLAIM.KEY=V``).
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The reference worker's reporting mode (``model.REPORTING_MODES``); a brought
    # worker reports as it does.
    reporting: str = "full"
    # The tasks' wire format and publisher (``vocab.TASK_FORMATS``, ``harness.formats``).
    task_format: str = vocab.FORMAT_CONTRACT_V1
    # More environment for every worker (``--worker-env``: a framework's settings);
    # never a name of ``HARNESS_ENV_KEYS``. Values of secret-looking names are redacted.
    worker_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # --backend external (``harness.cluster.external``): the follower of the
    # deployment's worker logs, the fault command templates, and the opt-in to tasks
    # that end in the deployment's DLQ.
    worker_logs: str | None = None
    fault_cmds: tuple[str, ...] = ()
    allow_dlq: bool = False
    # harness explore: a generated step that never fired (its trigger not met, its
    # fault refused) is a note, not a run problem: the invariants judge what
    # happened, and the fault record says which faults did.
    steps_optional: bool = False

    @property
    def brought_worker(self) -> bool:
        return bool(self.worker_cmd or self.worker_image) or self.backend == vocab.EXTERNAL

    def effective_capabilities(self) -> frozenset[str]:
        if self.capabilities is not None:
            return self.capabilities
        return frozenset() if self.brought_worker else CAPABILITIES


@dataclass
class RunOutcome:
    scenario: Scenario
    run_dir: Path
    seed: int
    results: list[ClaimResult]
    exit_code: int
    problems: list[str] = field(default_factory=list)
    rerun: str = ""
    # The broker's semantics as observed (result.json's "broker"), when read.
    broker: dict[str, Any] | None = None


def build_options(*, backend: str = "auto", broker_url: str | None = None,
                  vhost: str | None = None, seed: int | None = None,
                  workers: int | None = None, out: Path = Path("runs"),
                  worker_cmd: str | None = None, worker_image: str | None = None,
                  events: str = "json", gate: frozenset[str] | None = None,
                  progress: bool = True, capabilities: frozenset[str] | None = None,
                  queue: str | None = None, dlq: str | None = None,
                  params: Mapping[str, Mapping[str, Any]] | None = None,
                  reporting: str = "full",
                  task_format: str = vocab.FORMAT_CONTRACT_V1,
                  worker_env: Mapping[str, str] | None = None,
                  worker_logs: str | None = None, fault_cmds: Iterable[str] = (),
                  allow_dlq: bool = False) -> RunOptions:
    """The options of a run, checked together (the CLI and the pytest plugin both
    build them here); OptionsError with a one-line fix for any that do not fit.
    ``backend`` ``auto`` is resolved (``default_backend``). A broker URL's password
    is registered for redaction before anything can print it."""
    from harness import credentials

    if backend == "auto":
        backend = default_backend()
    if backend not in (vocab.LOCAL, vocab.DOCKER, vocab.SWARM, vocab.EXTERNAL):
        raise OptionsError(f"unknown backend {backend!r}: use auto, local, docker, swarm or "
                           "external")
    fault_cmds = tuple(fault_cmds)
    brought = bool(worker_cmd or worker_image) or backend == vocab.EXTERNAL
    if backend == vocab.EXTERNAL:
        _check_external(broker_url, vhost, worker_logs, fault_cmds, worker_cmd, worker_image,
                        capabilities, worker_env, task_format)
    elif worker_logs or fault_cmds or allow_dlq:
        raise OptionsError("--worker-logs, --fault-cmd and --allow-dlq are for workers the "
                           "harness does not own: add --backend external")
    if broker_url:
        from harness.broker import parse_broker_url

        try:
            ep = parse_broker_url(broker_url)
        except ValueError as exc:
            raise OptionsError(f"{exc}; fix --broker-url (or ${BROKER_URL_ENV})") from None
        credentials.register(ep.password, ep.user)
    elif vhost:
        raise OptionsError("--vhost needs --broker-url: it names a vhost on a broker of yours")
    if vhost == "/":
        raise OptionsError("--vhost /: the default vhost is where a broker's own work lives; "
                           "dedicate a vhost of its own to the harness")
    try:
        WorkerSpec(events=events).events_pattern()
    except ValueError as exc:
        raise OptionsError(f"--{exc}, e.g. regex:done (?P<id>\\S+)") from None
    if worker_image and backend not in (vocab.DOCKER, vocab.SWARM):
        raise OptionsError("--worker-image needs --backend docker or swarm (use --worker-cmd "
                           "for local)")
    if backend == vocab.SWARM and broker_url:
        raise OptionsError("--backend swarm starts a broker of its own: drop --broker-url "
                           "(or use --backend docker)")
    if worker_cmd and backend != "local":
        raise OptionsError("--worker-cmd needs --backend local (use --worker-image for docker)")
    if seed is not None and (isinstance(seed, bool) or not 0 <= seed <= SEED_MAX):
        raise OptionsError(f"seed {seed!r}: give an integer in 0 .. {SEED_MAX}")
    from harness.model import CLAIMS, REPORTING_MODES

    if reporting not in REPORTING_MODES:
        raise OptionsError(f"reporting {reporting!r}: use {' or '.join(REPORTING_MODES)}")
    for claim, over in (params or {}).items():
        if claim not in CLAIMS:
            raise OptionsError(f"params: unknown claim {claim!r}; known: {', '.join(CLAIMS)}")
        if not isinstance(over, Mapping) or any(
                isinstance(v, dict | list) for v in over.values()):
            raise OptionsError(f"params[{claim!r}]: give KEY: value pairs of numbers, words "
                               "or true/false (e.g. {'base_ms': 500})")
    if gate is not None and not gate:
        raise OptionsError("an empty gate: name at least one claim, or leave it out")
    if brought and reporting == "minimal":
        raise OptionsError("--reporting sets how the reference worker reports; a brought "
                           "worker reports as it does (drop --reporting)")
    from harness.presets import PRESETS

    if events in PRESETS and not brought:
        raise OptionsError(f"--events {events} reads a {events} worker's log lines: bring "
                           "it with --worker-cmd or --worker-image")
    if events in PRESETS and task_format != events:
        raise OptionsError(f"--events {events} reads a {events} worker: publish its format "
                           f"too (--format {events})")
    if task_format not in vocab.TASK_FORMATS:
        raise OptionsError(f"format {task_format!r}: use {', '.join(vocab.TASK_FORMATS)}")
    if task_format != vocab.FORMAT_CONTRACT_V1 and not brought:
        raise OptionsError(f"--format {task_format}: the reference worker reads contract v1 "
                           f"only; bring your {task_format} worker with --worker-cmd or "
                           "--worker-image")
    extra_env = dict(worker_env or {})
    bad_env = sorted(extra_env.keys() & HARNESS_ENV_KEYS)
    if bad_env:
        raise OptionsError(f"--worker-env {bad_env[0]}: the harness sets it from the scenario "
                           "and the backend; change the scenario's cluster instead")
    for key, value in extra_env.items():
        if secret_env_key(key, value):
            credentials.register(value)
    return RunOptions(backend=backend, broker_url=broker_url, seed=seed, workers=workers,
                      out=out, vhost=vhost, worker_cmd=worker_cmd, worker_image=worker_image,
                      events=events, gate=gate, progress=progress, capabilities=capabilities,
                      queue=queue, dlq=dlq, params=dict(params or {}), reporting=reporting,
                      task_format=task_format, worker_env=extra_env, worker_logs=worker_logs,
                      fault_cmds=fault_cmds, allow_dlq=allow_dlq)


def _check_external(broker_url: str | None, vhost: str | None, worker_logs: str | None,
                    fault_cmds: tuple[str, ...], worker_cmd: str | None,
                    worker_image: str | None, capabilities: frozenset[str] | None,
                    worker_env: Mapping[str, str] | None, task_format: str) -> None:
    """OptionsError (one line, the fix) for --backend external options that do not fit."""
    from harness.cluster.external import FaultCommands

    if not broker_url:
        raise OptionsError("--backend external needs --broker-url: the broker the "
                           "deployment's workers consume from (its vhost is theirs)")
    if vhost:
        raise OptionsError("--vhost: with --backend external the tasks go to the workers' own "
                           "vhost, the one in --broker-url")
    if not worker_logs:
        raise OptionsError("--backend external needs --worker-logs COMMAND that follows the "
                           "workers' logs, e.g. 'docker compose logs -f --no-color --tail 0 "
                           "worker'")
    try:
        if not shlex.split(worker_logs):
            raise ValueError("the command is empty")
    except ValueError as exc:
        raise OptionsError(f"--worker-logs: {exc}") from None
    if worker_cmd or worker_image:
        raise OptionsError("--worker-cmd/--worker-image: with --backend external the "
                           "deployment runs the workers")
    if capabilities is not None and "health" in capabilities:
        raise OptionsError("--capabilities health: the harness does not reach the "
                           "deployment's health endpoints; drop it")
    if worker_env:
        raise OptionsError("--worker-env: with --backend external the deployment sets the "
                           "workers' environment")
    if task_format != vocab.FORMAT_CONTRACT_V1:
        raise OptionsError(f"--format {task_format}: the framework's client declares its "
                           "queues, which --backend external must not do on a deployment; "
                           "publish contract-v1 tasks (the default)")
    try:
        FaultCommands.parse(fault_cmds)
    except ValueError as exc:
        raise OptionsError(str(exc)) from None

def check_format(scenario: Scenario, opts: RunOptions) -> None:
    """OptionsError (file and field) when the scenario asks for what the task format
    cannot carry: a poison body has no framework form."""
    if opts.task_format == vocab.FORMAT_CONTRACT_V1:
        return
    for i, group in enumerate(scenario.workload.groups):
        if group.poison:
            raise OptionsError(f"{scenario.path}: workload.groups[{i}].poison: a poison body "
                               f"has no {opts.task_format} form (the framework's decoder "
                               "rejects it before any task code); drop the group or use "
                               "--format contract-v1")


def worker_identity(opts: RunOptions) -> dict[str, Any]:
    """The worker under test, as result.json names it: the reference worker and
    its reporting mode, a command, or an image with its id (docker; ``None`` when
    the engine does not answer)."""
    out = _identity(opts)
    if opts.worker_env:
        out["env"] = {k: "***" if secret_env_key(k, v) else v
                      for k, v in sorted(opts.worker_env.items())}
    return out


def _identity(opts: RunOptions) -> dict[str, Any]:
    if opts.backend == vocab.EXTERNAL:
        from harness.cluster.external import masked

        return {"external": True, "logs": masked(opts.worker_logs or "")}
    if opts.worker_cmd:
        return {"cmd": opts.worker_cmd}
    if opts.backend in (vocab.DOCKER, vocab.SWARM):
        from harness.cluster.docker.engine import WORKER_IMAGE

        image = opts.worker_image or WORKER_IMAGE
        out: dict[str, Any] = ({"image": image} if opts.worker_image
                               else {"reference": True, "reporting": opts.reporting,
                                     "image": image})
        out["image_id"] = _image_id(image)
        return out
    return {"reference": True, "reporting": opts.reporting}


def _image_id(image: str) -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return str(client.images.get(image).id)
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - an id we cannot read is null, not a failed run
        return None


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "big")


def task_id_prefix(run_id: str, backend: str = vocab.LOCAL) -> str:
    """The prefix of every task id of a run (``tasks.make_tasks`` adds ``-NNNNNN``): how
    the run's tasks are told from others where a queue is shared. On a deployment's
    queue (``external``), tasks of an earlier run may still be there: its prefix is
    random, never drawn from the seed a rerun repeats."""
    if backend == vocab.EXTERNAL:
        return f"t{os.urandom(4).hex()}"
    return f"t{run_id[-6:]}"


def make_cluster(backend: str, run_id: str, run_dir: Path, recorder: Recorder,
                 shared_broker: Any = None, opts: RunOptions | None = None,
                 id_prefix: str | None = None,
                 broker_settings: BrokerSettings | None = None) -> Cluster:
    """The backend's cluster. With ``broker_settings`` that differ from the broker's
    defaults, a docker run starts a broker of its own rather than use a shared one
    (a setting is the whole node's)."""
    cluster = _make_cluster(backend, run_id, run_dir, recorder,
                            usable_shared_broker(shared_broker, broker_settings), opts, id_prefix)
    if broker_settings is not None:
        cluster.broker_settings = broker_settings
    return cluster


def usable_shared_broker(shared_broker: Any, settings: BrokerSettings | None) -> Any:
    """The shared broker, unless ``settings`` change the node (then None: a broker of
    the run's own, since a setting would change every run on a shared one)."""
    return None if settings is not None and settings.erl_args() else shared_broker


def _make_cluster(backend: str, run_id: str, run_dir: Path, recorder: Recorder,
                  shared_broker: Any, opts: RunOptions | None,
                  id_prefix: str | None) -> Cluster:
    if backend == vocab.EXTERNAL:
        from harness.cluster.external import ExternalCluster, FaultCommands

        if opts is None or not opts.worker_logs:
            raise ClusterError("--backend external needs --worker-logs")
        return ExternalCluster(run_id, run_dir, recorder, opts.worker_logs,
                               FaultCommands.parse(opts.fault_cmds),
                               (id_prefix or task_id_prefix(run_id, backend)) + "-")
    if backend == "local":
        from harness.cluster.local import LocalCluster

        return LocalCluster(run_id, run_dir, recorder)
    if backend == "docker":
        from harness.cluster.docker import DockerCluster

        return DockerCluster(run_id, run_dir, recorder, shared=shared_broker)
    if backend == vocab.SWARM:
        from harness.cluster.swarm import SwarmCluster

        return SwarmCluster(run_id, run_dir, recorder)
    raise ClusterError(f"unknown backend '{backend}': use local, docker or swarm")


def default_backend() -> str:
    """``docker`` when an engine answers and the images exist, else ``local``."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.images.get("rmq-harness/worker:latest")
        return "docker"
    except Exception:
        return "local"


def worker_env(scenario: Scenario) -> dict[str, str]:
    c = scenario.cluster
    env = {
        "RABBITMQ_QUEUE": c.queue,
        "WORKER_CONCURRENCY": str(c.concurrency),
        "WORKER_RETRY_BASE_MS": str(c.retry_base_ms),
        "WORKER_MAX_ATTEMPTS": str(c.max_attempts),
        "RABBITMQ_HEARTBEAT_S": str(c.heartbeat_s),
        "WORKER_SHUTDOWN_GRACE_S": str(c.grace_s),
        "RABBITMQ_DLQ": c.dlq,
        "RABBITMQ_QUEUE_TYPE": c.queue_type,
        # Workers start while the broker boots; a short cap on the reference
        # worker's reconnect backoff keeps them from sleeping past its readiness.
        "WORKER_RECONNECT_MAX_S": "1",
    }
    if c.delivery_limit is not None:
        env["RABBITMQ_DELIVERY_LIMIT"] = str(c.delivery_limit)
    env.update(c.extra_env)
    return env


def portable_rerun(rerun: str) -> str:
    """A rerun command as a reader of the docs types it in a checkout: the
    scenario's path relative to the repository, not the machine's that ran it."""
    return re.sub(r"\S*/scenarios/", "scenarios/", rerun)


def rerun_command(scenario: Scenario, opts: RunOptions, seed: int, backend: str) -> str:
    parts = ["harness", "run", scenario.path, "--seed", str(seed), "--backend", backend]
    if opts.workers is not None:
        parts += ["--workers", str(opts.workers)]
    if opts.vhost:
        parts += ["--vhost", opts.vhost]
    if opts.worker_cmd:
        parts += ["--worker-cmd", opts.worker_cmd]
    if opts.worker_image:
        parts += ["--worker-image", opts.worker_image]
    if opts.events != "json":
        parts += ["--events", opts.events]
    if opts.capabilities is not None:
        parts += ["--capabilities", ",".join(sorted(opts.capabilities)) or "none"]
    if opts.gate is not None:
        parts += ["--gate", ",".join(sorted(opts.gate))]
    if opts.reporting != "full":
        parts += ["--reporting", opts.reporting]
    if opts.queue:
        parts += ["--queue", opts.queue]
    if opts.dlq:
        parts += ["--dlq", opts.dlq]
    if opts.task_format != vocab.FORMAT_CONTRACT_V1:
        parts += ["--format", opts.task_format]
    if opts.worker_logs:
        from harness.cluster.external import masked

        parts += ["--worker-logs", masked(opts.worker_logs)]
        parts += [a for item in opts.fault_cmds for a in ("--fault-cmd", masked(item))]
    if opts.allow_dlq:
        parts.append("--allow-dlq")
    for claim, over in sorted(opts.params.items()):
        for key, value in sorted(over.items()):
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            parts += ["--param", f"{claim}.{key}={text}"]
    secret_keys = []
    for key, value in sorted(opts.worker_env.items()):
        if secret_env_key(key, value):
            secret_keys.append(key)
        else:
            parts += ["--worker-env", f"{key}={value}"]
    # The broker's URL carries a password: the rerun names the variable that holds
    # it (the CLI reads HARNESS_BROKER_URL), never the URL; likewise a secret's value.
    tail = "".join(f' --worker-env "{key}=${key}"' for key in secret_keys)
    tail += f' --broker-url "${BROKER_URL_ENV}"' if opts.broker_url else ""
    return shlex.join(parts) + tail



def worker_spec(scenario: Scenario, opts: RunOptions, run_id: str) -> WorkerSpec:
    """What every worker of the run is started with: the contract's environment,
    the run's marker, the reporting mode, the brought worker's command."""
    env = worker_env(scenario)
    # Marks every process of this run, so leak checks (and people) can find them.
    env["RMQ_HARNESS_RUN"] = run_id
    if opts.reporting != "full" and not opts.brought_worker:
        env["WORKER_EVENTS"] = opts.reporting
    env.update(opts.worker_env)  # after the scenario's cluster.env: the command line wins
    command: tuple[str, ...] = ()  # the backend's default: the reference worker
    if opts.worker_cmd:
        command = tuple(shlex.split(opts.worker_cmd))
    return WorkerSpec(command=command, image=opts.worker_image, env=env, events=opts.events)


def apply_options(scenario: Scenario, opts: RunOptions) -> Scenario:
    """The scenario with the command line's queue names and checker parameters."""
    if opts.queue or opts.dlq or opts.task_format != scenario.cluster.task_format:
        scenario = dataclasses.replace(scenario, cluster=dataclasses.replace(
            scenario.cluster, queue=opts.queue or scenario.cluster.queue,
            dead_letter_queue=opts.dlq or scenario.cluster.dead_letter_queue,
            task_format=opts.task_format))
    if opts.params:
        merged = {c: dict(p) for c, p in scenario.params.items()}
        for claim, over in opts.params.items():
            merged.setdefault(claim, {}).update(over)
        scenario = dataclasses.replace(scenario, params=merged)
    return scenario


def events_kind(events: str) -> str:
    """How the worker's events are read: ``json``, ``regex``, or ``preset:NAME``."""
    if events.startswith("regex:"):
        return "regex"
    return "json" if events == "json" else f"preset:{events}"


def run_started(scenario: Scenario, opts: RunOptions, seed: int, run_id: str,
                caps: frozenset[str]) -> dict[str, Any]:
    """The fields of the run's ``run_started`` event: what the checkers read of the
    run's set-up (cluster settings, capabilities, the worker under test)."""
    from harness.presets import preset as find_preset

    c = scenario.cluster
    preset = find_preset(opts.events)
    return dict(
        seed=seed, scenario=scenario.name, backend=opts.backend, run_id=run_id,
        path=scenario.path, claims=list(scenario.claims),
        cluster={"workers": c.workers, "concurrency": c.concurrency, "queue": c.queue,
                 "dlq": c.dlq, "retry_base_ms": c.retry_base_ms,
                 "max_attempts": c.max_attempts, "heartbeat_s": c.heartbeat_s,
                 "grace_s": c.grace_s, "queue_type": c.queue_type,
                 "delivery_limit": c.delivery_limit, "consumer_timeout_ms": c.consumer_timeout_ms,
                 "restart_policy": c.restart_policy, "task_format": c.task_format},
        capabilities={"directives": "directives" in caps, "health": "health" in caps,
                      "events": events_kind(opts.events),
                      "unobservable": dict(preset.unobservable) if preset else {},
                      "unobservable_after_death":
                          dict(preset.unobservable_after_death) if preset else {},
                      "lines_cut_by_kill": preset.lines_cut_by_kill if preset else ""},
        worker_under_test={"cmd": opts.worker_cmd, "image": opts.worker_image,
                           "reference": not opts.brought_worker})
