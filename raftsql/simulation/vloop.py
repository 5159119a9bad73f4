"""An event loop on virtual time with a virtual network, for whole nodes in one process.

`VirtualLoop` is asyncio's own selector loop with three things changed:

* **Time** is virtual: `time()` moves only when nothing is ready to run, straight to the
  next timer (the selector "waits" by adding the timeout to the clock). Computing takes no
  time; waiting takes none of the machine's. asyncio.sleep, timeouts, aiohttp's timers and
  the driver's clock (`LoopClock`) all read it.
* **Threads** are not used: `run_in_executor` (and so `asyncio.to_thread`) runs the
  function on the loop after a seeded delay (a disk's latency), in submission order per
  executor, as a one-thread pool would.
* **Sockets** are virtual: `create_server`, `sock_connect` and `create_connection` join
  aiohttp's client and server protocols through `VirtualNetwork` (in-memory byte streams,
  delayed per link, held while a link is cut), so the real HTTP API and the real WebSocket
  transport run unmodified. Addresses are IP:port strings; no name is resolved.

**Hosts die like processes.** Whatever runs is attributed to a host by the context variable
`HOST` (a node's tasks and callbacks inherit it). `kill(host)` ends the host's life: none
of its callbacks, tasks or executor jobs scheduled before it runs again, no `finally` block
included, and its connections are gone. A host started again is a new process.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import random
import selectors
import socket
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

LAN = 0.0002  # seconds a byte takes between two hosts, unless told otherwise
HOST: contextvars.ContextVar[str | None] = contextvars.ContextVar("raftsql_sim_host",
                                                                   default=None)


class Deadlock(RuntimeError):
    """Nothing can ever run again: no callback is ready and no timer is set."""


class Livelock(RuntimeError):
    """The loop ran past its budget of real time (callbacks that keep each other busy
    without time moving on, or far too much work)."""


class _Selector(selectors.BaseSelector):
    """The loop's real selector (for its self-pipe), polled without waiting; a wait moves
    the virtual clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if time.monotonic() > self._loop.real_deadline:
            raise Livelock(f"still running at virtual time {self._loop.now:.3f} s; ready: "
                           f"{self._loop.ready_summary()}")
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise Deadlock("every task waits and no timer is set")
        self._loop.now += timeout
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, rng: random.Random, io_delay: Callable[[random.Random], float],
                 real_seconds: float = 300.0) -> None:
        self.now = 0.0
        self.real_deadline = time.monotonic() + real_seconds
        super().__init__(_Selector(self))
        self.rng = rng
        self.net = VirtualNetwork(self)
        self._io_delay = io_delay
        self._executor_at: dict[int, float] = {}  # executor -> when its last job runs
        self._life: dict[str, int] = {}  # host -> its life (bumped by kill)
        self._connecting: dict[int, tuple[str, int]] = {}  # socket fd -> address
        self._owners: weakref.WeakKeyDictionary[asyncio.Task[Any], str | None] = (
            weakref.WeakKeyDictionary())
        self.graveyard: list[asyncio.Task[Any]] = []  # the tasks of killed hosts
        self.set_task_factory(self._task)  # type: ignore[arg-type]

    def time(self) -> float:
        return self.now

    def ready_summary(self) -> str:
        """The callbacks ready to run, most frequent first (for a Livelock's message)."""
        counts: dict[str, int] = {}
        for handle in list(self._ready):  # type: ignore[attr-defined]
            name = repr(handle)[:160]
            counts[name] = counts.get(name, 0) + 1
        return "; ".join(f"{n}x {h}" for h, n in sorted(counts.items(), key=lambda x: -x[1])[:5])

    # ---- hosts

    def kill(self, host: str) -> None:
        self._life[host] = self._life.get(host, 0) + 1
        self.net.kill(host)
        # Held until the run ends: a task collected now would run its finally blocks.
        self.graveyard += [t for t, owner in self._owners.items() if owner == host]

    def _task(self, loop: asyncio.AbstractEventLoop, coro: Any,
              context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        self._owners[task] = (context or contextvars.copy_context()).get(HOST)
        return task

    def _guard(self, callback: Callable[..., Any], context: contextvars.Context | None
               ) -> Callable[..., Any]:
        host = (context or contextvars.copy_context()).get(HOST)
        if host is None:
            return callback
        life = self._life.get(host, 0)

        def guarded(*args: Any) -> None:
            if self._life.get(host, 0) == life:
                callback(*args)
        return guarded

    def call_soon(self, callback: Callable[..., Any], *args: Any,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        return super().call_soon(self._guard(callback, context), *args, context=context)

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any,
                             context: contextvars.Context | None = None) -> asyncio.Handle:
        return super().call_soon_threadsafe(self._guard(callback, context), *args,
                                            context=context)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        return super().call_at(when, self._guard(callback, context), *args, context=context)

    # ---- executors

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any
                        ) -> asyncio.Future[Any]:
        fut = self.create_future()
        at = max(self.now, self._executor_at.get(id(executor), 0.0)) + self._io_delay(self.rng)
        self._executor_at[id(executor)] = at

        def job() -> None:
            if fut.cancelled():
                return
            try:
                result = func(*args)
            except Exception as e:
                fut.set_exception(e)
            else:
                fut.set_result(result)
        self.call_at(at, job)
        return fut

    # ---- sockets

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (host, int(port)))]

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """A SYN: refused when nothing listens there, unanswered across a cut link."""
        addr = (str(address[0]), int(address[1]))
        src = HOST.get() or "client"
        waited = 0.0
        while self.net.cut_between(src, addr[0]):
            if waited >= 3.0:
                raise TimeoutError(errno.ETIMEDOUT, "connect timed out")
            await asyncio.sleep(0.1)
            waited += 0.1
        if addr not in self.net.listeners:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens at {addr}")
        self._connecting[sock.fileno()] = addr

    async def create_connection(self, protocol_factory: Callable[[], asyncio.Protocol],
                                host: str | None = None, port: int | None = None, *,
                                sock: socket.socket | None = None, **_: Any
                                ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        if sock is not None:
            addr = self._connecting.pop(sock.fileno())
            sock.close()
        else:
            addr = (str(host), int(port or 0))
        return self.net.connect(HOST.get() or "client", addr, protocol_factory)

    async def sendfile(self, transport: Any, file: Any, offset: int = 0,
                       count: int | None = None, *, fallback: bool = True) -> int:
        raise NotImplementedError("no sendfile on virtual sockets")  # aiohttp writes chunks

    async def create_server(self, protocol_factory: Callable[[], asyncio.Protocol],
                            host: Any = None, port: int | None = None, **_: Any
                            ) -> asyncio.AbstractServer:
        return self.net.listen((str(host), int(port or 0)), protocol_factory)


def _context_of(host: str) -> contextvars.Context:
    ctx = contextvars.Context()
    ctx.run(HOST.set, host)
    return ctx


class _Server(asyncio.AbstractServer):
    def __init__(self, net: VirtualNetwork, addr: tuple[str, int],
                 factory: Callable[[], asyncio.Protocol]) -> None:
        self._net, self.addr, self.factory = net, addr, factory
        self.sockets: list[Any] = []

    def close(self) -> None:
        if self._net.listeners.get(self.addr) is self:
            del self._net.listeners[self.addr]

    async def wait_closed(self) -> None:
        pass

    def is_serving(self) -> bool:
        return self._net.listeners.get(self.addr) is self

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._net.loop

    async def start_serving(self) -> None:
        pass

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()


_EOF = object()
_RESET = object()


class _Transport(asyncio.Transport):
    """One end of a virtual TCP connection."""

    def __init__(self, net: VirtualNetwork, local: tuple[str, int], remote: tuple[str, int],
                 protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._net, self.local, self.remote, self._protocol = net, local, remote, protocol
        self.peer: _Transport | None = None
        self.closed = False  # this end will send and receive nothing more
        self.dead = False  # its host died: it does nothing at all
        self._paused = False
        self._inbox: deque[Any] = deque()  # arrived while reading was paused
        self.held: deque[Any] = deque()  # sent while the link was cut, in order
        self.last_at = 0.0  # when the last thing sent arrives (keeps the stream in order)

    # what asyncio's transports offer
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.remote, "sockname": self.local}.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return not self._paused

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        while self._inbox and not self._paused and not self.closed:
            self._take(self._inbox.popleft())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def can_write_eof(self) -> bool:
        return True

    def write(self, data: Any) -> None:
        if not self.closed and data:
            self._net.send(self, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))

    def write_eof(self) -> None:
        if not self.closed:
            self._net.send(self, _EOF)

    def close(self) -> None:
        if not self.closed:
            self._net.send(self, _EOF)
            self._lost(None)

    def abort(self) -> None:
        if not self.closed:
            self._net.send(self, _RESET)
            self._lost(None)

    # arrivals
    def arrive(self, item: Any) -> None:
        if self.closed or self.dead:
            return
        if self._paused and item is not _RESET:
            self._inbox.append(item)
        else:
            self._take(item)

    def _take(self, item: Any) -> None:
        if item is _RESET:
            self._lost(ConnectionResetError(errno.ECONNRESET, "connection reset by peer"))
        elif item is _EOF:
            if not self._protocol.eof_received():
                self._lost(None)
        else:
            self._protocol.data_received(item)

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._net.forget(self)
        self._net.loop.call_soon(self._protocol.connection_lost, exc)


