"""A broker the harness does not own is left as it was: a scratch vhost per run.

On a broker given with ``--broker-url`` every run happens in a vhost of its own,
``rmq-harness-<run id>``, that the harness creates through the management API,
grants to its user, and deletes at the end (also on failure and on Ctrl-C).
The run's queues live there; the harness never consumes from, purges, deletes
or declares anything in a vhost it did not create.

Leftovers (a harness killed with SIGKILL, a CI runner that vanished) are found
by their lease, never guessed from a name: the vhost's description holds the
owner (host, pid, run id), the start time and the lease's end, renewed every
``LEASE_RENEW_S`` while the run lives. A later run removes a vhost only when its
lease has expired *and* no connection is open in it, so two CI jobs sharing a
broker never remove each other's live vhost.

Without the right to create vhosts, the user names a vhost dedicated to the
harness (``--vhost``): the run refuses to start, listing them, when it holds a
queue the scenario does not declare or one of the scenario's queues that
already holds messages (they would be consumed as the run's and read out at
the end), and at the end it deletes only the queues the scenario declared.

Written by hand: the management API calls are a handful of REST requests
(``BrokerAdmin.request``); no maintained client library adds leases on top.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass, replace
from typing import Any, Final

from harness import credentials, vocab
from harness.broker import BrokerAdmin, amqp_display, parse_broker_url
from harness.cluster.base import EXTERNAL_READY_TIMEOUT_S, BrokerEndpoint, ClusterError
from harness.history import Recorder
from harness.model import Scenario

VHOST_PREFIX: Final = "rmq-harness-"
LEASE_TAG: Final = "rmq-harness-lease"
LEASE_S: Final = 120.0  # how long a lease holds without renewal
LEASE_RENEW_S: Final = 20.0  # renewed this often while the run lives
# A sweep removes at most this many leftovers per run (a broker with thousands
# of expired vhosts is cleaned over several runs, each start staying bounded).
SWEEP_MAX: Final = 20
DELETE_ATTEMPTS: Final = 3
NAME_MAX: Final = 63


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    run_id: str
    started: float
    lease_end: float

    def description(self) -> str:
        return json.dumps({LEASE_TAG: 1, "host": self.host, "pid": self.pid,
                           "run_id": self.run_id, "started": round(self.started, 3),
                           "lease_end": round(self.lease_end, 3)}, separators=(",", ":"))


def parse_lease(description: Any) -> Lease | None:
    """The lease in a vhost's description, or None when it holds none (a vhost
    the harness did not make, whatever its name)."""
    if not isinstance(description, str):
        return None
    try:
        obj = json.loads(description)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get(LEASE_TAG) != 1:
        return None
    try:
        return Lease(str(obj["host"]), int(obj["pid"]), str(obj["run_id"]),
                     float(obj["started"]), float(obj["lease_end"]))
    except (KeyError, TypeError, ValueError):
        return None


def vhost_name(run_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_id)
    return (VHOST_PREFIX + safe)[:NAME_MAX]


def with_vhost(ep: BrokerEndpoint, vhost: str) -> BrokerEndpoint:
    """The same broker and user, in ``vhost``."""
    p = urllib.parse.urlsplit(ep.amqp_url)
    url = urllib.parse.urlunsplit((p.scheme, p.netloc, "/" + urllib.parse.quote(vhost, safe=""),
                                   p.query, ""))
    return replace(ep, amqp_url=url, vhost=vhost)


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _cannot(what: str, exc: BaseException, ep: BrokerEndpoint) -> str:
    if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403):
        return (f"broker {amqp_display(ep.amqp_url)}: user {ep.user!r} may not {what} "
                f"(HTTP {exc.code}); give it the administrator tag, or pass --vhost NAME "
                "with a vhost dedicated to the harness")
    return f"broker {amqp_display(ep.amqp_url)}: cannot {what}: {exc}"


def sweep(admin: BrokerAdmin, now: float | None = None, limit: int = SWEEP_MAX) -> list[str]:
    """Delete leftover scratch vhosts: a lease of the harness's that expired more
    than one more lease ago (in the broker's clock, ``BrokerAdmin.server_time``),
    and no connection open in the vhost. Returns the names removed."""
    if now is None:
        now = admin.server_time() or time.time()
    try:
        vhosts = admin.request("GET", "/api/vhosts?columns=name,description,metadata")
    except (urllib.error.URLError, OSError, ValueError):
        return []  # best effort: a sweep never fails a run
    removed: list[str] = []
    for v in vhosts if isinstance(vhosts, list) else []:
        if len(removed) >= limit:
            break
        if not isinstance(v, dict):
            continue
        name = str(v.get("name", ""))
        meta = v.get("metadata") if isinstance(v.get("metadata"), dict) else {}
        lease = parse_lease(v.get("description") or (meta or {}).get("description"))
        # A full lease more than its end: a renewal late by a few seconds, or a
        # clock that differs, never costs a live run its vhost.
        if not name.startswith(VHOST_PREFIX) or lease is None or lease.lease_end + LEASE_S >= now:
            continue
        try:
            conns = admin.request("GET", f"/api/vhosts/{_q(name)}/connections")
            if conns:
                continue  # someone still works there, whatever the lease says
            admin.request("DELETE", f"/api/vhosts/{_q(name)}")
            removed.append(name)
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return removed


class ScratchVhost:
    """The run's own vhost on a broker it does not own (see the module doc)."""

    def __init__(self, base: BrokerEndpoint, run_id: str) -> None:
        self.base = base
        self.run_id = run_id
        self.name = vhost_name(run_id)
        self.admin = BrokerAdmin(base)
        self.started = time.time()
        self.swept: list[str] = []
        self.endpoint: BrokerEndpoint | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.renew_errors = 0
        self.lost = ""  # why the vhost can no longer be trusted, once it cannot

    def _lease(self) -> Lease:
        now = self.admin.server_time() or time.time()
        return Lease(socket.gethostname(), os.getpid(), self.run_id, self.started,
                     now + LEASE_S)

    def _put(self) -> None:
        self.admin.request("PUT", f"/api/vhosts/{_q(self.name)}",
                           {"description": self._lease().description(), "tags": LEASE_TAG})

    def _exists(self) -> bool:
        try:
            self.admin.request("GET", f"/api/vhosts/{_q(self.name)}")
            return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def open(self) -> BrokerEndpoint:
        """Sweep expired leftovers, create the vhost with a lease, grant it to the
        harness's user, start renewing the lease. ClusterError (one line) when the
        user may not."""
        self.swept = sweep(self.admin)
        try:
            existing = self.admin.request("GET", f"/api/vhosts/{_q(self.name)}")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise ClusterError(_cannot("read vhosts", e, self.base)) from None
            existing = None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ClusterError(_cannot("read vhosts", e, self.base)) from None
        if existing is not None:
            # Run ids are unique per host and process; a vhost of this name is not ours.
            raise ClusterError(f"broker {amqp_display(self.base.amqp_url)}: vhost {self.name} "
                               "already exists; it is not this run's and is left alone")
        try:
            self._put()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ClusterError(_cannot("create a vhost", e, self.base)) from None
        try:
            self.admin.request("PUT", f"/api/permissions/{_q(self.name)}/{_q(self.base.user)}",
                               {"configure": ".*", "write": ".*", "read": ".*"})
        except (urllib.error.URLError, OSError, ValueError) as e:
            self.close()
            raise ClusterError(_cannot("grant itself the scratch vhost", e, self.base)) from None
        self._renewer = threading.Thread(target=self._renew, name="vhost-lease", daemon=True)
        self._renewer.start()
        self.endpoint = with_vhost(self.base, self.name)
        return self.endpoint

    def _renew(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                # Renew only what is still there: a blind PUT would recreate an
                # empty vhost someone deleted, and the run would judge nothing.
                if not self._exists():
                    self.lost = "deleted during the run by someone else"
                    return
                self._put()
                last_ok = time.monotonic()
            except (urllib.error.URLError, OSError, ValueError):
                self.renew_errors += 1  # the next renewal tries again; the lease has margin
                if time.monotonic() - last_ok > LEASE_S / 2 and not self.lost:
                    self.lost = (f"its lease could not be renewed for over {LEASE_S / 2:g} s "
                                 "(another run may have removed it as a leftover)")

    def close(self) -> str | None:
        """Stop renewing and delete the vhost (and everything in it); bounded. Returns
        a problem (one line) when it could not be deleted: its lease then expires
        and a later run sweeps it."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            if not self.lost and not self._exists():
                self.lost = "deleted during the run by someone else"
        last: BaseException | None = None
        for attempt in range(DELETE_ATTEMPTS):
            try:
                self.admin.request("DELETE", f"/api/vhosts/{_q(self.name)}")
                if self.lost:
                    return (f"scratch vhost {self.name}: {self.lost}; what the run saw after "
                            "that cannot be judged")
                return None
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return (f"scratch vhost {self.name}: {self.lost}; what the run saw after "
                            "that cannot be judged") if self.lost else None
                last = e
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
            time.sleep(0.5 * (attempt + 1))
        return (f"could not delete scratch vhost {self.name} ({last}); its lease ends within "
                f"{LEASE_S:g} s and a later run removes it")


class DedicatedVhost:
    """A vhost the user dedicated to the harness (``--vhost``): checked, never
    created or deleted; only the scenario's own queues are touched."""

    def __init__(self, base: BrokerEndpoint, vhost: str) -> None:
        if vhost == "/":
            raise ClusterError("--vhost /: the default vhost is where a broker's own work "
                               "lives; dedicate a vhost of its own to the harness")
        self.name = vhost
        self.endpoint = with_vhost(base, vhost)
        self.admin = BrokerAdmin(self.endpoint)
        self.existing: set[str] = set()  # the scenario's queues there before the run

    def open(self, own: tuple[str, ...], own_prefix: str | None) -> BrokerEndpoint:
        """Refuse (ClusterError listing them) when the vhost holds a queue the
        scenario does not declare, or one of its queues with messages in it."""
        try:
            queues = self.admin.request(
                "GET", f"/api/queues/{_q(self.name)}?columns=name,messages,consumers")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise ClusterError(f"--vhost {self.name}: no such vhost on "
                                   f"{amqp_display(self.endpoint.amqp_url)}") from None
            raise ClusterError(_cannot(f"list the queues of vhost {self.name}", e,
                                       self.endpoint)) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ClusterError(_cannot(f"list the queues of vhost {self.name}", e,
                                       self.endpoint)) from None
        foreign, busy = [], []
        for q in queues if isinstance(queues, list) else []:
            name = str(q.get("name", "")) if isinstance(q, dict) else ""
            if _owned(name, own, own_prefix):
                if isinstance(q, dict) and int(q.get("messages") or 0) > 0:
                    busy.append(f"{name} ({q.get('messages')} messages)")
                elif isinstance(q, dict) and int(q.get("consumers") or 0) > 0:
                    busy.append(f"{name} ({q.get('consumers')} consumers: someone works there)")
                else:
                    self.existing.add(name)
            else:
                foreign.append(name)
        if foreign or busy:
            listed = ", ".join(sorted(foreign) + sorted(busy))
            raise ClusterError(f"--vhost {self.name} is not dedicated to the harness: it holds "
                               f"{listed}; give the harness an empty vhost of its own")
        return self.endpoint

    def close(self, own: tuple[str, ...], own_prefix: str | None) -> str | None:
        """Delete the scenario's queues (its main queue, DLQ, retry queues) that
        this run created; those that were there before stay."""
        try:
            queues = self.admin.request("GET", f"/api/queues/{_q(self.name)}?columns=name")
            names = [str(q.get("name", "")) for q in queues if isinstance(q, dict)]
            for name in names:
                if _owned(name, own, own_prefix) and name not in self.existing:
                    self.admin.request("DELETE", f"/api/queues/{_q(self.name)}/{_q(name)}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"could not delete the run's queues in vhost {self.name}: {e}"
        return None




def open_run_vhost(broker_url: str, vhost: str | None, scenario: Scenario, run_id: str,
                   recorder: Recorder) -> tuple[ScratchVhost | DedicatedVhost, BrokerEndpoint]:
    """The run's own vhost on a broker given with ``--broker-url``: a scratch vhost
    with a lease, or the ``--vhost`` the user dedicated (checked); never ``/``.
    Registers the password with the redactor first. ClusterError (one line)."""
    try:
        base = parse_broker_url(broker_url, os.environ.get("HARNESS_MANAGEMENT_URL"))
    except ValueError as e:
        raise ClusterError(f"{e}; fix --broker-url") from None
    credentials.register(base.password, base.user)
    # The management API only: the URL's own vhost (``/`` by default) may be one
    # the user has no rights on; AMQP is checked inside the run's vhost.
    BrokerAdmin(base).wait_ready(EXTERNAL_READY_TIMEOUT_S, amqp=False)
    c = scenario.cluster
    if vhost:
        dedicated = DedicatedVhost(base, vhost)
        ep = dedicated.open((c.queue, c.dlq), c.retry_prefix)
        recorder.record(vocab.VHOST, "harness", name=dedicated.name, scratch=False)
        return dedicated, ep
    scratch = ScratchVhost(base, run_id)
    ep = scratch.open()
    recorder.record(vocab.VHOST, "harness", name=scratch.name, scratch=True, lease_s=LEASE_S,
                    swept=scratch.swept)
    return scratch, ep


def close_run_vhost(vhost: ScratchVhost | DedicatedVhost, scenario: Scenario) -> str | None:
    """Delete the scratch vhost, or the dedicated vhost's run queues; a problem or None."""
    c = scenario.cluster
    if isinstance(vhost, ScratchVhost):
        return vhost.close()
    return vhost.close((c.queue, c.dlq), c.retry_prefix)


def _owned(name: str, own: tuple[str, ...], prefix: str | None) -> bool:
    """Is ``name`` one of the scenario's queues (by name, or a retry queue's prefix)?"""
    return name in own or (prefix is not None and name.startswith(prefix))
