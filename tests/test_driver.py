"""The driver (raftsql.node.Node) over the in-memory transport, on a hand-wound clock.

Several real nodes in one process, no sockets, no waiting for timeouts: elections,
replication, restarts, and the promise that matters most, that a follower acknowledges an
entry only once it is fsynced (checked on every message the nodes send).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from raftsql.errors import NotLeaderError
from raftsql.node import Node, NodeConfig
from raftsql.node.clock import ManualClock
from raftsql.raft.messages import MessageType
from raftsql.storage import Storage
from raftsql.storage.payloads import is_ref
from raftsql.transport.inmem import InMemoryNetwork

from .test_node import Counter

IDS = ("n1", "n2", "n3")


class SyncWatch:
    """Every node's last fsynced log index, and each message checked against it."""

    def __init__(self) -> None:
        self.synced: dict[str, int] = {}
        self.violations: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        watch = self

        class WatchedStorage(Storage):
            def sync(self) -> None:
                super().sync()
                watch.synced[self.owner] = self.last_index

        def make(path: str, *args: object) -> Storage:
            storage = WatchedStorage(path, *args)  # type: ignore[arg-type]
            storage.owner = path.split("/")[-2]  # type: ignore[attr-defined]
            watch.synced[storage.owner] = storage.last_index  # type: ignore[attr-defined]
            return storage

        monkeypatch.setattr("raftsql.node.node.Storage", make)

    def check(self, messages: list) -> None:
        for m in messages:
            if m.type is MessageType.APPEND_RESP and not m.reject and m.index > self.synced.get(
                    m.frm, 0):
                self.violations.append(f"{m.frm} acknowledged {m.index}, fsynced only "
                                       f"{self.synced.get(m.frm)}")


