"""Forwarding, redirects and the cluster routes, between in-process servers.

A FakeFollower's server forwards to a FakeNode's server (or to a recording server, to see
the exact bytes that arrive); /nodes, /status, /readyz, /leader and /remove are checked on
both.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from raftsql.http.forward import FORWARDED_HEADER, NOT_LEADER_HEADER
from tests.fakes import FakeFollower, FakeNode, Member, fake_app

JSON = "application/json"


def url_of(server) -> str:
    return str(server.make_url("")).rstrip("/")


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Cluster:
    def __init__(self) -> None:
        self.leader: FakeNode
        self.follower: FakeFollower
        self.lc: Any
        self.fc: Any


@pytest.fixture
async def cluster(tmp_path, aiohttp_server, aiohttp_client):
    c = Cluster()
    c.leader = FakeNode(tmp_path, "n1", raft_addr="10.0.0.1:4002")
    lserver = await aiohttp_server(fake_app(c.leader))
    c.leader.api_url = url_of(lserver)
    c.follower = FakeFollower(tmp_path, c.leader, "n2", raft_addr="10.0.0.2:4002")
    fserver = await aiohttp_server(fake_app(c.follower))
    c.follower.api_url = url_of(fserver)
    c.leader.peers = [Member("n2", c.follower.api_url, c.follower.raft_addr)]
    c.lc = await aiohttp_client(lserver)
    c.fc = await aiohttp_client(fserver)
    yield c
    c.leader.close()
    c.follower.close()


async def call(client, method: str, path: str, body: Any = None, content_type: str | None = JSON,
               headers: dict[str, str] | None = None):
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    h = dict(headers or {})
    if content_type and data is not None:
        h["Content-Type"] = content_type
    resp = await client.request(method, path, data=data, headers=h, allow_redirects=False)
    return resp.status, resp.headers, await resp.read()


# ---- forwarding -------------------------------------------------------------------------


async def test_follower_forwards_writes_and_reads(cluster: Cluster) -> None:
    status, headers, body = await call(cluster.fc, "POST", "/db/execute?timings",
                                       ["CREATE TABLE t(x)", "INSERT INTO t VALUES(7)"])
    assert status == 200
    assert [{k: v for k, v in r.items() if k != "time"} for r in json.loads(body)["results"]] == [
        {}, {"last_insert_id": 1, "rows_affected": 1}]
    assert headers["X-RQLITE-SERVED-BY"] == "10.0.0.1:4002"  # the leader's Raft address
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert cluster.leader.calls[-1] == ("execute", ["CREATE TABLE t(x)", "INSERT INTO t VALUES(7)"])
    # the default level (linearizable) and weak/strong/auto are served by the leader
    for level in ["", "&level=weak", "&level=linearizable", "&level=strong", "&level=auto"]:
        status, headers, body = await call(cluster.fc, "GET", f"/db/query?q=SELECT+x+FROM+t{level}")
        assert body == b'{"results":[{"columns":["x"],"types":["integer"],"values":[[7]]}]}', level
        assert headers["X-RQLITE-SERVED-BY"] == "10.0.0.1:4002"
    # level=none reads the follower's own copy (a fake: nothing was replicated to it)
    _, headers, body = await call(cluster.fc, "GET", "/db/query?level=none&q=SELECT+x+FROM+t")
    assert body == b'{"results":[{"error":"no such table: t"}]}'
    assert headers["X-RQLITE-SERVED-BY"] == cluster.follower.api_url.removeprefix("http://")
    # /db/request too
    _, _, body = await call(cluster.fc, "POST", "/db/request?associative", ["INSERT INTO t VALUES(8)"])
    assert body == b'{"results":[{"last_insert_id":2,"rows_affected":1,"rows":null}]}'


async def test_forwarded_requests_keep_their_bytes(tmp_path, aiohttp_server, aiohttp_client) -> None:
    seen: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path_qs": request.rel_url.raw_path_qs,
                     "body": await request.read(), "content_type": request.headers.get("Content-Type"),
                     "forwarded": request.headers.get(FORWARDED_HEADER),
                     "auth": request.headers.get("Authorization")})
        return web.Response(status=200, body=b'{"results":[],"from":"leader"}',
                            headers={"Content-Type": "application/json; charset=utf-8"})

    echo = web.Application()
    echo.router.add_route("*", "/{tail:.*}", record)
    eserver = await aiohttp_server(echo)
    leader = FakeNode(tmp_path, "n1", api_url=url_of(eserver))
    follower = FakeFollower(tmp_path, leader, "n2")
    fc = await aiohttp_client(fake_app(follower))
    body = b'[ "INSERT INTO t VALUES(1)" ,\n ["INSERT INTO t VALUES(?)", 1.50, "\\u00e9"]]'
    status, headers, got = await call(fc, "POST", "/db/execute?transaction&timings=false&q=a%20b+c",
                                      body, headers={"Authorization": "Basic dTpw"})
    assert (status, got) == (200, b'{"results":[],"from":"leader"}')
    assert seen[-1] == {"method": "POST", "path_qs": "/db/execute?transaction&timings=false&q=a%20b+c",
                        "body": body, "content_type": JSON, "forwarded": "n2", "auth": "Basic dTpw"}
    assert headers["X-RQLITE-SERVED-BY"] == leader.raft_addr
    await call(fc, "POST", "/db/query", b"SELECT 1;  SELECT 2", content_type="text/plain")
    assert seen[-1]["body"] == b"SELECT 1;  SELECT 2" and seen[-1]["content_type"] == "text/plain"
    await call(fc, "GET", "/db/query?q=SELECT+1&level=strong")
    assert seen[-1]["method"] == "GET" and seen[-1]["path_qs"] == "/db/query?q=SELECT+1&level=strong"
    leader.close()
    follower.close()


async def test_redirect(cluster: Cluster) -> None:
    status, headers, body = await call(cluster.fc, "GET", "/db/query?redirect&q=SELECT+1")
    assert status == 301
    assert headers["Location"] == cluster.leader.api_url + "/db/query?redirect&q=SELECT+1"
    assert body == b""
    status, headers, _ = await call(cluster.fc, "POST", "/db/execute?redirect=true&timings",
                                    ["CREATE TABLE r(x)"])
    assert (status, headers["Location"]) == (301, cluster.leader.api_url + "/db/execute?redirect=true&timings")
    assert cluster.leader.calls == []  # the client must re-send it
    status, headers, _ = await call(cluster.fc, "DELETE", "/remove?redirect", {"id": "n2"})
    assert (status, headers["Location"]) == (301, cluster.leader.api_url + "/remove?redirect")
    # the leader itself just serves a redirect request
    status, _, _ = await call(cluster.lc, "GET", "/db/query?redirect&q=SELECT+1")
    assert status == 200


async def test_no_leader_is_503_once_the_timeout_ends(tmp_path, aiohttp_client) -> None:
    orphan = FakeFollower(tmp_path, None, "n3")
    client = await aiohttp_client(fake_app(orphan))
    for method, path, body in [
        ("POST", "/db/execute", ["CREATE TABLE x(y)"]), ("POST", "/db/execute?redirect", ["CREATE TABLE x(y)"]),
        ("GET", "/db/query?q=SELECT+1", None), ("GET", "/db/query?level=weak&q=SELECT+1", None),
        ("GET", "/db/query?level=strong&q=SELECT+1", None), ("POST", "/db/request", ["CREATE TABLE x(y)"]),
        ("DELETE", "/remove", {"id": "n1"}), ("POST", "/leader", None),
    ]:
        sep = "&" if "?" in path else "?"
        status, headers, got = await call(client, method, f"{path}{sep}timeout=200ms", body)
        assert (status, got) == (503, b"leader not found\n"), path
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["Retry-After"] == "1"
    # a queued write and GET /leader say so at once, as in rqlite
    for method, path, body in [("POST", "/db/execute?queue", ["CREATE TABLE x(y)"]),
                               ("GET", "/leader", None)]:
        assert (await call(client, method, path, body))[::2] == (503, b"leader not found\n")
    # reads at none still work on a node cut off from any leader; noleader queues anyway
    status, _, got = await call(client, "GET", "/db/query?level=none&q=SELECT+1")
    assert (status, got) == (200, b'{"results":[{"columns":["1"],"types":["integer"],"values":[[1]]}]}')
    status, _, got = await call(client, "POST", "/db/execute?queue&noleader", ["SELECT 1"])
    assert status == 200 and b"sequence_number" in got
    orphan.close()


async def test_a_request_waits_for_a_leader_to_be_elected(cluster: Cluster) -> None:
    f = cluster.follower
    leader = f.leader
    f.leader, f.leader_id = None, None  # an election is going on

    async def elected() -> None:
        await asyncio.sleep(0.3)
        f.leader, f.leader_id = leader, leader.node_id

    asyncio.get_running_loop().create_task(elected())
    status, _, body = await call(cluster.fc, "POST", "/db/execute?timeout=5s", ["CREATE TABLE w(x)"])
    assert (status, body) == (200, b'{"results":[{}]}')
    assert cluster.leader.calls == [("execute", ["CREATE TABLE w(x)"])]


async def test_a_forwarded_request_is_never_forwarded_again(cluster: Cluster) -> None:
    status, headers, body = await call(cluster.fc, "POST", "/db/execute", ["CREATE TABLE z(x)"],
                                       headers={FORWARDED_HEADER: "n9"})
    assert (status, body) == (503, b"not leader: the forwarded request was not applied\n")
    assert headers[NOT_LEADER_HEADER] == "1"
    assert cluster.leader.calls == []


async def test_forwarding_rides_through_a_leader_change(tmp_path, aiohttp_server,
                                                          aiohttp_client) -> None:
    """The leader died: the connection is refused, so the write certainly never reached it.
    The follower waits for the next leader and forwards the write there, exactly once."""
    dead = FakeNode(tmp_path, "n1", api_url=dead_url())
    new = FakeNode(tmp_path, "n3")
    new.api_url = url_of(await aiohttp_server(fake_app(new)))
    follower = FakeFollower(tmp_path, dead, "n2")
    client = await aiohttp_client(fake_app(follower))

    async def elected() -> None:
        await asyncio.sleep(0.5)
        follower.leader, follower.leader_id = new, new.node_id

    asyncio.get_running_loop().create_task(elected())
    status, _, body = await call(client, "POST", "/db/execute?timeout=10s", ["CREATE TABLE f(x)"])
    assert (status, body) == (200, b'{"results":[{}]}')
    assert new.calls == [("execute", ["CREATE TABLE f(x)"])]
    # ... and when no new leader comes in time: 503 with the reason, never 200
    follower.leader, follower.leader_id = dead, dead.node_id
    status, headers, body = await call(client, "POST", "/db/execute?timeout=1s", ["CREATE TABLE g(x)"])
    d = json.loads(body)
    assert status == 503 and headers["Retry-After"] == "1" and d["results"] == []
    assert d["error"].startswith("forwarding to leader n1: cannot connect to 127.0.0.1:"), d
    status, _, body = await call(client, "DELETE", "/remove?timeout=1s", {"id": "n1"})
    assert status == 503 and body.startswith(b"forwarding to leader n1: cannot connect")
    for n in (dead, new, follower):
        n.close()


async def test_a_node_that_lost_leadership_sends_the_request_on(tmp_path, aiohttp_server,
                                                                 aiohttp_client) -> None:
    """The node named as leader answers a forwarded request 'not leader, not applied': the
    follower goes on to whoever leads next."""
    leader = FakeNode(tmp_path, "n1")
    leader.api_url = url_of(await aiohttp_server(fake_app(leader)))
    stale = FakeFollower(tmp_path, leader, "n3")  # it no longer leads; it follows n1
    stale.api_url = url_of(await aiohttp_server(fake_app(stale)))
    follower = FakeFollower(tmp_path, stale, "n2")  # still believes n3 leads
    client = await aiohttp_client(fake_app(follower))

    async def learns() -> None:
        await asyncio.sleep(0.3)
        follower.leader, follower.leader_id = leader, leader.node_id

    asyncio.get_running_loop().create_task(learns())
    status, _, body = await call(client, "POST", "/db/execute?timeout=5s", ["CREATE TABLE s(x)"])
    assert (status, body) == (200, b'{"results":[{}]}')
    assert leader.calls == [("execute", ["CREATE TABLE s(x)"])] and stale.calls == [
        ("execute", ["CREATE TABLE s(x)"])]  # refused there, before anything was proposed
    for n in (leader, stale, follower):
        n.close()


async def _hang_up_server() -> tuple[asyncio.Server, str, list[bytes]]:
    """Accepts a connection, reads the request, and closes without answering."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


