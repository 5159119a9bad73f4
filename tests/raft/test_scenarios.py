"""Scenarios over the in-memory network, in the spirit of the MIT 6.824 Raft tests: the
classic schedules that earlier tests in this folder do not already cover.

Already covered elsewhere (and not repeated here):
- initial election: test_election.py::test_cluster_elects_exactly_one_leader
- basic agreement: test_replication.py::test_leader_replicates_and_everyone_applies
- a deposed leader rejoining with a divergent tail:
  test_replication.py::test_conflicting_entries_are_overwritten
- fast back-up over long conflicting logs (5 nodes, 50-entry divergent tails):
  test_replication.py::test_fast_backup_skips_whole_terms
- bounded RPC count per agreement and when idle:
  test_replication.py::test_bounded_messages_per_agreement_and_when_idle
- the Figure 8 schedule: test_replication.py::test_figure8_entry_on_majority_from_old_term_may_be_overwritten
- snapshot install to a crashed follower: test_snapshot.py::test_lagging_follower_receives_a_snapshot

Every node keeps its log in the real `Storage` on a `MemoryFileSystem`: a crash loses
what was not fsynced (torn writes included, with `crash_during_ready`). The harness
checks Election Safety, Leader Append-Only, Log Matching, Leader Completeness and State
Machine Safety after every step of every scenario.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from raftsql.raft.core import Config
from raftsql.raft.messages import ConfChange, ConfChangeType, ConfState, Message, MessageType, Role
from raftsql.simulation.cluster import CRASH_POINTS
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")
FIVE = ("a", "b", "c", "d", "e")
SEVEN = ("a", "b", "c", "d", "e", "f", "g")


def leader_among(net: Network, ids: Iterable[str]) -> str | None:
    """The leader of the highest term among these (running) nodes."""
    leaders = [net.raft(i) for i in ids if net.nodes[i].raft and net.raft(i).role is Role.LEADER]
    return max(leaders, key=lambda r: r.term).id if leaders else None


def tick_until(net: Network, done: Callable[[], bool], ids: Iterable[str] | None = None,
               limit: int = 500) -> None:
    for _ in range(limit):
        if done():
            return
        net.tick(ids)
    raise AssertionError("condition not reached")


def elect_among(net: Network, ids: Iterable[str], above: int = 0) -> str:
    """Tick these nodes until one leads in a term above `above` (deposed leaders that do
    not know it yet keep their older term)."""
    ids = list(ids)

    def elected() -> bool:
        leader = leader_among(net, ids)
        return leader is not None and net.raft(leader).term > above

    tick_until(net, elected, ids)
    leader = leader_among(net, ids)
    assert leader is not None
    return leader


def commit_everywhere(net: Network, data: bytes, limit: int = 500) -> None:
    """Propose `data` (again, if a leader change lost it) until all running members of the
    leader's configuration applied it."""
    for _ in range(limit):
        leader = net.leader()
        if leader is not None:
            members = net.raft(leader).conf.members()
            if all(data in net.nodes[n].data for n in members if net.nodes[n].raft):
                return
            if all(e.data != data for e in net.raft(leader).entries(1, 1 << 30)):
                net.raft(leader).propose(data)
        net.tick()
    raise AssertionError(f"{data!r} was not committed everywhere")


# ---- elections (§5.2) ----------------------------------------------------------------


def test_reelection_after_the_leader_is_cut_off() -> None:
    """§5.2: when the leader is cut off the others elect a new one; the old leader rejoins
    as a follower; without a quorum nobody is elected; with it back, someone is."""
    net = Network(ABC)
    net.elect("a")
    net.isolate("a")
    new = elect_among(net, ["b", "c"])
    net.recover()
    net.tick(n=3)
    assert net.raft("a").role is Role.FOLLOWER and net.leader() == new
    # No quorum: the leader and one follower are cut off; the last node stays leaderless.
    other = "b" if new == "c" else "c"
    net.isolate(new)
    net.isolate("a")
    net.tick([other], n=100)
    assert net.raft(other).role is not Role.LEADER
    net.reconnect("a")
    assert elect_among(net, ["a", other]) in ("a", other)


