"""What a node is told: its configuration (`raftsql serve`'s flags), and what it needs of a
transport (transport/websocket.py, transport/inmem.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from raftsql.raft.messages import Message


@dataclass
class NodeConfig:
    node_id: str = "n1"
    data_dir: str = "raftsql-data"
    http_addr: str = "127.0.0.1:4001"
    raft_addr: str | None = None  # where peers reach this node; default: the HTTP address
    initial_cluster: dict[str, str] = field(default_factory=dict)  # id -> raft addr
    join: list[str] = field(default_factory=list)
    non_voter: bool = False
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_threshold: int = 8192  # entries applied since the latest snapshot...
    snapshot_threshold_bytes: int = 64 * 2**20  # ...or bytes of their commands (0: no limit)
    trailing_logs: int = 10240  # entries kept before a snapshot (at most TRAILING_BYTES)
    cluster_secret: str | None = None
    api_tls: bool = False  # the client API is served over HTTPS (its URL says so)

    @property
    def advertised_raft_addr(self) -> str:
        return self.raft_addr or self.http_addr

    @property
    def api_url(self) -> str:
        return f"{'https' if self.api_tls else 'http'}://{self.http_addr}"


class PeerTransport(Protocol):
    """What the driver needs of a transport (transport/websocket.py, transport/inmem.py)."""

    def bind(self, deliver: Callable[[list[Message]], None], *,
             attach: Callable[[Message], Message | None],
             snapshot_file: Callable[[int, int], str | None],
             on_peer_api: Callable[[str, str], None]) -> None: ...
    async def fetch_snapshot(self, raft_addr: str, index: int, term: int, offset: int,
                             out: BinaryIO) -> None: ...
    def set_peer(self, node_id: str, raft_addr: str) -> None: ...
    def send(self, messages: list[Message]) -> None: ...
    def on_rpc(self, name: str, handler: Any) -> None: ...
    async def call(self, raft_addr: str, name: str, payload: dict[str, Any],
                   timeout: float = 5.0) -> dict[str, Any]: ...
    async def start(self) -> None: ...
    async def listen(self, addr: str) -> None: ...
    async def close(self) -> None: ...
