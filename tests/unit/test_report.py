"""The terminal report, exit codes, result.json and the progress display."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness.checkers.base import ClaimResult
from harness.history import Event
from harness.report import Progress, compact, render_results, write_result_json
from harness.verdicts import overall_exit_code

T = ClaimResult("no-loss", True, "all 50 confirmed tasks settled",
                {"confirmed": 50, "lost": 0, "per_worker": {"worker-1": 20, "worker-2": 30}})
F = ClaimResult("exactly-once-ack", False, "2 tasks acked twice",
                {"settled_twice": 2, "ids": ["t-0003", "t-0007"], "traceback": "x" * 500})
U = ClaimResult("redelivery-after-crash", None, "the kill did not take effect")
E = ClaimResult("no-duplicate-processing", True, "no unexplained duplicates",
                {"duplicates": 0}, explained={"duplicates": 3, "ids": ["t-1", "t-2", "t-3", "t-4"]})


def render(results: list[ClaimResult], verdict: str) -> str:
    console = Console(record=True, width=160, force_terminal=False)
    render_results(console, "crash-recovery", results, verdict)
    return console.export_text()


def test_render_contains_claims_verdicts_and_evidence() -> None:
    text = render([T, F, U, E], "false")
    for word in ("crash-recovery", "no-loss", "exactly-once-ack", "redelivery-after-crash",
                 "true", "false", "unknown", "the kill did not take effect",
                 "settled_twice=2", "ids=[t-0003, t-0007]", "confirmed=50 lost=0"):
        assert word in text, word
    assert "verdict: false" in text
    assert "xxxxx" not in text  # tracebacks stay in result.json
    assert "explained no-duplicate-processing" in text
    assert "duplicates=3" in text and "t-1, t-2, t-3 +1" in text


def test_render_colours_verdicts() -> None:
    console = Console(record=True, width=160, force_terminal=True, color_system="truecolor")
    render_results(console, "s", [T, F, U], "unknown")
    html = console.export_html(inline_styles=True)
    for verdict, colour in (("true", "#008000"), ("false", "#800000"), ("unknown", "#808000")):
        assert f'color: {colour}; font-weight: bold">{verdict}' in html, verdict


def test_render_escapes_markup_and_handles_no_results() -> None:
    odd = ClaimResult("no-loss", True, "[bold]not markup[/bold]", {"k": "[red]x"})
    assert "[bold]not markup[/bold]" in render([odd], "true")
    assert "no claim was checked" in render([], "unknown")


def test_compact_is_short_and_ordered() -> None:
    ev = {f"c{i}": i for i in range(10)} | {"a": list(range(100)), "b": {"x"}, "c": [],
                                           "nested": {"k": {"deep": 1}}}
    text = compact(ev)
    assert len(text) <= 160
    assert text.startswith("c0=0 c1=1")
    assert "a=[0, 1, 2 +97]" in text and "c=" not in text.replace("c0", "").replace("c1", "")


@pytest.mark.parametrize(("results", "gating", "code"), [
    ([T], None, 0),
    ([T, E], None, 0),
    ([T, F], None, 1),
    ([T, U], None, 2),
    ([F, U], None, 1),  # a false beats an unknown
    ([], None, 2),  # nothing checked is not a pass
    ([T, F], {"no-loss"}, 0),  # an ungated false does not gate
    ([T, U], {"no-loss"}, 0),
    ([T], {"no-loss", "dead-letter"}, 2),  # a gated claim without a result
    ([T, F], set(), 2),
    ([T, ClaimResult("no-loss", False, "x")], {"no-loss"}, 1),  # worst of repeated results
])
def test_overall_exit_code(results: list[ClaimResult], gating: set[str] | None,
                           code: int) -> None:
    assert overall_exit_code(results, gating) == code


def test_write_result_json(tmp_path: Path) -> None:
    path = tmp_path / "run" / "result.json"
    write_result_json(path, {"verdict": "false", "claims": [F.to_dict()], "nan": float("nan"),
                             "ids": {"b", "a"}, "path": Path("/x"), "result": T})
    data = json.loads(path.read_text())
    assert data["claims"][0]["valid"] == "false"
    assert data["nan"] is None and data["ids"] == ["a", "b"] and data["path"] == "/x"
    assert data["result"]["valid"] == "true"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def events() -> list[Event]:
    out = [Event("publish", "workload", id=f"t{i}", data={"outcome": "ok"}) for i in range(3)]
    out.append(Event("publish", "workload", id="t3", data={"outcome": "unknown"}))
    out += [Event("processed", "worker-1", id="t0", worker="worker-1"),
            Event("acked", "worker-1", id="t0", worker="worker-1",
                  data={"reason": "processed"}),
            Event("acked", "worker-1", id="t1", worker="worker-1", data={"reason": "retry"}),
            Event("dead_lettered", "worker-1", id="t2", worker="worker-1"),
            Event("fault", "nemesis", data={"fault": "kill", "phase": "invoke"}),
            Event("fault", "nemesis", data={"fault": "kill", "phase": "heal"})]
    return out


def test_progress_plain_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    progress = Progress(console, interval_s=0.5)
    assert not progress.live
    progress.start(4)
    for ev in events():
        progress.on_event(ev)
    time.sleep(1.2)
    progress.stop()
    progress.stop()  # idempotent
    lines = [ln for ln in buf.getvalue().splitlines() if ln]
    assert 1 <= len(lines) <= 3, lines  # at most one per interval, plus the final one
    assert lines[-1].startswith("progress: published 3/4 processed 1/4 settled 2/4 "
                                "(publish failed 0 unknown 1; faults 1)")
    assert "\x1b" not in buf.getvalue()


def test_progress_rich_display_on_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with Progress(console, refresh_s=0.05) as progress:
        assert progress.live
        progress.start(4)
        for ev in events():
            progress.on_event(ev)
        time.sleep(0.2)
    out = buf.getvalue()
    assert "published" in out and "3/4" in out and "settled" in out
