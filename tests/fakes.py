"""In-process stand-ins for raftsql.node.Node, for testing the HTTP API without Raft.

FakeNode is a one-node cluster that always leads: a real raftsql.sqlite.Database in a temp
directory, commands applied directly (through the same Command encoding Raft would carry),
the raft index counting up. FakeFollower has its own database for local (level=none)
reads and answers every write, barrier and membership request with NotLeaderError naming
its leader, so a FakeFollower's server forwards to a FakeNode's server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from raftsql.errors import ClusterError, NotLeaderError
from raftsql.http import make_app
from raftsql.node.metrics import NodeMetrics
from raftsql.sql.command import Command, ReadOptions, StatementResult
from raftsql.sql.database import Database
from raftsql.sql.service import SqlService


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    api_url: str
    raft_addr: str
    voter: bool = True


class FakeNode:
    def __init__(self, data_dir: Path | str, node_id: str = "n1", api_url: str = "http://127.0.0.1:4001",
                 raft_addr: str = "127.0.0.1:4002"):
        self.node_id = node_id
        self.api_url = api_url
        self.raft_addr = raft_addr
        self.voter = True
        self.database = Database(str(Path(data_dir) / f"{node_id}.sqlite"))
        self.is_leader = True
        self.leader_id: str | None = node_id
        self.raft_index = 0
        self.peers: list[Member] = []
        self.contact: float | None = 0.0  # last_contact() of a non-leader
        self.ready = True
        self.removed = False
        self.fk = False
        self.status_override: dict[str, Any] = {}  # /status raft fields a test sets
        self.snapshot_index = 0
        self.metrics = NodeMetrics()
        # Failure injection: raised (once) by the next execute / read_barrier.
        self.fail_execute: BaseException | None = None
        self.fail_barrier: BaseException | None = None
        self.execute_delay = 0.0
        self.calls: list[tuple[str, Any]] = []
        self.removed_ids: list[str] = []
        self.transfers: list[str | None] = []

    # ---- state --------------------------------------------------------------------

    def leader_api_url(self) -> str | None:
        if self.leader_id == self.node_id:
            return self.api_url
        for m in self.members():
            if m.id == self.leader_id:
                return m.api_url
        return None

    def members(self) -> list[Member]:
        return [Member(self.node_id, self.api_url, self.raft_addr, self.voter), *self.peers]

    def last_contact(self) -> float | None:
        return 0.0 if self.is_leader else self.contact

    def status(self) -> dict[str, Any]:
        leader = next((m for m in self.members() if m.id == self.leader_id), None)
        return {
            "node_id": self.node_id,
            "addr": self.raft_addr,
            "api_addr": self.api_url,
            "leader": {"node_id": self.leader_id or "", "addr": leader.raft_addr if leader else ""},
            "ready": self.ready,
            "raft": {
                "state": "Leader" if self.is_leader else "Follower",
                "term": 1,
                "commit_index": self.raft_index,
                "applied_index": self.raft_index,
                "first_log_index": 1 if self.raft_index else 0,
                "last_log_index": self.raft_index,
                **self.status_override,
            },
            "nodes": [{"id": m.id, "api_addr": m.api_url, "addr": m.raft_addr, "voter": m.voter}
                      for m in self.members()],
        }

    def _not_leader(self) -> NotLeaderError:
        if self.leader_id is None or self.leader_id == self.node_id:
            return NotLeaderError(None, None)
        return NotLeaderError(self.leader_id, self.leader_api_url())

    def _injected(self, name: str) -> None:
        exc = getattr(self, name)
        if exc is not None:
            setattr(self, name, None)
            raise exc

    # ---- requests -----------------------------------------------------------------

    async def propose(self, data: bytes, timeout: float = 30.0) -> tuple[Any, int]:
        """Apply the command at once, as a one-node cluster would once it committed."""
        command = Command.decode(data)
        self.calls.append((str(command.op), command.statements))
        self._injected("fail_execute")
        if not self.is_leader:
            raise self._not_leader()
        if self.execute_delay:
            await asyncio.sleep(self.execute_delay)
        self.raft_index += 1
        return self.database.apply([(self.raft_index, data)])[0], self.raft_index

    async def read_barrier(self, linearizable: bool, timeout: float = 10.0) -> None:
        self.calls.append(("barrier:" + ("linearizable" if linearizable else "weak"), None))
        self._injected("fail_barrier")
        if not self.is_leader:
            raise self._not_leader()

    async def query(self, statements: list[Any], options: ReadOptions) -> list[StatementResult]:
        self.calls.append(("local-query", statements))
        return self.database.query(statements, options)

    async def snapshot(self) -> bool:
        self.calls.append(("snapshot", None))
        taken, self.snapshot_index = self.raft_index > self.snapshot_index, self.raft_index
        return taken

    async def remove_member(self, node_id: str, timeout: float = 10.0) -> None:
        if not self.is_leader:
            raise self._not_leader()
        if node_id not in {m.id for m in self.members()}:
            raise ClusterError(f"node {node_id} is not a member of the cluster")
        self.removed_ids.append(node_id)
        self.peers = [m for m in self.peers if m.id != node_id]

    async def transfer_leadership(self, target: str | None = None, timeout: float = 5.0) -> None:
        if not self.is_leader:
            raise self._not_leader()
        if not self.peers:
            raise ClusterError("leadership transfer refused", 503)
        self.transfers.append(target)

    def close(self) -> None:
        self.database.close()


class FakeFollower(FakeNode):
    """A follower of `leader`: local reads only; everything else is NotLeaderError."""

    def __init__(self, data_dir: Path | str, leader: FakeNode | None, node_id: str = "n2",
                 api_url: str = "http://127.0.0.1:4003", raft_addr: str = "127.0.0.1:4004"):
        super().__init__(data_dir, node_id, api_url, raft_addr)
        self.is_leader = False
        self.leader = leader
        self.leader_id = leader.node_id if leader else None
        self.contact = 0.05

    def members(self) -> list[Member]:
        mine = [Member(self.node_id, self.api_url, self.raft_addr, self.voter)]
        if self.leader is not None:
            mine.append(Member(self.leader.node_id, self.leader.api_url, self.leader.raft_addr, True))
        return sorted(mine + self.peers, key=lambda m: m.id)


def fake_app(node: FakeNode, **options: Any) -> web.Application:
    """The real API, over a fake node and the real SQL service on its database."""
    return make_app(node, SqlService(node, node.database, fk=node.fk), **options)


@pytest.fixture
def node(tmp_path):
    """A FakeNode on a real Database in tmp_path, closed after the test."""
    n = FakeNode(tmp_path)
    yield n
    n.close()