async def test_a_write_that_may_have_been_delivered_is_never_sent_again(tmp_path, aiohttp_client
                                                                         ) -> None:
    server, url, seen = await _hang_up_server()
    leader = FakeNode(tmp_path, "n1", api_url=url)
    follower = FakeFollower(tmp_path, leader, "n2")
    client = await aiohttp_client(fake_app(follower))
    status, _, body = await call(client, "POST", "/db/execute?timeout=5s", ["CREATE TABLE m(x)"])
    d = json.loads(body)
    assert status == 503 and d["error"].startswith("forwarding to leader n1: ")
    assert d["error"].endswith("; the request may have been applied")
    assert len(seen) == 1
    # a read may be sent again: it is retried until the timeout
    status, _, body = await call(client, "GET", "/db/query?q=SELECT+1&timeout=1200ms")
    assert status == 503 and not json.loads(body)["error"].endswith("may have been applied")
    assert len(seen) >= 3
    server.close()
    leader.close()
    follower.close()


async def test_a_removed_node_says_so(cluster: Cluster) -> None:
    cluster.follower.removed = True
    cluster.follower.leader_id = None
    status, _, body = await call(cluster.fc, "POST", "/db/execute", ["CREATE TABLE r(x)"])
    assert (status, json.loads(body)["error"]) == (
        503, "this node is not a member of the cluster (it was removed)")


