"""The HTTP core every raftsql client shares: which node to ask, and when a request may be sent
again. It imports nothing of the server: a client machine needs only this package.

A cluster is reached through any of its nodes (the seeds); the first answer also lists the
members (`/nodes`), so the client can go on when every seed has gone. A node that is not the
leader forwards to it, so any live node will do; the client still talks to the leader when
it knows it, which saves a hop.

When a request may be sent again (DESIGN.md §5):
- certainly not delivered (connection refused, unknown host, a node that says it did
  nothing with it): always, to the next node;
- a read: always;
- a write that may have been applied (timeout, a connection lost mid-request, a 503 saying
  "may have been applied"): only with an idempotency key, which the client sends with every
  write unless told not to: the leader then applies it at most once and a retry returns the
  first outcome. Without a key such a failure is raised as `Unavailable(maybe_applied=True)`.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson

DEFAULT_URL = "http://127.0.0.1:4001"
IDEMPOTENCY_HEADER = "X-Raftsql-Idempotency-Key"
REPLAY_HEADER = "X-Raftsql-Idempotent-Replay"
NOT_LEADER_HEADER = "X-Raftsql-Not-Leader"
MAYBE_APPLIED = "may have been applied"
LEVELS = ("none", "weak", "linearizable", "strong")
_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds between rounds over every known node


class ClientError(Exception):
    """Base of the errors this core raises."""


class Unavailable(ClientError):
    """No node could serve the request in time. `maybe_applied`: a write whose outcome is
    unknown (it may have been applied); otherwise nothing was done."""

    def __init__(self, message: str, *, maybe_applied: bool = False):
        super().__init__(message)
        self.maybe_applied = maybe_applied


class Refused(ClientError):
    """The cluster refused the request as a whole (4xx): nothing was applied."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str = ""  # the node that answered

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.json().get("results", []))

    @property
    def replayed(self) -> bool:
        """The leader had applied this write already (same idempotency key): these are the
        first attempt's results."""
        return self.headers.get(REPLAY_HEADER) == "true"


def split_urls(urls: str | Sequence[str] | None) -> list[str]:
    """"h1:4001,http://h2:4001" or a list → normalised URLs; RAFTSQL_URL, then
    http://127.0.0.1:4001, when none are given."""
    if urls is None or urls == "" or urls == []:
        urls = os.environ.get("RAFTSQL_URL") or DEFAULT_URL
    if isinstance(urls, str):
        urls = urls.split(",")
    out = []
    for u in urls:
        u = u.strip().rstrip("/")
        if not u:
            continue
        if "://" not in u:
            u = "http://" + u
        parts = urllib.parse.urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an HTTP URL: {u!r}")
        out.append(u)
    if not out:
        raise ValueError("no URL given")
    return out


def split_auth(urls: list[str], auth: tuple[str, str] | str | None
               ) -> tuple[list[str], tuple[str, str] | None]:
    """Credentials from `auth` ("user:password" or a pair), else from URL userinfo (which is
    then taken out of the URLs)."""
    clean = []
    found: tuple[str, str] | None = None
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        if parts.username is not None:
            found = found or (urllib.parse.unquote(parts.username),
                              urllib.parse.unquote(parts.password or ""))
            host = parts.hostname or ""
            netloc = (f"[{host}]" if ":" in host else host) + (
                f":{parts.port}" if parts.port else "")
            u = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        clean.append(u)
    if isinstance(auth, str):
        user, _, password = auth.partition(":")
        auth = (user, password)
    return clean, auth or found


def add_user_argument(parser: Any) -> None:
    """The -u flag every command that talks to a cluster takes (an argparse parser)."""
    parser.add_argument("-u", "--user", default=None, metavar="USER[:PASSWORD]",
                        help="HTTP basic auth; with USER alone the password is asked for "
                        "(default: $RAFTSQL_USER and $RAFTSQL_PASSWORD, else the URL's "
                        "user:password@, else none)")


