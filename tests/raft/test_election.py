"""Leader election: terms (§5.1), elections (§5.2), the election restriction (§5.4.1),
PreVote (dissertation §9.6) and CheckQuorum (§6.2)."""

from __future__ import annotations

import random

from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    Role,
)
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")


def tick_until_leader(net: Network, limit: int = 200) -> str:
    for _ in range(limit):
        leader = net.leader()
        if leader is not None:
            return leader
        net.tick()
    raise AssertionError("no leader elected")


def tick_until_leader_among(net: Network, ids: list[str], limit: int = 200) -> str:
    for _ in range(limit):
        for i in ids:
            if net.raft(i).role is Role.LEADER:
                return i
        net.tick(ids)
    raise AssertionError("no leader elected")


def leaders(net: Network) -> list[str]:
    return [n.id for n in net.alive() if n.raft is not None and n.raft.role is Role.LEADER]


# ---- §5.1 terms ----------------------------------------------------------------


def test_higher_term_turns_leader_into_follower() -> None:
    """§5.1: a server that sees a larger term adopts it and reverts to follower."""
    net = Network(ABC)
    a = net.elect("a")
    a.step(Message(MT.APPEND, "a", "b", term=a.term + 3))
    assert (a.role, a.term, a.leader_id) == (Role.FOLLOWER, 5, "b")


def test_stale_term_messages_are_ignored_and_the_sender_told() -> None:
    """§5.1: a request with a stale term is rejected; the stale leader learns the term
    from the answer and steps down."""
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("a")
    new = net.raft(tick_until_leader_among(net, ["b", "c"]))  # a does not notice
    net.recover()
    assert a.role is Role.LEADER and a.term == 2 and new.term > 2
    before = new.last_index
    a.propose(b"stale")
    net.settle()
    assert new.last_index == before  # nothing of the stale leader was accepted
    assert (a.role, a.term) == (Role.FOLLOWER, new.term)
    assert net.count(MT.APPEND_RESP, to="a", term=new.term) >= 1


# ---- §5.2 election -------------------------------------------------------------


def test_randomized_election_timeout_in_range() -> None:
    """§5.2: election timeouts are random in [election_ticks, 2 * election_ticks)."""
    cfg = Config(election_ticks=10)
    seen = set()
    for seed in range(200):
        r = Raft("a", cfg, random.Random(seed), initial=ConfState(ABC))
        seen.add(r.randomized_election_timeout)
    assert seen == set(range(10, 20))


def test_follower_campaigns_after_its_election_timeout() -> None:
    """§5.2: a follower that hears nothing for an election timeout starts an election."""
    r = Raft("a", Config(pre_vote=False), random.Random(1), initial=ConfState(ABC))
    timeout = r.randomized_election_timeout
    for _ in range(timeout - 1):
        r.tick()
    assert r.role is Role.FOLLOWER
    r.tick()
    assert (r.role, r.term, r.vote) == (Role.CANDIDATE, 2, "a")
    votes = [m for m in r.ready().messages if m.type is MT.VOTE]
    assert sorted(m.to for m in votes) == ["b", "c"] and all(m.term == 2 for m in votes)


def test_cluster_elects_exactly_one_leader() -> None:
    """§5.2 Election Safety: at most one leader per term (the harness checks it at every
    step); all others learn who it is."""
    for size in (1, 3, 5):
        ids = [f"n{i}" for i in range(size)]
        for seed in range(5):
            net = Network(ids, seed=seed)
            leader = tick_until_leader(net)
            net.tick(n=3)
            assert leaders(net) == [leader]
            assert all(net.raft(i).leader_id == leader for i in ids)


def test_election_needs_a_majority() -> None:
    """§5.2: a candidate wins with votes from a majority, not less."""
    net = Network(["a", "b", "c", "d", "e"], config=Config(pre_vote=False))
    net.crash("d")
    net.crash("e")
    assert net.elect("a").term == 2
    net = Network(["a", "b", "c", "d", "e"], config=Config(pre_vote=False))
    for n in ("c", "d", "e"):
        net.crash(n)
    net.campaign("a")
    assert net.raft("a").role is Role.CANDIDATE