async def test_stale_reads_are_503(cluster: Cluster) -> None:
    f = cluster.follower
    f.contact = 5.0
    stale = (503, b'{"results":[],"error":"stale read"}')
    status, _, body = await call(cluster.fc, "POST", "/db/query?level=none&freshness=1s", [["SELECT 1"]])
    assert (status, body) == stale
    ok = b'{"results":[{"columns":["1"],"types":["integer"],"values":[[1]]}]}'
    assert (await call(cluster.fc, "POST", "/db/query?level=none&freshness=10s", [["SELECT 1"]]))[2] == ok
    assert (await call(cluster.fc, "POST", "/db/query?level=none&freshness=0", [["SELECT 1"]]))[2] == ok
    assert (await call(cluster.fc, "POST", "/db/query?level=none", [["SELECT 1"]]))[2] == ok
    f.contact = None  # never heard from a leader
    assert (await call(cluster.fc, "POST", "/db/query?level=none&freshness=1h", [["SELECT 1"]]))[::2] == stale
    # freshness only applies to none: a linearizable read goes to the leader
    assert (await call(cluster.fc, "POST", "/db/query?freshness=1ns", [["SELECT 1"]]))[2] == ok


async def test_freshness_strict_also_checks_the_age_of_the_data(cluster: Cluster) -> None:
    f = cluster.follower
    f.contact = 0.1  # the leader was heard from just now...
    path = "/db/query?level=none&freshness=1s&freshness_strict"
    ok = b'{"results":[{"columns":["1"],"types":["integer"],"values":[[1]]}]}'
    assert (await call(cluster.fc, "POST", path, [["SELECT 1"]]))[2] == ok  # caught up
    f.raft_index = 5
    f.status_override = {"commit_index": 9}  # ... but entries are committed and not applied
    assert f.database.applied_time_ms is None  # nor is it known how old the data is
    assert (await call(cluster.fc, "POST", path, [["SELECT 1"]]))[::2] == (
        503, b'{"results":[],"error":"stale read"}')
    f.database.applied_time_ms = int(time.time() * 1000) - 5000  # written 5 s ago
    assert (await call(cluster.fc, "POST", path, [["SELECT 1"]]))[0] == 503
    assert (await call(cluster.fc, "POST", path.replace("1s", "10s"), [["SELECT 1"]]))[2] == ok
    f.database.applied_time_ms = int(time.time() * 1000) - 100
    assert (await call(cluster.fc, "POST", path, [["SELECT 1"]]))[2] == ok


