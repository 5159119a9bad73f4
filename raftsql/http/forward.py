"""Requests that need the leader: served here when this node leads, else forwarded to the
leader or redirected to it (rqlite-api.md §1.6), riding through leader changes.

Forwarding is transparent: the same method, path, raw query string and raw body bytes
(never re-encoded) go to the leader's API, and its status, body and content type come
back. A forwarded request carries FORWARDED_HEADER, and a node never forwards such a
request again: a node that no longer leads answers it 503 with NOT_LEADER_HEADER, saying it
did nothing with it, so a stale view of who leads never bounces a request around.

Better than rqlite, a request never fails just because the leader changed under it: while
no leader is known, or the leader could certainly not be given the request (the connection
was refused or timed out, or the node answered NOT_LEADER_HEADER), the request waits for a
leader, up to its `timeout`, and goes there (or is served here, if this node was elected).
A request that may have reached a leader is never sent again, unless it only reads: the
client is told that its write may have been applied. Every failure is a 503 with
Retry-After, never a 200 (clients like pyrqlite read only per-statement errors).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import BinaryIO

import aiohttp
from aiohttp import web
from yarl import URL

from raftsql.errors import NotLeaderError
from raftsql.http.respond import (
    FORWARDED_HEADER,
    IDEMPOTENCY_KEY,
    JSON_TYPE,
    LEADER_NOT_FOUND,
    MAYBE_APPLIED,
    NOT_LEADER_HEADER,
    REPLAYED,
    ROUTE,
    SERVED_BY,
    Route,
    text_error,
    unavailable,
)
from raftsql.http.state import ApiState

log = logging.getLogger("raftsql.http")

_PASSED_HEADERS = ("Content-Type", "Authorization", "X-Consul-Token", "Accept", IDEMPOTENCY_KEY)
_PASSED_BACK_PREFIXES = ("X-Consul-", "X-Raftsql-Compact-")
_POLL = 0.05  # seconds between two looks for a leader
_RETRY_SAME = 0.5  # seconds before a leader that could not be reached is tried again
_CONNECT_TIMEOUT = 2.0  # a leader that does not accept a connection by then is treated as down
NOT_A_MEMBER = "this node is not a member of the cluster (it was removed)"


class _NotDelivered(Exception):
    """The leader certainly never got the request: safe to send it again."""


class _MaybeDelivered(Exception):
    """The request may have reached the leader: sending it again could apply it twice."""


# What a forwarded request carries: its body, or a function opening the file it is in (a
# staged upload, streamed to the leader, opened afresh for each attempt).
Body = bytes | Callable[[], BinaryIO]


async def on_leader(
    state: ApiState, request: web.Request, body: Body,
    serve: Callable[[], Awaitable[web.StreamResponse]], route: Route, *, redirect: bool,
    timeout: float, pretty: bool = False, stream: bool = False,
) -> web.StreamResponse:
    """`serve()` here if this node leads (it raises NotLeaderError, having done nothing, if
    not); else forward the request to the leader, or redirect the client to it. `route`
    words the failures (for those `serve()` raises too), and says whether the request may
    be sent again (only if it does not write). With `stream`, the leader's answer is passed
    on as it arrives (a backup), `timeout` then bounding each read rather than the whole."""
    request[ROUTE] = route
    # A write with an idempotency key is applied at most once, however often it is sent.
    json_errors = route.json
    idempotent = not route.write or IDEMPOTENCY_KEY in request.headers
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failed: tuple[str | None, float] | None = None  # the leader last tried in vain, and when
    why = LEADER_NOT_FOUND
    while True:
        try:
            return await serve()
        except NotLeaderError as e:
            err = e
        if request.headers.get(FORWARDED_HEADER):
            return not_leader_reply()
        if state.node.removed:
            return unavailable(NOT_A_MEMBER, json=json_errors, pretty=pretty)
        url = _leader_url(state, err)
        if url is not None and not (failed and failed[0] == err.leader_id
                                    and loop.time() - failed[1] < _RETRY_SAME):
            if redirect:
                return _redirect(url, request, json_errors)
            try:
                return await _proxy(state, request, url, err.leader_id, body,
                                    timeout=max(deadline - loop.time(), 0.001), stream=stream)
            except _NotDelivered as e:
                why = f"forwarding to leader {err.leader_id or url}: {e}"
            except _MaybeDelivered as e:
                why = f"forwarding to leader {err.leader_id or url}: {e}"
                if not idempotent:
                    log.warning("%s %s: %s", request.method, request.path, why)
                    return unavailable(f"{why}; {MAYBE_APPLIED}", json=json_errors, pretty=pretty)
            failed = (err.leader_id, loop.time())
        if loop.time() >= deadline:
            log.info("%s %s: %s", request.method, request.path, why)
            return unavailable(why, json=json_errors and why != LEADER_NOT_FOUND, pretty=pretty)
        await asyncio.sleep(min(_POLL, max(deadline - loop.time(), 0)))


def not_leader_reply() -> web.Response:
    """The answer to a forwarded request this node cannot serve: it did nothing with it."""
    response = text_error(503, "not leader: the forwarded request was not applied")
    response.headers[NOT_LEADER_HEADER] = "1"
    response.headers["Retry-After"] = "1"
    return response


def _leader_url(state: ApiState, err: NotLeaderError) -> str | None:
    url = err.leader_url
    if not url or url.rstrip("/") == state.node.api_url.rstrip("/"):
        return None  # unknown, or our own view is stale: do not talk to ourselves
    return url


def redirect_location(leader_url: str, request: web.Request) -> str:
    """rqlite's FormRedirect: leader URL + the same path + the same raw query string."""
    raw_query = request.rel_url.raw_query_string
    return leader_url.rstrip("/") + request.rel_url.raw_path + (f"?{raw_query}" if raw_query else "")