def test_many_elections_on_seven_nodes() -> None:
    """§5.2 Election Safety: 7 nodes, ten times the leader and two others cut off at
    random; the other four (a majority) always elect a new leader, never two in a term."""
    net = Network(SEVEN, seed=7)
    rng = random.Random(7)
    leader = elect_among(net, SEVEN)
    for _ in range(10):
        out = [leader, *rng.sample([n for n in SEVEN if n != leader], 2)]
        for node in out:
            net.isolate(node)
        leader = elect_among(net, [n for n in SEVEN if n not in out], above=net.raft(leader).term)
        net.recover()
    assert len(net.checker.leaders) >= 11  # one leader per term, checked at every step


# ---- agreement (§5.3) ----------------------------------------------------------------


def test_agreement_despite_a_failed_follower() -> None:
    """§5.3: a majority commits without a disconnected follower, which catches up (logs
    and state machine) once it is back."""
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("c")
    for x in (b"x", b"y"):
        net.propose("a", x)
    net.tick(["a", "b"], n=2)
    assert a.commit_index == a.last_index and net.nodes["b"].data == [b"x", b"y"]
    assert net.nodes["c"].data == []
    net.recover()
    net.propose("a", b"z")
    net.tick(n=3)
    assert all(net.nodes[n].data == [b"x", b"y", b"z"] for n in ABC)


def test_no_agreement_without_a_quorum() -> None:
    """§5.3: with three of five followers cut off, the leader's new entry is never
    committed nor applied anywhere; after reconnection the cluster agrees again, on the
    same log everywhere."""
    net = Network(FIVE)
    a = net.elect("a")
    net.tick(n=1)
    for n in ("c", "d", "e"):
        net.isolate(n)
    index = a.propose(b"lonely")
    assert index is not None
    net.tick(["a", "b"], n=30)
    assert a.commit_index < index and all(b"lonely" not in net.nodes[n].data for n in FIVE)
    net.recover()
    commit_everywhere(net, b"after")
    lonely = {b"lonely" in net.nodes[n].data for n in FIVE}
    assert len(lonely) == 1  # either everyone applied it (a won again) or nobody did
    net.check_logs()


def test_concurrent_proposals_all_commit_in_one_order() -> None:
    """§5.3: many proposals arriving while earlier ones are still in flight each get their
    own index and are applied by every node in the same order."""
    net = Network(FIVE, config=Config(max_entries_per_msg=4, max_inflight=2))
    a = net.elect("a")
    rng = random.Random(3)
    indexes = []
    for i in range(60):
        indexes.append(a.propose(b"%d" % i))
        if rng.random() < 0.3:  # deliver a few messages between proposals
            for _ in range(rng.randint(1, 6)):
                net.deliver_next()
            for node in net.alive():
                if node.raft is not None and node.raft.has_ready():
                    net.handle_ready(node)
    assert len(set(indexes)) == 60 and None not in indexes
    net.tick(n=3)
    expected = [b"%d" % i for i in range(60)]
    assert all(net.nodes[n].data == expected for n in FIVE)


def test_unreliable_network_agreement() -> None:
    """§5.3, §5.5: with a fifth of the messages lost, others duplicated and delivered out
    of order, the cluster still agrees on every proposal the client saw committed."""
    net = Network(FIVE, seed=11)
    for x in FIVE:
        for y in FIVE:
            if x != y:
                net.drop(x, y, 0.2)
    net.reorder, net.duplicate = 0.3, 0.1
    for i in range(30):
        commit_everywhere(net, b"%d" % i)
    net.recover()
    net.reorder = net.duplicate = 0.0
    net.tick(n=3)
    datas = [net.nodes[n].data for n in FIVE]
    assert all(d == datas[0] for d in datas)
    assert all(b"%d" % i in datas[0] for i in range(30))


def test_figure8_style_churn_never_loses_a_committed_entry() -> None:
    """§5.4.2 under churn (6.824's Figure 8 test): proposals go to whoever believes it
    leads, leaders are cut off at random just after, a majority stays connected, the
    network is lossy. Every entry a leader applied is applied everywhere in the end."""
    rng = random.Random(8)
    net = Network(FIVE, config=Config(max_entries_per_msg=1, max_inflight=1), seed=8)
    for x in FIVE:
        for y in FIVE:
            if x != y:
                net.drop(x, y, 0.1)
    cut: list[str] = []
    for i in range(150):
        for node in net.alive():
            if node.raft is not None and node.raft.role is Role.LEADER:
                node.raft.propose(b"%d" % i)
                if rng.random() < 0.5 and node.id not in cut:
                    cut.append(node.id)
                    net.isolate(node.id)
        net.tick(n=rng.randint(1, 4))
        while len(cut) > 2:
            net.reconnect(cut.pop(rng.randrange(len(cut))))
    net.recover()
    commit_everywhere(net, b"final")
    net.tick(n=3)
    applied = {x for n in FIVE for x in net.nodes[n].data}
    assert all(set(net.nodes[n].data) == applied for n in FIVE)
    net.check_logs()


