"""Peer transport: Raft messages between nodes over one aiohttp WebSocket per peer.

Each node dials every peer for its OUTGOING messages (GET /raft/stream, upgraded to a
WebSocket) and accepts the peers' streams for its INCOMING ones: two sockets per pair.

Outbound, `send()` appends to the peer's bounded queue (the oldest messages are dropped
when it is full: Raft tolerates loss), then sends everything queued as ONE binary frame
(`transport/codec.py`): written at once when the peer's stream is idle, else by the peer's writer
task, which also sends keep-alives, chunks frames larger than `chunk_size` (snapshots; the
receiver reassembles them) and waits for a slow peer's socket to drain; messages queued
meanwhile join its next frame. The transport does not limit frames in flight: the Raft core
already keeps at most `max_inflight` APPEND batches unanswered per follower (the prototype
measured that 1-2 batches in flight give bigger batches and more throughput than deep
pipelining), and TCP's flow control holds the writer back when a peer reads slowly. The
writer reconnects with exponential back-off; one peer's trouble never touches another's
queue or task.

Inbound, every complete frame is decoded and handed to `deliver()` synchronously. The
receiver acknowledges frames with a cumulative count, at most once per `ack_delay`: an ack
proves the peer alive and its stream moving (a stream whose frames stay unacknowledged for
`peer_timeout` is redialed), and sending one per frame would cost a message, and a wake-up
of the sender, for every Raft message. A keep-alive (an empty frame) is acknowledged at
once. A bad frame closes that stream, never the node.

The cluster secret and the protocol version are checked on every peer request (the
upgrade and each RPC). Small request/response RPCs (join, info) are served at
POST /raft/rpc/<name> with orjson bodies. A snapshot's state, which may be gigabytes, does
not travel in a frame: a follower fetches it from GET /raft/snapshot/<index>/<term> with a
Range header (resuming a cut download), and the file is sent from disk (sendfile).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import aiohttp
from aiohttp import WSMsgType, web

from raftsql.errors import TransportError
from raftsql.raft.messages import Message, MessageType
from raftsql.transport.codec import (
    CHUNK_OVERHEAD,
    FrameAssembler,
    decode_ack,
    decode_batch,
    encode_batch,
    split_frame,
)
from raftsql.transport.rpc import call_rpc, serve_app, serve_rpc, text_response
from raftsql.transport.states import fetch_state, serve_state
from raftsql.transport.streams import Acker, Link, Peer, dial_error

log = logging.getLogger("raftsql.transport")

PROTOCOL_VERSION = "1"
SECRET_HEADER = "X-Raftsql-Secret"
PROTOCOL_HEADER = "X-Raftsql-Protocol"
FROM_HEADER = "X-Raftsql-From"  # the dialing node's id
API_HEADER = "X-Raftsql-Api-Url"  # the dialing node's client API URL
TO_HEADER = "X-Raftsql-To"  # the node id the dialer expects at this address
STREAM_PATH = "/raft/stream"
RPC_PATH = "/raft/rpc/{name}"
SNAPSHOT_PATH = "/raft/snapshot/{index}/{term}"

CHUNK_SIZE = 1 << 20  # the largest WebSocket message a node accepts is one chunk
MAX_FRAME_SIZE = 4 << 30  # the largest reassembled frame (a snapshot) a node accepts

Deliver = Callable[[list[Message]], None]
SnapshotFile = Callable[[int, int], "str | None"]  # (index, term) -> the state file, if here
RpcHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_SNAPSHOT = MessageType.SNAPSHOT
_BINARY = WSMsgType.BINARY


class Transport:
    """Raft messages to and from peers; see the module docstring for the protocol."""

    def __init__(
        self,
        node_id: str,
        deliver: Deliver | None = None,
        *,
        secret: str | None = None,
        api_url: str | None = None,
        on_peer_api: Callable[[str, str], None] | None = None,
        attach: Callable[[Message], Message | None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_ssl: ssl.SSLContext | None = None,
        server_name: str | None = None,
        max_queue: int = 256,
        ack_delay: float = 0.02,
        chunk_size: int = CHUNK_SIZE,
        max_frame_size: int = MAX_FRAME_SIZE,
        keepalive: float = 1.0,
        peer_timeout: float = 3.0,
        connect_timeout: float = 2.0,
        reconnect_min: float = 0.05,
        reconnect_max: float = 1.0,
    ) -> None:
        if not 0 < chunk_size <= CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in (0, {CHUNK_SIZE}]")
        self.node_id = node_id
        self._deliver: Deliver = deliver or (lambda messages: None)
        self._runner: web.AppRunner | None = None
        self._secret = secret.encode() if secret is not None else None
        self._attach = attach
        self._snapshot_file: SnapshotFile = lambda index, term: None
        # Peer TLS (transport/tls.py): what this node dials with, and listens with.
        self._tls: dict[str, Any] = {"ssl": ssl_context if ssl_context is not None else True}
        if server_name is not None:
            self._tls["server_hostname"] = server_name
        self._server_ssl = server_ssl
        self._scheme = "https" if ssl_context is not None else "http"
        self._max_queue = max_queue
        self._ack_delay = ack_delay
        self._chunk_size = chunk_size
        self._max_frame_size = max_frame_size
        self._keepalive = keepalive
        self._peer_timeout = peer_timeout
        self._connect_timeout = connect_timeout
        self._reconnect = (reconnect_min, reconnect_max)
        self._headers = {PROTOCOL_HEADER: PROTOCOL_VERSION, FROM_HEADER: node_id}
        if api_url is not None:
            # Every peer this node dials learns where clients reach it: a leader's followers
            # know its API URL before they hear of it as leader, and after every restart.
            self._headers[API_HEADER] = api_url
        self._on_peer_api = on_peer_api
        if secret is not None:
            self._headers[SECRET_HEADER] = secret
        self._peers: dict[str, Peer] = {}
        self._rpc: dict[str, RpcHandler] = {}
        self._inbound: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # peer writers, also retiring ones
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._session_or_new()
        for peer in self._peers.values():
            self._spawn(peer)
        self._spawn_task(self._housekeep(), "raft-transport-housekeeping")

    def bind(self, deliver: Deliver, *, attach: Callable[[Message], Message | None],
             snapshot_file: SnapshotFile, on_peer_api: Callable[[str, str], None]) -> None:
        """Where incoming messages go, and the node's hooks (before start())."""
        self._deliver = deliver
        self._attach = attach
        self._snapshot_file = snapshot_file
        self._on_peer_api = on_peer_api

    async def listen(self, addr: str) -> None:
        """Serve the peer routes on a listener of their own at `addr` (host:port)."""
        app = web.Application(client_max_size=CHUNK_SIZE + CHUNK_OVERHEAD + 64)
        self.add_routes(app)
        self._runner = await serve_app(app, addr, self._server_ssl)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node stopping")
              for ws in list(self._inbound)),
            return_exceptions=True,
        )
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(STREAM_PATH, self._handle_stream)
        app.router.add_post(RPC_PATH, self._handle_rpc)
        app.router.add_get(SNAPSHOT_PATH, self._handle_snapshot)

    # ---- peers ----------------------------------------------------------------------

    def set_peer(self, node_id: str, raft_addr: str) -> None:
        """Add a peer, or move it to a new address (its stream is redialed there)."""
        if node_id == self.node_id:
            return
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = Peer(node_id, raft_addr, self._max_queue)
        elif peer.addr == raft_addr:
            return
        else:
            peer.addr = raft_addr
        if self._started and not self._closed:
            self._spawn(peer)

    def reachable(self, node_id: str) -> bool:
        """Connected, and heard from (an ack, or a frame of its own) within `peer_timeout`.

        An upgrade alone does not count: the first frame on a new stream is an empty one,
        and its ack is what proves the peer is alive.
        """
        peer = self._peers.get(node_id)
        if peer is None or peer.link is None or self._loop is None:
            return False
        return self._loop.time() - peer.last_heard <= self._peer_timeout

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-peer counters, for metrics and debugging."""
        return {
            p.node_id: {"addr": p.addr, "connected": p.link is not None, "queued": len(p.queue),
                        "dropped": p.dropped, "dial_failures": p.failures,
                        "reachable": self.reachable(p.node_id)}
            for p in self._peers.values()
        }

    # ---- outbound: the hot path --------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        """Send `messages` to their peers: at once when a peer's stream is idle, else queued
        for its writer task (one frame per peer either way). Never blocks, never raises."""
        peers = self._peers
        touched: list[Peer] = []
        try:
            for m in messages:
                peer = peers.get(m.to)
                if peer is None:
                    log.debug("node=%s no address for peer=%s; message dropped", self.node_id, m.to)
                    continue
                queue = peer.queue
                if len(queue) == self._max_queue:
                    peer.dropped += 1  # the deque drops its oldest message
                queue.append(m)
                if not peer.touched:
                    peer.touched = True
                    touched.append(peer)
            for peer in touched:
                peer.touched = False
                self._flush(peer)
        except Exception:
            for peer in touched:
                peer.touched = False
            log.exception("node=%s send failed; messages dropped", self.node_id)

    def _flush(self, peer: Peer) -> None:
        """Write what is queued for `peer` as one frame now, or wake its writer task."""
        link = peer.link
        if link is None or link.write_now is None or not link.idle:
            peer.wake.set()
            return
        batch = list(peer.queue)
        peer.queue.clear()
        frame = self._frame(link, batch)
        if frame is None:
            return
        if len(frame) > self._chunk_size or not link.write_now(frame):
            link.backlog = frame  # too large for one message, or the socket is backed up
            peer.wake.set()

    def _spawn(self, peer: Peer) -> None:
        if peer.task is not None:
            peer.task.cancel()  # the old task closes its own stream
        peer.link = None
        peer.task = self._spawn_task(self._run_peer(peer), f"raft-peer-{peer.node_id}")

    def _spawn_task(self, coro: Any, name: str) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_peer(self, peer: Peer) -> None:
        """Dial, pump, redial with exponential back-off: forever, until cancelled."""
        low, high = self._reconnect
        delay = low
        while True:
            try:
                ws = await self._dial(peer)
            except Exception as exc:
                self._note_dial_failure(peer, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, high)
                continue
            log.info("node=%s connected to peer=%s addr=%s", self.node_id, peer.node_id, peer.addr)
            peer.failures = 0
            peer.ever_connected = True
            link = Link(ws, self._now())
            try:
                await self._pump(peer, link)
            except Exception as exc:
                log.info("node=%s stream to peer=%s lost: %s", self.node_id, peer.node_id,
                         str(exc) or type(exc).__name__)
            finally:
                if peer.link is link:
                    peer.link = None
                await self._close_quietly(ws)
            if ws.close_code == aiohttp.WSCloseCode.GOING_AWAY:
                log.info("node=%s peer=%s is stopping", self.node_id, peer.node_id)
                peer.ever_connected = False  # its absence is expected: no warning for it
            delay = low if link.acked else min(delay * 2, high)
            await asyncio.sleep(delay)

    async def _dial(self, peer: Peer) -> aiohttp.ClientWebSocketResponse:
        session = self._session_or_new()
        url = f"{self._scheme}://{peer.addr}{STREAM_PATH}"
        async with asyncio.timeout(self._connect_timeout):
            ws: aiohttp.ClientWebSocketResponse = await session.ws_connect(
                url, headers={**self._headers, TO_HEADER: peer.node_id}, compress=0,
                max_msg_size=1 << 16, timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
                **self._tls,
            )
            return ws

    def _note_dial_failure(self, peer: Peer, exc: Exception) -> None:
        """One short line per outage: at INFO while the cluster forms (peers start at their
        own pace), at WARNING when a peer that was reachable went away; retries are DEBUG."""
        peer.failures += 1
        if peer.failures == 1:
            level = logging.WARNING if peer.ever_connected else logging.INFO
        else:
            level = logging.DEBUG
        log.log(level, "node=%s cannot reach peer=%s at %s: %s; retrying", self.node_id,
                peer.node_id, peer.addr, dial_error(exc))

    async def _pump(self, peer: Peer, link: Link) -> None:
        """Send what `send()` did not (while the stream lives): keep-alives, queued messages,
        chunked frames, and frames that must wait for the socket to drain."""
        reader = asyncio.get_running_loop().create_task(self._read_acks(peer, link))
        peer.link = link
        queue, wake = peer.queue, peer.wake
        try:
            while not reader.done():
                if link.backlog is not None:
                    frame: bytes | None = link.backlog
                    link.backlog = None
                elif queue:
                    frame = self._frame(link, list(queue))
                    queue.clear()
                elif link.ping:
                    frame = self._frame(link, [])
                else:
                    wake.clear()
                    await wake.wait()
                    continue
                if frame is None:
                    continue
                link.sending = True
                try:
                    await self._write(link.ws, frame)
                finally:
                    link.sending = False
        finally:
            await self._close_quietly(link.ws)  # ends the reader's receive loop
            reader.cancel()

    def _frame(self, link: Link, batch: list[Message]) -> bytes | None:
        """Encode `batch` as the stream's next frame (None, logged, if it cannot be)."""
        if self._attach is not None:
            batch = self._attach_data(batch)
        try:
            frame = encode_batch(batch)
        except Exception:
            log.exception("node=%s cannot encode %d messages; dropped", self.node_id, len(batch))
            return None
        now = self._now()
        if link.sent == link.acked:
            link.progress_at = now
        link.last_send = now
        link.sent += 1
        link.ping = False
        return frame

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, frame: bytes) -> None:
        if len(frame) <= self._chunk_size:
            await ws.send_bytes(frame)
        else:
            for part in split_frame(frame, self._chunk_size):
                await ws.send_bytes(part)

    def _attach_data(self, batch: list[Message]) -> list[Message]:
        """The data the core leaves out of what it sends (a snapshot's header, the entries
        kept beside the log), put in by the node's hook."""
        attach = self._attach
        assert attach is not None
        out = []
        for m in batch:
            if m.type is _SNAPSHOT or m.entries:
                try:
                    attached = attach(m)
                except Exception:
                    log.exception("node=%s cannot attach data to %s for peer=%s; dropped",
                                  self.node_id, m.type.name, m.to)
                    continue
                if attached is None:
                    continue  # nothing to send yet: the leader sends it again later
                m = attached
            out.append(m)
        return out

    async def _read_acks(self, peer: Peer, link: Link) -> None:
        try:
            async for msg in link.ws:
                if msg.type is not _BINARY:
                    raise ValueError(f"unexpected {msg.type.name} message: {msg.data!r:.200}")
                link.acked = decode_ack(msg.data)
                link.progress_at = peer.last_heard = self._now()
        except Exception as exc:
            log.warning("node=%s bad reply on stream to peer=%s: %s", self.node_id,
                        peer.node_id, exc)
        finally:
            peer.wake.set()

    async def _housekeep(self) -> None:
        """Keep idle streams proven alive, redial stalled ones, report dropped messages."""
        while True:
            await asyncio.sleep(self._keepalive)
            now = self._now()
            for peer in list(self._peers.values()):
                if peer.dropped != peer.reported_drops:
                    log.warning("node=%s dropped %d messages to peer=%s (slow or unreachable)",
                                self.node_id, peer.dropped - peer.reported_drops, peer.node_id)
                    peer.reported_drops = peer.dropped
                link = peer.link
                if link is None:
                    continue
                if link.sent > link.acked:
                    if now - link.progress_at > self._peer_timeout:
                        log.warning("node=%s peer=%s stopped acknowledging; redialing",
                                    self.node_id, peer.node_id)
                        self._spawn(peer)
                elif now - link.last_send >= self._keepalive / 2:
                    link.ping = True
                    peer.wake.set()

    # ---- inbound ----------------------------------------------------------------------

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Why a peer request is refused (401 secret, 400 version), or None to accept it."""
        if self._secret is not None:
            given = request.headers.get(SECRET_HEADER)
            if given is None or not hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), self._secret
            ):
                log.warning("node=%s refused peer request from %s: missing or wrong cluster "
                            "secret", self.node_id, request.remote)
                return text_response(401, "missing or wrong cluster secret")
        version = request.headers.get(PROTOCOL_HEADER)
        if version != PROTOCOL_VERSION:
            message = (f"raft protocol version {version!r} is not supported: this node speaks "
                       f"version {PROTOCOL_VERSION}")
            log.warning("node=%s refused peer request from %s: %s", self.node_id,
                        request.remote, message)
            return text_response(400, message)
        return None

    def _note_peer_api(self, request: web.Request) -> None:
        frm, api_url = request.headers.get(FROM_HEADER), request.headers.get(API_HEADER)
        if frm and api_url and self._on_peer_api is not None:
            try:
                self._on_peer_api(frm, api_url)
            except Exception:
                log.exception("node=%s cannot note the API URL of peer=%s", self.node_id, frm)

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self._note_peer_api(request)
        expected = request.headers.get(TO_HEADER)
        if expected is not None and expected != self.node_id:
            return text_response(409, f"this address is node {self.node_id}, not {expected}")
        if self._closed:
            return text_response(503, "node stopping")
        frm = request.headers.get(FROM_HEADER, "")
        # aiohttp refuses a message of exactly max_msg_size bytes: leave a margin.
        ws = web.WebSocketResponse(max_msg_size=CHUNK_SIZE + CHUNK_OVERHEAD + 64,
                                   compress=False, timeout=1.0)
        await ws.prepare(request)
        self._inbound.add(ws)
        log.info("node=%s stream from peer=%s opened", self.node_id, frm)
        try:
            await self._receive(ws, frm)
        finally:
            self._inbound.discard(ws)
            log.info("node=%s stream from peer=%s closed", self.node_id, frm)
        return ws

    async def _receive(self, ws: web.WebSocketResponse, frm: str) -> None:
        assembler = FrameAssembler(self._max_frame_size)
        acker = Acker(ws, self._ack_delay)
        peers = self._peers
        try:
            async for msg in ws:
                if msg.type is not _BINARY:
                    raise ValueError(f"unexpected {msg.type.name} message: {msg.data!r:.200}")
                frame = assembler.feed(msg.data)
                if frame is None:
                    continue
                messages = decode_batch(frame)
                peer = peers.get(frm)
                if peer is not None:
                    peer.last_heard = self._now()
                if messages:
                    self._deliver_safely(messages)
                acker.note(keepalive=not messages)
        except ValueError as exc:
            log.warning("node=%s bad frame from peer=%s (%s); closing its stream",
                        self.node_id, frm, exc)
            await ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA, message=b"bad raft frame")
        finally:
            acker.task.cancel()

    def _deliver_safely(self, messages: list[Message]) -> None:
        try:
            self._deliver(messages)
        except Exception:
            log.exception("node=%s deliver failed; %d messages dropped", self.node_id,
                          len(messages))

    # ---- RPC ----------------------------------------------------------------------

    def on_rpc(self, name: str, handler: RpcHandler) -> None:
        """Serve `handler` at POST /raft/rpc/<name>; RaftSQLErrors it raises reach the caller."""
        self._rpc[name] = handler

    async def _handle_rpc(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self._note_peer_api(request)
        return await serve_rpc(request, self._rpc, self.node_id)

    async def call(self, raft_addr: str, name: str, payload: dict[str, Any],
                   timeout: float = 5.0) -> dict[str, Any]:
        """Call RPC `name` on the peer at `raft_addr` ("host:port").

        Raises TransportError (unreachable, refused, bad reply), the handler's own
        NotLeaderError / LeadershipLostError / ClusterError, or TimeoutError.
        """
        url = f"{self._scheme}://{raft_addr}/raft/rpc/{name}"
        return await call_rpc(self._session_or_new(), url, self._headers, raft_addr, name,
                              payload, timeout, self._tls)

    # ---- snapshot states (transport/states.py) ---------------------------------------

    async def _handle_snapshot(self, request: web.Request) -> web.StreamResponse:
        return self._refusal(request) or serve_state(request, self._snapshot_file)

    async def fetch_snapshot(self, raft_addr: str, index: int, term: int, offset: int,
                             out: BinaryIO) -> None:
        """Append the state of snapshot (index, term) from byte `offset` on, as the peer at
        `raft_addr` has it, to `out` (transport/states.py)."""
        url = f"{self._scheme}://{raft_addr}/raft/snapshot/{index}/{term}"
        await fetch_state(self._session_or_new(), url, self._headers, offset, out,
                          timeout=aiohttp.ClientTimeout(sock_connect=self._connect_timeout,
                                                        sock_read=self._peer_timeout),
                          tls=self._tls)

    # ---- helpers ----------------------------------------------------------------------

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._closed:
            raise TransportError("transport is closed")
        if self._session is None:
            # No pool limit: each peer holds one connection for its stream.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    @staticmethod
    async def _close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async with asyncio.timeout(1.0):
                await ws.close()
        except Exception as exc:
            log.debug("closing a raft stream failed: %r", exc)


