"""The pytest plugin (``harness.pytest_plugin``) in a user's project, run in a
subprocess as a user's CI would: collection, options, and how a run's verdicts
become items. The run itself is a stand-in here (the project's conftest replaces
``harness.runner.run_scenario`` with one that returns chosen results); the real
runs are in tests/integration/test_plugin_runs.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.scenario import scenarios_dir

TIMEOUT_S = 120

SCENARIO = """\
name: tiny
claims: [no-loss, redelivery-after-crash]
cluster: {workers: 2}
workload: {tasks: 10}
"""

# The stand-in run: results by claim from $FAKE_RESULTS (claim=word,...).
CONFTEST = '''
import os
from pathlib import Path

import harness.runner
from harness.checkers.base import ClaimResult
from harness.options import RunOutcome
from harness.verdicts import overall_exit_code

WORDS = {"true": True, "false": False, "unknown": None}


def fake_run(scenario, opts, console):
    console.print("fake run of " + scenario.name)
    spec = os.environ.get("FAKE_RESULTS", "")
    results = []
    for pair in filter(None, spec.split(",")):
        claim, word = pair.split("=")
        evidence = {}
        if word == "unobservable":
            word, evidence = "unknown", {"observable": False}
        results.append(ClaimResult(claim, WORDS[word], f"{claim} was {word}",
                                   {"where": "fake", **evidence}))
    marker = Path(os.environ["RUN_MARKER"])
    with open(marker, "a") as f:
        f.write(scenario.name + "\\n")
    problems = [p for p in os.environ.get("FAKE_PROBLEMS", "").split(",") if p]
    # The exit code as the runner computes it, from these results and the gate.
    code = overall_exit_code(results, set(opts.gate) if opts.gate else None) \\
        if results else 2
    return RunOutcome(scenario, Path("runs/fake"), 1234, results, code, problems,
                      "harness run x.yaml --seed 1234 --backend local")


harness.runner.run_scenario = fake_run
'''


def project(tmp_path: Path) -> Path:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "tiny.yaml").write_text(SCENARIO)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    return tmp_path


def pytest_in(path: Path, *args: str, results: str = "",
              problems: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAKE_RESULTS": results, "FAKE_PROBLEMS": problems,
           "RUN_MARKER": str(path / "runs.txt"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:locust",
         "-o", "addopts=", "--harness-backend", "local", *args],
        cwd=path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {c.get("name", ""): c for c in root.iter("testcase")}


def test_items_are_the_claims_and_the_invariants(tmp_path: Path) -> None:
    p = project(tmp_path)
    r = pytest_in(p, "--collect-only", "-q", "--harness-scenarios", "scenarios")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert ids == [f"scenarios/tiny.yaml::{c}" for c in (
        "no-loss", "redelivery-after-crash", "exactly-once-ack", "no-duplicate-processing",
        "run")]


def test_packaged_suite_collects_every_suite_scenario_with_distinct_ids(tmp_path: Path) -> None:
    from harness.audit import SUITE

    r = pytest_in(tmp_path, "--collect-only", "-q", "--harness-scenarios", "suite")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert len(ids) == len(set(ids))
    files = {i.split("::")[0] for i in ids}
    assert files == {f"harness/scenarios/{name}" for name in SUITE}
    assert (scenarios_dir() / SUITE[0]).is_file()


def test_verdicts_become_pass_fail_error_skip_with_one_run(tmp_path: Path) -> None:
    p = project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--junitxml", "j.xml", "-rA",
                  results="no-loss=false,redelivery-after-crash=unknown,"
                          "exactly-once-ack=unobservable,no-duplicate-processing=true")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert (p / "runs.txt").read_text().splitlines() == ["tiny"]  # one run for 4 items
    cases = junit_cases(p / "j.xml")
    assert set(cases) == {"no-loss", "redelivery-after-crash", "exactly-once-ack",
                          "no-duplicate-processing", "run"}
    assert cases["run"].find("failure") is not None  # exit 1, as harness run would give
    failure = cases["no-loss"].find("failure")
    assert failure is not None
    assert "no-loss was false" in (failure.text or failure.get("message") or "")
    assert cases["redelivery-after-crash"].find("error") is not None
    assert cases["exactly-once-ack"].find("skipped") is not None  # not observable: not gated
    ok = cases["no-duplicate-processing"]
    assert ok.find("failure") is None and ok.find("error") is None
    assert ok.find("skipped") is None
    props = {e.get("name"): e.get("value") or "" for e in ok.iter("property")}
    assert props["seed"] == "1234"
    assert props["rerun"].startswith("harness run")
    assert props["invariant"] == "true"
    assert "VIOLATED" in out and "no-loss was false" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(("option", "results", "claim", "reason"), [
    # --harness-unknown skip: an undecided claim is a skip that says so.
    (("--harness-unknown", "skip"), "no-loss=true,redelivery-after-crash=unknown",
     "redelivery-after-crash", "unknown"),
    # A named gate: a claim outside it is skipped, even when false.
    (("--harness-gate", "no-loss"), "no-loss=true,redelivery-after-crash=false",
     "redelivery-after-crash", "not gated"),
])
def test_what_does_not_gate_is_a_skip_with_its_reason(
        tmp_path: Path, option: tuple[str, str], results: str, claim: str,
        reason: str) -> None:
    p = project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", *option, "--junitxml", "j.xml",
                  results=results + ",exactly-once-ack=true,no-duplicate-processing=true")
    assert r.returncode == 0, r.stdout + r.stderr
    skipped = junit_cases(p / "j.xml")[claim].find("skipped")
    assert skipped is not None and reason in (skipped.get("message") or "")


def test_ini_settings_are_read(tmp_path: Path) -> None:
    p = project(tmp_path)
    (p / "pytest.ini").write_text(textwrap.dedent("""\
        [pytest]
        harness_scenarios = scenarios
        harness_gate = no-loss
        """))
    r = pytest_in(p, "-q", results="no-loss=false")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no-loss: VIOLATED" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--harness-backend", "cloud"), "unknown backend 'cloud'"),
    (("--harness-gate", "no-loss,nope"), "unknown claim 'nope'"),
    (("--harness-gate", ","), "empty gate"),
    (("--harness-seed", "-1"), "seed -1"),
    (("--harness-capabilities", "telepathy"), "unknown capability 'telepathy'"),
    (("--harness-unknown", "ignore"), "--harness-unknown 'ignore'"),
    (("--harness-worker-image", "me/worker"), "--worker-image needs --backend docker or swarm"),
    (("--harness-format", "celery"), "the reference worker reads contract v1 only"),
])
def test_bad_options_are_one_line_usage_errors(tmp_path: Path, args: tuple[str, ...],
                                               message: str) -> None:
    p = project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", *args)
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_a_malformed_scenario_names_file_line_and_field(tmp_path: Path) -> None:
    p = project(tmp_path)
    (p / "scenarios" / "bad.yaml").write_text("name: bad\nclaims: [no-loss, nope]\n")
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--collect-only", "-q")
    assert r.returncode != 0
    assert "bad.yaml:2: claims[1]: unknown claim 'nope'" in r.stdout
    assert "Traceback" not in r.stdout


def test_other_yaml_files_are_not_scenarios(tmp_path: Path) -> None:
    p = project(tmp_path)
    (p / "config.yaml").write_text("not: a scenario\n")
    r = pytest_in(p, "--collect-only", "-q")
    assert "config.yaml" not in r.stdout and "tiny.yaml" not in r.stdout


def test_scenario_items_stay_together_under_xdist_load(tmp_path: Path) -> None:
    """``-n 2 --dist load`` would scatter one file's items over both workers, and
    each would make the run: the plugin's scheduler keeps them on one."""
    p = project(tmp_path)
    (p / "scenarios" / "tiny2.yaml").write_text(SCENARIO.replace("tiny", "tiny2"))
    r = pytest_in(p, "--harness-scenarios", "scenarios", "-n", "2", "--dist", "load",
                  results="no-loss=true,redelivery-after-crash=true,"
                          "exactly-once-ack=true,no-duplicate-processing=true")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted((p / "runs.txt").read_text().splitlines()) == ["tiny", "tiny2"]


