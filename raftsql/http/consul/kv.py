"""`/v1/kv/<key>`, `/v1/txn` (Consul's), and `/v1/changes/<key>` (raftsql's ordered watch).

Reads are served by the leader (forwarded), `?stale` by this node, `?consistent` after a
ReadIndex round; writes go through the log on the leader. Blocking queries
(`?index=N&wait=D`) wait for a change of the key or prefix itself, nothing else.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web

from raftsql.errors import RequestError
from raftsql.http.consul.common import (
    READ,
    TIMEOUT,
    WRITE,
    Query,
    consul_headers,
    folded,
    idempotency_key,
    json_answer,
    on_leader,
    service,
)
from raftsql.http.respond import read_body, text_error
from raftsql.http.state import ApiState
from raftsql.kv import model
from raftsql.kv.model import Entry, KvError
from raftsql.kv.service import DEFAULT_WAIT, MAX_WAIT, Compacted, KvService

CHANGES_LIMIT = 1000  # changes in one answer of /v1/changes, unless ?limit says


def _path_key(request: web.Request) -> str:
    """The key in the path, percent-decoded here: yarl leaves a sequence that is not UTF-8
    as it was ("%FF"), which would store it under another client's key ("%25FF")."""
    _, _, _, raw = request.rel_url.raw_path.split("/", 3)  # /v1/kv/<key>, /v1/changes/<key>
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise KvError("a key must be valid UTF-8") from None


def _read_timeout(after: int | None, wait: float | None) -> float:
    """How long a read may take, a blocking one (`?index`) included, before the client is
    told: a forwarded blocking query must outlast its wait and jitter on the leader."""
    if not after:
        return TIMEOUT
    return TIMEOUT + min(DEFAULT_WAIT if wait is None else wait, MAX_WAIT) * 17 / 16


# ---- GET /v1/kv/<key> -----------------------------------------------------------------

async def handle_get(request: web.Request) -> web.StreamResponse:
    state, kv = service(request)
    q = Query(request.query)
    keys_only, recurse = q.flag("keys"), q.flag("recurse")
    prefix = keys_only or recurse
    key = model.check_key(_path_key(request), prefix=prefix)
    level, after, wait = q.level(), q.uint("index"), q.wait()
    separator = q.text("separator") if keys_only else None

    async def read() -> tuple[list[Entry], int]:
        return await kv.get(key, prefix=prefix, level=level)

    async def serve() -> web.StreamResponse:
        entries, index = await kv.blocking(key, prefix, after, wait, read)
        if not entries:
            return web.Response(status=404, headers=consul_headers(state, index))
        if keys_only:
            return json_answer(state, _keys(key, entries, separator), index)
        if q.flag("raw") and not recurse:
            return web.Response(body=entries[0].value or b"", headers={
                "Content-Type": "application/octet-stream", **consul_headers(state, index)})
        return json_answer(state, [_json(e) for e in entries], index)

    return await on_leader(state, request, b"", serve, READ, timeout=_read_timeout(after, wait))


def _json(e: Entry) -> dict[str, Any]:
    d = e.consul()
    if not e.value:
        d["Value"] = None  # as Consul gives an empty value
    return d


def _keys(prefix: str, entries: list[Entry], separator: str | None) -> list[str]:
    """?keys: every key under the prefix; with a separator, up to its first occurrence after
    the prefix (one level of a tree, Consul's "folders")."""
    out: list[str] = []
    for e in entries:
        k = e.key
        if separator:
            cut = k.find(separator, len(prefix))
            if cut >= 0:
                k = k[:cut + len(separator)]
        if not out or out[-1] != k:
            out.append(k)
    return out


# ---- PUT and DELETE /v1/kv/<key> --------------------------------------------------------

async def handle_put(request: web.Request) -> web.Response:
    state, kv = service(request)
    q = Query(request.query)
    key = model.check_key(_path_key(request))
    try:
        value = await read_body(request, kv.limits.max_value_bytes)
    except RequestError as e:
        if e.status != 413:
            raise
        raise KvError(f"value too large: at most {kv.limits.max_value_bytes} bytes",
                      413) from None
    flags = q.uint("flags", 0) or 0
    cas, acquire, release = q.uint("cas"), q.text("acquire"), q.text("release")
    if sum(x is not None for x in (cas, acquire, release)) > 1:
        raise KvError("Conflicting flags: only one of cas, acquire and release may be given")
    if cas is not None:
        op = model.op("cas", key, value=value, flags=flags, index=cas)
    elif acquire is not None:
        op = model.op("lock", key, value=value, flags=flags, session=_session(acquire))
    elif release is not None:
        op = model.op("unlock", key, value=value, flags=flags, session=_session(release))
    else:
        op = model.op("set", key, value=value, flags=flags)
    return await _write(state, kv, request, value, op)


