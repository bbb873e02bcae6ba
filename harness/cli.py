"""Command line: ``harness run``, ``harness check``, ``harness images build``.

Exit codes: 0 every gated claim holds; 1 a claim is violated; 2 could not
decide (bad input, infrastructure error, missing evidence, interrupted).
Bad input never gives a traceback: one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from rich.console import Console

from harness import credentials, vocab
from harness.model import CLAIMS, REPORTING_MODES
from harness.vocab import EXIT_OK, EXIT_UNDECIDED

if TYPE_CHECKING:
    from harness.model import Scenario
    from harness.options import RunOptions


def _err(msg: str) -> int:
    print(f"harness: error: {credentials.redact(msg)}", file=sys.stderr)
    return EXIT_UNDECIDED


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own errors are bad input too: one line, exit 2.
        print(f"harness: error: {message} (see `harness {self.prog.split()[-1]} --help`)",
              file=sys.stderr)
        raise SystemExit(EXIT_UNDECIDED)


def _gate(value: str) -> frozenset[str]:
    from harness.options import OptionsError, parse_gate

    try:
        return parse_gate(value)
    except OptionsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _capabilities(value: str) -> frozenset[str]:
    from harness.options import OptionsError, parse_capabilities

    try:
        return parse_capabilities(value)
    except OptionsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1 or n > 64:
        raise argparse.ArgumentTypeError(f"expected 1..64, got {n}")
    return n


def _seed(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if not 0 <= n < 2**32:
        raise argparse.ArgumentTypeError("the seed must be in 0 .. 2^32-1")
    return n


def _param(value: str) -> tuple[str, str, object]:
    """``CLAIM.KEY=VALUE`` -> (claim, key, value); the value read as YAML (a number,
    a word, true/false)."""
    import yaml

    name, eq, raw = value.partition("=")
    claim, dot, key = name.partition(".")
    if not eq or not dot or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected CLAIM.KEY=VALUE (e.g. retry-backoff.base_ms=500), got {value!r}")
    if claim not in CLAIMS:
        raise argparse.ArgumentTypeError(f"unknown claim {claim!r}; known: {', '.join(CLAIMS)}")
    try:
        parsed = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        parsed = raw
    if isinstance(parsed, dict | list):
        raise argparse.ArgumentTypeError(f"{value!r}: give a number, a word or true/false")
    return claim, key.strip(), parsed


def _run_options(r: argparse.ArgumentParser) -> None:
    r.add_argument("--backend", choices=("auto", "local", "docker", "swarm", "external"),
                   default="auto",
                   help="auto: docker when an engine answers and the images exist, else local; "
                   "swarm: Docker Swarm services on this engine (docs/swarm.md); "
                   "external: workers a deployment already runs (docs/external.md)")
    r.add_argument("--broker-url", default=os.environ.get("HARNESS_BROKER_URL") or None,
                   help="use this broker (amqp://user:pass@host:port) instead of a private "
                   "one; each run gets a scratch vhost there, deleted at the end. Default "
                   "$HARNESS_BROKER_URL (reruns refer to it: the password is never printed)")
    r.add_argument("--vhost", help="with --broker-url: a vhost dedicated to the harness, for a "
                   "user that may not create vhosts (it must hold no other queues)")
    r.add_argument("--seed", type=_seed, help="seed of the run's RNG (printed by every run)")
    r.add_argument("--out", type=Path, default=Path("runs"), help="where run directories go")
    r.add_argument("--worker-cmd", help="command of a brought worker (local backend)")
    r.add_argument("--worker-image", help="image of a brought worker (docker backend)")
    r.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="more environment for every worker, e.g. a framework's setting "
                   "CELERY_ACKS_LATE=true (repeatable; not the names the harness sets)")
    r.add_argument("--events", default="json",
                   help="'json' (worker contract v1), 'regex:PATTERN' with a group 'id', or "
                   "a framework's log preset: 'celery' or 'dramatiq' "
                   "(docs/frameworks.md)")
    r.add_argument("--capabilities", type=_capabilities,
                   help="what the worker can do: 'directives' (honours the test hooks in "
                   "task bodies), 'health' (serves /healthcheck), comma-separated, or 'none'. "
                   "Default: both for the reference worker, none for a brought one")
    r.add_argument("--queue", help="the worker's queue (overrides the scenario)")
    r.add_argument("--dlq", help="the worker's dead-letter queue (default <queue>.dlq; "
                   "<queue>.XQ with --format dramatiq)")
    r.add_argument("--format", dest="task_format", choices=vocab.TASK_FORMATS,
                   default=vocab.FORMAT_CONTRACT_V1,
                   help="the tasks' wire format, published by the framework's own client: "
                   "contract-v1 (the default), celery (send_task), dramatiq (enqueue); a "
                   "framework format needs a brought worker (docs/frameworks.md)")
    r.add_argument("--gate", type=_gate, help="comma-separated claims whose invariant gates "
                   "the exit code (default: every claim of the scenario; for audit, the "
                   "release invariants)")
    r.add_argument("--param", type=_param, action="append", default=[], metavar="CLAIM.KEY=V",
                   help="set a checker parameter over the scenario's params, e.g. "
                   "retry-backoff.base_ms=500 or retry-backoff.jitter=full (repeatable)")
    r.add_argument("--worker-logs", metavar="COMMAND",
                   help="--backend external: a command that follows the workers' logs, each "
                   "line prefixed by its worker, e.g. 'docker compose logs -f --no-color "
                   "--tail 0 worker'")
    r.add_argument("--fault-cmd", action="append", default=[], metavar="FAULT=COMMAND",
                   help="--backend external: the command of a fault (kill, terminate, pause, "
                   "resume, restart) with {worker}, e.g. kill='docker kill app-{worker}', or "
                   "scale with {n} (repeatable)")
    r.add_argument("--allow-dlq", action="store_true",
                   help="--backend external: allow tasks that end in the deployment's "
                   "dead-letter queue (poison, fail_always, retries past the limit)")
    r.add_argument("--no-progress", action="store_true", help="no live progress display")
    r.add_argument("--junit", type=Path, metavar="FILE",
                   help="also write a JUnit XML file: one test case per judged claim")


def _reporting_option(r: argparse.ArgumentParser) -> None:
    r.add_argument("--reporting", choices=REPORTING_MODES, default="full",
                   help="how the reference worker reports: full (every contract event) or "
                   "minimal (only received and processed, like many brought workers)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run scenarios and check the claims")
    r.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    r.add_argument("--workers", type=_positive, help="override the scenario's worker count")
    _reporting_option(r)
    _run_options(r)

    a = sub.add_parser("audit", help="run the whole suite: one row per claim of the guide")
    a.add_argument("--only", action="append",
                   help="run only suite scenarios whose file name contains this (repeatable)")
    _reporting_option(a)
    _run_options(a)

    m = sub.add_parser("mutants", help="run the suite against each planted worker bug")
    m.add_argument("--bugs", help="comma-separated bug names (default: all)")
    m.add_argument("--reporting", dest="modes", default="full,minimal",
                   help="comma-separated reporting modes of the reference worker: full "
                        "(every contract event), minimal (only received and processed); "
                        "default both")
    m.add_argument("--no-control", action="store_true",
                   help="skip the correct worker's runs (the false-alarm control)")
    _run_options(m)

    x = sub.add_parser("explore", help="generated fault schedules, run for real, until one "
                       "breaks an invariant (kept as a scenario file)")
    x.add_argument("scenario", type=Path, metavar="SCENARIO")
    x.add_argument("--examples", type=_positive, default=20,
                   help="schedules to run at most (default 20)")
    x.add_argument("--time-budget-s", type=float, default=1800.0,
                   help="start no example after this long (default 1800)")
    x.add_argument("--faults", help="comma-separated faults to draw (default: every one the "
                   "backend runs)")
    x.add_argument("--max-steps", type=_positive, default=3,
                   help="steps a schedule may have (default 3)")
    x.add_argument("--shrink-runs", type=int, default=24,
                   help="real runs the shrink of a found schedule may take (default 24; 0: "
                   "no shrink)")
    x.add_argument("--reruns", type=int, default=3,
                   help="runs of each shrink candidate; it fails by majority (odd, default 3)")
    x.add_argument("--rate-runs", type=int, default=5,
                   help="fresh runs of the minimal schedule for its reproduction rate "
                   "(default 5)")
    _reporting_option(x)
    _run_options(x)

    c = sub.add_parser("check", help="re-run the checkers on a recorded run directory")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--claims", type=_gate, help="claims to check (default: the run's)")

    sh = sub.add_parser("show", help="a recorded run in the terminal: lanes, a task's story")
    sh.add_argument("run_dir", type=Path)
    sh.add_argument("--task", help="one task's whole story (publish to final read)")
    sh.add_argument("--worker", help="one worker's events in order")

    rp = sub.add_parser("report", help="(re)build report.html of a recorded run or audit")
    rp.add_argument("path", type=Path, metavar="RUN_DIR|AUDIT_JSON")

    sm = sub.add_parser("summary", help="an audit report as Markdown (a CI job summary)")
    sm.add_argument("audit_json", type=Path, metavar="AUDIT_JSON")

    i = sub.add_parser("images", help="container images")
    isub = i.add_subparsers(dest="images_command", required=True, parser_class=_Parser)
    b = isub.add_parser("build", help="build the broker and worker images (cached)")
    b.add_argument("--offline", action="store_true",
                   help="make the base from a debootstrap root filesystem (no registry)")
    b.add_argument("--force", action="store_true", help="rebuild even when inputs are unchanged")
    b.add_argument("--broker-base", metavar="IMAGE",
                   help="the public RabbitMQ base to build the broker on (default pinned: "
                        "rabbitmq:3.10.8-management, Debian 12's version; or "
                        "$HARNESS_BROKER_BASE)")
    b.add_argument("--examples", action="store_true",
                   help="also the example Celery and Dramatiq apps' images (from a checkout)")
    isub.add_parser("status", help="which images exist and whether they are up to date")
    return p


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from harness.cluster.base import ClusterError
    from harness.runner import run_scenario
    from harness.scenario import (
        ScenarioError,
        apply_overrides,
        load_scenario,
    )
    from harness.signals import Interrupted

    try:
        scenarios = [apply_overrides(load_scenario(p), args.workers) for p in args.scenarios]
    except (ScenarioError, ValueError) as exc:
        return _err(str(exc))

    opts = _options(args)
    if isinstance(opts, int):
        return opts
    for sc in scenarios:
        why = _unfit(sc, opts, "run")
        if why is not None:
            return _err(why)
    worst = EXIT_OK
    outcomes = []
    for sc in scenarios:
        try:
            outcome = run_scenario(sc, opts, console)
        except Interrupted:
            console.print("interrupted: every process of the run was stopped")
            return EXIT_UNDECIDED
        except ClusterError as exc:
            return _err(str(exc))
        outcomes.append(outcome)
        worst = max(worst, outcome.exit_code, key=lambda c: (c == 1) * 2 + (c == 2))
        console.print()
    if args.junit is not None:
        from harness.junit import write_junit

        write_junit(args.junit, outcomes, opts.backend, opts.gate)
        console.print(f"junit: {args.junit}")
    return worst


def _options(args: argparse.Namespace) -> RunOptions | int:
    """RunOptions from the shared flags, or an exit code after a one-line error."""
    from harness.options import OptionsError, build_options, parse_worker_env

    try:
        return build_options(
            backend=args.backend, broker_url=args.broker_url, vhost=args.vhost,
            seed=args.seed, workers=getattr(args, "workers", None), out=args.out,
            worker_cmd=args.worker_cmd, worker_image=args.worker_image, events=args.events,
            gate=args.gate, progress=not args.no_progress, capabilities=args.capabilities,
            queue=args.queue, dlq=args.dlq, params=_params(args.param),
            reporting=getattr(args, "reporting", "full"),
            task_format=getattr(args, "task_format", vocab.FORMAT_CONTRACT_V1),
            worker_env=parse_worker_env(getattr(args, "worker_env", [])),
            worker_logs=getattr(args, "worker_logs", None),
            fault_cmds=getattr(args, "fault_cmd", []),
            allow_dlq=getattr(args, "allow_dlq", False))
    except OptionsError as exc:
        return _err(str(exc))


def _params(items: list[tuple[str, str, object]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for claim, key, value in items:
        out.setdefault(claim, {})[key] = value
    return out


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    from harness.audit import run_audit
    from harness.cluster.base import ClusterError
    from harness.scenario import ScenarioError

    opts = _options(args)
    if isinstance(opts, int):
        return opts
    if opts.backend == vocab.EXTERNAL:
        return _err("--backend external runs the scenarios you name with harness run; the "
                    "audit needs workers of its own (local or docker)")
    try:
        return run_audit(opts, console, args.gate, args.only, args.junit)
    except (ScenarioError, ClusterError) as exc:
        return _err(str(exc))


def _unfit(sc: Scenario, opts: RunOptions, verb: str) -> str | None:
    """Why the scenario cannot run with these options (one line), checked before
    anything starts: a fault the backend lacks (or, external, a template missing),
    a format it cannot carry, a broker restart on a broker not the harness's."""
    from harness.cluster.external import FaultCommands
    from harness.options import OptionsError, check_format
    from harness.scenario import ScenarioError, check_backend, check_external, restarts_broker

    try:
        if opts.backend == vocab.EXTERNAL:
            check_external(sc, FaultCommands.parse(opts.fault_cmds).templates, opts.allow_dlq,
                           replays="{since}" in (opts.worker_logs or ""))
        else:
            check_backend(sc, opts.backend)
        check_format(sc, opts)
    except (ScenarioError, OptionsError, ValueError) as exc:
        return str(exc)
    if opts.broker_url and restarts_broker(sc):
        return (f"{sc.path}: the scenario restarts the broker, and --broker-url's broker is "
                f"not the harness's; {verb} it without --broker-url")
    if (opts.broker_url or opts.backend == vocab.EXTERNAL) and \
            sc.cluster.consumer_timeout_ms is not None:
        return (f"{sc.path}: cluster.consumer_timeout_ms configures a broker the harness "
                f"starts, and --broker-url's broker is not the harness's; {verb} it without "
                "--broker-url (or set consumer_timeout on that broker and drop the key)")
    return None