def test_vote_once_per_term() -> None:
    """§5.2: each server votes for at most one candidate in a term (first come)."""
    net = Network(ABC, config=Config(pre_vote=False))
    c = net.raft("c")
    c.step(Message(MT.VOTE, "c", "a", term=2, index=3, log_term=1))
    c.step(Message(MT.VOTE, "c", "b", term=2, index=3, log_term=1))
    c.step(Message(MT.VOTE, "c", "a", term=2, index=3, log_term=1))  # a retry: same answer
    answers = [(m.to, m.reject) for m in c.ready().messages]
    assert answers == [("a", False), ("b", True), ("a", False)]
    assert c.vote == "a"


def test_split_vote_resolves_with_randomized_timeouts() -> None:
    """§5.2: a split vote ends in a new election; random timeouts make it rare to repeat."""
    net = Network(["a", "b", "c", "d"], config=Config(pre_vote=False))
    net.cut("a", "d")
    net.cut("b", "c")
    net.raft("a").campaign()
    net.raft("b").campaign()
    net.settle()  # c votes a, d votes b: 2 of 4 each
    assert [net.raft(i).role for i in ("a", "b")] == [Role.CANDIDATE] * 2
    net.recover()
    leader = tick_until_leader(net)
    assert net.raft(leader).term >= 3 and leaders(net) == [leader]


def test_candidate_yields_to_a_leader_of_its_term() -> None:
    """§5.2: a candidate that hears from a leader with at least its term steps down."""
    net = Network(ABC, config=Config(pre_vote=False))
    net.cut("a", "c")
    net.elect("a")  # term 2, c never heard
    c = net.raft("c")
    c.campaign()
    net.settle()
    assert c.role is Role.CANDIDATE and c.term == 2
    net.recover()
    net.tick(["a"])
    assert (c.role, c.leader_id) == (Role.FOLLOWER, "a")


# ---- §5.4.1 election restriction -----------------------------------------------


def test_candidate_with_shorter_log_cannot_win() -> None:
    """§5.4.1: votes go only to candidates whose log is at least as up-to-date; the node
    missing a committed entry cannot become leader."""
    net = Network(ABC, config=Config(pre_vote=False, check_quorum=False))
    net.elect("a")
    net.isolate("c")
    net.propose("a", b"x")  # committed on a and b; c misses it
    net.recover()
    net.isolate("a")
    b, c = net.raft("b"), net.raft("c")
    start = len(net.delivered)
    c.campaign()
    net.settle()
    assert c.role is Role.CANDIDATE and b.vote is None
    assert net.count(MT.VOTE_RESP, since=start, frm="b", to="c", reject=True) == 1
    for _ in range(100):
        if b.role is Role.LEADER:
            break
        net.tick(["b", "c"])
    assert b.role is Role.LEADER and c.role is Role.FOLLOWER
    assert net.count(MT.VOTE_RESP, since=start, frm="b", to="c", reject=False) == 0


# ---- PreVote (§9.6) and CheckQuorum (§6.2) ---------------------------------------


def test_prevote_keeps_a_partitioned_node_term() -> None:
    """§9.6: a node that cannot win does not raise its term, so when it rejoins the
    healthy leader is not deposed."""
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("c")
    net.tick(["c"], n=100)
    c = net.raft("c")
    assert c.term == a.term and c.role is Role.PRE_CANDIDATE
    net.recover()
    net.tick(n=2)
    assert (a.role, a.term, c.role, c.leader_id) == (Role.LEADER, 2, Role.FOLLOWER, "a")


def test_without_prevote_a_rejoining_node_disrupts() -> None:
    """What PreVote prevents: the isolated node inflates its term and deposes the leader."""
    net = Network(ABC, config=Config(pre_vote=False, check_quorum=False))
    a = net.elect("a")
    net.isolate("c")
    net.tick(["c"], n=100)
    assert net.raft("c").term > a.term
    net.recover()
    net.tick(n=40)
    assert a.term > 2


