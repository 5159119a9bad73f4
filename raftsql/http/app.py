"""The client-facing HTTP API of a node: rqlite's, so rqlite clients work unmodified.

`make_app(node, sql)` builds the aiohttp application. Middleware gives every response
rqlite's headers (X-RQLITE-VERSION, CORS), and turns every error a handler raises into its
response, by one table (respond.ERRORS). A node never crashes or answers 500 for anything a
client sends; an unexpected exception is a logged 500 with its message.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from time import perf_counter
from typing import Any

from aiohttp import web

from raftsql.http.auth import REALM, Auth, AuthFailure, required
from raftsql.http.consul import kv as consul_kv
from raftsql.http.consul import session as consul_session
from raftsql.http.queue import WriteQueue
from raftsql.http.respond import VERSION, error_response, text_error
from raftsql.http.rqlite import backup as routes_backup
from raftsql.http.rqlite import cluster as routes_cluster
from raftsql.http.rqlite import db as routes_db
from raftsql.http.state import STATE, ApiState, ClusterNode
from raftsql.kv.service import KvService
from raftsql.sql.service import SqlService

log = logging.getLogger("raftsql.http")

DEFAULT_MAX_BODY_BYTES = 64 * 2**20


def make_app(
    node: ClusterNode, sql: SqlService, *, kv: KvService | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_origin: str | None = None, queue_capacity: int = 1024, queue_batch_size: int = 128,
    queue_timeout: float = 0.05, auth: Auth | None = None,
    client_ssl: ssl.SSLContext | None = None, max_statements: int = 0, max_open: int = 0,
) -> web.Application:
    """The rqlite-compatible API of `node` and its SQL service; with `kv`, Consul's KV API
    of its config store too; with `auth`, every client request is checked against it;
    `client_ssl`: what this node forwards to other nodes' HTTPS APIs with; `max_statements`
    per request and `max_open` requests at once (0: no limit)."""
    # Data routes stream their bodies against max_body_bytes themselves (413 before reading
    # more); client_max_size only bounds routes that call request.read(), like Raft's RPC.
    app = web.Application(middlewares=[_guard], client_max_size=max(max_body_bytes, 2**20))
    state = ApiState(node, sql, max_body_bytes, kv, allow_origin, auth, client_ssl=client_ssl,
                     max_statements=max_statements, max_open=max_open)
    state.queue = WriteQueue(sql, node.node_id, lambda: state.client, capacity=queue_capacity,
                             batch_size=queue_batch_size, timeout=queue_timeout,
                             member_headers=auth.member_headers() if auth else {})
    app[STATE] = state
    _add_routes(app.router)
    app.on_response_prepare.append(_add_headers)
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    return app


def _add_routes(r: web.UrlDispatcher) -> None:
    r.add_post("/db/execute", routes_db.handle_execute)
    r.add_get("/db/query", routes_db.handle_query)
    r.add_post("/db/query", routes_db.handle_query)
    r.add_post("/db/request", routes_db.handle_request)
    r.add_get("/db/backup", routes_backup.handle_backup)
    r.add_post("/db/load", routes_db.handle_load)
    r.add_post("/boot", routes_db.handle_boot)
    r.add_get("/status", routes_cluster.handle_status)
    r.add_get("/nodes", routes_cluster.handle_nodes)
    r.add_get("/readyz", routes_cluster.handle_readyz)
    r.add_get("/leader", routes_cluster.handle_leader_get)
    r.add_post("/leader", routes_cluster.handle_leader_post)
    r.add_delete("/remove", routes_cluster.handle_remove)
    r.add_post("/snapshot", routes_cluster.handle_snapshot)
    r.add_get("/metrics", routes_cluster.handle_metrics)
    r.add_get("/", _root)
    consul_kv.add_routes(r)
    consul_session.add_routes(r)


async def _root(request: web.Request) -> web.Response:
    # Go's http.Redirect: a GET gets a tiny HTML body, other methods none.
    body = b'<a href="/console/">Found</a>.\n\n' if request.method == "GET" else None
    return web.Response(status=302, body=body, headers={
        "Location": "/console/", "Content-Type": "text/html; charset=utf-8"})


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one boundary where errors become responses (the table: respond.ERRORS)."""
    if request.method == "OPTIONS":
        return web.Response(status=200)
    start = perf_counter()
    state = request.app[STATE]
    counted = state.max_open > 0 and request.path not in _UNCOUNTED and not (
        request.path.startswith("/raft/"))
    if counted and state.open_requests >= state.max_open:
        response = _overloaded(state.max_open)
    else:
        state.open_requests += counted
        try:
            refused = await _refused(state.auth, request) if state.auth is not None else None
            response = refused or await _answer(request, handler)
        finally:
            state.open_requests -= counted
    state.metrics.observe(request, response.status, start)
    return response


# Never shed: what tells an operator (or a load balancer) how the node is doing.
_UNCOUNTED = frozenset({"/status", "/readyz", "/metrics"})


def _overloaded(limit: int) -> web.Response:
    response = text_error(503, f"too many open requests (at most {limit} at once, "
                          "--max-open-requests): try again")
    response.headers["Retry-After"] = "1"
    return response


async def _refused(auth: Auth, request: web.Request) -> web.Response | None:
    """The 401 or 403 for a request `auth` does not allow (before its body is read)."""
    needed = required(request)
    if needed is None:
        return None
    try:
        await auth.check(request, needed)
    except AuthFailure as e:
        return text_error(e.status, str(e))
    return None


async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status in (404, 405):
            return web.Response(status=e.status)
        if e.status == 413:
            return text_error(413, "request body too large")
        raise
    except asyncio.CancelledError:
        raise
    except Exception as e:
        response = error_response(request, e)
        if response is not None:
            return response
        log.exception("%s %s failed", request.method, request.path_qs)
        return text_error(500, f"internal error: {type(e).__name__}: {e}")


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    state = request.app[STATE]
    if response.status >= 300:
        # pyrqlite raises on any status but 200 without reading the body; http.client then
        # sends its next request on the same connection, fails to read the answer, and
        # pyrqlite sends that request again: a write applied twice. A closed connection
        # makes it open a new one instead.
        response.force_close()
        response.headers["Connection"] = "close"  # the headers were made before this hook
    h = response.headers
    h["X-RQLITE-VERSION"] = VERSION
    h["Access-Control-Allow-Methods"] = "OPTIONS, GET, POST"
    if state.auth is None:
        h["Access-Control-Allow-Headers"] = "Content-Type"
    else:
        h["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        h["WWW-Authenticate"] = REALM
    if state.allow_origin:
        h["Access-Control-Allow-Origin"] = state.allow_origin


async def _startup(app: web.Application) -> None:
    state = app[STATE]
    _ = state.client  # one ClientSession per app, for forwarding and peer checks
    if state.queue is not None:
        state.queue.start()


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    if state.queue is not None:
        await state.queue.close()
    if state.session is not None:
        await state.session.close()
