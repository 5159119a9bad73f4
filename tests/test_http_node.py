"""The API on real raftsql.node.Node instances, in-process: the duck-typed interface holds.

A 3-node cluster shares one event loop: each node serves its API (and Raft, on the same
listener) on 127.0.0.1. Writes sent to a follower are forwarded to the leader; redirects
name the leader's real URL.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from .inprocess import start_servers, wait_for


@pytest.fixture
async def cluster(tmp_path):
    servers = await start_servers(tmp_path, heartbeat_ms=50, election_ms=300)
    nodes = [s.node for s in servers]
    await wait_for(lambda: any(n.is_leader for n in nodes))
    leader = next(n for n in nodes if n.is_leader)
    await wait_for(lambda: all(n.leader_id == leader.node_id for n in nodes))
    await wait_for(lambda: all(n.leader_api_url() for n in nodes))
    async with aiohttp.ClientSession() as session:
        yield nodes, leader, session
    for s in servers:
        await s.stop(transfer=False)


async def test_real_nodes(cluster) -> None:
    nodes, leader, session = cluster
    follower = next(n for n in nodes if not n.is_leader)

    async def call(node, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        async with session.request(method, node.api_url + path, data=data, allow_redirects=False,
                                   headers={"Content-Type": "application/json"}) as resp:
            return resp.status, resp.headers, await resp.read()

    status, _, body = await call(follower, "POST", "/db/execute",
                                 ["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", ["INSERT INTO t(v) VALUES(?)", "a"]])
    assert (status, body) == (200, b'{"results":[{},{"last_insert_id":1,"rows_affected":1}]}')
    for node in nodes:
        status, _, body = await call(node, "GET", "/db/query?q=SELECT+*+FROM+t")
        assert body == b'{"results":[{"columns":["id","v"],"types":["integer","text"],"values":[[1,"a"]]}]}'
    await wait_for(lambda: all(n.applied_index >= leader.applied_index for n in nodes))
    status, _, body = await call(follower, "GET", "/db/query?level=none&q=SELECT+COUNT(*)+FROM+t")
    assert json.loads(body)["results"][0]["values"] == [[1]]
    _, _, body = await call(follower, "POST", "/db/request?associative",
                            [["INSERT INTO t(v) VALUES(?)", "b"], "SELECT COUNT(*) AS n FROM t"])
    assert body == b'{"results":[{"last_insert_id":2,"rows_affected":1,"rows":null},{"types":{"n":"integer"},"rows":[{"n":2}]}]}'
    status, headers, _ = await call(follower, "GET", "/db/query?redirect&q=SELECT+1")
    assert (status, headers["Location"]) == (301, leader.api_url + "/db/query?redirect&q=SELECT+1")
    status, _, body = await call(follower, "POST", "/db/execute?queue&wait", [["INSERT INTO t(v) VALUES(?)", "q"]])
    assert status == 200 and json.loads(body)["sequence_number"]
    _, _, body = await call(leader, "GET", "/db/query?q=SELECT+COUNT(*)+FROM+t")
    assert json.loads(body)["results"][0]["values"] == [[3]]

    status, _, body = await call(follower, "GET", "/nodes?ver=2")
    got = json.loads(body)["nodes"]
    assert [(n["id"], n["reachable"], n["leader"]) for n in got] == [
        (n.node_id, True, n.node_id == leader.node_id) for n in sorted(nodes, key=lambda n: n.node_id)]
    status, _, body = await call(follower, "GET", "/status")
    store = json.loads(body)["store"]
    assert store["leader"]["node_id"] == leader.node_id and store["raft"]["state"] == "Follower"
    assert (await call(follower, "GET", "/readyz"))[0] == 200
    status, _, body = await call(follower, "GET", "/leader")
    assert json.loads(body)["id"] == leader.node_id


async def _call(session, node, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    async with session.request(method, node.api_url + path, data=data, allow_redirects=False,
                               headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.read()


async def test_post_snapshot_compacts_the_log_now(cluster) -> None:
    nodes, leader, session = cluster
    follower = next(n for n in nodes if not n.is_leader)
    await _call(session, leader, "POST", "/db/execute",
                ["CREATE TABLE s(x)", *[f"INSERT INTO s VALUES({i})" for i in range(5)]])
    for i in range(10):
        await _call(session, leader, "POST", "/db/execute", [f"INSERT INTO s VALUES({i})"])
    await wait_for(lambda: follower.applied_index >= leader.applied_index)
    before = follower.status()["raft"]
    assert before["first_log_index"] == 1 and before["snapshot_index"] == 0
    assert (await _call(session, follower, "POST", "/snapshot")) == (200, b"")  # this node's own
    after = follower.status()["raft"]
    assert after["snapshot_index"] == before["applied_index"]
    assert after["first_log_index"] == 1  # fewer entries than --trailing-logs: all kept
    assert (await _call(session, follower, "POST", "/snapshot"))[0] == 204  # nothing new
    assert leader.status()["raft"]["snapshot_index"] == 0  # the others are untouched
    for keep in (5, 0):
        await _call(session, leader, "POST", "/db/execute", ["INSERT INTO s VALUES(0)"])
        await wait_for(lambda: follower.applied_index >= leader.applied_index)
        path = f"/snapshot?trailing_logs={keep}"
        assert (await _call(session, follower, "POST", path))[0] == 200
        raft = follower.status()["raft"]
        assert raft["first_log_index"] == raft["snapshot_index"] - keep + 1
    assert (await _call(session, follower, "POST", "/snapshot?trailing_logs=-2"))[0] == 400
    status, body = await _call(session, follower, "GET", "/db/query?level=none&q=SELECT+count(*)+FROM+s")
    assert json.loads(body)["results"][0]["values"] == [[17]]
    # the schema is exactly the user's, at every level, on every node, after the snapshot
    for node in nodes:
        for level in ("none", "weak", "linearizable", "strong"):
            for sql in ("SELECT name FROM sqlite_master", "SELECT name FROM sqlite_schema",
                        "SELECT name FROM pragma_table_list WHERE schema = 'main'"):
                _, body = await _call(session, node, "POST", f"/db/query?level={level}", [sql])
                names = {v[0] for v in json.loads(body)["results"][0]["values"]}
                assert names - {"sqlite_schema"} == {"s"}, (node.node_id, level, sql)


async def test_removing_the_leader_succeeds_and_the_others_go_on(cluster) -> None:
    nodes, leader, session = cluster
    others = [n for n in nodes if n is not leader]
    assert (await _call(session, leader, "POST", "/db/execute", ["CREATE TABLE r(x)"]))[0] == 200
    status, body = await _call(session, others[0], "DELETE", "/remove", {"id": leader.node_id})
    assert (status, body) == (200, b"")  # forwarded to the leader, which removed itself
    await wait_for(lambda: any(n.is_leader for n in others))
    new = next(n for n in others if n.is_leader)
    assert leader.node_id not in new.conf.members()
    status, _ = await _call(session, others[0], "POST", "/db/execute", ["INSERT INTO r VALUES(1)"])
    assert status == 200
    await wait_for(lambda: leader.removed and not leader.is_leader)
    status, body = await _call(session, leader, "POST", "/db/execute?timeout=2s",
                               ["INSERT INTO r VALUES(2)"])
    assert (status, json.loads(body)["error"]) == (
        503, "this node is not a member of the cluster (it was removed)")
    _, body = await _call(session, new, "GET", "/db/query?q=SELECT+x+FROM+r")
    assert json.loads(body)["results"][0]["values"] == [[1]]
