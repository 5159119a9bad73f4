"""Log compaction and InstallSnapshot (§7)."""

from __future__ import annotations

from collections import deque

from raftsql.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from raftsql.raft.progress import ProgressState
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")


def setup_lagging(n_entries: int = 20) -> Network:
    """a leads, c is down while a commits and compacts everything."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.crash("c")
    for i in range(n_entries):
        a.propose(b"%d" % i)
    net.settle()
    net.compact("a")
    assert a.first_index == a.applied + 1
    return net


def test_compact_drops_entries_and_remembers_the_snapshot() -> None:
    """§7: entries up to the snapshot are discarded; its last index, term and membership
    are kept."""
    net = Network(ABC)
    a = net.elect("a")
    for i in range(5):
        a.propose(b"%d" % i)
    net.settle()
    applied = a.applied
    net.compact("a", applied - 2)
    assert a.first_index == applied - 1 and a.last_index == applied
    meta = a.snapshot_meta
    assert (meta.index, meta.term, meta.conf) == (applied - 2, 2, ConfState(ABC))
    assert a.term_at(applied - 2) == 2 and a.term_at(applied - 3) is None


def test_lagging_follower_receives_a_snapshot() -> None:
    """§7: a follower that needs compacted entries gets InstallSnapshot, then entries."""
    net = setup_lagging()
    a = net.raft("a")
    net.restart("c")
    start = len(net.delivered)
    net.tick(n=2)
    snaps = [m for m in net.delivered[start:] if m.type is MT.SNAPSHOT]
    assert len(snaps) == 1 and snaps[0].snapshot is not None and snaps[0].snapshot.data
    c = net.raft("c")
    assert c.first_index == a.first_index and net.log("c") == net.log("a")
    assert net.nodes["c"].data == net.nodes["a"].data
    assert a._prs["c"].state is ProgressState.REPLICATE
    a.propose(b"after")
    net.tick(n=2)  # the APPEND, then a heartbeat with the new commit index
    assert net.nodes["c"].data[-1] == b"after"


def test_follower_restarts_from_an_installed_snapshot() -> None:
    net = setup_lagging()
    net.restart("c")
    net.tick(n=2)
    net.restart("c")
    c = net.raft("c")
    assert c.first_index == net.raft("a").first_index and c.applied == c.first_index - 1
    assert c.conf == ConfState(ABC)
    net.tick(n=1)
    assert net.nodes["c"].data == net.nodes["a"].data


def test_lost_snapshot_is_sent_again_after_an_election_timeout() -> None:
    net = setup_lagging()
    net.restart("c")
    a = net.raft("a")
    a.step(Message(MT.BEAT, "a", "a"))
    net.settle(until=lambda: any(m.type is MT.SNAPSHOT for m in net.queue))
    net.queue = deque(m for m in net.queue if m.type is not MT.SNAPSHOT)  # lost
    net.settle()
    start = len(net.delivered)
    net.tick(n=5)
    assert net.count(MT.SNAPSHOT, since=start) == 0  # waits ...
    net.tick(n=15)
    assert net.count(MT.SNAPSHOT, since=start) == 1  # ... then retries once
    assert net.log("c") == net.log("a")


def test_stale_snapshot_is_ignored() -> None:
    net = Network(ABC)
    a = net.elect("a")
    for i in range(5):
        a.propose(b"%d" % i)
    net.tick(n=1)
    b = net.raft("b")
    before = net.log("b")
    b.step(Message(MT.SNAPSHOT, "b", "a", term=2, snapshot=Snapshot(SnapshotMeta(3, 1, ConfState(ABC)), b"[]")))
    rd = b.ready()
    assert rd.snapshot is None and net.log("b") == before
    (resp,) = rd.messages
    assert (resp.type, resp.index, resp.reject) == (MT.APPEND_RESP, b.commit_index, False)


def test_snapshot_matching_our_log_only_commits() -> None:
    """A snapshot whose last entry we hold does not wipe our log (we may hold more)."""
    net = Network(ABC)
    a = net.elect("a")
    net.cut("a", "b")
    net.tick(["a", "c"], n=1)
    b = net.raft("b")
    last = b.last_index
    b.step(Message(MT.SNAPSHOT, "b", "a", term=2,
                   snapshot=Snapshot(SnapshotMeta(last, 2, ConfState(ABC)), b"x")))
    rd = b.ready()
    assert rd.snapshot is None and b.commit_index == last and b.last_index == last
    assert a.role.value == "Leader"


def test_snapshot_carries_membership() -> None:
    """A node that joins a compacted cluster learns the membership from the snapshot."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.add_node("d")
    net.change("a", ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    net.crash("d")
    for i in range(5):
        a.propose(b"%d" % i)
    net.settle()
    net.compact("a")
    net.restart("d")
    net.tick(n=3)
    d = net.raft("d")
    assert d.conf == ConfState(ABC, ("d",)) and d.first_index == a.first_index
    assert net.nodes["d"].data == net.nodes["a"].data
