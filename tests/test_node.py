"""The driver embedded in-process: any Python state machine replicated by raftsql.Node."""

from __future__ import annotations

import asyncio
import json

import pytest

from raftsql.errors import NotLeaderError
from raftsql.launcher import free_ports
from raftsql.node import Node, NodeConfig
from raftsql.raft.messages import Role


class Counter:
    """A tiny state machine: entries are `key=value`; apply returns how many keys exist."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def applied_index(self) -> int:
        return self.applied

    def apply(self, entries: list[tuple[int, bytes]]) -> list[int]:
        results = []
        for index, data in entries:
            key, _, value = data.decode().partition("=")
            self.data[key] = value
            self.applied = index
            results.append(len(self.data))
        return results

    def mark_applied(self, index: int) -> None:
        self.applied = index

    def snapshot(self, path: str) -> int:
        with open(path, "w") as f:
            json.dump(self.data, f)
        return self.applied

    def restore(self, path: str) -> None:
        with open(path) as f:
            self.data = json.load(f)

    def close(self) -> None:
        pass


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(tmp_path):
    ports = free_ports(3)
    initial = {f"n{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    nodes = [
        Node(NodeConfig(node_id=node_id, data_dir=str(tmp_path / node_id), http_addr=addr,
                        initial_cluster=initial, heartbeat_ms=20, election_ms=200),
             state_machine=Counter())
        for node_id, addr in initial.items()
    ]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        if not node._stopped.is_set():
            await node.stop(transfer=False)


def leader_of(nodes: list[Node]) -> Node | None:
    leaders = [n for n in nodes if n.is_leader]
    return leaders[0] if len(leaders) == 1 else None


async def test_embedded_nodes_replicate_a_python_state_machine(nodes):
    await wait_for(lambda: leader_of(nodes) is not None)
    leader = leader_of(nodes)
    assert (leader.member_count, leader.quorum_size) == (3, 2)
    result, index = await leader.propose(b"a=1")
    assert result == 1 and index > 0
    results = await asyncio.gather(*(leader.propose(f"k{i}=v".encode()) for i in range(50)))
    assert sorted(r for r, _ in results) == list(range(2, 52))
    await wait_for(lambda: all(n.database.data.get("k49") == "v" for n in nodes))
    follower = next(n for n in nodes if n is not leader)
    assert follower.role is Role.FOLLOWER and follower.leader_id == leader.node_id
    with pytest.raises(NotLeaderError) as err:
        await follower.propose(b"x=1")
    assert err.value.leader_id == leader.node_id


async def test_leader_stop_hands_over_and_cluster_keeps_working(nodes):
    await wait_for(lambda: leader_of(nodes) is not None)
    old = leader_of(nodes)
    await old.propose(b"before=1")
    await old.stop(transfer=True)
    rest = [n for n in nodes if n is not old]
    await wait_for(lambda: leader_of(rest) is not None, timeout=5)
    new = leader_of(rest)
    await new.propose(b"after=1")
    await wait_for(lambda: all(n.database.data.get("after") == "1" for n in rest))
    assert new.term > 0 and new.leader_id == new.node_id