async def test_auto_level(cluster: Cluster) -> None:
    f = cluster.follower
    await call(cluster.fc, "GET", "/db/query?level=auto&q=SELECT+1")
    assert cluster.leader.calls[-2:] == [("barrier:weak", None), ("local-query", ["SELECT 1"])]  # weak, at the leader
    f.voter = False
    cluster.leader.calls.clear()
    f.contact = 9.0
    status, _, body = await call(cluster.fc, "GET", "/db/query?level=auto&freshness=1s&q=SELECT+1")
    assert (status, body) == (503, b'{"results":[],"error":"stale read"}')  # a replica: none
    assert cluster.leader.calls == []


# ---- /nodes --------------------------------------------------------------------------------


async def test_nodes(cluster: Cluster) -> None:
    cluster.leader.peers.append(Member("n3", dead_url(), "10.0.0.3:4002"))
    cluster.leader.peers.append(Member("n4", "", "10.0.0.4:4002", voter=False))
    status, _, body = await call(cluster.lc, "GET", "/nodes?ver=2&timeout=2s")
    assert status == 200
    nodes = json.loads(body)["nodes"]
    assert [n["id"] for n in nodes] == ["n1", "n2", "n3"]  # voters only, sorted by id
    n1, n2, n3 = nodes
    assert list(n1) == ["id", "api_addr", "addr", "version", "voter", "reachable", "leader", "time", "time_s"]
    assert n1 | {"time": 0, "time_s": ""} == {
        "id": "n1", "api_addr": cluster.leader.api_url, "addr": "10.0.0.1:4002", "version": "raftsql/0.1.0",
        "voter": True, "reachable": True, "leader": True, "time": 0, "time_s": ""}
    assert (n2["reachable"], n2["leader"], n2["version"], n2["api_addr"]) == (
        True, False, "raftsql/0.1.0", cluster.follower.api_url)
    assert (n3["reachable"], n3["leader"], n3["version"]) == (False, False, "")
    assert n3["error"]
    assert isinstance(n1["time"], float) and n1["time_s"].endswith("s")
    # legacy format: an object keyed by id
    _, _, body = await call(cluster.lc, "GET", "/nodes?nonvoters")
    legacy = json.loads(body)
    assert list(legacy) == ["n1", "n2", "n3", "n4"]
    assert legacy["n2"]["id"] == "n2" and legacy["n4"]["voter"] is False
    assert legacy["n4"]["error"] == "API address not known yet" and "api_addr" not in legacy["n4"]
    # a follower reports the leader as the leader
    _, _, body = await call(cluster.fc, "GET", "/nodes?ver=2")
    assert [(n["id"], n["leader"], n["reachable"]) for n in json.loads(body)["nodes"]] == [
        ("n1", True, True), ("n2", False, True)]
    # pretty
    _, _, body = await call(cluster.fc, "GET", "/nodes?ver=2&pretty")
    assert body.startswith(b'{\n    "nodes": [\n        {\n            "id": "n1",')


