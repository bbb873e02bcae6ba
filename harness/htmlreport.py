"""``report.html``: a run (or an audit) for a reviewer, in one self-contained file.

Plotted with plotly (plotly.js inlined once per page, so the file opens
offline: no CDN, no other file). The plots are presentations of the history
and of the checkers' evidence; none of them decides anything (the verdicts are
the claims table, copied from ``result.json``):

- ``plot-distribution``: tasks processed per worker, against the mean and the
  even-distribution bound (the checker's ``max_deviation_bound``, else its default);
- ``plot-throughput``: tasks processed per second per worker over the run;
- ``plot-scaling``: the linear-scaling curve T(N) against N*T(1), with the
  efficiency per N (from the checker's ``curve``);
- ``plot-timeline``: one lane per worker, each processing interval a bar
  (``started_ts`` to ``processed``), the injected faults as bands, redelivered
  receipts and second processings (duplicates) marked;
- ``plot-redelivery``: the latency of each redelivered receipt since the last
  fault before it.

A plot with no data in this run (no scale step, no fault) says so in place of
the plot. ``harness report RUN_DIR`` rebuilds the page from a recorded run; an
audit's page links to its runs' pages.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from harness import credentials, vocab
from harness.history import Event, History

REPORT_NAME: Final = "report.html"
THROUGHPUT_BIN_S: Final = 1.0
MAX_TIMELINE_BARS: Final = 20_000  # a browser stays responsive; more are summarised
EVIDENCE_CHARS: Final = 1500
PLOT_IDS: Final = ("plot-distribution", "plot-throughput", "plot-scaling", "plot-timeline",
                   "plot-redelivery")

_CSS: Final = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.true { color: #176117; font-weight: bold; } td.false { color: #b00020; font-weight: bold; }
td.unknown { color: #8a6d00; font-weight: bold; }
code, pre { background: #f6f6f6; padding: 2px 4px; white-space: pre-wrap; word-break: break-all; }
.empty { color: #777; font-style: italic; border: 1px dashed #ccc; padding: 1em; }
.plot { min-height: 320px; }
"""


# --------------------------------------------------------------------------- figures


def _t0(history: History) -> float:
    first = next(iter(history), None)
    return first.ts if first is not None else 0.0


def _processed(history: History) -> list[Event]:
    return [e for e in history.of_type(vocab.PROCESSED) if e.worker]


