"""Queued writes: /db/execute?queue, the background flusher, and wait (rqlite-api.md §2.2)."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from raftsql.errors import LeadershipLostError
from raftsql.http.state import STATE
from tests.fakes import FakeFollower, FakeNode, fake_app

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(node, aiohttp_client):
    c = await aiohttp_client(fake_app(node, queue_timeout=0.02))
    await c.post("/db/execute", data=b'["CREATE TABLE q(id INTEGER PRIMARY KEY, v TEXT)"]', headers=JSON)
    return c


async def post(client, path: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await client.post(path, data=data, headers=JSON)
    raw = await resp.read()
    return resp.status, (json.loads(raw) if resp.content_type == "application/json" else {"text": raw})


async def count(client) -> int:
    resp = await client.get("/db/query?q=SELECT+COUNT(*)+FROM+q")
    return (await resp.json())["results"][0]["values"][0][0]


async def test_queue_answers_at_once_and_wait_flushes(client, node) -> None:
    status, first = await post(client, "/db/execute?queue", [["INSERT INTO q(v) VALUES(?)", "a"]])
    assert status == 200 and list(first) == ["results", "sequence_number"] and first["results"] == []
    status, second = await post(client, "/db/execute?queue=false&wait", [["INSERT INTO q(v) VALUES(?)", "b"]])
    assert second["sequence_number"] == first["sequence_number"] + 1
    assert await count(client) == 2  # wait: visible to a following read
    state = client.server.app[STATE]
    assert state.queue.flushed >= second["sequence_number"]
    resp = await client.get("/status?key=http.queue._default.sequence_number")
    assert await resp.json() == second["sequence_number"]


async def test_queued_requests_are_merged_into_one_write(client, node) -> None:
    node.calls.clear()
    seqs = []
    for i in range(5):
        _, d = await post(client, "/db/execute?queue", [["INSERT INTO q(v) VALUES(?)", f"m{i}"]])
        seqs.append(d["sequence_number"])
    status, barrier = await post(client, "/db/execute?queue&wait", b"")  # an empty body: a flush barrier
    assert status == 200 and barrier["sequence_number"] == seqs[-1] + 1
    writes = [c for c in node.calls if c[0] == "execute"]
    assert len(writes) == 1 and len(writes[0][1]) == 5
    assert await count(client) == 5


async def test_batches_are_cut_at_batch_size(node, aiohttp_client) -> None:
    client = await aiohttp_client(fake_app(node, queue_batch_size=3, queue_timeout=1.0))
    await client.post("/db/execute", data=b'["CREATE TABLE q(v)"]', headers=JSON)
    node.calls.clear()
    for i in range(7):
        await post(client, "/db/execute?queue", [["INSERT INTO q(v) VALUES(?)", i]])
    await post(client, "/db/execute?queue&wait", b"[]")
    assert [len(c[1]) for c in node.calls if c[0] == "execute"] == [3, 3, 1]


async def test_wait_timeout_is_408(client, node) -> None:
    node.execute_delay = 0.5
    status, d = await post(client, "/db/execute?queue&wait&timeout=50ms", [["INSERT INTO q(v) VALUES('slow')"]])
    assert (status, d) == (408, {"text": b"queue wait timeout\n"})
    node.execute_delay = 0.0
    await post(client, "/db/execute?queue&wait", b"")
    assert await count(client) == 1  # queued means queued: it is written all the same


async def test_failed_flush_is_retried(client, node) -> None:
    client.server.app[STATE].queue.retry_interval = 0.01
    node.fail_execute = LeadershipLostError()
    status, _ = await post(client, "/db/execute?queue&wait", [["INSERT INTO q(v) VALUES('again')"]])
    assert status == 200
    assert await count(client) == 1
    assert client.server.app[STATE].queue.stats["failures"] == 1


async def test_sql_errors_in_a_batch_stay_in_the_log(client) -> None:
    status, d = await post(client, "/db/execute?queue&wait", ["INSERT INTO nope VALUES(1)", "INSERT INTO q(v) VALUES('ok')"])
    assert status == 200 and d["results"] == []
    assert await count(client) == 1


async def test_queue_timings_and_pretty(client) -> None:
    resp = await client.post("/db/execute?queue&timings&pretty", data=b'["INSERT INTO q(v) VALUES(1)"]', headers=JSON)
    text = await resp.text()
    assert text.startswith('{\n    "results": [],\n    "time": ')  # rqlite's key order
    assert '\n    "sequence_number": ' in text


async def test_follower_queue_flushes_to_the_leader(tmp_path, aiohttp_server, aiohttp_client) -> None:
    leader = FakeNode(tmp_path, "n1")
    lserver = await aiohttp_server(fake_app(leader))
    leader.api_url = str(lserver.make_url("")).rstrip("/")
    follower = FakeFollower(tmp_path, leader, "n2")
    fc = await aiohttp_client(fake_app(follower, queue_timeout=0.01))
    lc = await aiohttp_client(lserver)
    await lc.post("/db/execute", data=b'["CREATE TABLE q(v)"]', headers=JSON)
    status, _ = await post(fc, "/db/execute?queue&wait", [["INSERT INTO q(v) VALUES(?)", "via follower"]])
    assert status == 200
    resp = await lc.get("/db/query?q=SELECT+v+FROM+q")
    assert (await resp.json())["results"][0]["values"] == [["via follower"]]
    leader.close()
    follower.close()


async def test_queue_shuts_down_cleanly(node, aiohttp_client) -> None:
    client = await aiohttp_client(fake_app(node, queue_timeout=5.0))
    await client.post("/db/execute", data=b'["CREATE TABLE q(v)"]', headers=JSON)
    await post(client, "/db/execute?queue", [["INSERT INTO q(v) VALUES(1)"]])
    await asyncio.wait_for(client.close(), 5)  # cleanup flushes what is queued
    assert node.database.query(["SELECT COUNT(*) FROM q"])[0].rows == [(1,)]
