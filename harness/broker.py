"""What the harness observes of the broker: AMQP (pika) and the management HTTP API.

``BrokerAdmin`` is the harness's own client, apart from the workers'. Every call
is bounded in time (and, where it reads messages, in count); failures to reach
the broker raise ``ClusterError`` with a one-line message.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pika
import pika.exceptions

from harness.cluster.base import BrokerEndpoint, ClusterError

UNPARSEABLE = "<unparseable>"

# pika logs every failed connection attempt at ERROR, with a traceback; the harness
# reports those failures itself (ClusterError), so pika stays quiet unless someone
# set its level before importing this module.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class QueueInfo:
    """A queue as the management API reports it (statistics lag by ~0.5 s)."""

    name: str
    messages: int
    ready: int
    unacked: int
    consumers: int
    durable: bool = True
    type: str = "classic"
    # Counts since the queue was declared (``message_stats``; 0 where the
    # management API has none yet, and in ``list_queues``, which skips them).
    published: int = 0
    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    has_message_stats: bool = False  # False: the counters above are not known yet


class ConnectionInfo(NamedTuple):
    """One client connection: who it is and how many deliveries it holds unacked."""

    name: str  # client_properties.connection_name ("" when the client set none)
    peer_host: str
    peer_port: int
    unacked: int
    mgmt_name: str  # the management API's name: "127.0.0.1:41234 -> 127.0.0.1:5672"


def amqp_display(url: str) -> str:
    """``amqp://host:port`` without credentials, for messages."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or "localhost"
    port = p.port or (5671 if p.scheme == "amqps" else 5672)
    return f"{p.scheme or 'amqp'}://{host}:{port}"


def _one_line(text: object) -> str:
    s = " ".join(str(text).split())
    return s[:300] if s else "no detail"


def _exc_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"management API answered HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"management API: {_one_line(exc.reason)}"
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "AMQP login refused (wrong user or password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "AMQP access refused (vhost missing or no permission)"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        detail = _one_line(repr(exc.args[0]) if exc.args else type(exc).__name__)
        return f"AMQP connection failed: {detail}"
    return f"{type(exc).__name__}: {_one_line(exc)}"


