"""What Consul's routes share: its query parameters, its headers, serving on the leader."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from raftsql.http import forward
from raftsql.http.params import DEFAULT_LEVEL, parse_duration
from raftsql.http.respond import IDEMPOTENCY_KEY, JSON_TYPE, Route
from raftsql.http.state import ApiState, state_of
from raftsql.kv.model import KvError
from raftsql.kv.service import KvService
from raftsql.sql.keys import valid_key
from raftsql.sql.service import Level

READ = Route(json=False, timeout="timeout waiting for a read")
WRITE = Route(json=False, write=True, timeout="timeout waiting for commit")
TIMEOUT = 30.0  # seconds a request may wait for a leader and its entry's commit
BAD_KEY = f"{IDEMPOTENCY_KEY} must be 1 to 128 printable ASCII characters"


class Query:
    """Consul's query parameters: most are flags (present or not, whatever their value)."""

    def __init__(self, query: Mapping[str, str]):
        self._q = query

    def flag(self, name: str) -> bool:
        return name in self._q

    def text(self, name: str) -> str | None:
        return self._q.get(name)

    def uint(self, name: str, default: int | None = None) -> int | None:
        text = self._q.get(name)
        if text is None:
            return default
        # 63 bits: what apply takes (SQLite's INTEGER), so a larger one is refused here, not
        # after its entry is proposed.
        if not text.isdigit() or int(text) >= 1 << 63:
            raise KvError(f"invalid {name}: {text!r} is not an integer from 0 to {(1 << 63) - 1}")
        return int(text)

    def wait(self) -> float | None:
        text = self._q.get("wait")
        if not text:
            return None
        try:
            seconds = parse_duration(text if not text.isdigit() else text + "s")
        except ValueError:
            raise KvError(f"invalid wait: {text!r}") from None
        if seconds < 0:
            raise KvError(f"invalid wait: {text!r}")
        return seconds

    def level(self) -> Level:
        if self.flag("stale") and self.flag("consistent"):
            raise KvError("Cannot specify ?stale with ?consistent, conflicting semantics.")
        if self.flag("stale"):
            return Level.NONE
        # ?consistent, and Consul's default mode too: the cluster's default, linearizable.
        return Level.LINEARIZABLE if self.flag("consistent") else Level(DEFAULT_LEVEL)


def folded(body: dict[str, Any]) -> dict[str, Any]:
    """A JSON object's fields by lower-case name: Consul (Go's encoding/json) matches field
    names without regard to case, and clients rely on it (py-consul sends "ttl", "lockdelay")."""
    return {str(k).lower(): v for k, v in body.items()}


def service(request: web.Request) -> tuple[ApiState, KvService]:
    state = state_of(request)
    if state.kv is None:
        raise web.HTTPNotFound()
    return state, state.kv


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not valid_key(key):
        raise KvError(BAD_KEY)
    return key


def consul_headers(state: ApiState, index: int | None) -> dict[str, str]:
    """X-Consul-Index (when the answer has one), -KnownLeader, -LastContact (ms)."""
    node = state.node
    contact = 0.0 if node.is_leader else node.last_contact()
    h = {"X-Consul-KnownLeader": "true" if node.leader_id else "false",
         "X-Consul-LastContact": str(int((contact or 0.0) * 1000))}
    if index is not None:
        h["X-Consul-Index"] = str(index)
    return h


def json_answer(state: ApiState, data: Any, index: int | None = None, status: int = 200
                ) -> web.Response:
    headers = {"Content-Type": JSON_TYPE, **consul_headers(state, index)}
    return web.Response(status=status, body=orjson.dumps(data), headers=headers)


async def on_leader(state: ApiState, request: web.Request, body: bytes,
                    serve: Callable[[], Awaitable[web.Response]], route: Route, *,
                    timeout: float = TIMEOUT) -> web.Response:
    """Served here when this node can (it leads, or the read is ?stale), else forwarded."""
    return await forward.on_leader(state, request, body, serve, route, redirect=False,
                                   timeout=timeout)
