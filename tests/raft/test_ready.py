"""The driver contract: what a Ready holds, in which order, and what advance() does."""

from __future__ import annotations

import random

from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    Role,
    SoftState,
)
from raftsql.raft.progress import bootstrap_entries
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")


def new(node_id: str = "a", voters: tuple[str, ...] = ABC, **kw: object) -> Raft:
    return Raft(node_id, Config(), random.Random(1), initial=ConfState(voters), **kw)  # type: ignore[arg-type]


def test_bootstrap_ready_persists_the_membership_entries() -> None:
    r = new()
    assert r.has_ready()
    rd = r.ready()
    assert [e.index for e in rd.entries] == [1, 2, 3]
    assert rd.hard_state == HardState(1, None, 3)
    assert rd.committed_entries == []  # not persisted yet
    r.advance(rd)
    rd = r.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2, 3] and rd.hard_state is None
    r.advance(rd)
    assert not r.has_ready() and r.applied == 3


def test_joiner_starts_empty_and_quiet() -> None:
    r = Raft("d", Config(), random.Random(1))
    assert not r.has_ready() and r.conf == ConfState() and r.last_index == 0
    for _ in range(100):
        r.tick()
    assert not r.has_ready()


def test_leader_counts_itself_only_after_persisting() -> None:
    net = Network(("a",))
    a = net.elect("a")
    index = a.propose(b"x")
    rd = a.ready()
    assert [e.index for e in rd.entries] == [index]
    assert a.commit_index < index  # not durable here yet
    a.advance(rd)
    assert a.commit_index == index
    rd = a.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == index
    assert [e.data for e in rd.committed_entries] == [b"x"]


def test_leader_does_not_count_itself_before_persisting() -> None:
    """With one follower's ack, a majority of three needs the leader's own durable copy."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    index = a.propose(b"x")
    rd = a.ready()  # the driver is still persisting a's copy ...
    for m in rd.messages:
        if m.to != "b":
            continue  # c is slow
        net.raft(m.to).step(m)
        for resp in net.handle_ready(net.nodes[m.to]).messages:
            a.step(resp)
    assert a.progress()["b"][0] == index and a.commit_index < index  # ... so not committed
    a.advance(rd)
    assert a.commit_index == index


def test_committed_entries_are_never_unpersisted() -> None:
    """An entry is applied only after the Ready that carried it was advanced."""
    r = new("b")
    r.advance(r.ready())
    r.advance(r.ready())
    r.step(Message(MT.APPEND, "b", "a", term=2, index=3, log_term=1,
                   entries=(Entry(2, 4), Entry(2, 5, data=b"x")), commit=5))
    rd = r.ready()
    assert [e.index for e in rd.entries] == [4, 5] and rd.committed_entries == []
    assert rd.hard_state == HardState(2, None, 5)  # commit persisted with the entries
    assert [m.index for m in rd.messages] == [5]  # the ack: sent after persisting
    r.advance(rd)
    assert [e.index for e in r.ready().committed_entries] == [4, 5]


def test_states_are_reported_only_when_changed() -> None:
    r = new()
    r.advance(r.ready())
    r.advance(r.ready())
    r.step(Message(MT.HEARTBEAT, "a", "b", term=2))
    rd = r.ready()
    assert rd.soft_state == SoftState("b", Role.FOLLOWER) and rd.hard_state == HardState(2, None, 3)
    r.advance(rd)
    r.step(Message(MT.HEARTBEAT, "a", "b", term=2))
    rd = r.ready()
    assert rd.soft_state is None and rd.hard_state is None and len(rd.messages) == 1


def test_vote_is_persisted_with_its_answer() -> None:
    r = new("c")
    r.advance(r.ready())
    r.advance(r.ready())
    r.step(Message(MT.VOTE, "c", "a", term=2, index=3, log_term=1))
    rd = r.ready()
    assert rd.hard_state == HardState(2, "a", 3)
    assert [(m.type, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, False)]


def test_restart_re_emits_committed_entries_after_applied() -> None:
    hs = HardState(2, "a", 5)
    log = bootstrap_entries(ConfState(ABC), {}) + [Entry(2, 4), Entry(2, 5, data=b"x")]
    r = new(hard_state=hs, entries=log, applied=3)
    rd = r.ready()
    assert rd.entries == [] and rd.hard_state is None
    assert [e.index for e in rd.committed_entries] == [4, 5]
    assert (r.term, r.vote, r.commit_index, r.conf.voters) == (2, "a", 5, ABC)


def test_step_between_ready_and_advance() -> None:
    """Entries handed out and then truncated before advance() are not marked persisted:
    their replacements come in the next Ready."""
    r = new("b")
    r.advance(r.ready())
    r.advance(r.ready())
    r.step(Message(MT.APPEND, "b", "a", term=2, index=3, log_term=1, entries=(Entry(2, 4), Entry(2, 5))))
    rd1 = r.ready()
    r.step(Message(MT.APPEND, "b", "c", term=3, index=3, log_term=1, entries=(Entry(3, 4),)))
    r.advance(rd1)
    rd2 = r.ready()
    assert rd2.entries == [Entry(3, 4)]
    r.advance(rd2)
    assert r._log.stable == 4 and r.last_index == 4


def _follower_behind_a_snapshot() -> tuple[Network, Raft]:
    """c was down while a committed and compacted: c now needs a snapshot."""
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    for i in range(3):
        a.propose(b"%d" % i)
    net.settle()
    net.compact("a")
    net.restart("c")
    return net, a


def test_snapshot_message_leaves_data_to_the_driver() -> None:
    net, a = _follower_behind_a_snapshot()
    a.step(Message(MT.BEAT, "a", "a"))
    net.settle(until=lambda: any(m.type is MT.SNAPSHOT for m in net.queue))
    (m,) = [m for m in net.queue if m.type is MT.SNAPSHOT]
    assert m.snapshot is not None and m.snapshot.data == b"" and m.snapshot.meta == a.snapshot_meta


def test_received_snapshot_is_surfaced_and_applied_before_new_entries() -> None:
    net, a = _follower_behind_a_snapshot()
    c = net.raft("c")
    snapshot = net.nodes["a"].storage.load_snapshot()
    assert snapshot is not None
    c.step(Message(MT.SNAPSHOT, "c", "a", term=a.term, snapshot=snapshot))
    rd = c.ready()
    assert rd.snapshot == snapshot and rd.committed_entries == []
    assert [(m.type, m.index) for m in rd.messages] == [(MT.APPEND_RESP, snapshot.meta.index)]
    c.advance(rd)
    assert c.applied == c.commit_index == snapshot.meta.index
    assert c.progress() == {}


def test_idle_follower_has_nothing_ready() -> None:
    net = Network(ABC)
    net.elect("a")
    net.tick(n=2)
    assert not net.raft("b").has_ready()
    assert not net.raft("a").has_ready()