class Cluster:
    def __init__(self, tmp_path, watch: SyncWatch) -> None:
        self.tmp = tmp_path
        self.clock = ManualClock()
        self.net = InMemoryNetwork()
        self.watch = watch
        self.nodes: dict[str, Node] = {}
        self.sms: dict[str, Counter] = {}

    def config(self, node_id: str) -> NodeConfig:
        return NodeConfig(node_id=node_id, data_dir=str(self.tmp / node_id),
                          http_addr=f"{node_id}:4001", raft_addr=f"{node_id}:4002",
                          initial_cluster={i: f"{i}:4002" for i in IDS},
                          heartbeat_ms=10, election_ms=100)

    async def start(self, node_id: str) -> Node:
        config = self.config(node_id)
        transport = self.net.transport(node_id, config.advertised_raft_addr, config.api_url)
        send = transport.send

        def watched_send(messages: list) -> None:
            self.watch.check(messages)
            send(messages)

        transport.send = watched_send  # type: ignore[method-assign]
        sm = self.sms[node_id] = Counter()
        node = self.nodes[node_id] = Node(config, sm, transport=transport, clock=self.clock)
        await node.start()
        return node

    async def run_until(self, done: Callable[[], bool], seconds: float = 10.0) -> None:
        """Wind the clock until `done()`; the persist and apply threads get real moments."""
        for _ in range(int(seconds / 0.01)):
            if done():
                return
            await self.clock.advance(0.01)
            await asyncio.sleep(0.001)
        raise AssertionError("not done in time")

    def leader(self) -> Node | None:
        leaders = [n for n in self.nodes.values() if n.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    async def stop(self) -> None:
        for node in self.nodes.values():
            if not node._stopped.is_set():
                await node.stop(transfer=False)


@pytest.fixture
async def cluster(tmp_path, monkeypatch):
    watch = SyncWatch()
    watch.install(monkeypatch)
    c = Cluster(tmp_path, watch)
    for node_id in IDS:
        await c.start(node_id)
    yield c
    await c.stop()
    assert not watch.violations, watch.violations


async def test_an_election_and_replication_without_sockets_or_sleeping(cluster):
    await cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    await cluster.run_until(lambda: all(n.leader_id == leader.node_id
                                        for n in cluster.nodes.values()))
    results = await asyncio.gather(*(leader.propose(f"k{i}=v".encode()) for i in range(20)))
    assert sorted(r for r, _ in results) == list(range(1, 21))
    await cluster.run_until(lambda: all(sm.data.get("k19") == "v" for sm in cluster.sms.values()))
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    with pytest.raises(NotLeaderError) as err:
        await follower.propose(b"x=1")
    assert err.value.leader_id == leader.node_id
    assert err.value.leader_url == f"http://{leader.node_id}:4001"  # from the peer's own word


async def test_a_cut_off_leader_is_replaced_and_catches_up(cluster):
    await cluster.run_until(lambda: cluster.leader() is not None)
    old = cluster.leader()
    await old.propose(b"a=1")
    cluster.net.isolate(old.node_id)
    await cluster.run_until(lambda: any(n.is_leader and n is not old
                                        for n in cluster.nodes.values()))
    new = next(n for n in cluster.nodes.values() if n.is_leader and n is not old)
    await new.propose(b"b=2")
    cluster.net.heal()
    await cluster.run_until(lambda: cluster.sms[old.node_id].data.get("b") == "2")
    assert not old.is_leader


async def test_a_follower_that_dies_between_fsync_and_answer_keeps_the_entry(cluster):
    """It fsynced the entry and died before its acknowledgement went out: after a restart
    from its data directory the entry is there, and the cluster commits with it."""
    await cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    victim = next(n for n in cluster.nodes.values() if n is not leader)
    other = next(n for n in cluster.nodes.values() if n not in (leader, victim))
    cluster.net.cut(leader.node_id, other.node_id)  # the victim's answer is the one needed
    transport = cluster.net._at[victim.config.advertised_raft_addr]
    transport.send = lambda messages: None  # type: ignore[method-assign]  # dead after fsync
    proposal = asyncio.ensure_future(leader.propose(b"x=1", timeout=30))
    await cluster.run_until(lambda: cluster.watch.synced.get(victim.node_id, 0) >= leader.commit_index + 1)
    assert not proposal.done()  # no quorum heard of it: not acknowledged
    await victim.stop(transfer=False)  # the crash: a new process starts from the same data
    restarted = await cluster.start(victim.node_id)
    await cluster.run_until(lambda: proposal.done())
    assert proposal.result()[0] == 1
    await cluster.run_until(lambda: cluster.sms[restarted.node_id].data.get("x") == "1")


async def test_a_follower_behind_the_compacted_log_fetches_the_snapshots_state(cluster):
    """InstallSnapshot over the in-memory transport: the SNAPSHOT message is held back until
    the follower has fetched the state file from the leader (raftsql/node/snapshots.py)."""
    await cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    lagging = next(n for n in cluster.nodes.values() if n is not leader)
    cluster.net.isolate(lagging.node_id)
    for i in range(30):
        await leader.propose(f"k{i}={'v' * 5000}".encode())
    assert await leader.snapshot(trailing=0)
    assert leader.status()["raft"]["first_log_index"] > leader.applied_index - 1
    cluster.net.heal()
    await cluster.run_until(lambda: cluster.sms[lagging.node_id].data.get("k29") == "v" * 5000)
    assert lagging._receiver.received == 1
    assert cluster.sms[lagging.node_id].data == cluster.sms[leader.node_id].data


def payload_files(node: Node) -> int:
    """(Not counting one being written: a resent entry may be arriving.)"""
    names = os.listdir(os.path.join(node.config.data_dir, "raft", "payloads"))
    return len([name for name in names if not name.endswith(".tmp")])


async def test_large_entries_are_kept_beside_the_log_and_read_where_needed(cluster):
    """An entry over DETACH_BYTES: the log, on disk and in every core's memory, holds a
    reference; its data is a file on every node that has the entry, sent with it, applied
    from it (also when replayed after a restart), and removed once the entry is compacted."""
    await cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    lagging, other = (n for n in cluster.nodes.values() if n is not leader)
    cluster.net.isolate(lagging.node_id)
    values = [os.urandom(50_000).hex() for _ in range(3)]  # 100 kB each
    for i, value in enumerate(values):
        await leader.propose(f"big{i}={value}".encode())
    for node in (leader, other):
        logged = [e.data for e in node._storage.entries() if e.data.startswith(b"\0P")]
        assert len(logged) == 3 and all(is_ref(d) for d in logged)
        assert max(len(e.data) for e in node._raft.entries(1, node._raft.last_index + 1)) < 200
        assert payload_files(node) == 3
    cluster.net.heal()
    await cluster.run_until(lambda: cluster.sms[lagging.node_id].data.get("big2") == values[2])
    assert payload_files(lagging) == 3
    await lagging.stop(transfer=False)
    restarted = await cluster.start(lagging.node_id)  # a fresh state machine: all replayed
    want = {f"big{i}": v for i, v in enumerate(values)}
    await cluster.run_until(lambda: cluster.sms[restarted.node_id].data == want)
    assert await leader.snapshot(trailing=0)
    assert payload_files(leader) == 0
    with pytest.raises(ValueError, match="00 50"):  # what a reference starts with, any size
        await leader.propose(b"\0P" + b"x" * 28)
