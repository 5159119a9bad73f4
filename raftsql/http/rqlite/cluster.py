"""Cluster routes: /status, /nodes, /readyz, /leader, /remove, /snapshot, /metrics
(rqlite-api.md §1.4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import socket
import sys
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.exposition import generate_latest

from raftsql import __version__
from raftsql.errors import RequestError
from raftsql.http import forward
from raftsql.http.params import Params, go_duration_string
from raftsql.http.respond import (
    LEADER_NOT_FOUND,
    TEXT_TYPE,
    VERSION,
    Route,
    json_response,
    read_body,
    text_error,
)
from raftsql.http.rqlite.encode import dumps, indent, json_float
from raftsql.http.state import ApiState, state_of

# What generate_latest writes, named so every Prometheus server reads it (newer ones call
# the same format 1.0.0).
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NODE_CHECK_TIMEOUT = 2.0  # /nodes: how long a peer's /readyz?noleader may take


def _json(value: Any, pretty: bool, sort: bool = False) -> web.Response:
    body = orjson.dumps(value, option=orjson.OPT_SORT_KEYS) if sort else dumps(value)
    return json_response(indent(body) if pretty else body)


# ---- /status ------------------------------------------------------------------------


async def handle_status(request: web.Request) -> web.Response:
    state = state_of(request)
    params = Params.parse(request.query)
    status = build_status(state)
    key = params.raw.get("key", "")
    if key:
        status = _subtree(status, key.split("."))
    return _json(status, params.pretty, sort=True)


def build_status(state: ApiState) -> dict[str, Any]:
    """rqlite's /status sections; `store` is the node's own report (DESIGN.md §5)."""
    node = state.node
    now = time.time()
    queue = state.queue
    return {
        "build": {"product": "raftsql", "version": __version__, "version_header": VERSION},
        "http": {
            "bind_addr": state.served_here(),
            "auth": "disabled",
            "queue": {"_default": {
                "sequence_number": queue.flushed if queue else 0,
                "queued_sequence_number": queue.sequence_number if queue else 0,
                "pending": len(queue._items) if queue else 0,
                **(queue.stats if queue else {}),
            }},
        },
        "node": {
            "start_time": _iso(state.started),
            "current_time": _iso(now),
            "uptime": go_duration_string(now - state.started),
        },
        "os": {
            "pid": os.getpid(), "ppid": os.getppid(), "page_size": os.sysconf("SC_PAGE_SIZE")
            if hasattr(os, "sysconf") else 4096,
            "hostname": socket.gethostname(), "executable": sys.executable,
        },
        "runtime": {
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": sys.platform, "num_cpu": os.cpu_count() or 1,
        },
        "store": node.status(),
        "metrics": {**node.metrics.summary(), "http_requests": state.metrics.total()},
        **({"config_store": state.kv.status()} if state.kv is not None else {}),
    }


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def _subtree(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return {}
        value = value[key]
    return value


# ---- /nodes -------------------------------------------------------------------------


async def handle_nodes(request: web.Request) -> web.Response:
    state = state_of(request)
    params = Params.parse(request.query)
    timeout = params.duration("timeout", NODE_CHECK_TIMEOUT)
    members = [m for m in state.node.members() if m.voter or params.flag("nonvoters")]
    nodes = await asyncio.gather(*(check_node(state, m, timeout) for m in members))
    nodes.sort(key=lambda n: n["id"])
    if params.raw.get("ver") == "2":
        return _json({"nodes": nodes}, params.pretty)
    return _json({n["id"]: n for n in sorted(nodes, key=lambda n: n["id"])}, params.pretty)


async def check_node(state: ApiState, member: Any, timeout: float) -> dict[str, Any]:
    """rqlite's Node object: id, api_addr, addr, version, voter, reachable, leader, time, time_s, error."""
    node = state.node
    start = time.perf_counter()
    version, error = "", None
    if member.id == node.node_id:
        version = VERSION  # this node answers, so it is reachable
    elif not member.api_url:
        error = "API address not known yet"
    else:
        version, error = await _probe(state, member.api_url, timeout)
    elapsed = time.perf_counter() - start
    d: dict[str, Any] = {"id": member.id}
    if member.api_url:
        d["api_addr"] = member.api_url
    if member.raft_addr:
        d["addr"] = member.raft_addr
    d["version"] = version
    d["voter"] = bool(member.voter)
    d["reachable"] = error is None
    d["leader"] = error is None and member.id == node.leader_id
    if elapsed:
        d["time"] = json_float(elapsed)
        d["time_s"] = go_duration_string(elapsed)
    if error:
        d["error"] = error
    return d


