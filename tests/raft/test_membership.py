"""Membership changes, one server at a time (§6 of the paper; dissertation §4)."""

from __future__ import annotations

from raftsql.raft.core import Config
from raftsql.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    MessageType,
    Role,
)
from tests.raft.harness import Network

MT = MessageType
ADD, LEARNER, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE
ABC = ("a", "b", "c")


def test_bootstrap_writes_the_initial_membership_to_the_log() -> None:
    """A new cluster's membership is in its first, committed entries, identical on every
    initial member, so a later joiner learns it from the log."""
    net = Network(("c", "a", "b"))
    logs = [net.raft(n).entries(1, 4) for n in ABC]
    assert logs[0] == logs[1] == logs[2]
    assert [ConfChange.decode(e.data).node_id for e in logs[0]] == ["a", "b", "c"]
    assert all(e.type is EntryType.CONF_CHANGE and e.term == 1 for e in logs[0])
    assert net.raft("a").commit_index == 3 and net.raft("a").conf.voters == ABC


def test_add_voter_joins_and_counts_in_quorum() -> None:
    """§6: a new server catches up from the log (membership included), then counts."""
    net = Network(ABC)
    a = net.elect("a")
    net.add_node("d")  # joining: no membership of its own
    index = net.change("a", ConfChange(ADD, "d", b"addr"))
    assert index is not None and a.conf.voters == ("a", "b", "c", "d")  # in effect at once
    net.tick(n=2)
    d = net.raft("d")
    assert d.conf.voters == ("a", "b", "c", "d") and d.commit_index >= index
    assert net.log("d") == net.log("a")
    net.crash("b")
    net.crash("c")  # 2 of 4 is no majority
    a.propose(b"x")
    net.settle()
    assert a.commit_index < a.last_index


def test_learner_receives_entries_but_never_counts() -> None:
    net = Network(("a", "b"), learners=("l",))
    a = net.elect("a")
    net.crash("b")
    a.propose(b"x")
    net.tick(["a", "l"], n=2)
    assert net.raft("l").last_index == a.last_index  # replicated to the learner ...
    assert a.commit_index < a.last_index  # ... which is no part of the quorum


def test_add_voter_promotes_a_learner() -> None:
    net = Network(("a", "b"), learners=("l",))
    a = net.elect("a")
    net.tick(n=1)
    net.change("a", ConfChange(ADD, "l"))
    assert a.conf == ConfState(("a", "b", "l"), ())
    net.tick(n=2)
    assert net.raft("l").conf.voters == ("a", "b", "l")
    net.crash("b")
    a.propose(b"x")
    net.settle()
    assert a.commit_index == a.last_index  # 2 of 3 now, with the promoted learner


def test_remove_follower_shrinks_the_quorum() -> None:
    net = Network(["a", "b", "c", "d"])
    a = net.elect("a")
    net.tick(n=1)
    net.change("a", ConfChange(REMOVE, "d"))
    assert a.conf.voters == ABC and "d" in a.progress()  # told a while longer ...
    net.tick(n=10)
    assert "d" not in a.progress()  # ... then forgotten
    net.crash("c")
    a.propose(b"x")
    net.settle()
    assert a.commit_index == a.last_index  # a and b are 2 of 3


def test_one_change_at_a_time() -> None:
    """Dissertation §4.1: a new change only once the previous one is committed."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.crash("b")
    net.crash("c")
    assert a.propose_conf_change(ConfChange(ADD, "d")) is not None
    assert a.propose_conf_change(ConfChange(ADD, "e")) is None  # d's is not committed
    net.restart("b")
    net.restart("c")
    net.tick(n=2)
    assert a.propose_conf_change(ConfChange(ADD, "e")) is not None


def test_refused_changes() -> None:
    net = Network(("a",))
    a = net.elect("a")
    assert net.raft("a").propose_conf_change(ConfChange(REMOVE, "a")) is None  # last voter
    assert a.propose_conf_change(ConfChange(ADD, "a")) is None  # no-op
    assert a.propose_conf_change(ConfChange(LEARNER, "zz", b"addr")) is not None
    net.settle()
    assert a.commit_index == a.last_index
    assert a.propose_conf_change(ConfChange(LEARNER, "zz")) is None  # no-op
    assert a.propose_conf_change(ConfChange(LEARNER, "zz", b"addr2")) is not None  # address
    assert a.propose_conf_change(ConfChange(REMOVE, "zz")) is None  # not a member
    net = Network(ABC)
    assert net.raft("b").propose_conf_change(ConfChange(ADD, "d")) is None  # not leader


def test_no_change_before_the_leader_commits_an_entry_of_its_term() -> None:
    """raft-dev 2015 (single-server change bug): a new leader first commits its no-op."""
    net = Network(ABC)
    a = net.raft("a")
    a.campaign()
    net.settle(until=lambda: a.role is Role.LEADER)
    assert a.commit_index < a.last_index
    assert a.propose_conf_change(ConfChange(ADD, "d")) is None
    net.settle()
    assert a.propose_conf_change(ConfChange(ADD, "d")) is not None


def test_configuration_reverts_when_its_entry_is_truncated() -> None:
    """Dissertation §4.1: a configuration takes effect when appended, committed or not,
    and reverts if its entry is removed from the log."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("a")
    index = net.change("a", ConfChange(ADD, "d"))  # on a only
    assert index is not None and a.conf.voters == ("a", "b", "c", "d")
    for _ in range(100):
        if net.raft("b").role is Role.LEADER or net.raft("c").role is Role.LEADER:
            break
        net.tick(["b", "c"])
    net.recover()
    net.tick(["b", "c"], n=2)
    assert a.role is Role.FOLLOWER and a.term_at(index) != 2
    assert a.conf.voters == ABC  # the entry was overwritten: back to the old membership