# ---- /status, /readyz ---------------------------------------------------------------------


async def test_status(cluster: Cluster) -> None:
    await call(cluster.lc, "POST", "/db/execute", ["CREATE TABLE s(x)"])
    status, headers, body = await call(cluster.lc, "GET", "/status")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    d = json.loads(body)
    assert {"build", "http", "node", "os", "runtime", "store"} <= set(d)
    store = d["store"]
    assert store["node_id"] == "n1"
    assert store["leader"] == {"node_id": "n1", "addr": "10.0.0.1:4002"}
    assert store["raft"]["state"] == "Leader"
    for key in ["term", "commit_index", "applied_index", "first_log_index", "last_log_index"]:
        assert type(store["raft"][key]) is int
    assert store["raft"]["applied_index"] == 1
    assert isinstance(d["http"]["queue"]["_default"]["sequence_number"], int)
    _, _, body = await call(cluster.fc, "GET", "/status?key=store.leader")
    assert json.loads(body) == {"addr": "10.0.0.1:4002", "node_id": "n1"}
    _, _, body = await call(cluster.fc, "GET", "/status?key=store.raft.state")
    assert body == b'"Follower"'
    assert (await call(cluster.fc, "GET", "/status?key=store.nope.x"))[2] == b"{}"
    _, _, body = await call(cluster.fc, "GET", "/status?pretty&key=store.leader")
    assert body == b'{\n    "addr": "10.0.0.1:4002",\n    "node_id": "n1"\n}'


