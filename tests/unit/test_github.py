"""GitHub Actions done right: the project's workflows and the composite action
validate offline against the published GitHub schemas (as vendored by
check-jsonschema), the action calls only flags the CLI has, and the job summary
it writes is a Markdown table of the audit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.audit import markdown_summary
from harness.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120


def check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
         *map(str, files)], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def test_workflows_validate_against_the_github_schema() -> None:
    files = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    files += sorted((ROOT / "docs" / "examples").glob("*.yml"))
    assert files
    r = check("vendor.github-workflows", *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_action_validates_against_the_github_schema() -> None:
    r = check("vendor.github-actions", ROOT / "action.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_broken_workflow_is_refused() -> None:
    """The validator is not a rubber stamp: a job without runs-on fails."""
    broken = ROOT / "runs" / "broken-workflow.yml"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text("name: x\non: push\njobs:\n  a:\n    steps:\n      - run: true\n")
    try:
        assert check("vendor.github-workflows", broken).returncode != 0
    finally:
        broken.unlink()


def test_the_projects_ci_runs_the_readmes_test_command() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("bash .ci/run" in r for r in runs)
    assert "HARNESS_REPO" not in (ROOT / ".github" / "workflows" / "ci.yml").read_text()


def _flags(subcommand: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.choices[subcommand]  # type: ignore[index]
    return {o for a in p._actions for o in a.option_strings}


def test_the_action_calls_only_flags_the_cli_has() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    script = "\n".join(s.get("run", "") for s in action["runs"]["steps"])
    assert "harness images build" in script and "harness summary" in script
    audit = re.search(r"args=\(audit (.*?)\)", script, re.S)
    assert audit is not None
    used = set(re.findall(r"--[a-z][a-z-]+", audit.group(1)))
    used |= set(re.findall(r"args\+=\((--[a-z-]+)", script))
    assert used and used <= _flags("audit"), used - _flags("audit")
    # Every input is used by a step.
    text = (ROOT / "action.yml").read_text()
    for name in action["inputs"]:
        assert f"inputs.{name}" in text, name


def test_the_summary_is_a_markdown_table_of_the_audit() -> None:
    audit = {"verdict": "FAIL", "exit_code": 1, "backend": "docker", "gate": ["no-loss"],
             "not_gated": ["exactly-once-ack"],
             "claims": [{"claim": "no-loss", "guide": "No messages lost!",
                         "verdict": "VIOLATED", "invariant": "false",
                         "evidence": "[crash-recovery] 3 lost | a|b"}],
             "runs": [{"scenario": "crash-recovery", "exit_code": 1, "seed": 42,
                       "rerun": "harness run scenarios/crash-recovery.yaml --seed 42"}]}
    md = markdown_summary(audit)
    assert md.startswith("## harness audit: FAIL (exit 1")
    row = next(line for line in md.splitlines() if line.startswith("| no-loss"))
    assert "**VIOLATED**" in row and "| yes |" in row
    assert r"3 lost \| a\|b" in row  # a pipe in the evidence does not break the table
    assert "not gated: exactly-once-ack" in md
    assert "`harness run scenarios/crash-recovery.yaml --seed 42`" in md


@pytest.mark.parametrize("bad", ["nope.json", "not-an-audit"])
def test_summary_refuses_what_is_not_an_audit(tmp_path: Path, bad: str) -> None:
    path = tmp_path / bad
    if bad == "not-an-audit":
        path.write_text('{"a": 1}')
    r = subprocess.run([sys.executable, "-m", "harness", "summary", str(path)],
                       capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT, check=False)
    assert r.returncode == 2 and r.stderr.startswith("harness: error:"), r.stderr
    assert "Traceback" not in r.stderr
