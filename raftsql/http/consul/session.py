"""`/v1/session/{create,destroy,renew,info,list,node}`: Consul's sessions, for locks and
leader election in client applications. Create and destroy are entries of the log; renew
resets the leader's clock for the session (raftsql/kv/sessions.py) and writes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from raftsql.http.consul.common import (
    READ,
    TIMEOUT,
    WRITE,
    Query,
    folded,
    idempotency_key,
    json_answer,
    on_leader,
    service,
)
from raftsql.http.params import parse_duration
from raftsql.http.respond import Route, read_body, text_error
from raftsql.kv import model
from raftsql.kv.model import KvError, Session

RENEW = Route(json=False, timeout="timeout waiting for the leader")  # writes nothing: resendable


async def handle_create(request: web.Request) -> web.Response:
    state, kv = service(request)
    body = await read_body(request, 1 << 20)
    key = idempotency_key(request)

    async def serve() -> web.Response:
        # Parsed where it is served: the new session's node is the leader's by default.
        session = parse_session(body, state.node.node_id)
        sid, index = await kv.create_session(session, timeout=TIMEOUT, idempotency_key=key)
        return json_answer(state, {"ID": sid}, index)

    parse_session(body, state.node.node_id)  # a bad body is refused here, not forwarded
    return await on_leader(state, request, body, serve, WRITE)


async def handle_destroy(request: web.Request) -> web.Response:
    state, kv = service(request)
    sid = request.match_info["id"]

    async def serve() -> web.Response:
        index = await kv.destroy_session(sid, timeout=TIMEOUT)
        return json_answer(state, True, index)

    return await on_leader(state, request, b"", serve, WRITE)


async def handle_renew(request: web.Request) -> web.Response:
    state, kv = service(request)
    sid = request.match_info["id"]

    async def serve() -> web.Response:
        session = await kv.renew_session(sid)
        if session is None:
            return text_error(404, f"Session id '{sid}' not found")
        return json_answer(state, [session.consul()])

    return await on_leader(state, request, b"", serve, RENEW)


async def handle_info(request: web.Request) -> web.Response:
    return await _sessions(request, sid=request.match_info["id"])


async def handle_list(request: web.Request) -> web.Response:
    return await _sessions(request)


async def handle_node(request: web.Request) -> web.Response:
    return await _sessions(request, node=request.match_info["node"])


async def _sessions(request: web.Request, *, sid: str | None = None, node: str | None = None
                    ) -> web.Response:
    state, kv = service(request)
    level = Query(request.query).level()

    async def serve() -> web.Response:
        sessions, index = await kv.sessions(level, sid=sid, node=node)
        return json_answer(state, [s.consul() for s in sessions], index)

    return await on_leader(state, request, b"", serve, READ)


def parse_session(raw: bytes, node_id: str) -> Session:
    """A session from /v1/session/create's body (Consul's fields), checked; a fresh id."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as e:
        raise KvError(f"Request decode failed: {e}") from None
    if type(body) is not dict:
        raise KvError("Request decode failed: the body must be a JSON object")
    body = folded(body)
    ttl_text = body.get("ttl") or ""
    ttl_ms = _ms(ttl_text, "TTL") if ttl_text else 0
    if ttl_ms and not model.MIN_TTL_MS <= ttl_ms <= model.MAX_TTL_MS:
        raise KvError(f"Invalid Session TTL '{ttl_text}', must be between 10s and 24h0m0s")
    behavior = body.get("behavior") or "release"
    if behavior not in model.BEHAVIORS:
        raise KvError(f"Invalid Behavior setting '{behavior}'")
    delay = body.get("lockdelay")
    delay_ms = model.DEFAULT_LOCK_DELAY_MS if delay is None else _lock_delay_ms(delay)
    checks = body.get("nodechecks", body.get("checks"))
    checks = ["serfHealth"] if checks is None else checks
    if (type(checks) is not list or any(c != "serfHealth" for c in checks)
            or body.get("servicechecks")):
        raise KvError("health checks other than serfHealth are not supported (raftsql runs "
                      "none): give the session a TTL instead")
    name, node = body.get("name") or "", body.get("node") or node_id
    if type(name) is not str or type(node) is not str:
        raise KvError("Name and Node must be strings")
    return Session(str(uuid.uuid4()), name, node, ttl_ms, behavior, delay_ms, tuple(checks), 0)


def _ms(text: Any, what: str) -> int:
    try:
        return int(parse_duration(str(text)) * 1000)
    except ValueError:
        raise KvError(f"invalid {what} {text!r}: a duration like 15s") from None


def _lock_delay_ms(value: Any) -> int:
    """Consul's LockDelay: a duration string, or a number: seconds when below 1000, else
    nanoseconds (Consul's FixupLockDelay)."""
    if type(value) is str:
        return _ms(value, "LockDelay")
    if type(value) in (int, float) and value >= 0:
        return int(value * 1000) if value < 1000 else int(value // 1_000_000)
    raise KvError(f"invalid LockDelay {value!r}")


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_put("/v1/session/create", handle_create)
    r.add_put("/v1/session/destroy/{id}", handle_destroy)
    r.add_put("/v1/session/renew/{id}", handle_renew)
    r.add_get("/v1/session/info/{id}", handle_info)
    r.add_get("/v1/session/list", handle_list)
    r.add_get("/v1/session/node/{node}", handle_node)
