"""The verdict table of real framework configurations: the example Celery and
Dramatiq apps (examples/) under the harness, one run per configuration and
scenario, printed as a Markdown table (docs/frameworks.md keeps one).

    python benchmarks/framework_verdicts.py [--runs 1] [--only celery] [--scenario crash-during]

One row per configuration (Celery's pool and acknowledgement settings, or
Dramatiq's), one column per claim; a cell gives the claim's verdict in each
scenario that judged it, worst first, linked to that run's report (the run
directories stay under ``--out``; ``--json`` keeps every run with its rerun
command). With ``--runs N`` every scenario runs N times and a cell says how many
runs gave each verdict (a configuration whose verdict moves between runs is
itself a finding). Local backend, tasks published
by each framework's own client (``--format``), events from ``harness_events``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _child import run_child

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600
MAX_RUNS = 20
CELERY_FLAGS = ("-Q", "go.logger", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "warning")


@dataclass(frozen=True)
class Config:
    name: str
    task_format: str
    command: str
    params: tuple[str, ...] = ()  # --param for the retry-backoff scenario


def celery(pool: str, *env: str) -> str:
    exe = shutil.which("celery", path=str(Path(sys.executable).parent)) or "celery"
    return " ".join(["env", *env, exe, "-A", "examples.celery_app.tasks", "worker",
                     "--pool", pool, *CELERY_FLAGS])


DRAMATIQ = (f"{sys.executable} -m dramatiq examples.dramatiq_app.tasks --processes 1 "
            f"--threads 4 --queues go.logger --path {ROOT}")
# Dramatiq's delay before attempt a+1: min_backoff x 2^(a-1) x U(1, 2), equal jitter
# below d = 2 x min_backoff x 2^(a-1): base_ms = 2 x min_backoff.
DRAMATIQ_BACKOFF = ("retry-backoff.base_ms=400", "retry-backoff.jitter=equal")
CONFIGS: tuple[Config, ...] = (
    Config("Celery threads, defaults", "celery", celery("threads")),
    Config("Celery threads, acks_late", "celery", celery("threads", "CELERY_ACKS_LATE=true")),
    Config("Celery prefork, defaults", "celery", celery("prefork")),
    Config("Celery prefork, acks_late", "celery", celery("prefork", "CELERY_ACKS_LATE=true")),
    Config("Celery prefork, acks_late + reject_on_worker_lost", "celery",
           celery("prefork", "CELERY_ACKS_LATE=true", "CELERY_REJECT_ON_WORKER_LOST=true")),
    Config("Dramatiq, defaults", "dramatiq", DRAMATIQ, DRAMATIQ_BACKOFF),
    Config("Dramatiq, dramatiq_worker_timeout=100", "dramatiq",
           f"env dramatiq_worker_timeout=100 {DRAMATIQ}", DRAMATIQ_BACKOFF),
)
SCENARIOS = ("crash-recovery", "crash-during", "retry-backoff", "retry-backoff-jitter",
             "dead-letter-tasks", "scale-up-backlog")


# The table's columns: the claims these scenarios judge.
CLAIM_COLUMNS = ("no-loss", "exactly-once-ack", "no-duplicate-processing",
                 "redelivery-after-crash", "retry-backoff", "dead-letter", "even-distribution")
# A cell's word for several verdicts of one claim: the worst decides.
RANK = {"false": 0, "unknown": 1, "true": 2}


@dataclass(frozen=True)
class Run:
    config: str
    scenario: str
    exit_code: int
    claims: dict[str, str]  # claim -> "true" | "false" | "unknown"
    run_dir: str
    rerun: str


def run_once(cfg: Config, scenario: str, out: Path) -> Run:
    cmd = [sys.executable, "-m", "harness", "run", str(ROOT / "scenarios" / f"{scenario}.yaml"),
           "--backend", "local", "--format", cfg.task_format, "--worker-cmd", cfg.command,
           "--capabilities", "directives", "--out", str(out), "--no-progress"]
    if scenario.startswith("retry-backoff"):
        for p in cfg.params:
            cmd += ["--param", p]
    os.environ["PYTHONPATH"] = str(ROOT)  # the example apps, for the workers
    before = set(out.glob("*/result.json"))
    proc = run_child(cmd, ROOT, RUN_TIMEOUT_S)
    new = sorted(set(out.glob("*/result.json")) - before)
    if not new:
        return Run(cfg.name, scenario, proc.returncode, {}, "", "(no result written)")
    data = json.loads(new[-1].read_text())
    return Run(cfg.name, scenario, proc.returncode,
               {c["claim"]: str(c["valid"]) for c in data["claims"]},
               str(new[-1].parent), str(data.get("rerun", "")))


def cell(runs: list[Run], claim: str, link_base: Path | None) -> str:
    """The claim's verdicts over the configuration's runs: per scenario, the word (with
    ``k/n`` when repeated runs disagree), linked to the first run's report."""
    parts: list[tuple[int, str]] = []
    for sc in dict.fromkeys(r.scenario for r in runs):
        of_sc = [r for r in runs if r.scenario == sc and claim in r.claims]
        if not of_sc:
            continue
        counts = Counter(r.claims[claim] for r in of_sc)
        worst = min(counts, key=lambda w: RANK.get(w, 1))
        word = worst if len(counts) == 1 else ", ".join(
            f"{w} {n}/{len(of_sc)}" for w, n in counts.most_common())
        report = Path(of_sc[0].run_dir) / "report.html"
        target = os.path.relpath(report, link_base) if link_base is not None else str(report)
        text = f"**{word}**" if worst == "false" else word
        parts.append((RANK.get(worst, 1), f"[{text}]({target}) ({sc})"))
    return "<br>".join(t for _r, t in sorted(parts)) or "-"


def table(runs: list[Run], link_base: Path | None) -> list[str]:
    configs = list(dict.fromkeys(r.config for r in runs))
    rows = ["| configuration | " + " | ".join(CLAIM_COLUMNS) + " |",
            "|---|" + "---|" * len(CLAIM_COLUMNS)]
    for name in configs:
        mine = [r for r in runs if r.config == name]
        rows.append(f"| {name} | " + " | ".join(cell(mine, c, link_base) for c in CLAIM_COLUMNS)
                    + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help=f"runs per cell (1..{MAX_RUNS})")
    ap.add_argument("--only", default="", help="configurations whose name contains this")
    ap.add_argument("--scenario", action="append", default=[], choices=SCENARIOS)
    ap.add_argument("--out", type=Path, default=None,
                    help="where the run directories stay (default runs/framework-verdicts-TIME)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= MAX_RUNS:
        print(f"--runs must be between 1 and {MAX_RUNS}", file=sys.stderr)
        return 2
    configs = [c for c in CONFIGS if args.only.lower() in c.name.lower()]
    if not configs:
        print(f"--only {args.only!r} names no configuration", file=sys.stderr)
        return 2
    out = args.out or ROOT / "runs" / f"framework-verdicts-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    scenarios = args.scenario or list(SCENARIOS)
    runs: list[Run] = []
    t0 = time.monotonic()
    for cfg in configs:
        for sc in scenarios:
            for _ in range(args.runs):
                run = run_once(cfg, sc, out)
                runs.append(run)
                print(f"{cfg.name} | {sc}: exit {run.exit_code} "
                      f"{json.dumps(run.claims)} {run.run_dir}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in runs], indent=1) + "\n")
    print()
    print("\n".join(table(runs, Path.cwd())))
    print(f"\n{len(runs)} runs in {(time.monotonic() - t0) / 60:.1f} min; run directories "
          f"under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
