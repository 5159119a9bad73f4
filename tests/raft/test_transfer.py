"""Leadership transfer (dissertation §3.10): catch the target up, then TimeoutNow."""

from __future__ import annotations

from raftsql.raft.messages import ConfChange, ConfChangeType, Message, MessageType, Role
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")


def test_transfer_to_an_up_to_date_follower() -> None:
    """§3.10: the target is caught up already: TimeoutNow at once; it wins the next term."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    assert a.transfer_leadership("b")
    assert a.lead_transferee == "b"
    net.settle()
    b = net.raft("b")
    assert b.role is Role.LEADER and b.term == 3 and a.role is Role.FOLLOWER
    assert a.leader_id == "b" and a.lead_transferee is None


def test_transfer_catches_a_lagging_target_up_first() -> None:
    """§3.10: the leader stops taking proposals and replicates to the target first."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.crash("c")
    for i in range(10):
        a.propose(b"%d" % i)
    net.settle()
    net.restart("c")
    assert a.transfer_leadership("c")
    assert a.propose(b"refused") is None  # no proposals while transferring
    net.tick(n=2)
    c = net.raft("c")
    assert c.role is Role.LEADER
    assert net.nodes["c"].data == [b"%d" % i for i in range(10)]


def test_transfer_is_aborted_after_an_election_timeout() -> None:
    """§3.10: if the transfer does not complete within an election timeout, the leader
    aborts it and resumes accepting proposals."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("c")
    assert a.transfer_leadership("c")
    net.tick(["a", "b"], n=9)
    assert a.lead_transferee == "c" and a.propose(b"x") is None
    net.tick(["a", "b"], n=1)
    assert a.lead_transferee is None and a.role is Role.LEADER
    assert a.propose(b"x") is not None


def test_transfer_without_target_picks_the_most_up_to_date_voter() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.crash("b")
    a.propose(b"x")
    net.settle()
    assert a.transfer_leadership()
    assert a.lead_transferee == "c"
    net.settle()
    assert net.raft("c").role is Role.LEADER


def test_invalid_transfers() -> None:
    net = Network(ABC, learners=("l",))
    a = net.elect("a")
    assert not a.transfer_leadership("a")
    assert not a.transfer_leadership("l")  # learners cannot lead
    assert not a.transfer_leadership("zz")
    assert not net.raft("b").transfer_leadership("c")  # not leader
    assert a.transfer_leadership("b") and a.transfer_leadership("b")  # repeat: fine


def test_transfer_request_via_a_follower() -> None:
    net = Network(ABC)
    net.elect("a")
    net.tick(n=1)
    net.send(Message(MT.TRANSFER_LEADER, "b", "c"))  # c asks b, b forwards to a
    assert net.raft("c").role is Role.LEADER


def test_no_membership_change_while_transferring() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("c")
    assert a.transfer_leadership("c")
    assert a.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c")) is None
