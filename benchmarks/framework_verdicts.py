"""The verdict table of real framework configurations: the example Celery and
Dramatiq apps (examples/) under the harness, one run per configuration and
scenario, printed as a Markdown table (docs/frameworks.md keeps one).

    python benchmarks/framework_verdicts.py [--runs 1] [--only celery] [--scenario crash-during]

Each row: the configuration (Celery's pool and acknowledgement settings, or
Dramatiq's defaults), the scenario, the exit code, the claims that were true,
false and unknown, and the run's rerun command. With ``--runs N`` every cell is
run N times and says how many runs gave each verdict (a configuration whose
verdict moves between runs is itself a finding). Local backend, tasks published
by each framework's own client (``--format``), events from ``harness_events``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
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


def run_once(cfg: Config, scenario: str) -> tuple[int, dict[str, str], str]:
    with tempfile.TemporaryDirectory(prefix="fwv-") as tmp:
        cmd = [sys.executable, "-m", "harness", "run", str(ROOT / "scenarios" / f"{scenario}.yaml"),
               "--backend", "local", "--format", cfg.task_format, "--worker-cmd", cfg.command,
               "--capabilities", "directives", "--out", tmp, "--no-progress"]
        if scenario.startswith("retry-backoff"):
            for p in cfg.params:
                cmd += ["--param", p]
        os.environ["PYTHONPATH"] = str(ROOT)  # the example apps, for the workers
        proc = run_child(cmd, ROOT, RUN_TIMEOUT_S)
        results = sorted(Path(tmp).glob("*/result.json"))
        if not results:
            return proc.returncode, {}, "(no result written)"
        data = json.loads(results[-1].read_text())
        return (proc.returncode, {c["claim"]: c["valid"] for c in data["claims"]},
                str(data.get("rerun", "")))


def cell(values: list[str]) -> str:
    counts = Counter(values)
    if len(counts) == 1:
        return values[0]
    return ", ".join(f"{v} {n}/{len(values)}" for v, n in counts.most_common())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help=f"runs per cell (1..{MAX_RUNS})")
    ap.add_argument("--only", default="", help="configurations whose name contains this")
    ap.add_argument("--scenario", action="append", default=[], choices=SCENARIOS)
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= MAX_RUNS:
        print(f"--runs must be between 1 and {MAX_RUNS}", file=sys.stderr)
        return 2
    configs = [c for c in CONFIGS if args.only.lower() in c.name.lower()]
    scenarios = args.scenario or list(SCENARIOS)
    rows = ["| configuration | scenario | exit | true | false | unknown | rerun |",
            "|---|---|---|---|---|---|---|"]
    for cfg in configs:
        for sc in scenarios:
            exits: list[str] = []
            verdicts: dict[str, list[str]] = {}
            rerun = ""
            for _ in range(args.runs):
                code, claims, rerun = run_once(cfg, sc)
                exits.append(str(code))
                for claim, valid in claims.items():
                    verdicts.setdefault(claim, []).append(str(valid))
            by = {w: sorted(c for c, v in verdicts.items() if cell(v) == w)
                  for w in ("true", "false", "unknown")}
            mixed = sorted(f"{c} ({cell(v)})" for c, v in verdicts.items()
                           if cell(v) not in by)
            row = (f"| {cfg.name} | {sc} | {cell(exits)} | {', '.join(by['true']) or '-'} | "
                   f"{', '.join(by['false'] + mixed) or '-'} | "
                   f"{', '.join(by['unknown']) or '-'} | `{rerun}` |")
            print(row, flush=True)
            rows.append(row)
    print()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
