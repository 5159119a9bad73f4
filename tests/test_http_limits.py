"""Limits on what one request, and all of them at once, may ask of a node: statements per
request, open requests (503 with Retry-After past them); what is refused changes nothing."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from raftsql.http.state import STATE

from .inprocess import start_servers, wait_for


@pytest.fixture
async def node(tmp_path):
    [server] = await start_servers(tmp_path, 1, heartbeat_ms=50, election_ms=300,
                                   max_statements=3, max_open_requests=2)
    await wait_for(lambda: server.node.is_leader)
    async with aiohttp.ClientSession() as session:
        yield server, session
    await server.stop(transfer=False)


async def post(session, node, path, body):
    async with session.post(node.api_url + path, data=json.dumps(body),
                            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, resp.headers, await resp.text()


async def test_too_many_statements_is_a_400_that_changes_nothing(node):
    server, session = node
    node = server.node
    assert (await post(session, node, "/db/execute", ["CREATE TABLE t (x)"]))[0] == 200
    status, _, text = await post(session, node, "/db/execute",
                                 [f"INSERT INTO t VALUES ({i})" for i in range(4)])
    assert status == 400 and "too many statements: 4 in one request, at most 3" in text
    status, _, text = await post(session, node, "/db/query", ["SELECT 1"] * 4)
    assert status == 400
    status, _, text = await post(session, node, "/db/query?level=none",
                                 ["SELECT count(*) FROM t"] * 3)
    assert status == 200 and json.loads(text)["results"][0]["values"] == [[0]]


async def test_past_the_open_requests_a_503_with_retry_after(node):
    """Two watches hold the two places; the third request is shed at once; health routes
    still answer; once the watches end, requests are served again."""
    server, session = node
    node = server.node
    async with session.put(node.api_url + "/v1/kv/k", data=b"v") as resp:
        assert resp.status == 200
    async with session.get(node.api_url + "/v1/kv/k") as resp:
        index = resp.headers["X-Consul-Index"]

    async def watch() -> int:
        async with session.get(node.api_url + f"/v1/kv/k?index={index}&wait=1s") as resp:
            return resp.status

    watches = [asyncio.ensure_future(watch()) for _ in range(2)]
    await wait_for(lambda: server.app[STATE].open_requests == 2, timeout=5)
    status, headers, text = await post(session, node, "/db/execute", ["CREATE TABLE u (x)"])
    assert (status, headers.get("Retry-After")) == (503, "1")
    assert "too many open requests" in text
    async with session.get(node.api_url + "/status") as resp:
        assert resp.status == 200
    assert await asyncio.gather(*watches) == [200, 200]
    assert (await post(session, node, "/db/execute", ["CREATE TABLE u (x)"]))[0] == 200


async def test_a_client_that_stops_sending_its_body_gets_a_408_and_frees_its_place(
        node, monkeypatch):
    """With both open-request places held by clients trickling nothing, the node answers
    them 408 once their bodies stop coming, and serves others again."""
    from raftsql.http import respond
    monkeypatch.setattr(respond, "BODY_IDLE_SECONDS", 0.5)
    server, session = node
    host, port = server.node.api_url.removeprefix("http://").rsplit(":", 1)

    async def stall(path: str) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n[\"CREATE".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answer = head + await reader.readexactly(length)
        writer.close()
        return answer
    stalled = [asyncio.ensure_future(stall(path)) for path in ("/db/execute", "/db/load")]
    await asyncio.sleep(0.2)
    status, _, _ = await post(session, server.node, "/db/execute", ["CREATE TABLE t (x)"])
    assert status == 503  # both places are held
    for answer in await asyncio.gather(*stalled):
        assert answer.startswith(b"HTTP/1.1 408") and b"no part of the request body" in answer
    status, _, _ = await post(session, server.node, "/db/execute", ["CREATE TABLE t (x)"])
    assert status == 200
