"""The HTTP API under generated input (issue 11): thousands of bodies, query strings and
headers on every route, with and without auth. Whatever comes, a node answers (never a 5xx
but a 503), stays up, and a request it refuses (4xx) changes nothing in its database."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsql.http.auth import ROUTE_PERMS, Auth, parse_users
from raftsql.sql.backup import dump

from .inprocess import start_servers, wait_for

USERS = [{"username": "*", "perms": ["status", "ready"]},
         {"username": "admin", "password": "pw", "perms": ["all"]},
         {"username": "reader", "password": "r", "perms": ["query"]}]
PARAMS = ["level", "timeout", "db_timeout", "transaction", "queue", "wait", "redirect",
          "pretty", "timings", "associative", "blob_array", "freshness", "freshness_strict",
          "q", "fmt", "tables", "compress", "index", "recurse", "keys", "cas", "flags",
          "acquire", "release", "separator", "nonvoters", "ver", "key", "trailing_logs",
          "noleader", "raft_index", "qualify_columns", "linearizable_timeout", "token"]
PATHS = sorted({path for _, path in ROUTE_PERMS}) + [
    "/v1/kv/a", "/v1/kv/a/b", "/v1/session/destroy/x", "/v1/session/info/x",
    "/v1/session/renew/x", "/v1/session/node/n1", "/v1/changes/a", "/nope",
    "/raft/rpc/info", "/raft/rpc/join", "/raft/stream", "/raft/snapshot/1/1"]


class Background:
    """One node serving in a thread of its own (the test drives it with a plain client)."""

    def __init__(self, tmp_path, auth: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        make = (lambda node_id: Auth(parse_users(USERS))) if auth else None
        self.server = self.run(self._start(tmp_path, make))
        self.port = int(self.server.node.api_url.rsplit(":", 1)[1])

    async def _start(self, tmp_path, make):
        [server] = await start_servers(tmp_path, 1, heartbeat_ms=50, election_ms=300,
                                       auth=make, max_statements=50)
        await wait_for(lambda: server.node.is_leader)
        return server

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.run(self.server.stop(transfer=False))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module", params=[False, True], ids=["open", "auth"])
def node(request, tmp_path_factory) -> Iterator[Background]:
    bg = Background(tmp_path_factory.mktemp("fuzz"), auth=request.param)
    try:
        yield bg
    finally:
        bg.close()


def fingerprint(bg: Background) -> str:
    out = io.StringIO()
    dump(bg.server.database.path, out)
    return out.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
sql = st.sampled_from(["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)", "SELECT * FROM t",
                       "DROP TABLE t", "SELECT", "PRAGMA foreign_keys=ON", "BEGIN",
                       "SELECT randomblob(10)", "INSERT INTO nope VALUES (?)", ";", ""])
statements = st.lists(sql | st.tuples(sql, json_values).map(list), max_size=5)
bodies = st.one_of(
    st.just(b""), st.binary(max_size=200),
    statements.map(orjson.dumps), json_values.map(orjson.dumps),
    st.just(b"SQLite format 3\x00" + b"\x00" * 84), st.text(max_size=100).map(str.encode))
auths = st.sampled_from([None, "admin:pw", "reader:r", "admin:wrong", "nobody:x", "garbage"])


@st.composite
def requests(draw) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = draw(st.sampled_from(PATHS))
    keys = draw(st.lists(st.sampled_from(PARAMS), max_size=4))
    values = [draw(st.sampled_from(["", "1", "0", "-1", "x", "10s", "weak", "none", "strong",
                                    "linearizable", "sql", "99999999999999999999"]))
              for _ in keys]
    query = "&".join(f"{k}={v}" if v else k for k, v in zip(keys, values, strict=True))
    headers = {"Content-Type": draw(st.sampled_from(
        ["application/json", "text/plain", "application/octet-stream", "", "x/\x7f"]))}
    user = draw(auths)
    if user == "garbage":
        headers["Authorization"] = draw(st.sampled_from(["Basic !!", "Bearer x", "Basic", ""]))
    elif user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    if draw(st.booleans()):
        headers["X-Raftsql-Idempotency-Key"] = draw(st.text(
            st.characters(min_codepoint=32, max_codepoint=126), max_size=10))
    return method, path + (f"?{query}" if query else ""), headers, draw(bodies)


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=requests())
def test_generated_requests_never_break_a_node(node, req):
    method, target, headers, body = req
    if "index" in target.partition("?")[2]:
        # A blocking query waits for a change up to its wait (5 minutes by default): the
        # first wait given counts, so this one bounds it.
        path, _, query = target.partition("?")
        target = f"{path}?wait=1s&{query}"
    before = fingerprint(node)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        response = conn.getresponse()
        status = response.status
        response.read()
    finally:
        conn.close()
    assert status < 500 or status == 503, (status, req)
    assert node.server.node.failure is None
    if 400 <= status < 500:
        assert fingerprint(node) == before, (status, req)
