"""The in-memory twin of the WebSocket transport (hashicorp/raft's InmemTransport): several
nodes in one process, no sockets, a network that tests can cut and heal.

Messages are delivered on the event loop's next turn, in order per link, as a stream would
deliver them; a cut link, or a closed or unknown address, loses them (Raft tolerates loss).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, BinaryIO

from raftsql.errors import TransportError
from raftsql.raft.messages import Message, MessageType

Deliver = Callable[[list[Message]], None]
RpcHandler = Callable[[dict[str, Any]], Any]


class InMemoryNetwork:
    """Addresses to transports, and which links are cut."""

    def __init__(self) -> None:
        self._at: dict[str, InMemoryTransport] = {}
        self._cut: set[tuple[str, str]] = set()  # (from node id, to node id)
        self.sent: list[Message] = []  # everything that left a node, for tests to read

    def transport(self, node_id: str, addr: str, api_url: str = "") -> InMemoryTransport:
        t = InMemoryTransport(self, node_id, addr, api_url)
        self._at[addr] = t
        return t

    def cut(self, a: str, b: str) -> None:
        """Lose everything between nodes `a` and `b`, both ways."""
        self._cut |= {(a, b), (b, a)}

    def isolate(self, node_id: str) -> None:
        for t in self._at.values():
            if t.node_id != node_id:
                self.cut(node_id, t.node_id)

    def heal(self) -> None:
        self._cut.clear()

    def _route(self, frm: InMemoryTransport, addr: str) -> InMemoryTransport | None:
        to = self._at.get(addr)
        if to is None or not to.listening or (frm.node_id, to.node_id) in self._cut:
            return None
        return to


class InMemoryTransport:
    def __init__(self, network: InMemoryNetwork, node_id: str, addr: str, api_url: str) -> None:
        self.node_id = node_id
        self.addr = addr
        self.api_url = api_url
        self.listening = False
        self._network = network
        self._peers: dict[str, str] = {}  # node id -> address
        self._rpc: dict[str, RpcHandler] = {}
        self._deliver: Deliver = lambda messages: None
        self._attach: Callable[[Message], Message | None] = lambda m: m
        self._snapshot_file: Callable[[int, int], str | None] = lambda index, term: None
        self._on_peer_api: Callable[[str, str], None] = lambda node_id, api_url: None

    def bind(self, deliver: Deliver, *, attach: Callable[[Message], Message | None],
             snapshot_file: Callable[[int, int], str | None],
             on_peer_api: Callable[[str, str], None]) -> None:
        self._deliver = deliver
        self._attach = attach
        self._snapshot_file = snapshot_file
        self._on_peer_api = on_peer_api

    def set_peer(self, node_id: str, raft_addr: str) -> None:
        if node_id != self.node_id:
            self._peers[node_id] = raft_addr

    def send(self, messages: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            if m.type is MessageType.SNAPSHOT or m.entries:
                attached = self._attach(m)
                if attached is None:
                    continue
                m = attached
            self._network.sent.append(m)
            to = self._network._route(self, self._peers.get(m.to, ""))
            if to is not None:
                loop.call_soon(to._receive, self, [m])

    def _receive(self, frm: InMemoryTransport, messages: list[Message]) -> None:
        if self.listening and (frm.node_id, self.node_id) not in self._network._cut:
            self._on_peer_api(frm.node_id, frm.api_url)
            self._deliver(messages)

    def on_rpc(self, name: str, handler: RpcHandler) -> None:
        self._rpc[name] = handler

    async def call(self, raft_addr: str, name: str, payload: dict[str, Any],
                   timeout: float = 5.0) -> dict[str, Any]:
        to = self._network._route(self, raft_addr)
        if to is None or name not in to._rpc:
            raise TransportError(f"rpc {name} to {raft_addr} failed: unreachable")
        to._on_peer_api(self.node_id, self.api_url)
        async with asyncio.timeout(timeout):
            result: dict[str, Any] = await to._rpc[name](dict(payload))
            return result

    async def fetch_snapshot(self, raft_addr: str, index: int, term: int, offset: int,
                             out: BinaryIO) -> None:
        """As the WebSocket transport's: the peer's state file from `offset`, a chunk per
        turn of the loop (a cut link stops it, leaving what arrived)."""
        to = self._network._route(self, raft_addr)
        path = None if to is None else to._snapshot_file(index, term)
        if to is None or path is None:
            raise TransportError(f"snapshot {index} from {raft_addr}: "
                                 f"{'unreachable' if to is None else 'not there'}",
                                 None if to is None else 404)
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(1 << 16):
                if self._network._route(self, to.addr) is None:
                    raise TransportError(f"snapshot {index} from {raft_addr}: link cut")
                out.write(chunk)
                await asyncio.sleep(0)
        out.flush()

    def reachable(self, node_id: str) -> bool:
        to = self._network._route(self, self._peers.get(node_id, ""))
        return to is not None

    async def start(self) -> None:
        self.listening = True

    async def listen(self, addr: str) -> None:
        """Nothing to bind: the network knows this transport by its address already."""

    async def close(self) -> None:
        self.listening = False
