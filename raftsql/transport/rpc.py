"""The peer listener's HTTP side: serving it, RPC replies, and the errors carried back to an
RPC's caller as themselves."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from raftsql import errors
from raftsql.errors import RaftSQLError, TransportError

log = logging.getLogger("raftsql.transport")

ERROR_HEADER = "X-Raftsql-Error"  # why a peer request was refused
# Errors a handler may raise that `call()` re-raises as the same type on the caller's side.
REMOTE_ERRORS = ("NotLeaderError", "LeadershipLostError", "ClusterError")


def rpc_result(raft_addr: str, name: str, status: int, body: bytes) -> dict[str, Any]:
    try:
        reply = orjson.loads(body)
    except ValueError:
        reply = {"error": body[:200].decode("utf-8", "replace")}
    if status == 200 and type(reply) is dict:
        return reply
    message = reply.get("error", "") if type(reply) is dict else ""
    if status == 409 and type(reply) is dict:
        kind = reply.get("kind")
        if kind == "NotLeaderError":
            raise errors.NotLeaderError(reply.get("leader_id"), reply.get("leader_url"))
        if kind in REMOTE_ERRORS:
            raise getattr(errors, kind)(message)
    raise TransportError(f"rpc {name} to {raft_addr} failed: {status} {message}".rstrip(),
                         status)


def text_response(status: int, message: str) -> web.Response:
    # The header carries the message too: a refused WebSocket dialer sees only headers.
    return web.Response(status=status, text=message, headers={ERROR_HEADER: message})


def json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def serve_app(app: web.Application, addr: str,
                    ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Serve an aiohttp application at `addr` (host:port), over TLS only with `ssl_context`;
    the runner cleans it up."""
    host, _, port = addr.rpartition(":")
    # In-flight requests get a second to finish when the runner is cleaned up.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port),
                      reuse_address=True, ssl_context=ssl_context).start()
    return runner


async def serve_rpc(request: web.Request, handlers: dict[str, Any], node_id: str
                    ) -> web.Response:
    """POST /raft/rpc/<name>: the handler's JSON answer; its RaftSQLErrors as 409 with their
    kind, which `call_rpc` raises again on the caller's side."""
    name = request.match_info["name"]
    handler = handlers.get(name)
    if handler is None:
        return json_response(404, {"error": f"unknown raft rpc {name!r}"})
    try:
        payload = orjson.loads(await request.read())
    except (ValueError, web.HTTPException) as exc:
        return json_response(400, {"error": f"bad rpc body: {exc}"})
    if type(payload) is not dict:
        return json_response(400, {"error": "rpc body must be a JSON object"})
    try:
        result = await handler(payload)
    except RaftSQLError as exc:
        body: dict[str, Any] = {"error": str(exc), "kind": type(exc).__name__}
        if isinstance(exc, errors.NotLeaderError):
            body.update(leader_id=exc.leader_id, leader_url=exc.leader_url)
        return json_response(409, body)
    except Exception:
        log.exception("node=%s rpc %s failed", node_id, name)
        return json_response(500, {"error": f"rpc {name} failed on node {node_id}"})
    return json_response(200, result)


async def call_rpc(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   raft_addr: str, name: str, payload: dict[str, Any], timeout: float,
                   tls: dict[str, Any]) -> dict[str, Any]:
    """POST `payload` to the peer's RPC `url`; its result, or its error raised here."""
    try:
        async with asyncio.timeout(timeout), session.post(
            url, data=orjson.dumps(payload),
            headers={**headers, "Content-Type": "application/json"}, **tls,
        ) as resp:
            status, body = resp.status, await resp.read()
    except aiohttp.ClientError as exc:
        raise TransportError(f"rpc {name} to {raft_addr} failed: {exc}") from exc
    return rpc_result(raft_addr, name, status, body)
