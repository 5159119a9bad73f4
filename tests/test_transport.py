"""The peer transport over real sockets on 127.0.0.1 (ephemeral ports, polling, no long sleeps)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from raftsql.errors import ClusterError, NotLeaderError
from raftsql.raft.messages import Entry, Message, MessageType, Snapshot, SnapshotMeta
from raftsql.transport.codec import decode_ack, encode_batch, split_frame
from raftsql.transport.rpc import ERROR_HEADER
from raftsql.transport.websocket import (
    CHUNK_SIZE,
    FROM_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    SECRET_HEADER,
    STREAM_PATH,
    Transport,
    TransportError,
)

FAST = {"keepalive": 0.05, "peer_timeout": 0.5, "reconnect_max": 0.1, "connect_timeout": 0.5}


class Node:
    """A transport served by its own aiohttp listener, recording what it is delivered."""

    def __init__(self, node_id: str, **options: Any) -> None:
        self.node_id = node_id
        self.received: list[Message] = []
        self.transport = Transport(node_id, self.received.extend, **{**FAST, **options})
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> Node:
        app = web.Application()
        self.transport.add_routes(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.port = self.runner.addresses[0][1]
        await self.transport.start()
        return self

    async def stop(self) -> None:
        await self.transport.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def from_(self, frm: str) -> list[Message]:
        return [m for m in self.received if m.frm == frm]


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Any]]:
    started: list[Node] = []

    async def make(node_id: str, port: int = 0, **options: Any) -> Node:
        node = await Node(node_id, **options).start(port)
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


def connect(*nodes: Node) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.transport.set_peer(b.node_id, b.addr)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def append(frm: str, to: str, index: int, data: bytes = b"x") -> Message:
    return Message(MessageType.APPEND, to, frm, term=1, index=index,
                   entries=(Entry(1, index + 1, data=data),))


def headers(secret: str | None = None, version: str = PROTOCOL_VERSION) -> dict[str, str]:
    h = {PROTOCOL_HEADER: version, FROM_HEADER: "raw"}
    if secret is not None:
        h[SECRET_HEADER] = secret
    return h


# ---- delivery ---------------------------------------------------------------------------


async def test_three_nodes_exchange_batches_in_order(nodes):
    a, b, c = [await nodes(n) for n in "abc"]
    connect(a, b, c)
    for round_ in range(40):
        for node in (a, b, c):
            others = [p for p in "abc" if p != node.node_id]
            node.transport.send([append(node.node_id, to, round_ * 3 + k)
                                 for k in range(3) for to in others])
        if round_ % 7 == 0:
            await asyncio.sleep(0)
    await until(lambda: all(len(n.received) == 240 for n in (a, b, c)))
    for node in (a, b, c):
        for frm in "abc":
            if frm != node.node_id:
                assert [m.index for m in node.from_(frm)] == list(range(120))
                assert all(m.to == node.node_id for m in node.from_(frm))
    await until(lambda: all(n.transport.reachable(p) for n in (a, b, c)
                            for p in "abc" if p != n.node_id))
    assert not a.transport.reachable("nobody")


async def test_messages_are_pipelined_into_few_frames(nodes):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    frames: list[int] = []
    deliver = b.transport._deliver

    def counting(messages: list[Message]) -> None:
        frames.append(len(messages))
        deliver(messages)

    b.transport._deliver = counting
    a.transport.send([append("a", "b", i) for i in range(200)])
    await until(lambda: len(b.received) == 200)
    assert len(frames) <= 2  # everything queued while dialing went as one batch


async def test_messages_to_unknown_peers_are_dropped(nodes):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    a.transport.send([append("a", "zz", 0), append("a", "b", 1)])  # never raises
    await until(lambda: len(b.received) == 1)
    assert not a.transport.reachable("zz")


async def test_a_failing_deliver_does_not_break_the_stream(nodes):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    calls = 0
    deliver = b.transport._deliver

    def flaky(messages: list[Message]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("driver bug")
        deliver(messages)

    b.transport._deliver = flaky
    a.transport.send([append("a", "b", 0)])
    await until(lambda: calls == 1)
    a.transport.send([append("a", "b", 1)])
    await until(lambda: [m.index for m in b.received] == [1])


# ---- security -------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "wrong"])
async def test_wrong_or_missing_secret_delivers_nothing(nodes, secret):
    b = await nodes("b", secret="s3cret")
    a = await nodes("a", secret=secret)
    b.transport.on_rpc("echo", _echo)
    connect(a, b)
    a.transport.send([append("a", "b", 0)])
    await until(lambda: a.transport.stats()["b"]["dial_failures"] >= 2)
    assert b.received == []
    with pytest.raises(TransportError) as err:
        await a.transport.call(b.addr, "echo", {"x": 1})
    assert err.value.status == 401
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers(secret))
        assert refused.value.status == 401


async def test_matching_secret_delivers(nodes):
    a, b = await nodes("a", secret="s3cret"), await nodes("b", secret="s3cret")
    b.transport.on_rpc("echo", _echo)
    connect(a, b)
    a.transport.send([append("a", "b", 0)])
    await until(lambda: len(b.received) == 1)
    assert await a.transport.call(b.addr, "echo", {"x": 1}) == {"echo": {"x": 1}}


async def test_protocol_version_mismatch_is_refused_clearly(nodes):
    b = await nodes("b")
    b.transport.on_rpc("echo", _echo)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers(version="99"))
        assert refused.value.status == 400
        assert "version '99' is not supported" in refused.value.headers[ERROR_HEADER]
        async with session.post(f"http://{b.addr}/raft/rpc/echo", data=b"{}",
                                headers=headers(version="99")) as resp:
            assert resp.status == 400
            assert "protocol version '99' is not supported" in await resp.text()
    assert b.received == []


async def test_dialing_the_wrong_node_at_an_address_is_refused(nodes):
    a, b = await nodes("a"), await nodes("b")
    a.transport.set_peer("c", b.addr)  # c's address now belongs to b
    a.transport.send([append("a", "c", 0)])
    await until(lambda: a.transport.stats()["c"]["dial_failures"] >= 1)
    assert b.received == []


# ---- failures: dead, slow and restarted peers --------------------------------------------


async def test_dead_and_black_hole_peers_do_not_delay_a_live_one(nodes):
    a, b = await nodes("a", connect_timeout=5.0), await nodes("b")
    with socket.socket() as hole:  # accepts TCP connections, never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        a.transport.set_peer("dead", f"127.0.0.1:{free_port()}")
        a.transport.set_peer("hole", f"127.0.0.1:{hole.getsockname()[1]}")
        connect(a, b)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(400):  # more than a queue holds: the dead peers' queues drop
            a.transport.send([append("a", "dead", i), append("a", "hole", i)])
            if i % 2:
                a.transport.send([append("a", "b", i // 2)])
        await until(lambda: len(b.received) == 200, timeout=2.0)
        assert loop.time() - t0 < 1.0
        assert not a.transport.reachable("dead") and not a.transport.reachable("hole")
        assert a.transport.stats()["dead"]["queued"] <= 256  # bounded while disconnected


async def test_a_restarted_peer_is_reconnected_and_gets_later_messages(nodes):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    a.transport.send([append("a", "b", 0)])
    await until(lambda: len(b.received) == 1)
    port = b.port
    await b.stop()
    await until(lambda: not a.transport.reachable("b"))
    a.transport.send([append("a", "b", 1)])  # may be lost or delivered late: Raft retries
    b2 = await nodes("b", port=port)
    await until(lambda: a.transport.reachable("b"))
    a.transport.send([append("a", "b", 2), append("a", "b", 3)])
    await until(lambda: [m.index for m in b2.received if m.index >= 2] == [2, 3])


async def test_a_peer_that_moves_is_followed(nodes):
    a, b = await nodes("a"), await nodes("b")
    a.transport.set_peer("b", f"127.0.0.1:{free_port()}")
    a.transport.send([append("a", "b", 0)])
    await until(lambda: a.transport.stats()["b"]["dial_failures"] >= 1)
    a.transport.set_peer("b", b.addr)
    a.transport.send([append("a", "b", 1)])
    await until(lambda: 1 in [m.index for m in b.received])


async def test_a_peer_that_stops_acknowledging_is_redialed(nodes):
    accepted = 0

    async def mute(request: web.Request) -> web.WebSocketResponse:
        nonlocal accepted
        accepted += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:  # reads, never acknowledges
            pass
        return ws

    app = web.Application()
    app.router.add_get(STREAM_PATH, mute)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        a = await nodes("a", peer_timeout=0.2)
        a.transport.set_peer("m", f"127.0.0.1:{runner.addresses[0][1]}")
        for i in range(5):
            a.transport.send([append("a", "m", i)])
            await asyncio.sleep(0.01)
        await until(lambda: accepted >= 2)
        assert not a.transport.reachable("m")
    finally:
        await a.transport.close()
        await runner.cleanup()


async def test_frames_written_at_once_and_by_the_writer_task_keep_their_order(nodes):
    # send() writes a frame itself when the stream is idle; a frame too large for one
    # WebSocket message goes through the writer task, and what follows it must wait for it.
    a, b = await nodes("a", chunk_size=4096), await nodes("b")
    connect(a, b)
    await until(lambda: a.transport.reachable("b"))
    index = 0
    for size in (10, 10, 50_000, 10, 10, 20_000, 10):
        a.transport.send([append("a", "b", index, b"d" * size)])
        index += 1
    await until(lambda: len(b.received) == index)
    assert [m.index for m in b.received] == list(range(index))
    assert [len(m.entries[0].data) for m in b.received] == [10, 10, 50_000, 10, 10, 20_000, 10]


async def test_acks_are_cumulative_and_shared_by_frames_read_together(nodes):
    b = await nodes("b", ack_delay=0.5)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers())
        for i in range(20):
            await ws.send_bytes(encode_batch([append("raw", "b", i)]))
        acks = [decode_ack((await ws.receive(timeout=5.0)).data)]
        while acks[-1] < 20:
            acks.append(decode_ack((await ws.receive(timeout=5.0)).data))
        assert len(acks) <= 3
        await ws.close()
    assert [m.index for m in b.received] == list(range(20))


async def test_a_keepalive_is_acknowledged_at_once(nodes):
    b = await nodes("b", ack_delay=60.0)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers())
        await ws.send_bytes(encode_batch([append("raw", "b", 0)]))
        await ws.send_bytes(encode_batch([]))
        assert decode_ack((await ws.receive(timeout=5.0)).data) == 2  # not a minute later
        await ws.close()


# ---- snapshots --------------------------------------------------------------------------


async def test_a_large_snapshot_arrives_intact_in_chunks(nodes):
    data = random.Random(7).randbytes(5 * 1024 * 1024 + 123)
    attached: list[Message] = []

    def attach(m: Message) -> Message:
        attached.append(m)
        assert m.snapshot is not None
        return Message(m.type, m.to, m.frm, m.term, snapshot=Snapshot(m.snapshot.meta, data))

    a, b = await nodes("a", attach=attach), await nodes("b")
    connect(a, b)
    sent: list[int] = []
    a_ws_send = aiohttp.ClientWebSocketResponse.send_bytes

    async def spy(self: Any, payload: bytes, compress: int | None = None) -> None:
        sent.append(len(payload))
        await a_ws_send(self, payload, compress)

    aiohttp.ClientWebSocketResponse.send_bytes = spy  # type: ignore[method-assign]
    try:
        meta = SnapshotMeta(10, 2)
        a.transport.send([Message(MessageType.SNAPSHOT, "b", "a", 2, snapshot=Snapshot(meta)),
                          Message(MessageType.HEARTBEAT, "b", "a", 2)])
        await until(lambda: len(b.received) == 2)
    finally:
        aiohttp.ClientWebSocketResponse.send_bytes = a_ws_send  # type: ignore[method-assign]
    snap, beat = b.received
    assert snap.snapshot is not None and snap.snapshot.meta == meta
    assert snap.snapshot.data == data
    assert beat.type is MessageType.HEARTBEAT
    assert len(attached) == 1 and attached[0].snapshot.data == b""
    assert len(sent) >= 6 and max(sent) <= CHUNK_SIZE + 3


async def test_an_oversized_websocket_message_is_refused_and_the_server_lives(nodes):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers())
        await ws.send_bytes(encode_batch([Message(MessageType.APPEND, "b", "x",
                                                  context=b"z" * (CHUNK_SIZE + 1000))]))
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
    a.transport.send([append("a", "b", 0)])
    await until(lambda: len(b.received) == 1)
    assert all(m.frm == "a" for m in b.received)


# ---- hostile frames ---------------------------------------------------------------------


@pytest.mark.parametrize("frames", [
    [b"garbage"],
    [b""],
    [b"\x09\x00\x00\x00\x00\x02[]"],  # unknown version
    [encode_batch([])[:-1] + b"x"],
    [encode_batch([append("raw", "b", 0)]) + b"trailing"],
    [next(split_frame(encode_batch([append("raw", "b", 0, b"y" * 100)]), 20)),
     encode_batch([])],  # a batch in the middle of a chunked frame
    ["text is not a frame"],
])
async def test_malformed_frames_close_the_stream_not_the_server(nodes, frames):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers())
        for frame in frames:
            await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
        msg = await ws.receive(timeout=2.0)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
    assert b.received == []
    a.transport.send([append("a", "b", 0)])
    await until(lambda: len(b.received) == 1)


async def test_a_raw_client_speaking_the_protocol_is_delivered_and_acknowledged(nodes):
    b = await nodes("b")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{b.addr}{STREAM_PATH}", headers=headers())
        await ws.send_bytes(encode_batch([append("raw", "b", 0)]))
        assert decode_ack((await ws.receive(timeout=2.0)).data) == 1
        for part in split_frame(encode_batch([append("raw", "b", 1, b"q" * 500)]), 64):
            await ws.send_bytes(part)
        assert decode_ack((await ws.receive(timeout=2.0)).data) == 2
        await ws.close()
    assert [m.index for m in b.received] == [0, 1]
    assert b.received[1].entries[0].data == b"q" * 500


# ---- RPC --------------------------------------------------------------------------------


async def _echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload}


async def test_rpc_round_trip_and_errors(nodes):
    a, b = await nodes("a"), await nodes("b")

    async def not_leader(payload: dict[str, Any]) -> dict[str, Any]:
        raise NotLeaderError("n1", "http://10.0.0.1:4001")

    async def refuse(payload: dict[str, Any]) -> dict[str, Any]:
        raise ClusterError("node already a member")

    async def crash(payload: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    release = asyncio.Event()

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {}

    for name, handler in [("echo", _echo), ("not_leader", not_leader), ("refuse", refuse),
                          ("crash", crash), ("slow", slow)]:
        b.transport.on_rpc(name, handler)
    call = a.transport.call
    assert await call(b.addr, "echo", {"id": "a", "n": [1, 2]}) == {"echo": {"id": "a", "n": [1, 2]}}
    with pytest.raises(NotLeaderError) as err:
        await call(b.addr, "not_leader", {})
    assert (err.value.leader_id, err.value.leader_url) == ("n1", "http://10.0.0.1:4001")
    with pytest.raises(ClusterError, match="already a member"):
        await call(b.addr, "refuse", {})
    for name, status in [("crash", 500), ("missing", 404)]:
        with pytest.raises(TransportError) as failed:
            await call(b.addr, name, {})
        assert failed.value.status == status
    with pytest.raises(TimeoutError):
        await call(b.addr, "slow", {}, timeout=0.05)
    release.set()
    with pytest.raises(TransportError):
        await call(f"127.0.0.1:{free_port()}", "echo", {})


async def test_rpc_refuses_bodies_that_are_not_objects(nodes):
    b = await nodes("b")
    b.transport.on_rpc("echo", _echo)
    async with aiohttp.ClientSession() as session:
        for body in (b"[1]", b"not json"):
            async with session.post(f"http://{b.addr}/raft/rpc/echo", data=body,
                                    headers=headers()) as resp:
                assert resp.status == 400


async def test_close_is_prompt_and_idempotent(nodes):
    a, b = await nodes("a"), await nodes("b")
    connect(a, b)
    a.transport.set_peer("dead", f"127.0.0.1:{free_port()}")
    a.transport.send([append("a", "b", 0)])
    await until(lambda: len(b.received) == 1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await a.transport.close()
    await a.transport.close()
    assert loop.time() - t0 < 1.0
    a.transport.send([append("a", "b", 1)])  # after close: dropped, never raises
    with pytest.raises(TransportError, match="closed"):
        await a.transport.call(b.addr, "echo", {})


async def test_an_unreachable_peer_is_logged_once_in_words(nodes, caplog):
    """While a cluster forms, peers not up yet are expected: one INFO line each. A peer that
    was reachable and went away without saying it stops: one WARNING line."""
    caplog.set_level("DEBUG", logger="raftsql.transport")
    a, b = await nodes("a"), await nodes("b")
    a.transport.set_peer("late", f"127.0.0.1:{free_port()}")
    await until(lambda: a.transport.stats()["late"]["dial_failures"] >= 4)
    lines = [r for r in caplog.records if "cannot reach peer=late" in r.getMessage()]
    assert [r.levelname for r in lines if r.levelname != "DEBUG"] == ["INFO"]
    assert lines[0].getMessage().endswith(": connection refused; retrying")
    connect(a, b)
    await until(lambda: a.transport.reachable("b"))
    for handler in list(b.runner.server.connections):  # b dies: no close frame, no goodbye
        handler.transport.abort()
    await b.runner.cleanup()
    b.runner = None
    await until(lambda: a.transport.stats()["b"]["dial_failures"] >= 3)
    gone = [r for r in caplog.records if "cannot reach peer=b" in r.getMessage()]
    assert [r.levelname for r in gone if r.levelname != "DEBUG"] == ["WARNING"]
    assert not [r for r in caplog.records if "Error(" in r.getMessage()]  # no reprs


async def test_dialing_tells_the_peer_this_nodes_api_url(nodes):
    learned: list[tuple[str, str]] = []
    a = await nodes("a", api_url="http://10.1.2.3:4001")
    b = await nodes("b", on_peer_api=lambda *peer: learned.append(peer))
    connect(a, b)
    a.transport.send([append("a", "b", 0)])
    await until(lambda: len(b.received) == 1)
    assert learned[0] == ("a", "http://10.1.2.3:4001")
    learned.clear()
    with pytest.raises(TransportError):  # an RPC carries it too
        await a.transport.call(b.addr, "missing", {})
    assert learned == [("a", "http://10.1.2.3:4001")]
