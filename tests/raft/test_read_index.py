"""ReadIndex (dissertation §6.4): linearizable reads without writing to the log."""

from __future__ import annotations

from raftsql.raft.messages import Message, MessageType, ReadState, Role
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")


def test_read_is_answered_after_a_heartbeat_quorum() -> None:
    """§6.4: record the commit index, confirm leadership with a heartbeat round, then the
    read may be served once applied reaches that index."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    assert a.read_index(b"r1")
    rd = a.ready()
    assert not rd.read_states
    beats = [m for m in rd.messages if m.type is MT.HEARTBEAT]
    assert sorted(m.to for m in beats) == ["b", "c"] and all(m.context for m in beats)
    net.handle_ready(net.nodes["a"])
    net.queue.extend(rd.messages)
    net.settle()
    assert net.nodes["a"].read_states == [ReadState(a.commit_index, b"r1")]


def test_reads_between_two_readies_share_one_heartbeat_round() -> None:
    net = Network(["a", "b", "c", "d", "e"])
    a = net.elect("a")
    net.tick(n=1)
    for i in range(50):
        a.read_index(b"%d" % i)
    start = len(net.delivered)
    net.settle()
    assert net.count(MT.HEARTBEAT, since=start) == 4
    assert [rs.context for rs in net.nodes["a"].read_states] == [b"%d" % i for i in range(50)]


def test_new_leader_waits_for_its_first_commit() -> None:
    """§6.4 step 1: a new leader does not know the commit index until it commits an entry
    of its term; reads wait for that."""
    net = Network(ABC)
    a = net.raft("a")
    a.campaign()
    net.settle(until=lambda: a.role is Role.LEADER)
    assert a.term_at(a.commit_index) != a.term
    assert a.read_index(b"early")
    net.handle_ready(net.nodes["a"])
    assert not net.nodes["a"].read_states
    net.settle()
    assert net.nodes["a"].read_states == [ReadState(a.commit_index, b"early")]
    assert a.term_at(a.commit_index) == a.term


def test_partitioned_leader_cannot_answer_reads() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("a")
    a.read_index(b"r")
    net.tick(["a"], n=5)
    assert net.nodes["a"].read_states == []


def test_lost_read_heartbeats_are_retried_by_the_next_heartbeat() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.drop("a", "b", 1.0)
    net.drop("a", "c", 1.0)
    a.read_index(b"r")
    net.settle()
    net.recover()
    assert net.nodes["a"].read_states == []
    net.tick(["a"], n=1)
    assert [rs.context for rs in net.nodes["a"].read_states] == [b"r"]


def test_single_voter_answers_at_once() -> None:
    net = Network(("a",))
    a = net.elect("a")
    a.read_index(b"r")
    rd = a.ready()
    assert rd.read_states == [ReadState(a.commit_index, b"r")] and not rd.messages


def test_follower_forwards_reads_to_the_leader() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    b = net.raft("b")
    assert b.read_index(b"r") is False  # the direct call is for leaders only
    b.step(Message(MT.READ_INDEX, "b", "b", context=b"fwd"))
    net.settle()
    assert net.nodes["b"].read_states == [ReadState(a.commit_index, b"fwd")]


def test_reads_are_dropped_when_leadership_is_lost() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("a")
    a.read_index(b"r")
    net.tick(["a"], n=20)
    assert a.role is Role.FOLLOWER
    net.recover()
    net.tick(n=30)
    assert net.nodes["a"].read_states == []
