"""The peer listener's HTTP side: serving it, RPC replies, and the errors carried back to an
RPC's caller as themselves."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from raftsql import errors
from raftsql.errors import TransportError

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


async def serve_app(app: web.Application, addr: str) -> web.AppRunner:
    """Serve an aiohttp application at `addr` (host:port); the runner cleans it up."""
    host, _, port = addr.rpartition(":")
    # In-flight requests get a second to finish when the runner is cleaned up.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port),
                      reuse_address=True).start()
    return runner
