"""JUnit XML for CI systems that do not run pytest: ``harness run ... --junit FILE``
and ``harness audit ... --junit FILE``.

One ``testsuite`` per run (the scenario), one ``testcase`` per judged claim
(its name is the claim id). A gated claim whose invariant is false is a
``failure``; a gated claim that is unknown an ``error`` (a run that could not
decide never passes a gate); a claim outside the gate is a passing case whose
``system-out`` says so. The failure text carries the claim's summary and its
evidence. The run's seed, rerun command, run directory and backend are the
suite's ``properties`` (allowed there by both the legacy and the xunit2 JUnit
schema, which forbids properties on a test case).

Written with the standard library's ``xml.etree``: the format is a handful of
elements, and the maintained writers of it are plugins of other test runners.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from harness import credentials
from harness.checkers.base import observable
from harness.options import RunOutcome
from harness.verdicts import invariant_verdict

EVIDENCE_MAX_CHARS: Final = 4000  # a failure text stays readable in a CI page


def _suite(outcome: RunOutcome, backend: str, gate: frozenset[str] | None) -> ET.Element:
    # The default gate is the exit code's: every judged claim the worker's events
    # can show (``verdicts.not_gated`` names the others).
    gated = (set(gate) if gate is not None
             else {r.claim for r in outcome.results if observable(r)})
    suite = ET.Element("testsuite", name=f"harness.{outcome.scenario.name}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("seed", str(outcome.seed)), ("rerun", outcome.rerun),
                        ("run_dir", str(outcome.run_dir)), ("backend", backend)):
        ET.SubElement(props, "property", name=name, value=value)
    failures = errors = 0
    for r in outcome.results:
        case = ET.SubElement(suite, "testcase", name=r.claim,
                             classname=f"harness.{outcome.scenario.name}")
        inv = invariant_verdict(r)
        text = f"{r.summary}\nevidence: {json.dumps(r.evidence, default=str)[:EVIDENCE_MAX_CHARS]}"
        if r.claim not in gated:
            ET.SubElement(case, "system-out").text = f"not gated; invariant {inv}: {r.summary}"
        elif inv is False:
            failures += 1
            ET.SubElement(case, "failure", message=r.summary[:500],
                          type="invariant violated").text = text
        elif inv is None:
            errors += 1
            ET.SubElement(case, "error", message=r.summary[:500],
                          type="undecided").text = text
    for problem in outcome.problems:
        errors += 1
        case = ET.SubElement(suite, "testcase", name="run",
                             classname=f"harness.{outcome.scenario.name}")
        ET.SubElement(case, "error", message=problem[:500], type="run problem").text = problem
    if not outcome.results and not outcome.problems:
        errors += 1
        case = ET.SubElement(suite, "testcase", name="run",
                             classname=f"harness.{outcome.scenario.name}")
        ET.SubElement(case, "error", message="no claim was judged", type="undecided")
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return suite


def write_junit(path: Path, outcomes: Sequence[RunOutcome], backend: str,
                gate: frozenset[str] | None) -> None:
    """Write the JUnit file of these runs; ``gate`` None gates every claim a run
    judged (``harness run``'s default; the audit passes its effective gate)."""
    root = ET.Element("testsuites", name="harness")
    for o in outcomes:
        root.append(_suite(o, backend, gate))
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ET.tostring(root, encoding="unicode", xml_declaration=True)
    path.write_text(credentials.redact(text) + "\n", encoding="utf-8")