def distribution_figure(history: History, evidence: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    from harness.checkers.distribution import MAX_DEVIATION

    counts = Counter(str(e.worker) for e in _processed(history))
    if not counts:
        return None
    workers = sorted(counts)
    values = [counts[w] for w in workers]
    mean = sum(values) / len(values)
    bound = float(evidence.get("max_deviation_bound", MAX_DEVIATION))
    fig = go.Figure(go.Bar(x=workers, y=values, name="tasks processed"))
    fig.add_hline(y=mean, line_dash="dash", annotation_text=f"mean {mean:.1f}")
    fig.add_hrect(y0=mean * (1 - bound), y1=mean * (1 + bound), opacity=0.12,
                  fillcolor="green", line_width=0,
                  annotation_text=f"bound ±{bound:.0%}", annotation_position="top left")
    fig.update_layout(title="tasks per worker", xaxis_title="worker", yaxis_title="tasks")
    return fig


def throughput_figure(history: History) -> Any:
    import plotly.graph_objects as go

    t0 = _t0(history)
    bins: dict[str, Counter[int]] = defaultdict(Counter)
    for e in _processed(history):
        bins[str(e.worker)][int((e.ts - t0) // THROUGHPUT_BIN_S)] += 1
    if not bins:
        return None
    last = max(max(c) for c in bins.values())
    fig = go.Figure()
    for worker in sorted(bins):
        xs = list(range(last + 1))
        fig.add_trace(go.Scatter(x=[x * THROUGHPUT_BIN_S for x in xs],
                                 y=[bins[worker][x] / THROUGHPUT_BIN_S for x in xs],
                                 mode="lines", name=worker, line_shape="hv"))
    fig.update_layout(title="throughput per worker", xaxis_title="s since the run started",
                      yaxis_title="tasks/s")
    return fig


def scaling_figure(evidence: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    curve = [c for c in evidence.get("curve") or [] if c.get("throughput_per_s") is not None]
    t1 = next((c["throughput_per_s"] for c in curve if c.get("workers") == 1), None)
    if len(curve) < 1 or not t1:
        return None
    ns = [c["workers"] for c in curve]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=ns, y=[c["throughput_per_s"] for c in curve], mode="lines+markers+text",
        name="T(N) measured",
        text=[f"{c['efficiency']:.0%}" if c.get("efficiency") is not None else ""
              for c in curve], textposition="top center"))
    fig.add_trace(go.Scatter(x=ns, y=[n * t1 for n in ns], mode="lines", name="N·T(1)",
                             line_dash="dash"))
    fig.update_layout(title="scaling: T(N) against N·T(1) (labels: efficiency)",
                      xaxis_title="workers N", yaxis_title="tasks/s")
    return fig


def _fault_bands(history: History, t0: float) -> list[tuple[float, float, str]]:
    """(start, end, label) of each injected fault: invoke to heal, or a sliver."""
    open_at: dict[tuple[str, str], float] = {}
    bands: list[tuple[float, float, str]] = []
    end = (max((e.ts for e in history), default=t0) - t0)
    for e in history.of_type(vocab.FAULT):
        kind, target = str(e.get("fault")), str(e.get("target", ""))
        at = e.ts - t0
        if e.get("phase") == "heal":
            start = open_at.pop((kind, target), None)
            if start is not None:
                bands.append((start, at, f"{kind} {target}"))
            continue
        if e.get("phase") != "invoke" or e.get("ok") is False:
            continue
        if vocab.FAULT_KINDS.get(kind) is not None and vocab.FAULT_KINDS[kind].lasting:
            open_at[(kind, target)] = at
        else:
            bands.append((at, at + 0.15, f"{kind} {target}"))
    bands.extend((start, end, f"{kind} {target} (not healed)")
                 for (kind, target), start in open_at.items())
    # Cuts no nemesis made: the broker's consumer timeouts (its log).
    bands.extend((e.ts - t0, e.ts - t0 + 0.15, f"consumer_timeout {e.worker or '?'} (broker)")
                 for e in history.of_type(vocab.CONSUMER_TIMEOUT))
    return bands


def timeline_figure(history: History) -> Any:
    import plotly.graph_objects as go

    t0 = _t0(history)
    done = _processed(history)
    if not done:
        return None
    seen: Counter[str] = Counter()
    bars: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    duplicates: list[tuple[float, str, str]] = []
    for e in sorted(done, key=lambda e: e.ts):
        start = float(e.get("started_ts") or e.ts) - t0
        bars[str(e.worker)].append((start, max(e.ts - t0 - start, 0.005), str(e.id)))
        seen[str(e.id)] += 1
        if seen[str(e.id)] > 1:
            duplicates.append((e.ts - t0, str(e.worker), str(e.id)))
    fig = go.Figure()
    shown = 0
    for worker in sorted(bars):
        rows = bars[worker][: max(MAX_TIMELINE_BARS - shown, 0)]
        shown += len(rows)
        fig.add_trace(go.Bar(base=[r[0] for r in rows], x=[r[1] for r in rows],
                             y=[worker] * len(rows), orientation="h", name=worker,
                             hovertext=[r[2] for r in rows], opacity=0.7))
    redelivered = [e for e in history.of_type(vocab.RECEIVED)
                   if e.get("redelivered") is True and e.worker]
    if redelivered:
        fig.add_trace(go.Scatter(x=[e.ts - t0 for e in redelivered],
                                 y=[e.worker for e in redelivered], mode="markers",
                                 name="redelivered receipt", marker_symbol="triangle-right",
                                 marker_size=9, hovertext=[str(e.id) for e in redelivered]))
    if duplicates:
        fig.add_trace(go.Scatter(x=[d[0] for d in duplicates], y=[d[1] for d in duplicates],
                                 mode="markers", name="second processing",
                                 marker_symbol="x", marker_size=11, marker_color="red",
                                 hovertext=[d[2] for d in duplicates]))
    for start, end, label in _fault_bands(history, t0):
        fig.add_vrect(x0=start, x1=end, fillcolor="red", opacity=0.15, line_width=0,
                      annotation_text=label, annotation_position="top left")
    fig.update_layout(title="timeline: processing per worker, faults as bands",
                      barmode="overlay", xaxis_title="s since the run started",
                      yaxis_title="worker", showlegend=True)
    return fig


def redelivery_figure(history: History) -> Any:
    import plotly.graph_objects as go

    faults = sorted(e.ts for e in history.of_type(vocab.FAULT)
                    if e.get("phase") == "invoke" and e.get("ok") is not False)
    latencies: list[float] = []
    for e in history.of_type(vocab.RECEIVED):
        if e.get("redelivered") is not True:
            continue
        before = [f for f in faults if f <= e.ts]
        if before:
            latencies.append(e.ts - before[-1])
    if not latencies:
        return None
    fig = go.Figure(go.Histogram(x=latencies, nbinsx=min(40, max(5, len(latencies))),
                                 name="redelivered receipts"))
    fig.update_layout(title=f"redelivery latency ({len(latencies)} receipts)",
                      xaxis_title="s from the last fault to the redelivered receipt",
                      yaxis_title="receipts")
    return fig


# --------------------------------------------------------------------------- page


class _Page:
    """An HTML page whose first plot carries plotly.js inline."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self._js_included = False

    def add(self, text: str) -> None:
        self.parts.append(text)

    def plot(self, div_id: str, fig: Any, empty: str) -> None:
        if fig is None:
            self.add(f'<div id="{div_id}" class="empty">{html.escape(empty)}</div>')
            return
        import plotly.io as pio

        self.add(pio.to_html(fig, full_html=False, div_id=div_id,
                             include_plotlyjs=not self._js_included,
                             default_height="380px", config={"displaylogo": False}))
        self._js_included = True

    def write(self, path: Path) -> Path:
        body = "\n".join(self.parts)
        text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
                f"<body>\n<h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n")
        tmp = path.with_suffix(".html.tmp")
        tmp.write_text(credentials.redact(text), encoding="utf-8")
        tmp.replace(path)
        return path


def _claims_table(claims: Sequence[Mapping[str, Any]]) -> str:
    from harness.verdicts import CLAIMS

    rows = ["<table id=\"claims\"><tr><th>claim</th><th>the guide says</th>"
            "<th>guide's claim</th><th>invariant</th><th>summary</th><th>evidence</th></tr>"]
    for c in claims:
        claim = str(c.get("claim"))
        guide = CLAIMS[claim].guide if claim in CLAIMS else ""
        g = str(c.get("valid", c.get("guide_claim", "unknown")))
        inv = str(c.get("invariant", "unknown"))
        evidence = json.dumps(c.get("evidence", {}), default=str, sort_keys=True)
        rows.append(
            f"<tr><td>{html.escape(claim)}</td><td>{html.escape(guide)}</td>"
            f"<td class=\"{html.escape(g)}\">{html.escape(g)}</td>"
            f"<td class=\"{html.escape(inv)}\">{html.escape(inv)}</td>"
            f"<td>{html.escape(str(c.get('summary', c.get('evidence', ''))))}</td>"
            f"<td><code>{html.escape(evidence[:EVIDENCE_CHARS])}</code></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _evidence(result: Mapping[str, Any], claim: str) -> Mapping[str, Any]:
    for c in result.get("claims", []):
        if c.get("claim") == claim:
            ev = c.get("evidence")
            return ev if isinstance(ev, Mapping) else {}
    return {}


def _plots(page: _Page, history: History, result: Mapping[str, Any]) -> None:
    page.add("<h2>plots</h2>")
    page.plot("plot-distribution",
              distribution_figure(history, _evidence(result, "even-distribution")),
              "no task was processed")
    page.plot("plot-throughput", throughput_figure(history), "no task was processed")
    page.plot("plot-scaling", scaling_figure(_evidence(result, "linear-scaling")),
              "no scaling curve: this run has no linear-scaling phases")
    page.plot("plot-timeline", timeline_figure(history), "no task was processed")
    page.plot("plot-redelivery", redelivery_figure(history),
              "no redelivered receipt after a fault in this run")


def write_run_report(run_dir: Path, history: History | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` from its ``result.json`` and its history
    (``history``, when the caller has it in memory: a run of a million tasks
    need not be read back from disk)."""
    result = json.loads((run_dir / "result.json").read_text())
    history_path = run_dir / "history.jsonl"
    if history is None:
        history = History.load(history_path) if history_path.is_file() else History()
    page = _Page(f"{result.get('scenario', run_dir.name)}: {result.get('verdict', '?')}")
    page.add(f"<p>seed <code>{html.escape(str(result.get('seed')))}</code>, backend "
             f"<code>{html.escape(str(result.get('backend')))}</code>, exit code "
             f"<code>{html.escape(str(result.get('exit_code')))}</code>, started "
             f"{html.escape(str(result.get('started_at', '')))}</p>")
    page.add(f"<p>rerun: <code id=\"rerun\">{html.escape(str(result.get('rerun', '')))}"
             "</code></p>")
    for p in result.get("problems") or []:
        page.add(f"<p class=\"unknown\">run problem: {html.escape(str(p))}</p>")
    page.add("<h2>claims</h2>")
    page.add(_claims_table(result.get("claims", [])))
    _plots(page, history, result)
    return page.write(run_dir / REPORT_NAME)


def write_run_report_or_say(run_dir: Path, console: Any,
                            history: History | None = None) -> None:
    """``report.html`` of a run just judged: a presentation, so a failure to draw
    it is said and changes no verdict."""
    try:
        path = write_run_report(run_dir, history)
    except Exception as exc:  # noqa: BLE001 - the verdict stands without its pictures
        console.print(f"[yellow]report.html not written: {type(exc).__name__}: {exc}[/yellow]")
        return
    console.print(f"report: {path}")


def _merged(histories: Iterable[tuple[str, History, Mapping[str, Any]]],
            want: str) -> tuple[History, Mapping[str, Any]] | None:
    for _name, history, result in histories:
        if any(c.get("claim") == want for c in result.get("claims", [])):
            return history, result
    return None


def write_audit_report(path: Path, audit: Mapping[str, Any]) -> Path:
    """Write the audit's page beside its JSON: the claim rows, a link to each
    run's page, and the plots of the runs that show each best (the balance run's
    distribution, the scaling run's curve, the crash run's timeline)."""
    page = _Page(f"guide audit: {audit.get('verdict', '?')}")
    page.add(f"<p>backend <code>{html.escape(str(audit.get('backend')))}</code>, gate "
             f"<code>{html.escape(', '.join(audit.get('gate', [])))}</code>, "
             f"{html.escape(str(audit.get('elapsed_s')))} s</p>")
    page.add("<h2>claims</h2><table id=\"claims\"><tr><th>claim</th><th>the guide says</th>"
             "<th>verdict</th><th>invariant</th><th>evidence</th><th>why</th></tr>")
    for r in audit.get("claims", []):
        inv = str(r.get("invariant"))
        page.add(f"<tr><td>{html.escape(str(r.get('claim')))}</td>"
                 f"<td>{html.escape(str(r.get('guide')))}</td>"
                 f"<td>{html.escape(str(r.get('verdict')))}</td>"
                 f"<td class=\"{html.escape(inv)}\">{html.escape(inv)}</td>"
                 f"<td>{html.escape(str(r.get('evidence')))}</td>"
                 f"<td>{html.escape(str(r.get('why')))}</td></tr>")
    page.add("</table><h2>runs</h2><ul id=\"runs\">")
    loaded: list[tuple[str, History, Mapping[str, Any]]] = []
    for run in audit.get("runs", []):
        run_dir = Path(str(run.get("run_dir")))
        report = run_dir / REPORT_NAME
        try:
            href = report.relative_to(path.parent).as_posix()
        except ValueError:
            href = report.resolve().as_uri()
        page.add(f"<li><a href=\"{html.escape(href)}\">{html.escape(str(run.get('scenario')))}"
                 f"</a> exit {html.escape(str(run.get('exit_code')))}, seed "
                 f"<code>{html.escape(str(run.get('seed')))}</code>, rerun "
                 f"<code>{html.escape(str(run.get('rerun')))}</code></li>")
        with_history = run_dir / "history.jsonl"
        result_path = run_dir / "result.json"
        if with_history.is_file() and result_path.is_file():
            loaded.append((str(run.get("scenario")), History.load(with_history),
                           json.loads(result_path.read_text())))
    page.add("</ul><h2>plots</h2>")
    dist = _merged(loaded, "even-distribution")
    scale = _merged(loaded, "linear-scaling")
    crash = _merged(loaded, "redelivery-after-crash")
    page.plot("plot-distribution",
              distribution_figure(dist[0], _evidence(dist[1], "even-distribution"))
              if dist else None, "no run judged even-distribution")
    page.plot("plot-throughput", throughput_figure(scale[0]) if scale else None,
              "no run judged linear-scaling")
    page.plot("plot-scaling", scaling_figure(_evidence(scale[1], "linear-scaling"))
              if scale else None, "no run judged linear-scaling")
    page.plot("plot-timeline", timeline_figure(crash[0]) if crash else None,
              "no run judged redelivery-after-crash")
    page.plot("plot-redelivery", redelivery_figure(crash[0]) if crash else None,
              "no run judged redelivery-after-crash")
    return page.write(path)


def queue_figure(samples: Sequence[Any]) -> Any:
    """A load run's queue over time (``loadgen.QueueSample``): ready and unacked
    messages, and on a second axis the consumers and the Locust users; None with no
    sample."""
    if not samples:
        return None
    import plotly.graph_objects as go

    t = [s.t_s for s in samples]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=[s.ready for s in samples], name="ready (queue depth)",
                             mode="lines"))
    fig.add_trace(go.Scatter(x=t, y=[s.unacked for s in samples], name="unacked",
                             mode="lines"))
    fig.add_trace(go.Scatter(x=t, y=[s.consumers for s in samples], name="consumers",
                             mode="lines", line_shape="hv", yaxis="y2"))
    fig.add_trace(go.Scatter(x=t, y=[s.users for s in samples], name="Locust users",
                             mode="lines", line_shape="hv", line_dash="dot", yaxis="y2"))
    fig.update_layout(title="the queue under load", xaxis_title="s since the test started",
                      yaxis_title="messages",
                      yaxis2={"title": "consumers, users", "overlaying": "y", "side": "right",
                              "rangemode": "tozero"})
    return fig