def cmd_explore(args: argparse.Namespace, console: Console) -> int:
    """``harness explore``: see ``harness.explore``."""
    from harness.cluster.base import ClusterError
    from harness.explore import Bounds, ExploreError, faults_for, run_explore
    from harness.options import new_seed
    from harness.scenario import ScenarioError, load_scenario
    from harness.signals import Interrupted

    try:
        sc = load_scenario(args.scenario)
    except (ScenarioError, ValueError) as exc:
        return _err(str(exc))
    opts = _options(args)
    if isinstance(opts, int):
        return opts
    if opts.backend == vocab.EXTERNAL:
        return _err("--backend external: explore needs workers of its own (local or docker)")
    why = _unfit(sc, opts, "explore")
    if why is not None:
        return _err(why)
    seed = opts.seed if opts.seed is not None else new_seed()
    try:
        wanted = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults \
            else None
        bounds = Bounds(faults=faults_for(opts.backend, not opts.broker_url, wanted),
                        max_steps=args.max_steps, tasks=sc.workload.tasks,
                        concurrency=sc.cluster.concurrency)
        return run_explore(args.scenario, sc, bounds, opts, console, examples=args.examples,
                           time_budget_s=args.time_budget_s, seed=seed,
                           shrink_runs=args.shrink_runs, reruns=args.reruns,
                           rate_runs=args.rate_runs)
    except ExploreError as exc:
        return _err(str(exc))
    except Interrupted:
        console.print("interrupted: every process of the run was stopped")
        return EXIT_UNDECIDED
    except (ScenarioError, ClusterError) as exc:
        return _err(str(exc))


