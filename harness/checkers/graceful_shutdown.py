"""graceful-shutdown: HPA "scales back to 5 pods" (SIGTERM on a busy worker).

Terminations: ``terminate`` faults (invoke, ok) on worker W at ts, and ``scale``
faults that list the workers they terminated (data ``terminated``: names).

In flight at ts: the ids W received (since its connection was last cut before
ts by an injected fault, a broker fault or an exit: ``Index.last_cut_before``;
a worker's own ``connection_lost`` does not shrink the set), that no worker
received again before ts, and that W had not settled (ack, retry, dead-letter,
ack_failed) before ts.
Each in-flight id must end one of two ways:

- finished: W reports ``processed`` of it after the receipt and then settles it
  (``acked``) before its exit, and the broker never hands it out again; or,
  for a task the harness asked to fail (``facts.asked_to_fail``) or to fail
  transiently (``fail_times``), W settles it as a failure (``dead_lettered``,
  ``retry_scheduled``, a retry ack);
- requeued: another worker (or W's next incarnation) receives it after ts and
  processes it there (or, asked to fail, it ends in the DLQ).

A task W dead-letters on SIGTERM that nobody asked to fail was neither
finished nor requeued: lost.

Which facts come from the worker, and why they are safe: ``received``,
``processed`` and the settlements. Receipts only add work that must be
accounted for; a settlement counts as finishing only together with a
``processed`` of W after the receipt (or a failure the harness asked for); the
exit (code, time) is the harness's own observation.

Violations: an in-flight id acked by W as processed without a ``processed``
event of W after its receipt (the sigterm-acks-inflight bug: acking unfinished
work loses it), an id neither finished nor requeued (lost), and W's exit: it
must exit (``worker_exited``) within ``grace_s`` + ``slack_s`` (default 5 s:
the docker stop path and the exit's recording) with code 0, not be killed
after the grace period. The exit rule is checked even when W held nothing.

Evidence: in_flight, finished_and_acked, requeued_and_completed, exit_after_s
per termination. Unknown: no termination, no ``received`` events, or nothing
in flight at any termination (nothing to show), or ids still queued after an
incomplete drain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import ClaimResult, first, unknown
from harness.history import Event, History

CLAIM: Final = "graceful-shutdown"
SLACK_S: Final = 5.0
GRACE_S: Final = 10.0


def terminations(idx: ix.Index) -> list[tuple[str, float, str]]:
    """(worker, ts, how) of every requested termination, sorted by ts."""
    out: list[tuple[str, float, str]] = []
    for ev in idx.faults:
        if not ix.is_fault_invoke(ev):
            continue
        name = ev.get("fault")
        if name == "terminate":
            target = ix.fault_target(ev)
            if target not in (None, "broker", "cluster"):
                out.append((str(target), ev.ts, "fault:terminate"))
        elif name == "scale":
            for w in ev.get("terminated") or ():
                out.append((str(w), ev.ts, "scale"))
    out.sort(key=lambda x: x[1])
    return out


def _settled_by(idx: ix.Index, ident: str, worker: str) -> list[Event]:
    out = [e for e in idx.acked_final.of(ident) if e.worker == worker]
    for per in (idx.acked_retry, idx.dead_lettered, idx.retry_scheduled, idx.ack_failed):
        out.extend(e for e in per.all(ident) if e.worker == worker)
    out.sort(key=lambda e: e.ts)
    return out


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    terms = terminations(idx)
    if not terms:
        return unknown(CLAIM, "no worker was terminated (SIGTERM): nothing to shut down")
    if idx.count("received") == 0:
        return unknown(CLAIM, "the worker reports no received events: in-flight tasks unknown",
                       terminations=len(terms))
    grace_s = facts.as_float(idx.setting(params, "grace_s"), GRACE_S) or GRACE_S
    slack_s = float(params.get("slack_s", SLACK_S))
    exits = facts.events_by_worker(idx.worker_exited)
    end = facts.horizon(history)
    dlq = idx.final.ids["dlq"]
    asked = facts.asked_to_fail(idx, params)

    per_term: list[dict[str, Any]] = []
    acked_unfinished: set[str] = set()
    lost: set[str] = set()
    pending: set[str] = set()
    exit_problems: list[str] = []
    total = finished_n = requeued_n = 0
    for w, ts, how in terms:
        exit_ev = next((e for e in exits.get(w, ()) if e.ts >= ts - 0.5), None)
        exit_ts = exit_ev.ts if exit_ev is not None else float("inf")
        lo = idx.last_cut_before(w, ts)
        latest: dict[str, float] = {}
        for r in idx.received.lists.get(w, ()):
            if r.id is not None and lo <= r.ts < ts:
                latest[r.id] = r.ts
        row: dict[str, Any] = {"worker": w, "ts": ts, "how": how}
        in_flight = []
        for ident, r_ts in latest.items():
            if idx.superseded(ident, r_ts, ts):
                continue  # handed out again before ts: W's delivery had ended
            if not any(r_ts <= e.ts < ts for e in _settled_by(idx, ident, w)):
                in_flight.append(ident)
        finished: list[str] = []
        requeued: list[str] = []
        for ident in in_flight:
            r_ts = latest[ident]
            settles = [e for e in _settled_by(idx, ident, w) if r_ts <= e.ts <= exit_ts]
            procs = [e.ts for e in idx.processed.of(ident) if e.worker == w and e.ts >= r_ts]
            acks = [e for e in settles if e.type == "acked" and e.get("reason") != "retry"]
            if acks and not any(p <= acks[0].ts for p in procs):
                acked_unfinished.add(ident)
                continue
            failing = ident in asked or ident in idx.fail_directives
            # An ack the broker took ends the message: handed out again after it,
            # the ack did not take (a closed channel) and W did not finish it.
            acked_ok = bool(acks) and not idx.superseded(ident, acks[0].ts, float("inf"))
            if (acked_ok and procs) or (failing and any(e.type != "ack_failed" for e in settles)):
                finished.append(ident)
                continue
            # No ack on record (a worker that does not report acks): W processed it
            # before its exit, the broker never handed it out again and no queue
            # holds it, so the ack reached the broker. The broker's evidence, with
            # the worker's ``processed``; a worker that reports acks is held to them.
            if (failing and ident in dlq and ident in asked and not settles
                    and not any(r.ts > r_ts for r in idx.received.of(ident))):
                finished.append(ident)  # dead-lettered as asked, without a report
                continue
            done_by_w = [p for p in procs if p <= exit_ts]
            if (done_by_w and not settles and idx.count("acked") == 0
                    and not any(r.ts > min(done_by_w) for r in idx.received.of(ident))
                    and ident not in idx.final.remaining and ident not in dlq):
                finished.append(ident)
                continue
            again = [r for r in idx.received.of(ident) if r.ts >= ts - 0.5 and r.ts > r_ts
                     and (r.worker != w or r.ts > exit_ts)]
            if again:
                t0 = min(r.ts for r in again)
                done = (ident in dlq and ident in asked) or any(
                    e.ts >= t0 and (e.worker != w or e.ts > exit_ts)
                    for e in idx.processed.of(ident))
                if done:
                    requeued.append(ident)
                    continue
            if ident in idx.final.remaining and idx.drain_complete is not True:
                pending.add(ident)
            else:
                lost.add(ident)
        total += len(in_flight)
        finished_n += len(finished)
        requeued_n += len(requeued)
        row.update(in_flight=len(in_flight), finished_and_acked=len(finished),
                   requeued_and_completed=len(requeued))
        if exit_ev is None:
            row["exit"] = "no exit recorded"
            if end >= ts + grace_s + slack_s:
                exit_problems.append(f"{w} did not exit within {grace_s + slack_s:g} s")
        else:
            after = exit_ev.ts - ts
            code = exit_ev.get("code")
            row.update(exit_after_s=round(after, 3), exit_code=code,
                       exit_signal=exit_ev.get("signal"))
            if after > grace_s + slack_s:
                exit_problems.append(f"{w} exited {after:.1f} s after SIGTERM "
                                     f"(grace {grace_s:g} s)")
            elif (code is not None and code != 0) or exit_ev.get("signal"):
                exit_problems.append(f"{w} exited with code {code} (signal "
                                     f"{exit_ev.get('signal')}): killed, not a clean exit")
        per_term.append(row)

    evidence: dict[str, Any] = {
        "terminations": len(terms), "in_flight": total, "finished_and_acked": finished_n,
        "requeued_and_completed": requeued_n, "acked_unfinished": len(acked_unfinished),
        "lost": len(lost), "pending": len(pending), "grace_s": grace_s, "slack_s": slack_s,
        "per_termination": per_term[:20],
    }
    if acked_unfinished or lost or exit_problems:
        parts = []
        if acked_unfinished:
            parts.append(f"{len(acked_unfinished)} in-flight task(s) acked without being "
                         "processed (acked on SIGTERM, work lost)")
        if lost:
            parts.append(f"{len(lost)} in-flight task(s) neither finished nor requeued")
        parts.extend(exit_problems)
        return ClaimResult(CLAIM, False, "; ".join(parts), {
            **evidence, "acked_unfinished_ids": first(acked_unfinished),
            "lost_ids": first(lost), "exit_problems": exit_problems})
    if total == 0:
        return unknown(CLAIM, f"{len(terms)} termination(s), but the worker(s) held nothing in "
                       "flight: nothing to show", **evidence)
    if pending:
        return unknown(CLAIM, f"{len(pending)} in-flight task(s) still queued after an "
                       "incomplete drain", **evidence, pending_ids=first(pending))
    exits_s = [r["exit_after_s"] for r in per_term if "exit_after_s" in r]
    return ClaimResult(
        CLAIM, True,
        f"{total} task(s) in flight at {len(terms)} SIGTERM(s): {finished_n} finished and "
        f"acked, {requeued_n} requeued and completed; clean exit within "
        f"{max(exits_s, default=0):.1f} s", evidence)
