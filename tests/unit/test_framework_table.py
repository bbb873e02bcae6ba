"""The framework verdict table (README, docs/frameworks.md) and its runs page are
generated from a real run of ``benchmarks/framework_verdicts.py`` on docker, kept
in docs/framework-verdicts.json, never typed: this fails when they disagree, and
when the kept report misses a configuration or a scenario."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from bench_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
fv = load_benchmark("framework_verdicts")


def kept() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fv.KEPT.read_text())
    return data


def test_the_tables_and_the_runs_page_match_the_kept_report() -> None:
    report = kept()
    runs = fv.runs_from(report)
    fix = "python benchmarks/framework_verdicts.py --write-docs docs/framework-verdicts.json"
    readme = (ROOT / "README.md").read_text()
    assert fv.splice(readme, fv.table(runs, "docs/framework-runs.md"), "README") == readme, fix
    docs = (ROOT / "docs" / "frameworks.md").read_text()
    assert fv.splice(docs, fv.table(runs, "framework-runs.md"), "docs") == docs, fix
    assert fv.RUNS_PAGE.read_text() == fv.runs_page(report, runs), fix


def test_the_kept_report_is_one_docker_run_of_every_row_and_scenario() -> None:
    report = kept()
    assert report["backend"] == "docker"
    runs = fv.runs_from(report)
    for cfg in fv.CONFIGS:
        wanted = {sc for sc in fv.SCENARIOS if fv.ONLY_FOR.get(sc, cfg.app) == cfg.app}
        got = {r.scenario for r in runs if r.config == cfg.name and r.claims}
        assert got == wanted, cfg.name
    # Every run was judged and can be rerun with its seed, from a checkout.
    assert all(r.seed is not None and "--seed" in r.rerun for r in runs)
    assert all(r["rerun"].startswith("harness run scenarios/") for r in report["runs"])


def test_a_rerun_command_names_the_scenario_relative_to_the_checkout() -> None:
    assert fv.portable("harness run /work/x/scenarios/a.yaml --seed 1") == (
        "harness run scenarios/a.yaml --seed 1")


def test_every_link_of_the_table_has_its_run_on_the_page() -> None:
    page = fv.RUNS_PAGE.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', page))
    links = re.findall(r"\(docs/framework-runs\.md#([^)]+)\)", (ROOT / "README.md").read_text())
    assert links and set(links) <= anchors


def run(config: str, scenario: str, valid: str, invariant: str | None = None,
        seed: int = 1) -> Any:
    verdict = {"valid": valid, "invariant": invariant or valid, "summary": "s"}
    return fv.Run(config, scenario, 0, {"no-loss": verdict}, seed, "harness run x", "/d")


def test_a_cell_names_where_a_claim_failed_worst_first_and_counts_the_rest() -> None:
    runs = [run("c", "crash-recovery", "true"), run("c", "dead-letter-tasks", "false"),
            run("c", "load-balancing", "false", "true"),
            run("c", "graceful-shutdown", "true", seed=2),
            run("c", "graceful-shutdown", "unknown", seed=3)]
    lines = fv.cell(runs, "no-loss", "p.md").split("<br>")
    assert lines == [
        "**false**: [dead-letter-tasks](p.md#c-dead-letter-tasks-1)",
        "**false (inv. true)**: [load-balancing](p.md#c-load-balancing-1)",
        "unknown: [graceful-shutdown](p.md#c-graceful-shutdown-3) (1 of 2 runs)",
        "true: 1 of 4"]
    assert fv.cell(runs, "dead-letter", "p.md") == "-"


def test_a_word_of_many_scenarios_is_a_count_with_one_example() -> None:
    runs = [run("c", f"s{i}", "unknown", seed=i) for i in range(fv.CELL_LINKS + 1)]
    assert fv.cell(runs, "no-loss", "p.md") == (
        f"unknown: {fv.CELL_LINKS + 1} of {fv.CELL_LINKS + 1}, e.g. [s0](p.md#c-s0-0)")


def test_a_file_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="no framework-table markers"):
        fv.splice("# no markers\n", ["| a |"], "README.md")