def test_a_waiting_timing_bound_run_is_not_starved(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A holds the cores shared; B (timing-bound) waits for them exclusively; C,
    an ordinary run that arrives after B, starts only after B has finished."""
    import threading
    import time

    from harness import flock, pytest_xdist

    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", f"t{os.getpid()}{time.monotonic_ns()}")
    monkeypatch.setattr(flock, "LOCK_POLL_S", 0.01)
    order: list[str] = []
    release_a = threading.Event()

    def run(name: str, exclusive: bool, hold: threading.Event | None = None) -> None:
        with pytest_xdist.cores(exclusive=exclusive):
            order.append(f"{name}+")
            if hold is not None:
                hold.wait(5)
            else:
                time.sleep(0.1)
            order.append(f"{name}-")

    a = threading.Thread(target=run, args=("A", False, release_a))
    a.start()
    while "A+" not in order:
        time.sleep(0.01)
    b = threading.Thread(target=run, args=("B", True))
    b.start()
    time.sleep(0.2)  # B waits on A
    c = threading.Thread(target=run, args=("C", False))
    c.start()
    time.sleep(0.2)
    assert order == ["A+"]  # neither B nor C while A holds it (C is behind B)
    release_a.set()
    for t in (a, b, c):
        t.join(10)
    assert order == ["A+", "A-", "B+", "B-", "C+", "C-"]


def test_a_run_that_judged_nothing_never_passes(tmp_path: Path) -> None:
    """No result at all (a harness failure inside the run): every item errors,
    the session fails; nothing is skipped into a green build."""
    p = project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--junitxml", "j.xml", results="")
    assert r.returncode == 1, r.stdout + r.stderr
    cases = junit_cases(p / "j.xml")
    assert all(c.find("error") is not None for c in cases.values()), r.stdout
    assert "no claim was judged" in r.stdout


def test_a_claim_the_scenario_or_gate_asks_for_and_did_not_get_is_an_error(
        tmp_path: Path) -> None:
    p = project(tmp_path)
    # redelivery-after-crash is the scenario's; exactly-once-ack is named in the gate.
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--junitxml", "j.xml",
                  "--harness-gate", "no-loss,exactly-once-ack,redelivery-after-crash",
                  results="no-loss=true,no-duplicate-processing=true")
    assert r.returncode == 1, r.stdout + r.stderr
    cases = junit_cases(p / "j.xml")
    assert cases["redelivery-after-crash"].find("error") is not None
    assert cases["exactly-once-ack"].find("error") is not None
    assert cases["no-loss"].find("error") is None


def test_a_scenario_the_backend_cannot_run_is_an_error_not_a_skip(tmp_path: Path) -> None:
    """Network faults on the local backend: the audit's row would be unknown
    (exit 2), so the items error with what to do; the session is not green."""
    p = project(tmp_path)
    (p / "scenarios" / "tiny.yaml").write_text(SCENARIO + textwrap.dedent("""\
        schedule:
          - when: {after_s: 1}
            fault: partition
            target: worker-1
            duration_s: 2
        """))
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--junitxml", "j.xml",
                  results="no-loss=true")
    assert r.returncode == 1, r.stdout + r.stderr
    cases = junit_cases(p / "j.xml")
    assert all(c.find("error") is not None for c in cases.values())
    assert "cannot run on --harness-backend local" in r.stdout
    assert not (p / "runs.txt").exists()  # nothing ran


def test_skip_mode_never_skips_a_run_with_problems(tmp_path: Path) -> None:
    p = project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--harness-unknown", "skip",
                  "--junitxml", "j.xml", problems="no task was processed",
                  results="no-loss=unknown,redelivery-after-crash=unknown,"
                          "exactly-once-ack=unknown,no-duplicate-processing=unknown")
    assert r.returncode == 1, r.stdout + r.stderr
    cases = junit_cases(p / "j.xml")
    assert cases["no-loss"].find("error") is not None
    assert cases["run"].find("error") is not None
    assert "no task was processed" in r.stdout


def test_the_run_item_errors_when_a_named_gate_claim_is_not_the_scenarios(
        tmp_path: Path) -> None:
    """--harness-gate health-check on a scenario that does not judge it: harness run
    exits 2; so does the plugin (through the run item), not a green skip."""
    p = project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--harness-gate", "health-check",
                  "--junitxml", "j.xml",
                  results="no-loss=true,redelivery-after-crash=true,"
                          "exactly-once-ack=true,no-duplicate-processing=true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert junit_cases(p / "j.xml")["run"].find("error") is not None


def test_scenarios_in_subdirectories_are_collected(tmp_path: Path) -> None:
    p = project(tmp_path)
    (p / "scenarios" / "net").mkdir()
    (p / "scenarios" / "net" / "deep.yaml").write_text(SCENARIO.replace("tiny", "deep"))
    r = pytest_in(p, "--collect-only", "-q", "--harness-scenarios", "scenarios")
    assert "scenarios/net/deep.yaml::no-loss" in r.stdout