class VirtualNetwork:
    """Listeners, connections between hosts, and the faults between them: a link (one
    direction between two hosts) can be cut, which holds what is sent on it until it heals
    (as TCP retransmits), and has a latency."""

    def __init__(self, loop: VirtualLoop) -> None:
        self.loop = loop
        self.listeners: dict[tuple[str, int], _Server] = {}
        # Dicts as ordered sets: the same seed walks them in the same order.
        self.connections: dict[_Transport, None] = {}
        self.holding: dict[_Transport, None] = {}  # ends with something held on a cut link
        self.cut: set[tuple[str, str]] = set()  # (from host, to host)
        self.latency: Callable[[str, str], float] = lambda src, dst: LAN
        self._ports = 40000

    def cut_between(self, src: str, dst: str) -> bool:
        return (src, dst) in self.cut or (dst, src) in self.cut

    def listen(self, addr: tuple[str, int], factory: Callable[[], asyncio.Protocol]) -> _Server:
        if addr in self.listeners:
            raise OSError(errno.EADDRINUSE, f"address in use: {addr}")
        server = self.listeners[addr] = _Server(self, addr, factory)
        return server

    def connect(self, src: str, addr: tuple[str, int],
                factory: Callable[[], asyncio.Protocol]) -> tuple[_Transport, asyncio.Protocol]:
        listener = self.listeners.get(addr)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens at {addr}")
        self._ports += 1
        local = (src, self._ports)
        # The server's side runs as its host's (its request handlers are its tasks).
        on_server = _context_of(addr[0])
        client_proto, server_proto = factory(), on_server.run(listener.factory)
        client = _Transport(self, local, addr, client_proto)
        server = _Transport(self, addr, local, server_proto)
        client.peer, server.peer = server, client
        self.connections[client] = self.connections[server] = None
        on_server.run(server_proto.connection_made, server)
        client_proto.connection_made(client)
        return client, client_proto

    def send(self, frm: _Transport, item: Any) -> None:
        to = frm.peer
        if to is None:
            return
        if frm.held or (frm.local[0], to.local[0]) in self.cut:
            frm.held.append(item)
            self.holding[frm] = None
            return
        self._schedule(frm, to, item)

    def _schedule(self, frm: _Transport, to: _Transport, item: Any) -> None:
        at = max(self.loop.now + self.latency(frm.local[0], to.local[0]), frm.last_at)
        frm.last_at = at
        # What arrives is the receiving host's to handle (and dies with it).
        self.loop.call_at(at, to.arrive, item, context=_context_of(to.local[0]))

    def heal(self, links: set[tuple[str, str]] | None = None) -> None:
        """Heal `links` (all when None); what they held is sent on."""
        self.cut -= self.cut if links is None else links
        for t in list(self.holding):
            if t.peer is not None and (t.local[0], t.peer.local[0]) not in self.cut:
                del self.holding[t]
                while t.held:
                    self._schedule(t, t.peer, t.held.popleft())

    def reset(self, transport: _Transport) -> None:
        """Both ends learn that the connection is gone (a middlebox dropped it)."""
        for end in (transport, transport.peer):
            if end is not None and not end.dead:
                end._lost(ConnectionResetError(errno.ECONNRESET, "connection reset"))

    def forget(self, transport: _Transport) -> None:
        self.connections.pop(transport, None)

    def kill(self, host: str) -> None:
        """The host is gone: its listeners and its ends of connections vanish; the other
        ends hear a reset (the machine's kernel answers for a dead process)."""
        for addr in [a for a in self.listeners if a[0] == host]:
            del self.listeners[addr]
        for t in [t for t in {**self.connections, **self.holding} if t.local[0] == host]:
            t.dead = t.closed = True
            t.held.clear()
            self.connections.pop(t, None)
            self.holding.pop(t, None)
            if t.peer is not None and not t.peer.closed:
                self._schedule(t, t.peer, _RESET)