def credentials(user: str | None, interactive: bool) -> tuple[str, str] | None:
    """A command's -u USER[:PASSWORD], else $RAFTSQL_USER (and $RAFTSQL_PASSWORD). A password
    left out is asked for only when a person can answer; a script goes on without one."""
    user = user if user is not None else os.environ.get("RAFTSQL_USER")
    if not user:
        return None
    name, sep, password = user.partition(":")
    if not sep:
        password = os.environ.get("RAFTSQL_PASSWORD", "")
        if not password and interactive:
            import getpass

            password = getpass.getpass(f"password for {name}: ")
    return name, password


def auth_headers(auth: tuple[str, str] | None) -> dict[str, str]:
    """The Authorization header for HTTP basic auth as `auth` (user, password), if any."""
    if auth is None:
        return {}
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class _Attempt:
    """What happened to one request so far, across nodes."""

    write: bool
    key: str | None
    deadline: float
    maybe_applied: bool = False
    last_error: str = "no node answered"
    rounds: int = 0
    tried: set[str] = field(default_factory=set)

    @property
    def resendable(self) -> bool:
        return not self.write or self.key is not None


def tls_context() -> ssl.SSLContext:
    """What https connections check and present: the system's CAs ($SSL_CERT_FILE, or
    $RAFTSQL_CA_FILE for a cluster's own CA) and, for nodes that require one
    (`--tls-client-ca`), the client certificate in $RAFTSQL_CLIENT_CERT with its key in
    $RAFTSQL_CLIENT_KEY (or in the same file)."""
    context = ssl.create_default_context(cafile=os.environ.get("RAFTSQL_CA_FILE") or None)
    cert = os.environ.get("RAFTSQL_CLIENT_CERT")
    if cert:
        context.load_cert_chain(cert, os.environ.get("RAFTSQL_CLIENT_KEY") or None)
    return context


class _NotDelivered(Exception):
    pass


class _MaybeDelivered(Exception):
    pass