async def test_readyz(cluster: Cluster, tmp_path, aiohttp_client) -> None:
    for client in (cluster.lc, cluster.fc):
        status, headers, body = await call(client, "GET", "/readyz")
        assert (status, body) == (200, b"[+]node ok\n[+]leader ok\n[+]store ok")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert (await call(cluster.lc, "GET", "/readyz?sync"))[:3:2] == (
        200, b"[+]node ok\n[+]leader ok\n[+]store ok\n[+]sync ok")
    orphan = FakeFollower(tmp_path, None, "n5")
    client = await aiohttp_client(fake_app(orphan))
    assert (await call(client, "GET", "/readyz"))[::2] == (503, b"[+]node ok\n[+]leader does not exist")
    assert (await call(client, "GET", "/readyz?noleader"))[::2] == (200, b"[+]node ok")
    cluster.leader.ready = False
    assert (await call(cluster.lc, "GET", "/readyz"))[::2] == (
        503, b"[+]node ok\n[+]leader ok\n[+]store not ready")
    orphan.close()


# ---- /leader, /remove ---------------------------------------------------------------------


async def test_leader(cluster: Cluster) -> None:
    for client in (cluster.lc, cluster.fc):
        status, _, body = await call(client, "GET", "/leader")
        d = json.loads(body)
        assert status == 200
        assert {k: d[k] for k in ("id", "api_addr", "addr", "voter", "reachable", "leader")} == {
            "id": "n1", "api_addr": cluster.leader.api_url, "addr": "10.0.0.1:4002", "voter": True,
            "reachable": True, "leader": True}
    # stepping down, asked of a follower: forwarded to the leader
    status, _, body = await call(cluster.fc, "POST", "/leader", {"id": "n2"})
    assert (status, body) == (200, b"")
    assert cluster.leader.transfers == ["n2"]
    assert (await call(cluster.lc, "POST", "/leader"))[0] == 200
    assert cluster.leader.transfers == ["n2", None]
    for bad, message in [(b"{", b"invalid JSON body\n"), (b'{"id": 5}', b"invalid request\n"),
                         (b'{"node": "n2"}', b"invalid request\n")]:
        assert (await call(cluster.lc, "POST", "/leader", bad))[::2] == (400, message)
    cluster.leader.peers = []
    assert (await call(cluster.lc, "POST", "/leader"))[::2] == (503, b"leadership transfer refused\n")


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b'"n2"', b"{}", b'{"id": 2}', b'{"id": "n2", "extra": 1}', b'{"ID": "n2"}',
])
async def test_remove_body_must_be_exactly_an_id(cluster: Cluster, body: bytes) -> None:
    status, headers, got = await call(cluster.lc, "DELETE", "/remove", body)
    assert status == 400 and got.endswith(b"\n") and got.count(b"\n") == 1
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert cluster.leader.removed_ids == []


async def test_remove(cluster: Cluster) -> None:
    cluster.leader.peers.append(Member("n3", dead_url(), "10.0.0.3:4002"))
    status, headers, body = await call(cluster.fc, "DELETE", "/remove", {"id": "n3"})  # forwarded
    assert (status, body) == (200, b"")
    assert headers["X-RQLITE-SERVED-BY"] == "10.0.0.1:4002"
    assert cluster.leader.removed_ids == ["n3"]
    status, _, body = await call(cluster.lc, "DELETE", "/remove", {"id": "n9"})
    assert (status, body) == (400, b"node n9 is not a member of the cluster\n")
    assert (await call(cluster.lc, "POST", "/remove", {"id": "n2"}))[::2] == (405, b"")