def test_followers_with_a_live_leader_ignore_prevotes() -> None:
    """§9.6: grant a pre-vote only if no leader was heard within the election timeout."""
    net = Network(ABC)
    net.elect("a")
    b = net.raft("b")
    b.step(Message(MT.PRE_VOTE, "b", "c", term=3, index=99, log_term=9))
    assert not b.ready().messages
    net.tick(["b"], n=10)  # a is cut off from b's point of view: no heartbeat for a while
    b.step(Message(MT.PRE_VOTE, "b", "c", term=3, index=99, log_term=9))
    (m,) = b.ready().messages
    assert (m.type, m.to, m.reject, m.term, b.term) == (MT.PRE_VOTE_RESP, "c", False, 3, 2)


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    """§6.2: a leader that hears from no majority for an election timeout steps down."""
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("a")
    net.tick(["a"], n=9)
    assert a.role is Role.LEADER
    net.tick(["a"], n=11)
    assert a.role is Role.FOLLOWER and a.leader_id is None


def test_check_quorum_leader_stays_while_a_majority_answers() -> None:
    net = Network(["a", "b", "c", "d", "e"])
    a = net.elect("a")
    net.isolate("d")
    net.isolate("e")
    net.tick(["a"], n=50)
    assert a.role is Role.LEADER and a.term == 2


def test_leader_ignores_votes_in_its_lease_but_not_a_transfer() -> None:
    """§4.2.3: disregard RequestVote within the minimum election timeout of hearing from
    a leader, unless the leader itself asked for the election (§3.10)."""
    net = Network(ABC, config=Config(pre_vote=False))
    a = net.elect("a")
    a.step(Message(MT.VOTE, "a", "b", term=5, index=99, log_term=9))
    assert (a.role, a.term) == (Role.LEADER, 2)
    a.step(Message(MT.VOTE, "a", "b", term=5, index=99, log_term=9, context=b"transfer"))
    assert (a.role, a.term) == (Role.FOLLOWER, 5)


def test_learners_and_non_members_never_campaign() -> None:
    net = Network(("a",), learners=("l",))
    net.add_node("x")  # joining: no membership yet
    net.tick(n=100)
    assert net.raft("a").role is Role.LEADER
    assert net.raft("l").role is Role.FOLLOWER and net.raft("l").leader_id == "a"
    assert net.raft("x").role is Role.FOLLOWER and net.raft("x").term == 0
    net.raft("l").step(Message(MT.TIMEOUT_NOW, "l", "a", term=net.raft("a").term))
    assert net.raft("l").role is Role.FOLLOWER


def test_single_voter_elects_itself_at_once() -> None:
    net = Network(("a",))
    a = net.elect("a")
    assert a.commit_index == a.last_index == 2  # bootstrap entry + its no-op


def test_stale_leader_is_told_its_term_also_without_prevote_or_check_quorum() -> None:
    """Regression (found by the simulator): §5.1 answers a stale request with the current
    term whatever the configuration. Without it, a leader whose follower moved to a higher
    term (here c, which campaigned while cut off) never learns so when that follower's
    own, older membership does not count it as a voter: c asks b (down) only, a waits for
    c forever, and nothing commits."""
    net = Network(("b", "c"), learners=("a",), config=Config(pre_vote=False, check_quorum=False))
    b = net.elect("b")
    net.tick(n=1)
    net.isolate("c")
    assert net.change("b", ConfChange(ConfChangeType.ADD_VOTER, "a")) is not None
    net.tick(["a", "b"], n=1)
    b.transfer_leadership("a")
    net.settle()
    a = net.raft("a")
    assert a.role is Role.LEADER and a.conf.voters == ("b", "c", "a")
    net.tick(["c"], n=60)  # c campaigns alone: a higher term, still its old membership
    c = net.raft("c")
    assert c.term > a.term and c.conf.voters == ("b", "c")
    net.crash("b")
    net.recover()
    stuck_term = c.term
    for _ in range(200):
        net.tick(["a", "c"])
        if a.role is Role.LEADER and a.term > stuck_term:
            break
    assert a.role is Role.LEADER and a.term > stuck_term  # told, stepped down, won again
    net.propose("a", b"x")
    net.tick(["a", "c"], n=2)
    assert net.nodes["c"].data == [b"x"]
