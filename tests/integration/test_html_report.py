"""``report.html`` in a real browser: Debian's Chromium, headless, opens an
audit's page built from three recorded runs (histories made here: a balance
run, a scaling run, a crash with redeliveries and a duplicate) and every plot
must be drawn (plotly's SVG inside each plot's element, with marks in it). The
page must open offline: it references no URL. A screenshot is kept as an
artefact (``$HARNESS_ARTEFACTS``, default ``runs/artefacts``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.htmlreport import PLOT_IDS, write_audit_report, write_run_report

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BROWSER_TIMEOUT_S = 120
T0 = 1_800_000_000.0


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh", pytrace=False)
    return path


def ev(t: float, type_: str, source: str = "harness", **data: Any) -> dict[str, Any]:
    return {"t": t, "ts": T0 + t, "source": source, "type": type_, **data}


def history(workers: int, tasks: int, *, kill_at: float | None = None,
            scale_to: int | None = None) -> list[dict[str, Any]]:
    events = [ev(0.0, "run_started", scenario="s", claims=[])]
    for i in range(tasks):
        w = f"worker-{i % workers + 1}"
        start = 1.0 + i * 0.05
        events.append(ev(start - 0.01, "publish", "workload", id=f"t{i}", outcome="ok"))
        events.append(ev(start, "received", w, id=f"t{i}", worker=w, redelivered=False))
        events.append(ev(start + 0.3, "processed", w, id=f"t{i}", worker=w,
                         started_ts=T0 + start))
    if kill_at is not None:
        events.append(ev(kill_at, "fault", "nemesis", fault="kill", target="worker-1",
                         phase="invoke", ok=True))
        for i in range(5):
            w = "worker-2"
            at = kill_at + 0.5 + i * 0.1
            events.append(ev(at, "received", w, id=f"t{i}", worker=w, redelivered=True))
            events.append(ev(at + 0.2, "processed", w, id=f"t{i}", worker=w,
                             started_ts=T0 + at))
        events.append(ev(kill_at + 2, "fault", "nemesis", fault="pause", target="worker-3",
                         phase="invoke", ok=True))
        events.append(ev(kill_at + 4, "fault", "nemesis", fault="pause", target="worker-3",
                         phase="heal", ok=True))
    return sorted(events, key=lambda e: e["t"])


def claim(name: str, valid: str, summary: str, **evidence: Any) -> dict[str, Any]:
    return {"claim": name, "valid": valid, "invariant": valid, "summary": summary,
            "evidence": evidence}


def recorded_run(out: Path, name: str, events: list[dict[str, Any]],
                 claims: list[dict[str, Any]]) -> dict[str, Any]:
    run_dir = out / name
    run_dir.mkdir(parents=True)
    with open(run_dir / "history.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    result = {"schema_version": 1, "scenario": name, "seed": 7, "backend": "docker",
              "verdict": "PASS", "exit_code": 0, "problems": [],
              "rerun": f"harness run scenarios/{name}.yaml --seed 7", "claims": claims}
    (run_dir / "result.json").write_text(json.dumps(result))
    write_run_report(run_dir)
    return {"scenario": name, "run_dir": str(run_dir), "seed": 7, "exit_code": 0,
            "rerun": result["rerun"]}


def audit_page(out: Path) -> Path:
    runs = [
        recorded_run(out, "load-balancing", history(3, 90), [
            claim("even-distribution", "true", "30/30/30", max_deviation_bound=0.25)]),
        recorded_run(out, "linear-scaling", history(4, 120), [
            claim("linear-scaling", "true", "linear", curve=[
                {"workers": 1, "throughput_per_s": 10.0, "efficiency": 1.0},
                {"workers": 2, "throughput_per_s": 19.0, "efficiency": 0.95},
                {"workers": 4, "throughput_per_s": 36.0, "efficiency": 0.9}])]),
        recorded_run(out, "crash-recovery", history(3, 40, kill_at=2.0), [
            claim("redelivery-after-crash", "true", "5 redelivered"),
            claim("no-loss", "true", "all 40 accounted for")]),
    ]
    audit = {"verdict": "PASS", "exit_code": 0, "elapsed_s": 1.0, "backend": "docker",
             "gate": ["no-loss"], "claims": [
                 {"claim": "no-loss", "guide": "No messages lost!", "verdict": "holds",
                  "invariant": "true", "evidence": "[crash-recovery] all accounted for",
                  "why": ""}],
             "runs": runs}
    return write_audit_report(out / "audit-x.html", audit)


def test_every_plot_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = audit_page(tmp_path / "runs")
    text = page.read_text()
    # Offline: no script, style or image loaded from anywhere (plotly.js is inline;
    # the URLs inside its code are links it can draw, not loads), and the browser
    # below resolves no host name at all.
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*(src|href)=["']?https?:""", text)
    assert "plotly" in text.lower()
    profile = tmp_path / "profile"
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=15000",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=1400,3200"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for plot_id in PLOT_IDS:
        start = html.find(f'id="{plot_id}"')
        assert start >= 0, f"{plot_id} is missing"
        nxt = min([i for i in (html.find('id="plot-', start + 10),) if i > 0] or [len(html)])
        chunk = html[start:nxt]
        assert "main-svg" in chunk, f"{plot_id} was not drawn"
        # Drawn marks: bars, lines or points.
        assert re.search(r'class="(point|trace bars|scatterlayer|barlayer)', chunk), plot_id
    artefacts = Path(os.environ.get("HARNESS_ARTEFACTS", str(ROOT / "runs" / "artefacts")))
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / "audit-report.png"
    shot.unlink(missing_ok=True)
    r = subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                       text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    # The audit links to each run's own page, which exists.
    runs = text[text.index('<ul id="runs">'):text.index("</ul>")]
    hrefs = re.findall(r'<a href="([^"]+)"', runs)
    assert len(hrefs) == 3
    for href in hrefs:
        assert (page.parent / href).is_file(), href