class Cluster:
    """A raftsql (or rqlite) cluster seen through HTTP. Not thread-safe: one per thread (the
    DB-API connection holds one and serialises its use)."""

    def __init__(self, urls: str | Sequence[str] | None = None, *, timeout: float = 10.0,
                 auth: tuple[str, str] | str | None = None, idempotent_writes: bool = True):
        seeds, self._auth = split_auth(split_urls(urls), auth)
        self.seeds = seeds
        self.known: list[str] = list(seeds)  # seeds first, then members learned from /nodes
        self.current = seeds[0]
        self.timeout = timeout
        self.idempotent_writes = idempotent_writes
        self._connections: dict[str, http.client.HTTPConnection] = {}
        self._discovered = False
        self._tls: ssl.SSLContext | None = None  # made on the first https connection

    # ---- the data routes (rqlite's shapes)

    def execute(self, statements: list[Any], *, transaction: bool = False,
                params: Mapping[str, Any] | None = None) -> Response:
        """POST /db/execute: writes, through the log."""
        q = {"native": "", **(params or {})}
        if transaction:
            q["transaction"] = ""
        return self.send("POST", "/db/execute", q, statements, write=True)

    def query(self, statements: list[Any], *, level: str | None = None,
              transaction: bool = False, params: Mapping[str, Any] | None = None) -> Response:
        """POST /db/query: reads at `level` (the cluster's default when None); a read changes
        nothing, so it is resent freely (a strong one too: its entry writes nothing)."""
        q = self._read_params(level, transaction, params)
        return self.send("POST", "/db/query", q, statements)

    def request(self, statements: list[Any], *, level: str | None = None,
                transaction: bool = False, params: Mapping[str, Any] | None = None) -> Response:
        """POST /db/request: reads and writes mixed; treated as a write (it may write)."""
        q = self._read_params(level, transaction, params)
        return self.send("POST", "/db/request", q, statements, write=True)

    @staticmethod
    def _read_params(level: str | None, transaction: bool,
                     params: Mapping[str, Any] | None) -> dict[str, Any]:
        q: dict[str, Any] = {"native": ""}
        if level:
            q["level"] = level
        if transaction:
            q["transaction"] = ""
        q.update(params or {})
        return q

    # ---- any route

    def send(self, method: str, path: str, params: Mapping[str, Any] | None = None,
             body: Any = None, *, write: bool = False, headers: Mapping[str, str] | None = None,
             raw_body: bytes | None = None) -> Response:
        """One request, to whichever node can serve it, resent only when that is safe (see
        the module docstring). Returns any answer that is not a 503 (4xx included: callers
        decide); raises Unavailable when none came in `timeout` seconds."""
        data = raw_body if raw_body is not None else (
            None if body is None else orjson.dumps(body))
        key = uuid.uuid4().hex if write and self.idempotent_writes else None
        attempt = _Attempt(write, key, time.monotonic() + self.timeout)
        h = self._headers(headers, key, data is not None and raw_body is None)
        while True:
            url = self.current
            try:
                response = self._once(url, method, path, params, data, h, attempt)
            except _NotDelivered as e:
                attempt.last_error = f"{url}: {e}"
            except _MaybeDelivered as e:
                attempt.last_error = f"{url}: {e}"
                if attempt.write:
                    attempt.maybe_applied = True
                if not attempt.resendable:
                    raise Unavailable(f"{attempt.last_error}; the request {MAYBE_APPLIED}",
                                      maybe_applied=True) from None
            else:
                if response is not None:
                    return response
            self._next_node(attempt)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a JSON route (/status, /nodes, ...); Refused on a 4xx."""
        response = self.send("GET", path, params)
        if response.status >= 400:
            raise Refused(response.status, response.body.decode(errors="replace").strip())
        return response.json()

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one attempt

    def _headers(self, extra: Mapping[str, str] | None, key: str | None, is_json: bool
                 ) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if is_json:
            h["Content-Type"] = "application/json"
        if key:
            h[IDEMPOTENCY_HEADER] = key
        h.update(auth_headers(self._auth))
        h.update(extra or {})
        return h

    def _once(self, url: str, method: str, path: str, params: Mapping[str, Any] | None,
              data: bytes | None, headers: dict[str, str], attempt: _Attempt
              ) -> Response | None:
        """One try at `url`: the answer, or None to try again elsewhere (raises _NotDelivered
        or _MaybeDelivered when no answer came)."""
        remaining = attempt.deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(f"{attempt.last_error} (gave up after {self.timeout:g}s)"
                              + (f"; the request {MAYBE_APPLIED}" if attempt.maybe_applied
                                 else ""), maybe_applied=attempt.maybe_applied)
        q = dict(params or {})
        if path.startswith("/db/") and "timeout" not in q:
            q["timeout"] = f"{max(remaining - 0.2, 0.1):.3f}s"  # the server waits no longer
        target = path + ("?" + _encode_query(q) if q else "")
        status, resp_headers, body = self._roundtrip(url, method, target, data, headers,
                                                     remaining)
        attempt.tried.add(url)
        if status in (301, 302, 307, 308) and "location" in resp_headers:
            self.current = _origin(resp_headers["location"])
            self._learn([self.current])
            return None
        if status == 503:
            _raise_unavailable(resp_headers, body)
        if not self._discovered and status < 400:
            self._discover()
        return Response(status, resp_headers, body, url)


    def _roundtrip(self, url: str, method: str, target: str, data: bytes | None,
                   headers: dict[str, str], timeout: float
                   ) -> tuple[int, dict[str, str], bytes]:
        conn = self._connection(url, timeout)
        sent = False
        try:
            conn.request(method, target, body=data, headers=headers)
            sent = True
            resp = conn.getresponse()
            body = resp.read()
        except (ConnectionRefusedError, socket.gaierror) as e:
            self._drop(url)
            raise _NotDelivered(_describe(e)) from None
        except (OSError, http.client.HTTPException) as e:
            self._drop(url)
            if not sent and not isinstance(e, TimeoutError):
                raise _NotDelivered(_describe(e)) from None
            raise _MaybeDelivered(_describe(e)) from None
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self._drop(url)
        return resp.status, resp_headers, body

    def _connection(self, url: str, timeout: float) -> http.client.HTTPConnection:
        conn = self._connections.get(url)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            # A kept-alive connection the server has since closed: a request sent on it would
            # fail in a way that looks like "maybe delivered".
            self._drop(url)
            conn = None
        if conn is None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "https":
                self._tls = self._tls or tls_context()
                conn = http.client.HTTPSConnection(parts.hostname or "", parts.port,
                                                   timeout=timeout, context=self._tls)
            else:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                                  timeout=timeout)
            try:
                conn.connect()
            except (ConnectionRefusedError, socket.gaierror, OSError) as e:
                raise _NotDelivered(_describe(e)) from None
            self._connections[url] = conn
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self, url: str) -> None:
        conn = self._connections.pop(url, None)
        if conn is not None:
            conn.close()

    # ---- which node

    def _next_node(self, attempt: _Attempt) -> None:
        """Move on to the next known node; after a whole round, wait a little and ask the
        members who leads now."""
        i = self.known.index(self.current) if self.current in self.known else -1
        self.current = self.known[(i + 1) % len(self.known)]
        self._discovered = False  # the next answer says who leads now
        if self.current == self.known[0] or len(self.known) == 1:
            pause = _BACKOFF[min(attempt.rounds, len(_BACKOFF) - 1)]
            attempt.rounds += 1
            time.sleep(max(min(pause, attempt.deadline - time.monotonic()), 0))

    def _discover(self) -> None:
        """Learn the members' API URLs and the leader from /nodes (best effort)."""
        self._discovered = True
        try:
            status, _, body = self._roundtrip(self.current, "GET", "/nodes?ver=2", None,
                                              self._headers(None, None, False), 2.0)
            if status != 200:
                return
            nodes = orjson.loads(body)
        except (ClientError, _NotDelivered, _MaybeDelivered, ValueError):
            return
        members = nodes.get("nodes", nodes) if isinstance(nodes, dict) else nodes
        if isinstance(members, dict):
            members = list(members.values())
        urls, leader = [], None
        for m in members if isinstance(members, list) else []:
            api = isinstance(m, dict) and m.get("api_addr")
            if api:
                urls.append(str(api).rstrip("/"))
                if m.get("leader"):
                    leader = str(api).rstrip("/")
        self._learn(urls)
        if leader is not None:
            self.current = leader

    def _learn(self, urls: Iterable[str]) -> None:
        for u in urls:
            if u not in self.known:
                self.known.append(u)


def _raise_unavailable(headers: Mapping[str, str], body: bytes) -> NoReturn:
    """A 503: whether the request may have been applied is in its words."""
    message = error_text(body, "service unavailable")
    if headers.get(NOT_LEADER_HEADER.lower()):
        raise _NotDelivered(message)
    if MAYBE_APPLIED in message:
        raise _MaybeDelivered(message)
    raise _NotDelivered(message)


def _encode_query(q: Mapping[str, Any]) -> str:
    out = []
    for k, v in q.items():
        if v is None or v is False:
            continue
        out.append(urllib.parse.quote(k) if v == "" or v is True
                   else f"{urllib.parse.quote(k)}={urllib.parse.quote(str(v))}")
    return "&".join(out)


def _origin(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}"


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)  # an idle HTTP connection has nothing to read unless it was closed


def error_text(body: bytes, default: str) -> str:
    """The message of a failed answer: rqlite's JSON `error`, else the plain-text body."""
    try:
        d = orjson.loads(body)
        if isinstance(d, dict) and d.get("error"):
            return str(d["error"])
    except orjson.JSONDecodeError:
        pass
    return body.decode(errors="replace").strip() or default


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return "connection closed before an answer came"
    return str(e) or type(e).__name__