async def handle_delete(request: web.Request) -> web.Response:
    state, kv = service(request)
    q = Query(request.query)
    recurse = q.flag("recurse")
    key = model.check_key(_path_key(request), prefix=recurse)
    cas = q.uint("cas")
    if recurse:
        op = model.op("delete-tree", key)
    elif cas is not None:
        op = model.op("delete-cas", key, index=cas)
    else:
        op = model.op("delete", key)
    return await _write(state, kv, request, b"", op)


def _session(sid: str) -> str:
    if not sid:
        raise KvError("missing session")
    return sid


async def _write(state: ApiState, kv: KvService, request: web.Request, body: bytes,
                 op: dict[str, Any]) -> web.Response:
    key = idempotency_key(request)

    async def serve() -> web.Response:
        outcome, index = await kv.write([op], timeout=TIMEOUT, idempotency_key=key)
        return json_answer(state, bool(outcome), index)

    return await on_leader(state, request, body, serve, WRITE)


# ---- PUT /v1/txn ----------------------------------------------------------------------

async def handle_txn(request: web.Request) -> web.Response:
    state, kv = service(request)
    body = await read_body(request, state.max_body_bytes)
    ops = _txn_ops(body, kv)
    key = idempotency_key(request)

    async def serve() -> web.Response:
        outcome, index = await kv.write(ops, transaction=True, timeout=TIMEOUT,
                                        idempotency_key=key)
        if outcome.get("errors"):
            return json_answer(state, {"Results": None, "Errors": outcome["errors"]}, index,
                               status=409)
        return json_answer(state, {"Results": outcome["results"], "Errors": None}, index)

    return await on_leader(state, request, body, serve, WRITE)


def _txn_ops(body: bytes, kv: KvService) -> list[dict[str, Any]]:
    """Consul's transaction body, checked whole before anything is proposed."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise KvError(f"Failed to parse body: {e}") from None
    if type(items) is not list:
        raise KvError("Failed to parse body: a transaction is a JSON list of operations")
    if len(items) > kv.limits.max_txn_ops:
        raise KvError(f"Transaction contains too many operations ({len(items)} > "
                      f"{kv.limits.max_txn_ops})", 413)
    ops = []
    for i, item in enumerate(items):
        try:
            ops.append(_txn_op(item, kv.limits.max_value_bytes))
        except KvError as e:
            raise KvError(f"operation {i}: {e}", e.status) from None
    return ops


def _txn_op(item: Any, max_value: int) -> dict[str, Any]:
    item = folded(item) if type(item) is dict else item
    if type(item) is not dict or set(item) != {"kv"} or type(item["kv"]) is not dict:
        raise KvError('only KV operations ({"KV": {...}}) are supported')
    d = folded(item["kv"])
    verb = d.get("verb")
    if verb not in model.KV_VERBS:
        raise KvError(f"unknown KV verb {verb!r}")
    key = model.check_key(d.get("key", ""), prefix=verb in model.TREE_VERBS)
    value = model.check_value(model.decode_value(d.get("value")), max_value)
    flags = model.check_index(d.get("flags", 0) or 0, "Flags")
    index = model.check_index(d.get("index", 0) or 0, "Index")
    session = d.get("session") or None
    if verb in ("lock", "unlock", "check-session") and (type(session) is not str):
        raise KvError(f"{verb} needs a Session")
    return model.op(verb, key, value=value or None, flags=flags, index=index, session=session)


# ---- GET /v1/changes/<key> -----------------------------------------------------------

async def handle_changes(request: web.Request) -> web.Response:
    state, kv = service(request)
    q = Query(request.query)
    prefix = q.flag("recurse")
    key = model.check_key(_path_key(request), prefix=prefix)
    after, wait, level = q.uint("index"), q.wait(), q.level()
    limit = q.uint("limit", CHANGES_LIMIT) or CHANGES_LIMIT

    async def serve() -> web.Response:
        try:
            changes, index = await kv.changes(key, prefix, after, wait=wait, limit=limit,
                                              level=level)
        except Compacted as e:
            response = text_error(410, e.message)
            response.headers["X-Raftsql-Compact-Index"] = str(e.floor)
            response.headers.update(consul_headers(state, None))
            return response
        return json_answer(state, changes, index)

    return await on_leader(state, request, b"", serve, READ, timeout=_read_timeout(after, wait))


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/v1/kv/{key:.*}", handle_get)
    r.add_put("/v1/kv/{key:.*}", handle_put)
    r.add_delete("/v1/kv/{key:.*}", handle_delete)
    r.add_put("/v1/txn", handle_txn)
    r.add_get("/v1/changes/{key:.*}", handle_changes)