# ---- crashes (§5.5) ------------------------------------------------------------------


def test_persistence_across_a_crash_of_every_node() -> None:
    """§5.5, Figure 2 ("persistent state on all servers"): every node crashes, one of them
    in the middle of a write (a torn tail), and restarts from its storage; term, vote and
    every committed entry survive, and the cluster goes on agreeing."""
    net = Network(ABC, seed=5)
    a = net.elect("a")
    for i in range(10):
        net.propose("a", b"%d" % i)
    net.tick(n=2)
    before = {n: (net.raft(n).term, net.raft(n).vote, net.log(n)) for n in ABC}
    committed = a.commit_index
    a.propose(b"unsaved")
    net.crash_during_ready("a", "persist")  # the write of the new entry is cut short
    for n in ("b", "c"):
        net.crash(n)
    for n in ABC:
        net.start(n)
    for n in ABC:
        term, vote, log = before[n]
        r = net.raft(n)
        assert (r.term, r.vote) == (term, vote) and net.log(n)[: len(log)] == log
        # Every committed entry is still there; the commit index itself is learned again
        # (a Ready that only moves it is not fsynced).
        assert r.last_index >= committed
    commit_everywhere(net, b"after")
    assert all(net.nodes[n].data[:10] == [b"%d" % i for i in range(10)] for n in ABC)
    net.check_logs()


def test_churn_keeps_every_committed_entry() -> None:
    """§5.5: nodes crash at random points of their work (some mid-write), restart, and
    are cut off and reconnected while clients keep proposing; every entry ever committed
    anywhere is in the end applied everywhere, at the same index."""
    rng = random.Random(21)
    net = Network(FIVE, seed=21)
    for i in range(200):
        leader = net.leader()
        if leader is not None:
            net.raft(leader).propose(b"%d" % i)
        r = rng.random()
        victim = rng.choice(FIVE)
        node = net.nodes[victim]
        if r < 0.1 and node.raft is not None:
            if node.raft.has_ready():
                net.crash_during_ready(victim, rng.choice(CRASH_POINTS))
            else:
                net.crash(victim)
        elif r < 0.25 and node.raft is None:
            net.start(victim)
        elif r < 0.3:
            net.isolate(victim)
        elif r < 0.4:
            net.reconnect(victim)
        net.tick(n=rng.randint(1, 3))
    net.recover()
    for n in FIVE:
        if net.nodes[n].raft is None:
            net.start(n)
    commit_everywhere(net, b"final")
    net.tick(n=3)
    final = net.nodes[net.leader() or "a"].applied
    for index, (term, _) in net.checker.committed.items():
        assert final[index - 1].term == term, index
    assert all(net.nodes[n].applied == final for n in FIVE)


# ---- snapshots (§7) ------------------------------------------------------------------


