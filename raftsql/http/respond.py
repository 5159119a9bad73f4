"""The response shapes every route shares, and the one error type handlers raise.

Failures come in rqlite's three layers (rqlite-api.md §1.3): per statement inside
`results` (HTTP 200); for the whole request as `{"results":[],"error":"..."}`, which rqlite
sends with 200 and raftsql with the status that says why (400 for a refused request, 503
when it could not be served); and at the transport level as a non-200 status with a short
plain-text body (Go's `http.Error`: the message and a newline), or no body at all for 404,
405 and OPTIONS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from raftsql import __version__
from raftsql.errors import (
    ClusterError,
    LeadershipLostError,
    NodeStoppedError,
    NotLeaderError,
    RequestError,
    RequestTimeoutError,
    StaleReadError,
    TransportError,
)
from raftsql.http.auth import AuthFailure
from raftsql.http.rqlite.encode import response_body

VERSION = f"raftsql/{__version__}"
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

FORWARDED_HEADER = "X-Raftsql-Forwarded-By"  # a request forwarded by that node: never again
NOT_LEADER_HEADER = "X-Raftsql-Not-Leader"  # "I did nothing with your forwarded request"
SERVED_BY = "X-RQLITE-SERVED-BY"
IDEMPOTENCY_KEY = "X-Raftsql-Idempotency-Key"  # a write applied at most once (sql/keys.py)
REPLAYED = "X-Raftsql-Idempotent-Replay"  # "true": the key's first outcome, nothing applied

LEADER_NOT_FOUND = "leader not found"
DISALLOWED_PRAGMA = "disallowed pragma"
MAYBE_APPLIED = "the request may have been applied"


def text_error(status: int, message: str | None) -> web.Response:
    if message is None:
        return web.Response(status=status)
    return web.Response(
        status=status, body=(message + "\n").encode(),
        headers={"Content-Type": TEXT_TYPE, "X-Content-Type-Options": "nosniff"},
    )


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    h = {"Content-Type": JSON_TYPE}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=body, headers=h)


def request_error(message: str, status: int, *, pretty: bool = False) -> web.Response:
    """A whole-request failure in rqlite's shape, `{"results":[],"error":message}`, but with
    a status that says it failed (rqlite answers 200, and clients that read only the
    per-statement errors take that for success)."""
    return json_response(response_body(error=message, pretty=pretty), status=status)


T = TypeVar("T")
# A client that sends nothing of its body for this long is answered 408 (and its request
# slot freed): a slow client cannot hold a node's open requests for ever (nginx's
# client_body_timeout).
BODY_IDLE_SECONDS = 30.0


async def within_idle(read: Awaitable[T]) -> T:
    """One read of a request body, or 408 when the client sent nothing for too long."""
    try:
        async with asyncio.timeout(BODY_IDLE_SECONDS):
            return await read
    except TimeoutError:
        raise RequestError(408, f"no part of the request body came in {BODY_IDLE_SECONDS:g} "
                           "s") from None


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 once it passes `limit` bytes (checked before reading); 408 when
    the client stops sending it."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, "request body too large")
    content = request.content
    chunks, size = [], 0
    while True:
        chunk = await within_idle(content.read(1 << 16))
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "request body too large")
        chunks.append(chunk)
        if content.at_eof():  # the common case: the whole body came in one read
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def unavailable(message: str, *, json: bool, pretty: bool = False) -> web.Response:
    """503 with Retry-After: in rqlite's JSON shape (data routes) or as plain text."""
    if json:
        response = request_error(message, 503, pretty=pretty)
    else:
        response = text_error(503, message)
    response.headers["Retry-After"] = "1"
    return response


# ---- errors -> responses: the one table ----------------------------------------------



@dataclass(frozen=True, slots=True)
class Route:
    """How a route's failures are worded."""

    json: bool  # rqlite's JSON body, {"results":[],"error":...}, rather than plain text
    write: bool = False  # a failure may leave the request applied: say so
    timeout: str = "timeout"  # what a RequestTimeoutError was waiting for


ROUTE: web.RequestKey[Route] = web.RequestKey("raftsql_route", Route)  # set by handlers
_TEXT_ROUTE = Route(json=False)
Wording = Callable[[Any, Route], str]

# error type -> (its status, its message, whether a write it failed may have been applied).
# The first type that matches wins; a 503 is worded the route's way (JSON or text).
ERRORS: tuple[tuple[type[Exception], Callable[[Any], int], Wording, bool], ...] = (
    (RequestError, lambda e: e.status, lambda e, route: e.message, False),
    (AuthFailure, lambda e: e.status, lambda e, route: str(e), False),
    (ClusterError, lambda e: e.status, lambda e, route: str(e), False),
    (StaleReadError, lambda e: 503, lambda e, route: str(e), False),
    (RequestTimeoutError, lambda e: 503, lambda e, route: route.timeout, True),
    (LeadershipLostError, lambda e: 503, lambda e, route: str(e), True),
    (NodeStoppedError, lambda e: 503, lambda e, route: str(e), True),
    (NotLeaderError, lambda e: 503, lambda e, route: LEADER_NOT_FOUND, False),
    (TransportError, lambda e: 503, lambda e, route: str(e), False),
)


def error_response(request: web.Request, e: Exception) -> web.Response | None:
    """The response for an error a handler raised; None if it is not one of ours."""
    route: Route = request.get(ROUTE, _TEXT_ROUTE)
    for kind, status_of, wording, unknown_outcome in ERRORS:
        if isinstance(e, kind):
            status, message = status_of(e), wording(e, route)
            if status != 503:
                return text_error(status, message)
            if route.write and unknown_outcome:
                message = f"{message}; {MAYBE_APPLIED}"
            return unavailable(message, json=route.json, pretty="pretty" in request.query)
    return None