def write_queue_report(path: Path, samples: Sequence[Any], title: str) -> Path:
    """One page with the queue over time (``queue_figure``), offline (plotly inline)."""
    page = _Page(title)
    page.plot("plot-queue", queue_figure(samples), "no sample of the queue was taken")
    return page.write(path)


EXPLORE_REPORT_NAME: Final = "explore.html"


def write_explore_report(out_root: Path, timeline_run: Path | None) -> Path:
    """``explore.html`` in a search's directory, from its ``explore.json``: the
    examples run (each linked to its run's report), the failure found and its minimal
    schedule, with the timeline of a failing run of that schedule (``timeline_run``:
    the minimal's, else the found one's), the schedule's faults as bands on it."""
    doc = json.loads((out_root / "explore.json").read_text(encoding="utf-8"))
    page = _Page(f"explore {doc.get('scenario', '?')}")
    page.add(f"<p>seed <code>{html.escape(str(doc.get('seed')))}</code>, backend "
             f"<code>{html.escape(str(doc.get('backend')))}</code>, faults "
             f"<code>{html.escape(','.join(doc.get('faults') or []))}</code>, at most "
             f"{html.escape(str(doc.get('max_steps')))} step(s); "
             f"{len(doc.get('examples') or [])} example(s), "
             f"{html.escape(str(doc.get('faults_injected')))} fault(s) injected "
             f"({html.escape(', '.join(doc.get('fault_kinds') or []) or 'none')})</p>")
    found, shrink = doc.get("found"), doc.get("shrink") or {}
    page.add("<h2 id=\"result\">result</h2>")
    if found is None:
        page.add(f"<p class=\"true\">no violation in {len(doc.get('examples') or [])} "
                 "example(s)</p>")
    else:
        page.add(f"<p class=\"false\">violated: {html.escape(', '.join(found['violated']))} by "
                 f"<code>{html.escape(found['schedule'])}</code> (after "
                 f"{html.escape(str(doc.get('found_after_s')))} s of search)</p>")
        if shrink.get("confirmed"):
            rate = doc.get("reproduces")
            page.add(f"<p>minimal schedule (<span id=\"minimal-steps\">{shrink['steps']}"
                     f"</span> step(s), {shrink['runs_used']} shrink runs): "
                     f"<code id=\"minimal\">{html.escape(str(shrink['schedule']))}</code>"
                     + (f"; reproduces {rate[0]} of {rate[1]} fresh runs" if rate else "")
                     + f"; scenario <code>{html.escape(str(doc.get('minimal_scenario')))}"
                     "</code></p>")
        else:
            page.add("<p class=\"unknown\">not confirmed: the schedule found did not fail in "
                     "most of its runs (or the budget ended first)</p>")
    history = (History.load(timeline_run / "history.jsonl")
               if timeline_run is not None and (timeline_run / "history.jsonl").is_file()
               else None)
    page.plot("plot-timeline", timeline_figure(history) if history is not None else None,
              "no failing run to draw")
    rows = ["<table id=\"examples\"><tr><th>#</th><th>verdict</th><th>schedule</th>"
            "<th>violated</th><th>faults</th><th>run</th></tr>"]
    for i, ex in enumerate(doc.get("examples") or [], 1):
        word = ("FAIL" if ex.get("violated") else "PASS" if ex.get("exit_code") == 0
                else "ERROR" if ex.get("error") else "UNKNOWN")
        run = ex.get("run_dir")
        link = (f"<a href=\"{html.escape(os.path.relpath(Path(run) / REPORT_NAME, out_root))}\">"
                f"{html.escape(Path(run).name)}</a>" if run else html.escape(ex.get("error") or ""))
        rows.append(f"<tr><td>{i}</td><td class=\"{'false' if word == 'FAIL' else 'true'}\">"
                    f"{word}</td><td><code>{html.escape(str(ex.get('schedule')))}</code></td>"
                    f"<td>{html.escape(', '.join(ex.get('violated') or []))}</td>"
                    f"<td>{html.escape(str(ex.get('faults_injected')))}</td><td>{link}</td></tr>")
    rows.append("</table>")
    page.add("<h2>examples</h2>")
    page.add("\n".join(rows))
    return page.write(out_root / EXPLORE_REPORT_NAME)