class BrokerAdmin:
    """The harness's observer of one broker. Thread-safe (one lock, short calls)."""

    def __init__(self, endpoint: BrokerEndpoint, call_timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.call_timeout_s = call_timeout_s
        self._lock = threading.RLock()
        self._conn: Any = None  # pika.BlockingConnection, reused for passive declares
        auth = f"{endpoint.user}:{endpoint.password}".encode()
        self._auth_header = "Basic " + base64.b64encode(auth).decode("ascii")
        self._vhost_q = urllib.parse.quote(endpoint.vhost, safe="")

    # -- plumbing --------------------------------------------------------------
    def _params(self, timeout_s: float) -> pika.URLParameters:
        p = pika.URLParameters(self.endpoint.amqp_url)
        t = max(0.5, timeout_s)
        p.socket_timeout = t
        p.stack_timeout = t
        p.blocked_connection_timeout = t
        p.connection_attempts = 1
        p.retry_delay = 0
        p.heartbeat = 30
        p.client_properties = {"connection_name": "harness-admin"}
        return p

    def _connect(self, timeout_s: float | None = None) -> Any:
        return pika.BlockingConnection(self._params(timeout_s or self.call_timeout_s))

    def _http(self, path: str, timeout_s: float | None = None) -> Any:
        url = self.endpoint.management_url.rstrip("/") + path
        req = urllib.request.Request(url, headers={"Authorization": self._auth_header})
        with urllib.request.urlopen(req, timeout=timeout_s or self.call_timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def request(self, method: str, path: str, body: Any = None,
                timeout_s: float | None = None) -> Any:
        """One management API call; its JSON answer (None when it has no body).
        Raises ``urllib.error.HTTPError`` / ``URLError`` / ``OSError`` as they come
        (the callers know which codes they expect)."""
        url = self.endpoint.management_url.rstrip("/") + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Authorization": self._auth_header}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s or self.call_timeout_s) as resp:
            raw = resp.read()
        return json.loads(raw.decode("utf-8")) if raw.strip() else None

    def _http_or_none(self, path: str) -> Any:
        """GET ``path``; None on 404; ClusterError on anything else that fails."""
        try:
            return self._http(path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise ClusterError(self._fail("management API call failed", e)) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ClusterError(self._fail("management API call failed", e)) from None

    def _fail(self, what: str, exc: BaseException) -> str:
        return (f"{what} at {self.endpoint.management_url} "
                f"({amqp_display(self.endpoint.amqp_url)}): {_exc_reason(exc)}")

    # -- readiness -------------------------------------------------------------
    def server_time(self) -> float | None:
        """The broker host's clock (the management API's HTTP ``Date``), or None.
        Leases are written and judged in it, so two CI hosts whose clocks differ
        never see each other's lease as expired early."""
        url = self.endpoint.management_url.rstrip("/") + "/api/overview"
        req = urllib.request.Request(url, method="HEAD",
                                     headers={"Authorization": self._auth_header})
        try:
            with urllib.request.urlopen(req, timeout=self.call_timeout_s) as resp:
                date = resp.headers.get("Date")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        try:
            return email.utils.parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            return None

    def probe(self, timeout_s: float = 3.0, amqp: bool = True) -> str | None:
        """One attempt: None when AMQP opens (unless ``amqp`` is False) and the
        management API answers, else why not."""
        try:
            if amqp:
                conn = self._connect(timeout_s)
                with contextlib.suppress(Exception):
                    conn.close()
        except Exception as e:
            return _exc_reason(e)
        try:
            self._http("/api/overview", timeout_s)
        except Exception as e:
            return _exc_reason(e)
        return None

    def wait_ready(self, timeout_s: float = 15.0, hint: str | None = None,
                   amqp: bool = True) -> float:
        """Wait until the broker answers on AMQP and HTTP; returns the seconds waited.

        Raises ClusterError after ``timeout_s`` (the last attempt is cut short so the
        total stays within it).
        """
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        reason = "no attempt made"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reason = self.probe(min(3.0, max(0.5, left)), amqp=amqp) or ""
            if not reason:
                return time.monotonic() - t0
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.5, left))
        fix = hint or "start RabbitMQ or fix --broker-url"
        raise ClusterError(
            f"broker at {amqp_display(self.endpoint.amqp_url)} not reachable after "
            f"{timeout_s:g} s: {reason}; {fix}"
        )

    # -- management API observations ------------------------------------------
    def semantics(self, queues: Sequence[str]) -> dict[str, Any]:
        """The broker's semantics as observed through the management API: what a
        rerun elsewhere must match to test the same broker. Versions from
        ``/api/overview``; per queue its type, arguments, policy, operator policy
        and effective policy, and what follows from them: the delivery limit,
        the dead-letter strategy and the consumer timeout (a queue argument or a
        policy key; else the broker's default, which the API does not show).
        Read-only; a queue that does not exist is ``null``. ClusterError when the
        API does not answer."""
        overview = self._http_or_none("/api/overview")
        if not isinstance(overview, dict):
            raise ClusterError("the management API gave no /api/overview")
        out: dict[str, Any] = {
            "rabbitmq_version": overview.get("rabbitmq_version"),
            "erlang_version": overview.get("erlang_version"),
            "product": overview.get("product_name"),
            "queues": {},
        }
        for name in queues:
            q = urllib.parse.quote(name, safe="")
            obj = self._http_or_none(f"/api/queues/{self._vhost_q}/{q}")
            out["queues"][name] = _queue_semantics(obj) if isinstance(obj, dict) else None
        return out

    def queue_info(self, name: str) -> QueueInfo | None:
        """Counts of one queue, or None if it does not exist."""
        q = urllib.parse.quote(name, safe="")
        obj = self._http_or_none(f"/api/queues/{self._vhost_q}/{q}")
        return _queue_info(obj) if isinstance(obj, dict) else None

    def list_queues(self, prefix: str = "") -> list[QueueInfo]:
        """Queues of the vhost whose names start with ``prefix``, sorted by name."""
        cols = "name,messages,messages_ready,messages_unacknowledged,consumers,durable,type"
        obj = self._http_or_none(f"/api/queues/{self._vhost_q}?columns={cols}")
        if not isinstance(obj, list):
            return []
        out = [_queue_info(o) for o in obj
               if isinstance(o, dict) and str(o.get("name", "")).startswith(prefix)]
        return sorted(out, key=lambda q: q.name)

    def connections(self) -> list[ConnectionInfo]:
        """Client connections with the unacked deliveries summed over their channels."""
        conns = self._http_or_none("/api/connections?columns=name,client_properties,"
                                   "peer_host,peer_port,vhost")
        chans = self._http_or_none("/api/channels?columns=connection_details,"
                                   "messages_unacknowledged")
        unacked: dict[str, int] = {}
        for ch in chans if isinstance(chans, list) else []:
            if not isinstance(ch, dict):
                continue
            details = ch.get("connection_details") or {}
            cname = str(details.get("name", "")) if isinstance(details, dict) else ""
            unacked[cname] = unacked.get(cname, 0) + _int(ch.get("messages_unacknowledged"))
        out: list[ConnectionInfo] = []
        for c in conns if isinstance(conns, list) else []:
            if not isinstance(c, dict):
                continue
            props = c.get("client_properties") or {}
            label = props.get("connection_name", "") if isinstance(props, dict) else ""
            mname = str(c.get("name", ""))
            out.append(ConnectionInfo(
                name=str(label or ""),
                peer_host=str(c.get("peer_host", "")),
                peer_port=_int(c.get("peer_port")),
                unacked=unacked.get(mname, 0),
                mgmt_name=mname,
            ))
        return out

    def tracked_connections(self) -> list[ConnectionInfo]:
        """Every client connection as the broker's connection tracking has it, at once
        (``disable_stats=true``): the plain listing comes from the statistics database,
        which lists a new connection only seconds later (about 4 s here, with a 500 ms
        statistics interval), so a close-connections of a worker that just reconnected
        waited that long. Peer host and port are read from the connection's name
        ("10.0.0.7:41234 -> 10.0.0.2:5672"); no stats, so ``unacked`` is 0."""
        conns = self._http_or_none("/api/connections?disable_stats=true&columns=name")
        out: list[ConnectionInfo] = []
        for c in conns if isinstance(conns, list) else []:
            mname = str(c.get("name", "")) if isinstance(c, dict) else ""
            peer = mname.partition(" -> ")[0]
            host, _, port = peer.rpartition(":")
            if not host or not port.isdigit():
                continue
            out.append(ConnectionInfo(name="", peer_host=host.strip("[]"), peer_port=int(port),
                                      unacked=0, mgmt_name=mname))
        return out

    def connection_names(self, vhost: str) -> list[tuple[str, str]] | None:
        """(management API name, client-given connection_name) of every connection
        to ``vhost``; None when the API does not answer."""
        q = urllib.parse.quote(vhost, safe="")
        conns = self._http_or_none(f"/api/vhosts/{q}/connections?columns=name,"
                                   "client_properties")
        if not isinstance(conns, list):
            return None
        out: list[tuple[str, str]] = []
        for c in conns:
            if not isinstance(c, dict):
                continue
            props = c.get("client_properties") or {}
            label = props.get("connection_name", "") if isinstance(props, dict) else ""
            out.append((str(c.get("name", "")), str(label or "")))
        return out

    def close_connection(self, mgmt_name: str, reason: str) -> None:
        """Have the broker close one client connection (its management API name)."""
        q = urllib.parse.quote(mgmt_name, safe="")
        # Looked up in the connection tracking first (``disable_stats``: a connection
        # the statistics database does not list yet is found), then as before.
        for query in ("?disable_stats=true", ""):
            url = self.endpoint.management_url.rstrip("/") + f"/api/connections/{q}{query}"
            req = urllib.request.Request(url, method="DELETE", headers={
                "Authorization": self._auth_header, "X-Reason": reason})
            try:
                with urllib.request.urlopen(req, timeout=self.call_timeout_s):
                    return
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise ClusterError(self._fail(f"closing connection {mgmt_name}", e)) from None
            except (urllib.error.URLError, OSError) as e:
                raise ClusterError(self._fail(f"closing connection {mgmt_name}", e)) from None
        # 404 both ways: already gone (closed is closed; the caller checks the broker's
        # list afterwards).

    # -- AMQP observations -----------------------------------------------------
    def passive_depth(self, name: str) -> int | None:
        """Ready messages of the queue (passive declare), or None if it does not exist."""
        with self._lock:
            for attempt in range(2):
                try:
                    if self._conn is None or not self._conn.is_open:
                        self._conn = self._connect()
                    ch = self._conn.channel()
                    try:
                        ok = ch.queue_declare(queue=name, passive=True)
                        return int(ok.method.message_count)
                    finally:
                        if ch.is_open:
                            ch.close()
                except pika.exceptions.ChannelClosedByBroker as e:
                    if e.reply_code == 404:
                        return None
                    raise ClusterError(self._fail(f"passive declare of {name!r} failed", e)
                                       ) from None
                except (pika.exceptions.AMQPError, OSError) as e:
                    self._drop_conn()
                    if attempt == 1:
                        raise ClusterError(self._fail(f"passive declare of {name!r} failed", e)
                                           ) from None
        return None  # pragma: no cover

    def drain_ids(self, queue: str, limit: int = 100_000, timeout_s: float = 60.0,
                  reasons: dict[str, str] | None = None) -> list[str]:
        """Destructively read up to ``limit`` messages of ``queue``; return their ids.

        The id is the ``message_id`` property, else the ``id`` of a JSON body, else
        ``"<unparseable>"``. Stops when the queue is empty, at ``limit``, or after
        ``timeout_s``. A queue that does not exist gives []. Messages are acked in
        batches, so at most one batch can come back on a connection failure.
        ``reasons``, if given, gets id -> the broker's reason for the latest
        dead-lettering (``x-death``: ``rejected``, ``expired``, ``maxlen``,
        ``delivery_limit``) of each message that carries one.
        """
        ids: list[str] = []
        deadline = time.monotonic() + timeout_s
        try:
            conn = self._connect()
        except Exception as e:
            raise ClusterError(self._fail(f"cannot drain queue {queue!r}", e)) from None
        try:
            ch = conn.channel()
            last_tag = 0
            while len(ids) < limit and time.monotonic() < deadline:
                method, props, body = ch.basic_get(queue=queue, auto_ack=False)
                if method is None:
                    break
                ids.append(_message_id(props, body))
                if reasons is not None and (why := _death_reason(props)) is not None:
                    reasons[ids[-1]] = why
                last_tag = method.delivery_tag
                if len(ids) % 500 == 0:
                    ch.basic_ack(delivery_tag=last_tag, multiple=True)
                    last_tag = 0
            if last_tag:
                ch.basic_ack(delivery_tag=last_tag, multiple=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise ClusterError(self._fail(f"draining queue {queue!r} failed", e)) from None
        except (pika.exceptions.AMQPError, OSError) as e:
            raise ClusterError(self._fail(f"draining queue {queue!r} failed", e)) from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return ids

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop_conn()


def _death_reason(props: Any) -> str | None:
    """The reason of the newest ``x-death`` entry (the broker's, first in the list)."""
    headers = getattr(props, "headers", None) or {}
    deaths = headers.get("x-death") if isinstance(headers, dict) else None
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    why = deaths[0].get("reason")
    if isinstance(why, bytes):
        why = why.decode("utf-8", errors="replace")
    return why if isinstance(why, str) else None


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | float) else 0


def _queue_info(o: dict[str, Any]) -> QueueInfo:
    raw = o.get("message_stats")
    stats = raw if isinstance(raw, dict) else {}
    return QueueInfo(
        name=str(o.get("name", "")),
        messages=_int(o.get("messages")),
        ready=_int(o.get("messages_ready")),
        unacked=_int(o.get("messages_unacknowledged")),
        consumers=_int(o.get("consumers")),
        durable=bool(o.get("durable", True)),
        type=str(o.get("type", "classic")),
        published=_int(stats.get("publish")),
        delivered=_int(stats.get("deliver_get")),
        redelivered=_int(stats.get("redeliver")),
        acked=_int(stats.get("ack")),
        has_message_stats=isinstance(raw, dict),
    )


def _message_id(props: Any, body: bytes | None) -> str:
    """A message's task id, whatever its format (``harness.formats``): the
    ``message_id`` property; else Celery's ``id`` header (protocol 2); else the
    ``id`` of a JSON object body (contract v1), or its ``message_id`` (Dramatiq)."""
    mid = getattr(props, "message_id", None)
    if mid:
        return str(mid)
    headers = getattr(props, "headers", None)
    if isinstance(headers, dict) and headers.get("id") and headers.get("task"):
        return str(headers["id"])
    try:
        obj = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        return UNPARSEABLE
    if isinstance(obj, dict):
        for key in ("id", "message_id"):
            if obj.get(key) is not None:
                return str(obj[key])
    return UNPARSEABLE


def parse_broker_url(url: str, management_url: str | None = None) -> BrokerEndpoint:
    """A ``--broker-url`` as a BrokerEndpoint.

    The management API is taken from, in order: ``management_url``; a
    ``?management_port=N`` query parameter (same host, http); port 15672 on the
    same host. The query parameter is removed from the AMQP URL. Raises
    ValueError (one line) for a URL that is not amqp:// or amqps://.
    """
    # Messages never repeat the URL: it may carry a password.
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname
    except ValueError:
        raise ValueError("the broker URL is not amqp://[user:pass@]host[:port][/vhost]") from None
    if p.scheme not in ("amqp", "amqps") or not host:
        raise ValueError(f"the broker URL (scheme {p.scheme or 'none'!r}) is not "
                         "amqp://[user:pass@]host[:port][/vhost]")
    try:
        port = p.port or (5671 if p.scheme == "amqps" else 5672)
    except ValueError:
        raise ValueError(f"the broker URL for {host} has an invalid port") from None
    query = urllib.parse.parse_qsl(p.query, keep_blank_values=True)
    mport = 15672
    rest: list[tuple[str, str]] = []
    for k, v in query:
        if k == "management_port":
            if not v.isdigit() or not 0 < int(v) < 65536:
                raise ValueError(f"the broker URL for {host}: management_port must be a port "
                                 "number")
            mport = int(v)
        else:
            rest.append((k, v))
    user = urllib.parse.unquote(p.username) if p.username else "guest"
    password = urllib.parse.unquote(p.password) if p.password else "guest"
    vhost = urllib.parse.unquote(p.path[1:]) if len(p.path) > 1 else "/"
    host_in_url = f"[{host}]" if ":" in host else host
    amqp_url = urllib.parse.urlunsplit((
        p.scheme,
        f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
        f"@{host_in_url}:{port}",
        "/" + urllib.parse.quote(vhost, safe=""),
        urllib.parse.urlencode(rest),
        "",
    ))
    mgmt = (management_url or f"http://{host_in_url}:{mport}").rstrip("/")
    return BrokerEndpoint(amqp_url=amqp_url, management_url=mgmt, user=user,
                          password=password, vhost=vhost)


def _queue_semantics(obj: Mapping[str, Any]) -> dict[str, Any]:
    raw_args = obj.get("arguments")
    args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
    effective = obj.get("effective_policy_definition")
    policy = effective if isinstance(effective, dict) else {}

    def setting(arg: str, key: str, default: Any) -> Any:
        if arg in args:
            return args[arg]
        return policy.get(key, default)

    qtype = obj.get("type")
    return {
        "type": qtype,
        "durable": obj.get("durable"),
        "arguments": args,
        "policy": obj.get("policy"),
        "operator_policy": obj.get("operator_policy"),
        "effective_policy_definition": policy,
        "delivery_limit": setting("x-delivery-limit", "delivery-limit", None),
        # Classic queues, and quorum queues by default, dead-letter at most once.
        "dead_letter_strategy": setting("x-dead-letter-strategy", "dead-letter-strategy",
                                        "at-most-once"),
        "dead_letter_exchange": setting("x-dead-letter-exchange", "dead-letter-exchange", None),
        "consumer_timeout_ms": setting("x-consumer-timeout", "consumer-timeout",
                                       "broker default"),
    }
