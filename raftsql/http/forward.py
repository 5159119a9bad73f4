"""Requests a follower cannot serve: forward them to the leader, or redirect (rqlite-api.md §1.6).

Forwarding is transparent: the same method, path, raw query string and raw body bytes
(never re-encoded) go to the leader's API, and its status, body and content type come
back. A forwarded request carries FORWARDED_HEADER, and a node never forwards such a
request again: a second hop answers 503 `leader not found`, so a stale view of who leads
can never bounce a request around the cluster.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from yarl import URL

from raftsql.errors import NotLeaderError
from raftsql.http.respond import JSON_TYPE, LEADER_NOT_FOUND, request_error, text_error
from raftsql.http.state import ApiState

log = logging.getLogger("raftsql.http")

FORWARDED_HEADER = "X-Raftsql-Forwarded-By"
SERVED_BY = "X-RQLITE-SERVED-BY"
_PASSED_HEADERS = ("Content-Type", "Authorization", "Accept")


def leader_not_found() -> web.Response:
    return text_error(503, LEADER_NOT_FOUND)


def redirect_location(leader_url: str, request: web.Request) -> str:
    """rqlite's FormRedirect: leader URL + the same path + the same raw query string."""
    raw_query = request.rel_url.raw_query_string
    return leader_url.rstrip("/") + request.rel_url.raw_path + (f"?{raw_query}" if raw_query else "")


def _target(state: ApiState, request: web.Request, err: NotLeaderError) -> str | None:
    url = err.leader_url
    if not url or request.headers.get(FORWARDED_HEADER):
        return None
    if url.rstrip("/") == state.node.api_url.rstrip("/"):
        return None  # our own view is stale: do not talk to ourselves
    return url


async def not_leader(
    state: ApiState, request: web.Request, err: NotLeaderError, body: bytes, *,
    redirect: bool, timeout: float, json_errors: bool = True, pretty: bool = False,
) -> web.Response:
    """Answer a request this node could not serve because it is not the leader."""
    url = _target(state, request, err)
    if url is None:
        return leader_not_found()
    if redirect:
        # The handler's JSON content type is set, so Go's http.Redirect writes no body.
        headers = {"Location": redirect_location(url, request)}
        if json_errors:
            headers["Content-Type"] = JSON_TYPE
        return web.Response(status=301, headers=headers)
    return await proxy(state, request, url, err.leader_id, body, timeout=timeout,
                       json_errors=json_errors, pretty=pretty)


async def proxy(
    state: ApiState, request: web.Request, leader_url: str, leader_id: str | None, body: bytes, *,
    timeout: float, json_errors: bool = True, pretty: bool = False,
) -> web.Response:
    served_by = _served_by(state, leader_id, leader_url)
    url = URL(leader_url.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
    headers = {k: request.headers[k] for k in _PASSED_HEADERS if k in request.headers}
    headers[FORWARDED_HEADER] = str(state.node.node_id)
    try:
        async with state.client.request(
            request.method, url, data=body or None, headers=headers, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            data = await resp.read()
            out = {SERVED_BY: served_by}
            if "Content-Type" in resp.headers:
                out["Content-Type"] = resp.headers["Content-Type"]
            for name in ("Location", "X-Content-Type-Options"):
                if name in resp.headers:
                    out[name] = resp.headers[name]
            return web.Response(status=resp.status, body=data, headers=out)
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        message = f"forwarding to leader {leader_id or leader_url}: {_describe(e)}"
        log.warning("%s %s: %s", request.method, request.path, message)
        if json_errors:
            return request_error(message, pretty=pretty, served_by=served_by)
        return text_error(503, message)


def _served_by(state: ApiState, leader_id: str | None, leader_url: str) -> str:
    """rqlite names the leader's Raft address when a request was forwarded."""
    member = state.member(leader_id)
    if member is not None and member.raft_addr:
        return str(member.raft_addr)
    return URL(leader_url).raw_authority or leader_url


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return str(e) or type(e).__name__
