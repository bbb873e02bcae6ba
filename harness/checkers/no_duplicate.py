"""no-duplicate-processing: the guide's "No duplicates!" / "exactly ONE pod".

RabbitMQ delivers at least once, so a correct worker does process a task twice
when it loses its connection after the side effect and before the ack. The
guide's words are therefore false as soon as any task is processed twice, and
this checker says so (valid False); but it separates:

- *explained* duplicates: the worker of the previous processing (or the broker)
  had a connection fault between that processing's start and the next
  processing's start; or, by delivery order, the worker that received the id
  first had one between the two receipts (a paused zombie may start its stale
  copy after the redelivered one); or one of the two copies is *stale*: its
  worker received it on a connection that an injected fault had already hit,
  its ack then failed, and the other copy was received after that fault (see
  ``_stale_copy_fault``). A paused worker reads, once resumed, deliveries that
  sat in its socket buffer; the broker had requeued them when the connection
  died, so the receipt's logged time says nothing about the delivery order.
  Reported in ``ClaimResult.explained``, with the fault;
- *unexplained* duplicates: no such fault. These break the release invariant.

A copy delivered with ``redelivered`` false that is not the original publish's
first delivery (``facts.fresh_receipts``) is a second message, a republish: a fault
alone does not explain it, only its lineage does (``facts.lineage_fault``: the
retry republish of a delivery an injected fault then hit before its ack). A
pair whose later copy is that republish itself redelivered (``redelivered``, the
same attempt) is a redelivery, and its fault explains it as any other.

Three things no fault explains, whatever happened around the pair: two
processings of different attempts (a correct worker does no side effect of an
attempt that fails, and a fault redelivers an attempt, it never makes one); a
later copy received before the cut that would explain it was issued (the cut
cannot have handed it out, whatever its ``redelivered`` flag says; a worker's
clock gets ``facts.RECEIPT_CLOCK_SLACK_S``); and a later copy that may descend from a
second message of its attempt without a lineage, even when no receipt of the pair
is that message's first delivery (it was cut off before it ran and came back).

A cut of a worker explains no copy that worker had acked before the cut was issued
(``ACK_READ_LAG_S`` before; a broker fault still does: a killed broker may hand an
acked message out again), and two processings of one delivery are never explained.
A "second message" is a first delivery of an attempt after that attempt's earliest:
the earliest first delivery of attempt k > 1 is the retry a failure made.

Only injected faults explain (``index.ConnFault.injected``): nemesis faults,
broker faults, exits the harness asked for, and a crash after a delivery with a
``crash`` directive; for an ``after_process`` crash that no exit shows (a pool's
child process died, not the worker), the directive itself explains the id's
second processing, and only that one (``_own_crash``). A worker's own
``connection_lost``, a channel the broker closed because of the worker (an ack of
an unknown delivery tag gives 406 and redelivers all the channel held), or an exit
nobody asked for explain nothing.

Which facts come from the worker, and why they are safe: ``processed`` (the
side effect; two of one id are a duplicate, whoever reports them) and its
``attempt`` (two different ones only take an explanation away), ``received``
(delivery order; a receipt before a cut only takes the cut's explanation away)
and ``ack_failed`` (only together with an injected fault that hit that very
connection, for the stale-copy rule). A receipt of a ``crash_always`` task makes
that worker's next exit the crash the harness asked for only when the task's
receipts form the chain a crash loop makes (each after the previous holder's exit,
the harness's record; no more than the delivery limit allows, exactly that many
when the DLQ holds it: the broker's word), so a made-up receipt excuses no exit.
A consumer timeout is the broker's log and the harness's sightings of whose peer
address it was, never the worker's; it explains no copy its worker had processed
more than ``ACK_READ_LAG_S`` before the close, nor one it acked before it (the
broker times out only what was left unacked). It does explain a copy the worker
received up to ``index.CLOSE_IN_FLIGHT_S`` after the close's log line (the
worker's receipt time: a delivery sent just before the close arrives after it);
a worker whose own bug duplicates a task received within that second after the
broker closed its channel passes as the close's. Known and left: a worker that reports every
receipt as ``redelivered`` and republishes what it processed is caught only when
the copy's receipt precedes the cut (by more than the slack); within the slack,
its lie can pass as the cut's redelivery.

``evidence["invariant_holds"]`` is True when no duplicate is unexplained, so an
audit can gate a release on the invariant rather than on the guide's wording.
A processing's start is its ``started_ts``, else the worker's latest receipt of
the id before it, else the ``processed`` ts. Which receipt a processing came from
is the worker's secret, so two pairings are tried, and a pair is judged by the
one that explains it: the latest receipt before each start of the same process (``_own_clamp``),
and each processing anchored to a receipt of its own, in arrival order, of the
same process and attempt, a failed attempt taking one too (``_anchored_starts``).
The second is what a copy redelivered to the same worker while its first copy
still runs needs (seen on docker: the first copy would take the redelivery's
receipt, after the cut). Neither lets two processings share one receipt or take a
receipt of a killed process, so a worker that processes one delivery twice stays
unexplained; one that dropped an earlier delivery of its own and processed a later
one twice is taken for the correct worker it cannot be told from (as many
processings as deliveries, the extra delivery the fault's). Unknown when nothing
was processed.
Read from an event preset in a run where a worker process died
(``UNSEEN_PROCESSINGS``), a processing may have left no line: a duplicate the lines
show is judged as always, and no duplicate seen is unknown and not observable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, Final

from harness import vocab
from harness.checkers import facts
from harness.checkers import index as ix
from harness.checkers.base import OBSERVABLE, ClaimResult, first, unknown
from harness.history import Event, History

CLAIM: Final = "no-duplicate-processing"
# A reason, set by ``checkers.check_all`` from the run's event preset when a worker
# process died (``harness.presets``): a processing may have left no line, so the
# lines' single processings prove nothing. A duplicate the lines do show is still
# judged (false); what would be true is unknown and not observable.
UNSEEN_PROCESSINGS: Final = "unseen_processings"


def _bounds(idx: ix.Index) -> dict[str | None, list[float]]:
    """worker -> the ts of each start and exit of its process (the harness's record)."""
    out: dict[str | None, list[float]] = {}
    for e in (*idx.worker_started, *idx.worker_exited):
        out.setdefault(ix.worker_of(e), []).append(e.ts)
    return out


def _own_clamp(idx: ix.Index, bounds: list[float], recs: list[Event], e: Event
               ) -> tuple[float, Event | None]:
    """(start, receipt) of the processing ``e`` by the latest receipt of the id by the
    same process (no start or exit of the worker between): ``facts.start_ts``'s
    clamp, but never to a receipt of a process that had died, so a process that
    runs a task it never received (a replay of a journal) does not take its
    predecessor's receipt, and its start is not before its own process began."""
    found: Event | None = None
    for r in recs:
        if r.ts > e.ts:
            break
        if r.worker == e.worker and not any(r.ts < b <= e.ts for b in bounds):
            found = r
    st = facts.as_float(e.get("started_ts"))
    if found is not None:
        return (min(max(st, found.ts), e.ts) if st is not None else found.ts), found
    if st is None:
        return e.ts, None
    began = max((b for b in bounds if b <= e.ts), default=float("-inf"))
    return min(max(st, began, facts.start_floor(idx, e)), e.ts), None


# (start, processed ts, worker, its receipt, the ``processed`` event)
Run = tuple[float, float, str | None, Event | None, Event]


def _anchored_starts(idx: ix.Index, bounds_of: dict[str | None, list[float]],
                     processings: list[Event], rec_events: list[Event],
                     failures: list[Event]) -> list[Run]:
    """(start, processed ts, worker, its receipt) of each processing of one id,
    sorted by start.

    ``facts.start_ts`` clamps a reported ``started_ts`` to the worker's latest
    receipt before the ``processed`` event. When a fault cut the worker's
    connection and the broker redelivered the id to the same worker while its first
    copy still ran (or waited in its pool), that latest receipt is the redelivery's,
    and two processings would share it. So each processing, in the order they
    started, is anchored to the earliest receipt of the worker's not yet taken, at
    or before its start (else before its end): a worker's pool takes deliveries in
    the order they came. A receipt can anchor a processing only

    - of the same process: no start or exit of the worker (the harness's record)
      between the receipt and the processing's start. A delivery of a killed
      process is never processed by its successor;
    - of the same attempt (both events carry it);
    - once: a ``failed`` attempt takes its receipt too, in the same order.

    Without such a receipt the clamp of ``_own_clamp`` stands, so two
    processings off one receipt keep one start. A worker can thus only pair each
    processing with a delivery of its own process, as many processings as
    deliveries, as a correct worker does; the pair is then explained only by a
    fault between the two receipts."""
    taken: set[int] = set()
    out: list[Run] = []

    def began(e: Event) -> float:
        st = facts.as_float(e.get("started_ts"))
        return min(st, e.ts) if st is not None else e.ts

    def fits(r: Event, e: Event, start: float) -> bool:
        ra, ea = r.get("attempt"), e.get("attempt")
        if isinstance(ra, int) and isinstance(ea, int) and ra != ea:
            return False
        return not any(r.ts < b <= start for b in bounds_of.get(e.worker, ()))

    failed_ids = {id(f) for f in failures}
    for e in sorted([*processings, *failures], key=lambda e: (began(e), e.ts)):
        start0 = began(e)
        free = [i for i, r in enumerate(rec_events)
                if r.worker == e.worker and r.ts <= e.ts and i not in taken
                and fits(r, e, start0)]
        st = facts.as_float(e.get("started_ts"))
        chosen = [i for i in free if st is not None and rec_events[i].ts <= st] or free
        anchor = min(chosen, key=lambda i: rec_events[i].ts) if chosen else None
        if anchor is not None:
            taken.add(anchor)
        if id(e) in failed_ids:
            continue  # a failed attempt: it takes a receipt, it is not a processing
        if anchor is None:
            start, receipt = _own_clamp(idx, bounds_of.get(e.worker, []), rec_events, e)
            out.append((start, e.ts, e.worker, receipt, e))
            continue
        lo = rec_events[anchor].ts
        out.append((min(max(st, lo), e.ts) if st is not None else lo, e.ts, e.worker,
                    rec_events[anchor], e))
    return sorted(out, key=lambda r: (r[0], r[1]))


def _over_ts(idx: ix.Index, f: ix.ConnFault) -> float:
    """When ``f`` stopped holding its worker: its heal (a pause resumed, a partition
    lifted), else when it had taken effect."""
    done = max(f.ts, f.end)
    name = f.kind.removeprefix("fault:")
    if f.worker is None or name == f.kind:
        return done
    heals = [e.ts for e in idx.faults
             if e.get("phase") == "heal" and e.get("fault") == name
             and ix.fault_target(e) == f.worker and e.ts >= f.ts]
    return min(heals, default=done)


def _stale_copy_fault(idx: ix.Index, ident: str, worker: str | None,
                      recs: list[tuple[float, str | None]], receipt: float | None,
                      other_receipt: float | None,
                      published_ts: float | None = None) -> ix.ConnFault | None:
    """The injected fault that made ``worker``'s copy of ``ident`` stale, if it is.

    Stale means: the worker received the copy on a connection (since its latest
    ``ready``) that a harness fault hit before the receipt was logged, the ack of
    this very copy failed (``ack_failed`` after the receipt, before the worker's
    next receipt of the id), and the other copy was received after the fault:
    the broker has one delivery of a message out at a time, so the other copy
    can only be the requeue of this one. A duplicate whose other copy came
    first was caused by that copy's worker, not by this fault. And the message was
    published before the fault was over (``_over_ts``): one published after cannot
    have waited in the socket the fault froze or cut (the harness's own record).
    Faults the worker reports itself (``connection_lost``, exits) do not count
    here, and without a ``ready`` on record the connection's start is unknown.
    """
    if receipt is None or other_receipt is None or worker is None:
        return None
    since = max((e.ts for e in idx.ready if ix.worker_of(e) == worker and e.ts <= receipt),
                default=None)
    if since is None:
        return None
    next_receipt = min((ts for ts, w in recs if w == worker and ts > receipt),
                       default=float("inf"))
    if not any(ix.worker_of(e) == worker and receipt <= e.ts < next_receipt
               for e in idx.ack_failed.all(ident)):
        return None
    faults: list[ix.ConnFault] = [*idx.conn_faults.get(worker, []), *idx.broker_faults]
    for f in faults:
        injected = f.kind.startswith(ix.ISSUED_PREFIXES)
        if (injected and f.ts <= receipt and max(f.ts, f.end) >= since
                and other_receipt >= f.ts
                and (published_ts is None or published_ts <= _over_ts(idx, f))):
            return f
    return None


def _own_crash(idx: ix.Index, ident: str, worker: str | None, start: float,
               receipt: Event | None, again: Event | None) -> ix.ConnFault | None:
    """The task's own ``after_process`` crash, when no exit of the worker shows it.

    A worker whose pool runs tasks in child processes (Celery's prefork) loses only
    the child to a crash: the harness sees no exit, yet the directive it published
    ended the first processing after its side effect and before its ack, and the
    framework may requeue that delivery (``task_reject_on_worker_lost``). That
    explains one more processing of that id, the second, and nothing else: the
    directive fires on a first delivery only, the harness chose the id, and a copy
    that is a second message is still judged by its lineage. Only for a worker
    whose user says it honours directives, and only when the second processing is
    of a later delivery (``again``, received after ``receipt``) that is not
    reported as a first delivery, with no ack of the first delivery by its worker
    in between: two processings off one delivery, or after an ack, are the
    worker's own doing. The receipts and their ``redelivered`` flags are the
    worker's word; a worker that misreports them can only lose this excuse (it
    needs a first delivery and a redelivery both reported), or claim a
    redelivery of the one id the harness chose to crash."""
    if idx.crash_directives.get(ident) != "after_process":
        return None
    if not idx.capabilities.get("directives"):
        return None
    if receipt is None or again is None or again.ts <= receipt.ts:
        return None
    if receipt.get("redelivered") is True:
        return None  # not the first delivery: the directive did not fire on it
    if again.get("redelivered") is False:
        return None  # a fresh message, not the crashed delivery requeued
    if any(a.worker == worker and receipt.ts <= a.ts <= again.ts
           for a in idx.acked_final.of(ident)):
        return None
    return ix.ConnFault(start, "crash:after_process", worker)


# An ack is logged once its frame is in the socket; the broker's reader takes it from
# there within milliseconds, and a connection reset (a kill, a close) drops what the
# broker had not read yet. An ack logged this long before a fault was issued was read.
ACK_READ_LAG_S: Final = 0.25


def _acked_before(idx: ix.Index, ident: str, worker: str | None, receipt: float | None,
                  fault: ix.ConnFault) -> bool:
    """Did ``worker`` ack its copy (received at ``receipt``) before ``fault`` was
    issued (``ACK_READ_LAG_S`` before)? That ack reached the broker, so the fault
    requeued nothing of it and explains no later copy. A broker fault is left out:
    a broker killed before it wrote an ack down may hand the message out again.
    The ack is the worker's word; it can only take an explanation away."""
    if receipt is None or worker is None or fault.kind.startswith("broker:"):
        return False
    return any(a.worker == worker and receipt <= a.ts < fault.ts - ACK_READ_LAG_S
               for a in idx.acked_final.of(ident))


# How a summary names a kind of cut a reader might take for an injected fault.
KIND_WORDS: Final = {ix.CONSUMER_TIMEOUT_KIND: "the broker's consumer_timeout (its log)"}


def _held_processed(idx: ix.Index, ident: str, worker: str | None, receipt: float | None,
                    fault: ix.ConnFault) -> bool:
    """Did ``worker`` hold its copy (received at ``receipt``) processed but unacked
    for longer than ``ACK_READ_LAG_S`` before a consumer timeout closed its channel?
    The broker times a channel out only for a delivery left unacked that long, so
    a copy processed well before the close was the worker's to ack: the close is
    its own doing and explains no later copy (the "processed, never acked" bug
    would otherwise bring its own excuse). Only for ``CONSUMER_TIMEOUT_KIND``."""
    if fault.kind != ix.CONSUMER_TIMEOUT_KIND or receipt is None or worker is None:
        return False
    return any(p.worker == worker and receipt <= p.ts < fault.ts - ACK_READ_LAG_S
               for p in idx.processed.of(ident))


def _second_messages(rec_events: list[Event], attempt: int) -> list[Event]:
    """The first deliveries (``redelivered`` false) of ``attempt`` after its
    earliest: each the first delivery of one more message of that attempt."""
    firsts = [e for e in rec_events
              if e.get("redelivered") is False and facts.attempt_of(e) == attempt]
    return sorted(firsts, key=lambda e: e.ts)[1:]


def _judge(idx: ix.Index, ident: str, runs: list[Run], rec_events: list[Event],
           published_ts: float | None = None
           ) -> list[tuple[dict[str, Any], ix.ConnFault | None]]:
    """Each consecutive pair of processings of ``ident`` (``runs``, by start) with
    the injected fault that explains it, or None."""
    recs = [(e.ts, e.worker) for e in rec_events]
    # The second messages: a first delivery of an attempt after that attempt's
    # earliest (the earliest of attempt k > 1 is the retry a failure made, no copy).
    fresh = [g for a in sorted({facts.attempt_of(e) for e in rec_events})
             for g in _second_messages(rec_events, a)]
    out: list[tuple[dict[str, Any], ix.ConnFault | None]] = []
    for n, ((s1, _p1, w1, e1, q1), (s2, p2, w2, e2, q2)) in enumerate(pairwise(runs)):
        r1 = e1.ts if e1 is not None else None
        r2 = e2.ts if e2 is not None else None
        fault = idx.connection_fault(w1, s1, s2)
        if fault is not None and r2 is not None and r2 < fault.ts - facts.redelivery_slack_s(fault):
            # The later copy was received before the cut: the cut did not hand it
            # out, whatever the worker says of its ``redelivered`` flag.
            fault = None
        if fault is not None and (_acked_before(idx, ident, w1, r1, fault)
                                  or _held_processed(idx, ident, w1, r1, fault)):
            fault = None
        if fault is None:
            fault = idx.crash_span(w1, r1, r2)
        if fault is None and n == 0:
            fault = _own_crash(idx, ident, w1, s1, e1, e2)
        if fault is None:
            # By delivery order: a zombie (paused, cut off) may start its copy
            # after the redelivered one; what explains the pair is a fault of
            # whichever worker received the id first, between the two receipts.
            if r1 is not None and r2 is not None:
                (ra, wa), (rb, _wb) = sorted(((r1, w1), (r2, w2)))
                fault = idx.connection_fault(wa, ra, rb)
                if fault is not None and (_acked_before(idx, ident, wa, ra, fault)
                                          or _held_processed(idx, ident, wa, ra, fault)):
                    fault = None
            if fault is None:
                fault = (_stale_copy_fault(idx, ident, w2, recs, r2, r1, published_ts)
                         or _stale_copy_fault(idx, ident, w1, recs, r1, r2, published_ts))
        # A copy that is a second message is explained by its lineage, and only
        # by it (of two such copies, the later one's). Not when the later copy is
        # that very message redelivered: the same attempt, ``redelivered``, after a
        # cut of the first copy's worker that still held it (no ack of it by that
        # worker before the cut took effect), and no other fresh copy of that
        # attempt between the two (a second republish could be what came back).
        # Then the pair is a redelivery, and its cut explains it.
        copies = [c for c in (e1, e2) if c is not None and any(c is f for f in fresh)]
        if (copies and copies[-1] is e1 and e2 is not None and e2.ts > e1.ts
                and e2.get("redelivered") is True and facts.attempt_of(e2) == facts.attempt_of(e1)):
            cut = idx.connection_fault(w1, e1.ts, e2.ts)
            acked = cut is not None and any(
                a.worker == w1 and e1.ts <= a.ts <= max(cut.ts, cut.end)
                for a in idx.acked_final.of(ident))
            other = any(f is not e1 and e1.ts < f.ts < e2.ts
                        and facts.attempt_of(f) == facts.attempt_of(e1) for f in fresh)
            if cut is not None and not acked and not other:
                copies = []
        if copies:
            fault = facts.lineage_fault(idx, ident, max(copies, key=lambda e: e.ts), rec_events)
        if fault is not None and e2 is not None:
            # The later copy may descend from a second message of its attempt that
            # none of the pair's receipts is (its first delivery cut off before it
            # ran): that message's existence needs its lineage too.
            for g in _second_messages(rec_events, facts.attempt_of(e2)):
                if g is not e1 and g is not e2 and g.ts <= e2.ts and (
                        facts.lineage_fault(idx, ident, g, rec_events) is None):
                    fault = None
                    break
        if e1 is not None and e1 is e2:
            # Both processings off one delivery (no receipt of its own for the
            # second in either pairing): the worker's doing, whatever fault is near.
            fault = None
        if (facts.reported_attempt(q1) and facts.reported_attempt(q2)
                and q1.get("attempt") != q2.get("attempt")):
            # Two attempts both processed: a correct worker does no side effect of
            # an attempt that fails, and a fault redelivers an attempt, it never
            # makes another. No fault explains it (the attempts are the worker's
            # word, and they can only take an explanation away).
            fault = None
        item: dict[str, Any] = {"first_worker": w1, "first_start_ts": s1,
                                "again_worker": w2, "again_start_ts": s2,
                                "again_processed_ts": p2}
        out.append((item, fault))
    return out


def check(history: History, params: Mapping[str, Any]) -> ClaimResult:
    idx = ix.get(history)
    n_ids = idx.count_where(lambda v: bool(v & ix.PROC))
    if n_ids == 0:
        return unknown(CLAIM, "nothing was processed", processed=0,
                       unexplained=0, invariant_holds=None)

    explained: dict[str, list[dict[str, Any]]] = {}
    unexplained: dict[str, list[dict[str, Any]]] = {}
    extra = extra_explained = extra_unexplained = 0
    dups = idx.processed_twice
    bounds = _bounds(idx)
    # The events of the duplicated ids, gathered in one pass each.
    processings = idx.processed.events(dups)
    receipts = idx.received.events(dups)
    # The harness's own publish of each (its first; a republish is the worker's).
    published: dict[str, float] = {}
    if dups:
        for e in history.of_type(vocab.PUBLISH):
            if e.id is not None and e.id in dups and e.id not in published:
                published[e.id] = e.ts
    for ident in dups:
        rec_events = sorted(receipts.get(ident, ()), key=lambda e: e.ts)
        # Two pairings of processings with receipts: each its own receipt in arrival
        # order (``_anchored_starts``), and the latest receipt before each start
        # (``_own_clamp``). Without a reported start neither is sure to be the
        # worker's, so a pair is judged under the one that explains more: a false
        # explanation needs one that a pairing of the worker's own receipts allows.
        anchored = _anchored_starts(idx, bounds, processings[ident], rec_events,
                                    list(idx.failed.all(ident)))
        found = _judge(idx, ident, anchored, rec_events, published.get(ident))
        if any(fault is None for _, fault in found):
            clamped = sorted(((st, e.ts, e.worker, receipt, e)
                              for e in processings[ident]
                              for st, receipt in (_own_clamp(idx, bounds.get(e.worker, []),
                                                             rec_events, e),)),
                             key=lambda r: (r[0], r[1]))
            other = _judge(idx, ident, clamped, rec_events, published.get(ident))
            if (sum(f is None for _, f in other) < sum(f is None for _, f in found)):
                found = other
        for item, fault in found:
            extra += 1
            if fault is not None:
                extra_explained += 1
                item["explained_by"] = fault.describe()
                explained.setdefault(ident, []).append(item)
            else:
                extra_unexplained += 1
                unexplained.setdefault(ident, []).append(item)

    n_dup = len(dups)
    # An id with one unexplained extra processing is unexplained as a whole.
    explained_only = {i: v for i, v in explained.items() if i not in unexplained}
    evidence: dict[str, Any] = {
        "processed_ids": n_ids,
        "processed_events": len(idx.processed),
        "duplicated_ids": n_dup,
        "extra_processings": extra,
        "explained_processings": extra_explained,
        "unexplained_processings": extra_unexplained,
        "explained": len(explained_only),
        "unexplained": len(unexplained),
        "invariant_holds": not unexplained,
    }
    # What explained them, by kind: a reader must see a broker's consumer_timeout
    # as such, not as a fault the harness injected.
    kinds = Counter(str(item["explained_by"]["fault"]) for items in explained_only.values()
                    for item in items)
    if kinds:
        evidence["explained_by_kind"] = dict(sorted(kinds.items()))
    expl: dict[str, Any] = {}
    if explained_only:
        ids = first(explained_only)
        expl = {"count": len(explained_only), "ids": ids,
                "by": {i: explained_only[i] for i in ids}}
    if unexplained:
        ids = first(unexplained)
        return ClaimResult(
            CLAIM, False,
            f"{len(unexplained)} task(s) processed more than once with no connection fault "
            f"to explain it (invariant violated); {len(explained_only)} more explained by faults",
            {**evidence, "unexplained_ids": ids, "detail": {i: unexplained[i] for i in ids}},
            expl,
        )
    if explained_only:
        return ClaimResult(
            CLAIM, False,
            f"the guide's 'no duplicates' is false as worded: {len(explained_only)} task(s) "
            "processed more than once, each explained by a connection fault "
            f"({', '.join(f'{n} by {KIND_WORDS.get(k, k)}' for k, n in sorted(kinds.items()))}; "
            "at-least-once invariant holds)",
            evidence, expl,
        )
    if params.get(UNSEEN_PROCESSINGS):
        # A processing may have left no line: the lines' single processings prove
        # nothing (a duplicate they do show is judged above, as always).
        return unknown(CLAIM, str(params[UNSEEN_PROCESSINGS]), **evidence,
                       **{OBSERVABLE: False})
    return ClaimResult(CLAIM, True, f"all {n_ids} processed task(s) processed exactly once",
                       evidence)