async def _probe(state: ApiState, api_url: str, timeout: float) -> tuple[str, str | None]:
    try:
        async with state.client.get(
            api_url.rstrip("/") + "/readyz?noleader", timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            await resp.read()
            if resp.status != 200:
                return "", f"readyz answered {resp.status}"
            return resp.headers.get("X-RQLITE-VERSION") or "unknown", None
    except TimeoutError:
        return "", "timeout waiting for node to respond"
    except (aiohttp.ClientError, OSError) as e:
        return "", str(e) or type(e).__name__


# ---- /readyz ------------------------------------------------------------------------


async def handle_readyz(request: web.Request) -> web.Response:
    state = state_of(request)
    params = Params.parse(request.query)
    node = state.node
    if params.noleader:
        return _text(200, "[+]node ok")
    if node.leader_id is None:
        return _text(503, "[+]node ok\n[+]leader does not exist")
    lines = ["[+]node ok", "[+]leader ok"]
    if not node.status().get("ready", True):
        return _text(503, "\n".join([*lines, "[+]store not ready"]))
    lines.append("[+]store ok")
    if params.flag("sync"):
        if not await _caught_up(node, params.timeout):
            return _text(503, "\n".join([*lines, "[+]sync timeout"]))
        lines.append("[+]sync ok")
    return _text(200, "\n".join(lines))


async def _caught_up(node: Any, timeout: float) -> bool:
    """Wait until this node has applied what it knew to be committed when asked."""
    target = node.status()["raft"]["commit_index"]
    deadline = time.monotonic() + timeout
    while node.status()["raft"]["applied_index"] < target:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": TEXT_TYPE})


# ---- /leader ------------------------------------------------------------------------


async def handle_leader_get(request: web.Request) -> web.Response:
    state = state_of(request)
    params = Params.parse(request.query)
    leader_id = state.node.leader_id
    if leader_id is None:
        return text_error(503, LEADER_NOT_FOUND)
    leader = state.member(leader_id) or SimpleNamespace(
        id=leader_id, api_url=state.node.leader_api_url() or "", raft_addr="", voter=True)
    timeout = params.duration("timeout", NODE_CHECK_TIMEOUT)
    return _json(await check_node(state, leader, timeout), params.pretty)


async def handle_leader_post(request: web.Request) -> web.Response:
    """Make the leader step down, to `{"id": target}` if given (forwarded from followers)."""
    state = state_of(request)
    params = Params.parse(request.query)
    body = await read_body(request, state.max_body_bytes)
    target = _leader_target(body)

    async def serve() -> web.Response:
        await state.node.transfer_leadership(target, timeout=params.timeout)
        return web.Response(status=200)

    return await _on_leader(request, body, params, serve, TRANSFER)


# A transfer sent twice would move leadership twice: like a write, never resent.
TRANSFER = Route(json=False, write=True, timeout="timeout waiting for a new leader")
REMOVE = Route(json=False, write=True, timeout="timeout waiting for the membership change")


async def _on_leader(request: web.Request, body: bytes, params: Params, serve: Any,
                     route: Route) -> web.Response:
    return await forward.on_leader(state_of(request), request, body, serve, route,
                                   redirect=params.redirect, timeout=params.timeout)


def _leader_target(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestError(400, "invalid JSON body") from None
    if not isinstance(obj, dict) or set(obj) - {"id"} or not isinstance(obj.get("id", ""), str):
        raise RequestError(400, "invalid request")
    return obj.get("id") or None


# ---- /remove ------------------------------------------------------------------------


async def handle_remove(request: web.Request) -> web.Response:
    state = state_of(request)
    params = Params.parse(request.query)
    body = await read_body(request, state.max_body_bytes)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestError(400, "invalid JSON body") from None
    if not isinstance(obj, dict) or set(obj) != {"id"} or not isinstance(obj["id"], str):
        raise RequestError(400, 'invalid request: the body must be {"id": "<node id>"}')

    async def serve() -> web.Response:
        await state.node.remove_member(obj["id"], timeout=params.timeout)
        return web.Response(status=200)

    return await _on_leader(request, body, params, serve, REMOVE)


# ---- /snapshot ----------------------------------------------------------------------


async def handle_snapshot(request: web.Request) -> web.Response:
    """Snapshot this node's database and compact its log now (rqlite 8.26+), keeping
    `trailing_logs` entries before it (default: --trailing-logs): 200, or 204 when the latest
    snapshot already holds everything applied."""
    state = state_of(request)
    params = Params.parse(request.query)
    trailing = params.integer("trailing_logs", -1)
    if trailing < -1:
        raise RequestError(400, "trailing_logs must not be negative")
    taken = await state.node.snapshot(None if trailing == -1 else trailing)
    return web.Response(status=200 if taken else 204)


# ---- /metrics -----------------------------------------------------------------------


async def handle_metrics(request: web.Request) -> web.Response:
    """The node's figures, then the API's, in Prometheus' text format."""
    state = state_of(request)
    body = generate_latest(state.node.metrics.registry) + generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})