def cmd_mutants(args: argparse.Namespace, console: Console) -> int:
    from harness.cluster.base import ClusterError
    from harness.mutants import MUTANTS, run_mutants

    opts = _options(args)
    if isinstance(opts, int):
        return opts
    if opts.brought_worker:
        return _err("mutants plants bugs in the reference worker: no --worker-cmd/--worker-image")
    bugs = [b.strip() for b in args.bugs.split(",")] if args.bugs else None
    known = [m.bug for m in MUTANTS]
    for b in bugs or []:
        if b not in known:
            return _err(f"unknown bug {b!r}; known: {', '.join(known)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in REPORTING_MODES:
            return _err(f"--reporting {m!r}: use {', '.join(REPORTING_MODES)} (comma-separated)")
    if not modes:
        return _err(f"--reporting: name at least one of {', '.join(REPORTING_MODES)}")
    try:
        return run_mutants(opts, console, bugs, control=not args.no_control, reporting=modes)
    except ClusterError as exc:
        return _err(str(exc))


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from harness.show import show

    if not (args.run_dir / "history.jsonl").is_file():
        return _err(f"{args.run_dir}: no history.jsonl there (a run directory of harness run)")
    return show(args.run_dir, console, args.task, args.worker)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from harness.htmlreport import write_audit_report, write_run_report

    path: Path = args.path
    try:
        if path.is_dir():
            if not (path / "result.json").is_file():
                return _err(f"{path}: no result.json there (a run directory of harness run)")
            console.print(f"report: {write_run_report(path)}")
            return EXIT_OK
        if path.suffix == ".json" and path.is_file():
            audit = json.loads(path.read_text())
            if not isinstance(audit, dict) or "runs" not in audit:
                return _err(f"{path}: not an audit report (audit-*.json of harness audit)")
            console.print(f"audit page: {write_audit_report(path.with_suffix('.html'), audit)}")
            return EXIT_OK
    except (OSError, ValueError) as exc:
        return _err(f"{path}: cannot read it: {exc}")
    return _err(f"{path}: give a run directory or an audit-*.json")


def cmd_summary(args: argparse.Namespace) -> int:
    from harness.audit import markdown_summary

    try:
        audit = json.loads(args.audit_json.read_text())
    except (OSError, ValueError) as exc:
        return _err(f"{args.audit_json}: cannot read it: {exc}")
    if not isinstance(audit, dict) or "claims" not in audit:
        return _err(f"{args.audit_json}: not an audit report (audit-*.json of harness audit)")
    sys.stdout.write(credentials.redact(markdown_summary(audit)))
    return EXIT_OK


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    from harness import report
    from harness.history import History
    from harness.verdicts import judge_history, overall_exit_code, run_word

    path = args.run_dir / "history.jsonl"
    if not path.is_file():
        return _err(f"{path}: no history here; pass a run directory made by `harness run`")
    try:
        history = History.load(path)
    except (OSError, ValueError, KeyError) as exc:
        return _err(f"{path}: not a readable history: {exc}")
    claims: tuple[str, ...]
    params: dict[str, dict[str, object]] = {}
    if args.claims:
        claims = tuple(sorted(args.claims))
    else:
        started = next((e for e in history if e.type == vocab.RUN_STARTED), None)
        claims = tuple(started.get("claims", ())) if started else ()
        if not claims:
            return _err(f"{path}: no claims recorded; pass --claims")
    # The run's own parameters and problems, when it left them: the same verdicts
    # as the run gave (a problem turns every true into unknown).
    problems: list[str] = []
    result_path = args.run_dir / "result.json"
    if result_path.is_file():
        try:
            recorded = json.loads(result_path.read_text())
            params = dict(recorded.get("params") or {})
            problems = [str(p) for p in recorded.get("problems") or []]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            return _err(f"{result_path}: not a result written by `harness run`: {exc}")
    results = judge_history(history, claims, params, problems)
    code = overall_exit_code(results)
    report.render_results(console, str(args.run_dir), results,
                          run_word(code))
    return code


def cmd_images(args: argparse.Namespace, console: Console) -> int:
    from harness.images import images_main

    argv = [args.images_command]
    if args.images_command == "build":
        argv += (["--offline"] if args.offline else []) + (["--force"] if args.force else [])
        argv += ["--examples"] if args.examples else []
        if args.broker_base:
            argv += ["--broker-base", args.broker_base]
    return int(images_main(argv))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Not a terminal (CI logs, pipes): a wide fixed width keeps the table readable.
    # Everything printed passes the redactor: no broker password reaches a terminal
    # or a CI log, whichever message carries it.
    console = Console(file=cast(TextIO, credentials.RedactingStream(sys.stdout)), highlight=False,
                      width=None if sys.stdout.isatty() else 160)
    try:
        if args.command == "run":
            return cmd_run(args, console)
        if args.command == "audit":
            return cmd_audit(args, console)
        if args.command == "mutants":
            return cmd_mutants(args, console)
        if args.command == "explore":
            return cmd_explore(args, console)
        if args.command == "check":
            return cmd_check(args, console)
        if args.command == "show":
            return cmd_show(args, console)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command == "summary":
            return cmd_summary(args)
        if args.command == "images":
            return cmd_images(args, console)
    except KeyboardInterrupt:
        return _err("interrupted")
    return _err(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