def test_removed_leader_that_stepped_down_early_still_finishes() -> None:
    """Dissertation §4.1: a server removed by an uncommitted entry still campaigns (it
    may be the only one holding that entry), not counting its own vote."""
    net = Network(("a", "b"))
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("a")
    index = a.propose_conf_change(ConfChange(REMOVE, "a"))  # on a only
    assert index is not None
    net.tick(["a"], n=20)  # CheckQuorum: a steps down before b heard of it
    assert a.role is Role.FOLLOWER and a.conf.voters == ("b",)
    net.recover()
    for _ in range(100):  # b cannot win (a's log is longer); a can, with b's vote alone
        net.tick()
        if a.commit_index >= index and net.leader() == "b":
            break
    assert a.commit_index >= index and net.leader() == "b" and a.role is Role.FOLLOWER


def test_removed_leader_leads_until_committed_then_steps_down() -> None:
    """Dissertation §4.2.2: a leader removing itself keeps managing the cluster (without
    counting itself) until the change commits, then steps down; another takes over."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    index = a.propose_conf_change(ConfChange(REMOVE, "a"))
    assert index is not None and a.role is Role.LEADER and a.conf.voters == ("b", "c")
    assert a.propose(b"x") is None  # no new work while leaving
    net.settle()
    assert a.role is Role.FOLLOWER and a.commit_index >= index
    assert net.leader() in ("b", "c")  # handed over at once (TimeoutNow), no timeout
    new = net.raft(net.leader() or "")
    assert new.conf.voters == ("b", "c")
    new.propose(b"after")
    net.tick(["b", "c"], n=30)
    assert net.raft("a").role is Role.FOLLOWER and net.leader() == new.id


def test_removed_node_does_not_disrupt() -> None:
    """Dissertation §4.2.3: a removed server (here one that never heard of its removal)
    times out and campaigns; PreVote and CheckQuorum keep it from deposing the leader."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.cut("a", "c")
    net.change("a", ConfChange(REMOVE, "c"))
    term = a.term
    net.recover()
    net.tick(n=100)
    assert a.role is Role.LEADER and a.term == term
    assert net.raft("c").role is not Role.LEADER


def test_removed_node_learns_its_removal_and_stops_campaigning() -> None:
    """The leader keeps heartbeating a removed node for an election timeout after the
    removal commits: it learns so, and never campaigns again."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.change("a", ConfChange(REMOVE, "c"))
    net.tick(n=1)
    c = net.raft("c")
    assert "c" not in c.conf.voters and c.commit_index >= c.last_index - 1
    net.isolate("c")
    net.tick(["c"], n=100)
    assert c.role is Role.FOLLOWER and c.term == a.term


def test_membership_survives_restart() -> None:
    net = Network(ABC, config=Config())
    net.elect("a")
    net.tick(n=1)
    net.change("a", ConfChange(LEARNER, "l"))
    for n in ABC:
        net.restart(n)
    assert all(net.raft(n).conf == ConfState(ABC, ("l",)) for n in ABC)


def test_torn_bootstrap_is_written_again() -> None:
    """Regression (found by the simulator): a crash while the first Ready is persisted can
    keep a prefix of the bootstrap entries and no hard state. Read as a log, that prefix
    is a smaller cluster ("a" alone) that would elect itself and commit on its own. A node
    with no hard state that is given the initial membership bootstraps again instead."""
    net = Network(ABC)
    node = net.nodes["a"]
    assert node.raft is not None and node.storage is not None
    rd = node.raft.ready()  # bootstrap: entries 1..3 and hard state (term 1, commit 3)
    node.storage.append(rd.entries[:1])  # the torn write kept entry 1 only
    node.storage.sync()
    net.restart("a")
    a = net.raft("a")
    assert (a.term, a.conf.voters, a.last_index) == (1, ABC, 3)
    net.isolate("a")
    net.tick(["a"], n=100)
    assert a.role is not Role.LEADER  # one voter of three: no election on its own
    net.recover()
    net.elect("b")
    net.propose("b", b"x")
    net.tick(n=2)
    assert net.log("a") == net.log("b") == net.log("c")
    assert net.nodes["a"].data == [b"x"]


def test_re_adding_a_member_with_a_new_context_goes_through_the_log() -> None:
    """A member that moved to a new address re-joins: its ADD (same role, new context) is
    appended and committed like a change, so every node learns the address, while the
    membership stays the same."""
    net = Network(ABC)
    a = net.elect("a")
    index = a.propose_conf_change(ConfChange(ADD, "c", b"new-address"))
    assert index is not None and a.conf.voters == ABC
    net.settle()
    net.tick(n=2)
    for n in ABC:
        entry = net.raft(n).entries(index, index + 1)[0]
        assert ConfChange.decode(entry.data) == ConfChange(ADD, "c", b"new-address")
        assert net.raft(n).conf.voters == ABC and net.raft(n).commit_index >= index
