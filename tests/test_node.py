"""The driver embedded in-process: any Python state machine replicated by raftsql.Node."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from raftsql.cli.launcher import free_ports
from raftsql.errors import NotLeaderError
from raftsql.node import Node, NodeConfig
from raftsql.raft.messages import Role
from raftsql.server import Server, ServerConfig
from raftsql.sql.command import ReadOptions
from raftsql.storage.log import Storage

from .inprocess import start_nodes, wait_for


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

    def restore(self, path: str, index: int) -> None:
        with open(path) as f:
            self.data = json.load(f)
        self.applied = index

    def close(self) -> None:
        pass


@pytest.fixture
async def nodes(tmp_path):
    nodes = await start_nodes(tmp_path, heartbeat_ms=20, election_ms=200, state_machine=Counter)
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


async def test_reads_that_arrive_together_share_one_read_index(nodes):
    await wait_for(lambda: leader_of(nodes) is not None)
    leader = leader_of(nodes)
    await leader.propose(b"a=1")
    before = leader._reads.seq
    await asyncio.gather(*(leader.read_barrier(True) for _ in range(20)))
    assert 1 <= leader._reads.seq - before <= 2  # one ReadIndex round, not twenty


# ---- the hot path on a single node with the real state machine ------------------------------


class CountingStorage(Storage):
    syncs = 0

    def sync(self) -> None:
        CountingStorage.syncs += 1
        super().sync()


@pytest.fixture
async def single(tmp_path, monkeypatch):
    """One node serving SQL: `.sql` executes, `.query` reads on the node's read path."""
    monkeypatch.setattr("raftsql.node.node.Storage", CountingStorage)
    (port,) = free_ports(1)
    server = Server(ServerConfig(NodeConfig(data_dir=str(tmp_path / "n1"),
                                            http_addr=f"127.0.0.1:{port}",
                                            heartbeat_ms=20, election_ms=200)))
    await server.start()
    node = server.node
    await wait_for(lambda: node.is_leader)
    await server.sql.execute(["CREATE TABLE t (x)"])
    yield SimpleNamespace(node=node, execute=server.sql.execute,
                          query=lambda stmts: node.query(stmts, ReadOptions()))
    await server.stop(transfer=False)


async def test_a_ready_that_only_commits_is_not_fsynced(single):
    before = CountingStorage.syncs
    for i in range(20):
        await single.execute([["INSERT INTO t VALUES(?)", i]])
    assert CountingStorage.syncs - before <= 22  # one per write: none for its commit


SLOW = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) "
        "SELECT count(*) FROM n")


async def test_writes_and_reads_on_the_loop_or_on_threads_give_the_same_results(single):
    node = single.node
    results, _ = await single.execute([["INSERT INTO t VALUES(?)", 1], f"INSERT INTO t {SLOW}"])
    assert [r.rows_affected for r in results] == [1, 1]
    assert node._applier.inline_off_until > 0  # it ran out of time on the loop: redone on a thread
    node._applier.inline_off_until = node._reads.inline_off_until = float("inf")
    results, _ = await single.execute([["INSERT INTO t VALUES(?)", 2]])
    assert results[0].last_insert_id == 3
    queries = [single.query([["SELECT count(*) FROM t WHERE x >= ?", k]]) for k in range(30)]
    counts = [r[0].rows[0][0] for r in await asyncio.gather(*queries, single.query([SLOW]))]
    assert counts == [3, 3, 2] + [1] * 27 + [300000]
    node._applier.inline_off_until = node._reads.inline_off_until = 0.0
    assert (await single.query([SLOW]))[0].rows == [(300000,)]
    assert node._reads.inline_off_until > 0
    assert (await single.query(["SELECT count(*) FROM t"]))[0].rows == [(3,)]


async def test_torn_bootstrap_is_written_again(tmp_path):
    """A crash inside the first write can keep bootstrap entries but lose the hard state;
    the node must not restart as a one-voter cluster of itself."""
    import os

    from raftsql.raft.messages import ConfChange, ConfChangeType, Entry, EntryType
    from raftsql.storage.log import Storage

    data = tmp_path / "n1"
    os.makedirs(data)
    torn = Storage(str(data / "raft"))
    torn.append([Entry(1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, "n1").encode())])
    torn.sync()
    torn.close()
    ports = free_ports(3)
    initial = {f"n{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    node = Node(NodeConfig(node_id="n1", data_dir=str(data), http_addr=initial["n1"],
                           initial_cluster=initial, heartbeat_ms=20, election_ms=100),
                state_machine=Counter())
    await node.start()
    try:
        await asyncio.sleep(0.6)  # several election timeouts with no peers up
        assert node.conf.voters == ("n1", "n2", "n3")
        assert not node.is_leader
    finally:
        await node.stop(transfer=False)


@pytest.mark.parametrize("threshold_bytes, snapshots", [(0, False), (20_000, True)])
async def test_a_snapshot_is_taken_once_the_applied_commands_hold_enough_bytes(
        tmp_path, threshold_bytes: int, snapshots: bool) -> None:
    (port,) = free_ports(1)
    server = Server(ServerConfig(NodeConfig(
        data_dir=str(tmp_path / "n1"), http_addr=f"127.0.0.1:{port}", heartbeat_ms=20,
        election_ms=200, snapshot_threshold=1_000_000, snapshot_threshold_bytes=threshold_bytes,
        trailing_logs=0)))
    await server.start()
    node = server.node
    try:
        await wait_for(lambda: node.is_leader)
        await server.sql.execute(["CREATE TABLE t(x)"])
        for _ in range(10):  # ten commands of ~4 KB: 40 KB in all, far below 1,000,000 entries
            await server.sql.execute([["INSERT INTO t VALUES(?)", "x" * 4000]])
        if snapshots:
            await wait_for(lambda: node.status()["raft"]["snapshot_index"] > 0)
            assert node.status()["raft"]["first_log_index"] > 1  # the log was compacted
        else:
            await asyncio.sleep(0.2)
            assert node.status()["raft"]["snapshot_index"] == 0
    finally:
        await server.stop(transfer=False)