def _redirect(url: str, request: web.Request, json_errors: bool) -> web.Response:
    # The handler's JSON content type is set, so Go's http.Redirect writes no body.
    headers = {"Location": redirect_location(url, request)}
    if json_errors:
        headers["Content-Type"] = JSON_TYPE
    return web.Response(status=301, headers=headers)


async def _proxy(state: ApiState, request: web.Request, leader_url: str, leader_id: str | None,
                 body: Body, *, timeout: float, stream: bool = False) -> web.StreamResponse:
    url = URL(leader_url.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
    headers = {k: request.headers[k] for k in _PASSED_HEADERS if k in request.headers}
    headers[FORWARDED_HEADER] = str(state.node.node_id)
    connect = min(timeout, _CONNECT_TIMEOUT)
    limits = (aiohttp.ClientTimeout(sock_connect=connect, sock_read=timeout) if stream
              else aiohttp.ClientTimeout(total=timeout, sock_connect=connect))
    data = body() if callable(body) else body or None
    try:
        async with state.client.request(request.method, url, data=data, headers=headers,
                                        allow_redirects=False, timeout=limits) as resp:
            if resp.headers.get(NOT_LEADER_HEADER):
                raise _NotDelivered("it is no longer the leader")
            out = _passed_back(resp, _served_by(state, leader_id, leader_url))
            if not stream:
                return web.Response(status=resp.status, body=await resp.read(), headers=out)
            return await _pass_on(request, resp, out)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
        raise _NotDelivered(_describe(e)) from None  # no connection: nothing was sent
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise _MaybeDelivered(_describe(e)) from None
    finally:
        if callable(body):
            data.close()  # type: ignore[union-attr]


async def _pass_on(request: web.Request, resp: aiohttp.ClientResponse, headers: dict[str, str]
                   ) -> web.StreamResponse:
    """Stream the leader's answer to the client. Once it has begun, a failure can only cut
    the answer short (its Content-Length, or its missing last chunk, tells the client)."""
    response = web.StreamResponse(status=resp.status, headers=headers)
    if resp.content_length is not None:
        response.content_length = resp.content_length
    await response.prepare(request)
    try:
        async for chunk in resp.content.iter_chunked(1 << 20):
            await response.write(chunk)
        await response.write_eof()
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        log.warning("%s %s: the leader's answer broke off: %s", request.method, request.path,
                    _describe(e))
        if request.transport is not None:
            request.transport.close()
    return response


def _passed_back(resp: aiohttp.ClientResponse, served_by: str) -> dict[str, str]:
    out = {SERVED_BY: served_by}
    for name in ("Content-Type", "Location", "X-Content-Type-Options", "Retry-After", REPLAYED):
        if name in resp.headers:
            out[name] = resp.headers[name]
    for name, value in resp.headers.items():
        if name.startswith(_PASSED_BACK_PREFIXES):  # Consul's index and leader headers
            out[name] = value
    return out


def _served_by(state: ApiState, leader_id: str | None, leader_url: str) -> str:
    """rqlite names the leader's Raft address when a request was forwarded."""
    member = state.member(leader_id)
    if member is not None and member.raft_addr:
        return str(member.raft_addr)
    return URL(leader_url).raw_authority or leader_url


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return "connection timed out"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect to {e.host}:{e.port} ({e.os_error.strerror or e.os_error})"
    return str(e) or type(e).__name__