def test_a_run_without_scaling_says_so_in_place_of_the_plot(tmp_path: Path) -> None:
    run = recorded_run(tmp_path, "crash-recovery", history(3, 40, kill_at=2.0), [
        claim("no-loss", "true", "ok")])
    text = (Path(run["run_dir"]) / "report.html").read_text()
    assert 'id="plot-scaling" class="empty"' in text
    assert "no linear-scaling phases" in text
    assert 'id="plot-timeline" class="empty"' not in text


def test_harness_report_rebuilds_a_page_and_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    import sys

    run = recorded_run(tmp_path, "crash-recovery", history(3, 10), [claim("no-loss", "true",
                                                                          "ok")])
    page = Path(run["run_dir"]) / "report.html"
    page.unlink()
    r = subprocess.run([sys.executable, "-m", "harness", "report", run["run_dir"]],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 0 and page.is_file(), r.stderr
    r = subprocess.run([sys.executable, "-m", "harness", "report", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 2 and "give a run directory or an audit" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_load_runs_queue_plot_renders_offline(tmp_path: Path) -> None:
    """The load file's --queue-report: depth, unacked, consumers and users drawn."""
    from harness.htmlreport import write_queue_report
    from harness.loadgen import QueueSample

    samples = [QueueSample(t_s=float(t), users=min(t, 8, 16 - t) or 1,
                           ready=max(0, 40 * t - 3 * t * t), unacked=10, consumers=3)
               for t in range(16)]
    page = write_queue_report(tmp_path / "queue.html", samples, "queue tasks under load")
    text = page.read_text()
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*(src|href)=["']?https?:""", text)
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
            "--host-resolver-rules=MAP * ~NOTFOUND"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    chunk = dom.stdout[dom.stdout.find('id="plot-queue"'):]
    assert "main-svg" in chunk and chunk.count('class="trace scatter') >= 4, chunk[:2000]


def test_an_explore_page_draws_the_minimal_schedule_on_its_timeline(tmp_path: Path) -> None:
    """``explore.html``: the examples (each linked to its run's page), the minimal
    schedule, and the timeline of its failing run with the schedule's fault (a kill)
    and the broker's consumer timeout as bands, drawn in headless Chromium."""
    from harness.htmlreport import write_explore_report

    out = tmp_path / "explore-x"
    events = history(3, 40, kill_at=2.0)
    events.append(ev(3.5, "consumer_timeout", "broker", worker="worker-2",
                     peer="127.0.0.1:5000", channel=1, timeout_ms=4000))
    run = recorded_run(out, "minimal-run", sorted(events, key=lambda e: e["t"]),
                       [claim("no-loss", "false", "2 lost")])
    plain = recorded_run(out, "plain-run", history(3, 10), [claim("no-loss", "true", "ok")])
    example = {"schedule": "kill busiest after 4 processed", "violated": ["no-loss"],
               "exit_code": 1, "faults_injected": 1, "run_dir": run["run_dir"], "error": None}
    doc = {"scenario": "retry-base", "seed": 3, "backend": "local", "faults": ["kill"],
           "max_steps": 3, "faults_injected": 1, "fault_kinds": ["kill"],
           "examples": [{**example, "schedule": "(no faults)", "violated": [], "exit_code": 0,
                         "faults_injected": 0, "run_dir": plain["run_dir"]}, example],
           "found": example, "found_after_s": 61.0,
           "shrink": {"confirmed": True, "runs_used": 4, "candidates": 6, "exhausted": False,
                      "schedule": "kill busiest after 2 processed", "steps": 1},
           "reproduces": [5, 5], "minimal_scenario": str(out / "retry-base-minimal.yaml")}
    (out / "explore.json").write_text(json.dumps(doc))
    page = write_explore_report(out, Path(run["run_dir"]))
    text = page.read_text()
    assert 'id="minimal">kill busiest after 2 processed</code>' in text
    assert "reproduces 5 of 5 fresh runs" in text
    hrefs = re.findall(r'<a href="([^"]+)"', text[text.index('id="examples"'):])
    assert len(hrefs) == 2 and all((out / h).is_file() for h in hrefs), hrefs
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1400,2000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    chunk = dom.stdout[dom.stdout.find('id="plot-timeline"'):]
    assert "main-svg" in chunk and 'class="trace bars' in chunk, chunk[:2000]
    # The bands' labels: the schedule's kill and the broker's consumer timeout.
    assert "kill worker-1" in chunk and "consumer_timeout worker-2 (broker)" in chunk
