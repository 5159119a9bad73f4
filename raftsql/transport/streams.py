"""One WebSocket stream each way between two nodes: the outbound link and its peer, and the
inbound side's acknowledgements (raftsql/transport/websocket.py drives them)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web

from raftsql.raft.messages import Message
from raftsql.transport.codec import encode_ack
from raftsql.transport.rpc import ERROR_HEADER

log = logging.getLogger("raftsql.transport")

_BINARY = WSMsgType.BINARY
_DIRECT_LIMIT = 1 << 16  # bytes buffered for a socket beyond which `send()` leaves it be


class Link:
    """One live outbound WebSocket and its counters (frames, not messages)."""

    __slots__ = ("ws", "sent", "acked", "progress_at", "last_send", "ping", "write_now",
                 "sending", "backlog")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, now: float) -> None:
        self.ws = ws
        self.sent = 0
        self.acked = 0  # invariant: acked <= sent
        self.progress_at = now  # last ack, or when the oldest unacked frame was sent
        self.last_send = now
        self.ping = True  # send an empty frame to prove liveness: at once, then when idle
        self.write_now = frame_writer(ws)
        self.sending = False  # the writer task is sending a frame (it may be waiting)
        self.backlog: bytes | None = None  # a frame `send()` left to the writer task

    @property
    def idle(self) -> bool:
        """Nothing is being sent: a frame written now keeps the stream in order."""
        return not self.sending and self.backlog is None


def frame_writer(ws: aiohttp.ClientWebSocketResponse) -> Callable[[bytes], bool] | None:
    """A function writing one binary frame to `ws` at once, or None if aiohttp has none.

    `send()` writes frames itself when the stream is idle, rather than waking the peer's
    writer task: on a busy node the task switch costs more than the write. The function
    returns False, writing nothing, when the socket's buffer is over `_DIRECT_LIMIT` bytes
    (the writer task then waits for it to drain). aiohttp's writer has no public
    synchronous method: without the one used here, every frame goes through the task.
    """
    writer = getattr(ws, "_writer", None)
    write = getattr(writer, "_write_websocket_frame", None)
    transport = getattr(writer, "transport", None)
    if write is None or transport is None or getattr(writer, "compress", False):
        return None

    def write_now(frame: bytes) -> bool:
        if transport.is_closing() or transport.get_write_buffer_size() > _DIRECT_LIMIT:
            return False
        write(frame, _BINARY, 0)
        return True

    return write_now


class Peer:
    __slots__ = ("node_id", "addr", "queue", "wake", "task", "link", "last_heard",
                 "dropped", "reported_drops", "failures", "touched", "ever_connected")

    def __init__(self, node_id: str, addr: str, max_queue: int) -> None:
        self.node_id = node_id
        self.addr = addr
        self.queue: collections.deque[Message] = collections.deque(maxlen=max_queue)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.link: Link | None = None
        self.last_heard = float("-inf")
        self.dropped = 0
        self.reported_drops = 0
        self.failures = 0  # consecutive failed dials, to log the first one only
        self.ever_connected = False  # a dial failure then means it went away
        self.touched = False  # `send()` queued messages for it and has yet to flush them


class Acker:
    """Sends cumulative acks for one inbound stream: one per `delay` covers every frame read
    meanwhile, and a keep-alive frame is acknowledged at once."""

    __slots__ = ("count", "urgent", "wake", "task")

    def __init__(self, ws: web.WebSocketResponse, delay: float) -> None:
        self.count = 0
        self.urgent = False
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(ws, delay))

    def note(self, keepalive: bool) -> None:
        """One more frame was delivered."""
        self.count += 1
        if keepalive:
            self.urgent = True
        self.wake.set()

    async def _run(self, ws: web.WebSocketResponse, delay: float) -> None:
        acked = 0
        try:
            while True:
                await self.wake.wait()
                if not self.urgent:
                    await asyncio.sleep(delay)
                self.wake.clear()
                self.urgent = False
                if self.count != acked:
                    acked = self.count
                    await ws.send_bytes(encode_ack(acked))
        except Exception as exc:  # the stream is gone; its reader notices on its own
            log.debug("ack writer stopped: %r", exc)


def dial_error(exc: Exception) -> str:
    """Why a dial failed, in a few words."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        why = exc.headers.get(ERROR_HEADER, exc.message) if exc.headers else exc.message
        return f"refused: {exc.status} {why}"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    os_error = getattr(exc, "os_error", None) or (exc if isinstance(exc, OSError) else None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()  # "connection refused", not asyncio's text
    return str(exc) or type(exc).__name__
