"""``--junit FILE``: one test case per judged claim, failures for violated gated
invariants, errors for undecided ones, the run's seed and rerun as properties,
valid XML, no secret."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import credentials
from harness.checkers.base import ClaimResult
from harness.junit import write_junit
from harness.model import Scenario
from harness.options import RunOutcome


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    credentials.clear()
    yield
    credentials.clear()


def outcome(*results: ClaimResult, problems: tuple[str, ...] = ()) -> RunOutcome:
    sc = Scenario(name="crash-recovery", path="scenarios/crash-recovery.yaml",
                  claims=tuple(r.claim for r in results))
    return RunOutcome(sc, Path("runs/x"), 42, list(results), 0, list(problems),
                      'harness run scenarios/crash-recovery.yaml --seed 42 '
                      '--broker-url "$HARNESS_BROKER_URL"')


def cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {c.get("name", ""): c for c in root.iter("testcase")}


def test_one_case_per_claim_with_failures_errors_and_properties(tmp_path: Path) -> None:
    out = outcome(ClaimResult("no-loss", False, "3 lost", {"lost_ids": ["a", "b", "c"]}),
                  ClaimResult("exactly-once-ack", True, "ok"),
                  ClaimResult("redelivery-after-crash", None, "record ends too soon"),
                  ClaimResult("no-duplicate-processing", False, "2 explained",
                              {"invariant_holds": True}))
    path = tmp_path / "j.xml"
    write_junit(path, [out], "docker", None)
    got = cases(path)
    assert set(got) == {"no-loss", "exactly-once-ack", "redelivery-after-crash",
                        "no-duplicate-processing"}
    failure = got["no-loss"].find("failure")
    assert failure is not None and "3 lost" in (failure.text or "") and "lost_ids" in (
        failure.text or "")
    assert got["redelivery-after-crash"].find("error") is not None
    assert got["exactly-once-ack"].find("failure") is None
    # Explained duplicates: the guide's words are false, the invariant holds: passes.
    assert got["no-duplicate-processing"].find("failure") is None
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("errors") == "1"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["seed"] == "42" and "HARNESS_BROKER_URL" in str(props["rerun"])


def test_a_claim_outside_the_gate_passes_and_says_so(tmp_path: Path) -> None:
    out = outcome(ClaimResult("no-loss", True, "ok"),
                  ClaimResult("even-distribution", False, "skewed"))
    path = tmp_path / "j.xml"
    write_junit(path, [out], "local", frozenset({"no-loss"}))
    case = cases(path)["even-distribution"]
    assert case.find("failure") is None and "not gated" in (case.findtext("system-out") or "")


def test_an_unobservable_claim_is_not_in_the_default_gate(tmp_path: Path) -> None:
    out = outcome(ClaimResult("no-loss", True, "ok"),
                  ClaimResult("exactly-once-ack", None, "no acks", {"observable": False}))
    path = tmp_path / "j.xml"
    write_junit(path, [out], "local", None)
    assert cases(path)["exactly-once-ack"].find("error") is None


def test_run_problems_are_errors_and_secrets_never_appear(tmp_path: Path) -> None:
    credentials.register("hunter2-secret", "ci")
    out = outcome(ClaimResult("no-loss", None, "undecided"),
                  problems=("broker amqp://ci:hunter2-secret@h refused",))
    path = tmp_path / "j.xml"
    write_junit(path, [out], "local", None)
    text = path.read_text()
    assert "hunter2-secret" not in text and "run problem" in text
    assert ET.parse(path).getroot().find("testsuite") is not None