def test_snapshot_install_to_a_lagging_running_follower() -> None:
    """§7: a follower that was only cut off (not crashed) while the leader compacted past
    its log gets InstallSnapshot, then the entries after it."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("c")
    for i in range(20):
        net.propose("a", b"%d" % i)
    net.tick(["a", "b"], n=1)
    net.compact("a")
    a.propose(b"after")
    start = len(net.delivered)
    net.recover()
    net.tick(n=3)
    assert net.count(MT.SNAPSHOT, since=start) == 1
    assert net.nodes["c"].data == net.nodes["a"].data == [b"%d" % i for i in range(20)] + [b"after"]


def test_follower_crashing_while_installing_a_snapshot_recovers() -> None:
    """§7 with crashes: a follower crashes at each point of installing a snapshot (before,
    during and after writing it, after answering, after restoring it); it always restarts
    consistent, and catches up."""
    for point in CRASH_POINTS:
        net = Network(ABC, seed=len(point))
        a = net.elect("a")
        net.tick(n=1)
        net.crash("c")
        for i in range(10):
            net.propose("a", b"%d" % i)
        net.compact("a")
        net.start("c")
        c = net.raft("c")
        a.step(Message(MT.BEAT, "a", "a"))  # c answers, is found behind, gets the snapshot
        index = a.snapshot_meta.index
        net.settle(until=lambda c=c, index=index: c.has_ready() and c.commit_index >= index)
        net.crash_during_ready("c", point)
        net.start("c")
        net.tick(n=25)  # a snapshot lost in the crash is sent again after an election timeout
        assert net.nodes["c"].data == net.nodes["a"].data == [b"%d" % i for i in range(10)], point
        net.check_logs()


# ---- membership (§6; dissertation §4) ------------------------------------------------


def test_leader_crashes_right_after_proposing_a_change() -> None:
    """Dissertation §4.1: a leader persists ADD_VOTER d and crashes before sending it.
    The others elect a leader without the change; when the old leader returns its entry
    is overwritten and its configuration reverts; the change can then be made again."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.add_node("d")
    index = a.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, "d"))
    assert index is not None
    net.crash_during_ready("a", "persisted")
    new = elect_among(net, ["b", "c"])
    net.propose(new, b"x")
    net.start("a")
    net.tick(n=3)
    assert all(net.raft(n).conf.voters == ABC for n in ABC)
    assert net.change(new, ConfChange(ConfChangeType.ADD_VOTER, "d")) is not None
    net.tick(n=3)
    assert all(net.raft(n).conf.voters == ("a", "b", "c", "d") for n in "abcd")
    commit_everywhere(net, b"y")


def test_new_voter_crashing_while_catching_up() -> None:
    """§6: a new voter crashes mid catch-up (a torn write); the old members still form a
    quorum of the new configuration (3 of 4), and the new voter catches up on restart."""
    net = Network(ABC, config=Config(max_entries_per_msg=2, max_inflight=1))
    a = net.elect("a")
    for i in range(10):
        net.propose("a", b"%d" % i)
    net.add_node("d")
    a.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, "d"))
    d = net.raft("d")
    net.settle(until=lambda: d.has_ready() and d.last_index > 4)
    net.crash_during_ready("d", "persist")
    net.propose("a", b"without d")
    net.tick(["a", "b", "c"], n=2)
    assert a.conf.voters == ("a", "b", "c", "d") and a.commit_index == a.last_index
    net.start("d")
    net.tick(n=4)
    assert net.nodes["d"].data == net.nodes["a"].data and net.log("d") == net.log("a")


def test_leader_removing_itself_crashes_midway() -> None:
    """Dissertation §4.2.2: a leader removing itself crashes once the removal is on a
    majority (before it learns it committed). The others elect a leader, finish the
    removal, and the removed node, restarted, never disrupts them."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    index = a.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a"))
    assert index is not None
    net.handle_ready(net.nodes["a"])  # persisted and sent ...
    b = net.raft("b")
    net.settle(until=lambda: b.last_index >= index and not b.has_ready())
    net.crash("a")  # ... and a dies before the answers come back
    new = elect_among(net, ["b", "c"])
    commit_everywhere(net, b"x")
    assert net.raft(new).conf == ConfState(("b", "c"))
    net.start("a")
    term = net.raft(new).term
    net.tick(n=60)
    assert net.leader() == new and net.raft(new).term == term
    assert net.raft("a").role is not Role.LEADER


def test_removing_a_follower_while_another_is_down() -> None:
    """§6: 4 voters, d is down, c is removed: the new configuration (a, b, d) still has a
    majority (a, b) and commits; d, restarted, learns the change from the log."""
    net = Network(("a", "b", "c", "d"))
    net.elect("a")
    net.tick(n=1)
    net.crash("d")
    assert net.change("a", ConfChange(ConfChangeType.REMOVE, "c")) is not None
    net.propose("a", b"x")
    net.tick(["a", "b", "c"], n=2)
    assert net.raft("a").commit_index == net.raft("a").last_index
    net.start("d")
    net.tick(n=3)
    assert net.raft("d").conf.voters == ("a", "b", "d") and net.nodes["d"].data == [b"x"]
