"""Log replication (§5.3), the commit rule (§5.4.2, Figure 8), crashes (§5.5), flow
control, fast conflict back-up and message economy (group commit)."""

from __future__ import annotations

import random

from raftsql.raft.core import Config
from raftsql.raft.messages import Entry, Message, MessageType, Role
from raftsql.raft.progress import ProgressState
from tests.raft.harness import Network

MT = MessageType
ABC = ("a", "b", "c")


def tick_until_leader_among(net: Network, ids: list[str]) -> str:
    for _ in range(300):
        for i in ids:
            if net.raft(i).role is Role.LEADER:
                return i
        net.tick(ids)
    raise AssertionError("no leader elected")


def test_leader_replicates_and_everyone_applies() -> None:
    """§5.3: the leader appends, replicates, commits once a majority holds the entry, and
    every server applies it in log order."""
    net = Network(ABC)
    a = net.elect("a")
    index = a.propose(b"x")
    assert index == a.last_index == 5  # after 3 bootstrap entries and a's no-op
    net.settle()
    assert a.commit_index == 5 and net.nodes["a"].data == [b"x"]
    net.tick(n=1)  # the next heartbeat tells the followers
    assert all(n.data == [b"x"] for n in net.nodes.values())


def test_only_the_leader_accepts_proposals() -> None:
    net = Network(ABC)
    net.elect("a")
    assert net.raft("b").propose(b"x") is None
    assert net.raft("b").read_index(b"r") is False


def test_consistency_check_rejects_a_gap() -> None:
    """§5.3: a follower refuses entries whose predecessor it does not hold, and hints where
    its log ends."""
    net = Network(ABC)
    b = net.raft("b")
    b.step(Message(MT.APPEND, "b", "a", term=2, index=9, log_term=2, entries=(Entry(2, 10),)))
    (resp,) = b.ready().messages
    assert (resp.type, resp.reject, resp.index, resp.reject_hint, resp.log_term) == (
        MT.APPEND_RESP, True, 9, 3, 1)
    assert b.last_index == 3


def test_conflicting_entries_are_overwritten() -> None:
    """§5.3 (Figure 7): a follower's uncommitted entries that conflict with the leader's
    are deleted and replaced; the logs end identical (Log Matching)."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.isolate("a")
    for i in range(5):
        a.propose(b"lost%d" % i)  # on a only, never committed
    net.settle()
    b = net.raft(tick_until_leader_among(net, ["b", "c"]))
    b.propose(b"new")
    net.settle()
    net.recover()
    net.tick(n=2)
    assert a.role is Role.FOLLOWER and net.log("a") == net.log(b.id) == net.log("c")
    assert net.nodes["a"].data == [b"new"]
    net.check_logs()


def test_fast_backup_skips_whole_terms() -> None:
    """etcd's findConflictByTerm on both sides: over 5 nodes with 50-entry divergent tails,
    each divergent follower is rejected once or twice instead of ~50 times."""
    net = Network(["a", "b", "c", "d", "e"], config=Config(max_entries_per_msg=10_000))
    net.elect("a")
    for i in range(5):
        net.propose("a", b"common%d" % i)
    minority, majority = ["a", "b"], ["c", "d", "e"]
    for x in minority:
        for y in majority:
            net.cut(x, y)
    for i in range(50):
        net.raft("a").propose(b"lost%d" % i)  # term 2, on a and b, never committed
    net.settle()
    for _ in range(3):  # several terms of 50 entries on the majority side
        leader = tick_until_leader_among(net, majority)
        for i in range(50):
            net.raft(leader).propose(b"kept%d" % i)
        net.settle()
        net.raft(leader).transfer_leadership()
        net.settle()
    leader = tick_until_leader_among(net, majority)
    assert net.raft(leader).last_index > net.raft("a").last_index
    start = len(net.delivered)
    net.recover()
    net.tick(n=3)
    rejections = net.count(MT.APPEND_RESP, since=start, reject=True)
    assert 1 <= rejections <= 4, rejections  # 1 per divergent follower here
    assert net.log("a") == net.log("b") == net.log(leader)
    net.check_logs()


def test_commit_rule_counts_only_current_term_entries() -> None:
    """§5.4.2: a leader never commits an entry of an earlier term by counting replicas;
    it commits once an entry of its own term is on a majority."""
    cfg = Config(pre_vote=False, check_quorum=False, max_entries_per_msg=1, max_inflight=1)
    net = Network(ABC, config=cfg)
    net.elect("a")
    net.tick(n=1)
    net.cut("a", "c")
    x = net.propose("a", b"x")  # term 2, on a and b only
    assert x is not None
    net.recover()
    net.isolate("a")
    b = net.raft("b")
    b.campaign()
    net.settle(until=lambda: b.role is Role.LEADER)
    assert b.term_at(x) == 2 and b.term_at(x + 1) == b.term  # its no-op follows x
    net.settle(until=lambda: b.progress()["c"][0] >= x)
    assert net.raft("c").term_at(x) == 2  # x is on b and c: a majority ...
    assert b.commit_index < x  # ... but of term 2: not committed by counting
    net.settle()
    assert b.commit_index == x + 1  # committed with the no-op of b's term


def test_figure8_entry_on_majority_from_old_term_may_be_overwritten() -> None:
    """§5.4.2, Figure 8: an old-term entry that a later leader replicated to a majority is
    not committed, and may still be replaced; nobody applies it."""
    cfg = Config(pre_vote=False, check_quorum=False, max_entries_per_msg=1, max_inflight=1)
    net = Network(["a", "b", "c", "d", "e"], config=cfg)
    a = net.elect("a")  # term 2
    net.tick(n=1)
    for y in "cde":
        net.cut("a", y)
    x = net.propose("a", b"X")  # (a) X on a and b
    assert x is not None and net.raft("c").last_index == x - 1
    net.crash("a")
    e = net.raft("e")
    e.campaign()  # (b) e elected by c, d, e in term 3 ...
    net.settle(until=lambda: e.role is Role.LEADER)
    net.isolate("e")  # ... and its no-op, at index x, stays with e only
    net.settle()
    assert e.term_at(x) == 3 and net.raft("c").last_index == x - 1
    net.recover()
    net.isolate("e")
    net.restart("a")
    a = net.raft("a")
    while a.role is not Role.LEADER:  # (c) a elected in term 4 by b, c, d
        a.campaign()
        net.settle(until=lambda: a.role is Role.LEADER)
    assert a.term == 4
    net.settle(until=lambda: a.progress()["c"][0] >= x)
    assert net.raft("c").term_at(x) == 2  # X on a, b, c: a majority
    assert a.commit_index < x  # not committed: term 2 != 4
    net.crash("a")
    net.recover()
    net.isolate("a")
    net.restart("e")  # e, a stale leader in term 3 all along, restarts as a follower
    e = net.raft("e")
    while e.role is not Role.LEADER:  # (d) e (last term 3) wins c, d (last term 2)
        e.campaign()
        net.settle()
    net.tick(n=3)
    assert all(net.raft(n).term_at(x) == 3 for n in "bcde")  # X overwritten everywhere
    assert all(en.data != b"X" for n in net.nodes.values() for en in n.applied)
    net.check_logs()


def test_crashed_follower_catches_up_after_restart() -> None:
    """§5.5: RPCs to a crashed follower fail; the leader retries; Raft RPCs are idempotent
    so the restarted follower simply catches up."""
    net = Network(ABC)
    net.elect("a")
    net.crash("c")
    for i in range(20):
        net.propose("a", b"%d" % i)
    net.restart("c")
    net.tick(n=3)
    assert net.log("c") == net.log("a") and len(net.nodes["c"].data) == 20


def test_crash_loses_only_what_was_not_persisted() -> None:
    """§5.5: a Ready not yet persisted (and its messages not sent) is lost in a crash; what
    was persisted survives, and the node re-applies its committed entries."""
    net = Network(ABC)
    net.elect("a")
    for i in range(3):
        net.propose("a", b"%d" % i)
    net.tick(n=1)
    b = net.raft("b")
    last = b.last_index
    b.step(Message(MT.APPEND, "b", "a", term=2, index=last, log_term=2,
                   entries=(Entry(2, last + 1, data=b"unsaved"),), commit=last))
    b.ready()  # crash before the driver persisted it
    net.restart("b")
    b = net.raft("b")
    assert (b.last_index, b.term) == (last, 2)
    net.tick(n=1)  # a commit index alone is not fsynced: the leader's heartbeat tells it again
    assert net.nodes["b"].data == [b"0", b"1", b"2"]  # re-applied from the persisted log


def test_candidate_crash_is_harmless() -> None:
    """§5.5: a candidate crashing mid-election leaves the cluster able to elect."""
    net = Network(ABC, config=Config(pre_vote=False))
    net.raft("a").campaign()
    net.handle_ready(net.nodes["a"])  # its vote and term are persisted, requests queued
    net.crash("a")
    net.settle()
    net.restart("a")
    assert (net.raft("a").term, net.raft("a").vote) == (2, "a")
    for _ in range(100):
        if net.leader():
            break
        net.tick()
    assert net.leader() is not None


def test_group_commit_one_append_per_follower() -> None:
    """Many proposals between two Readies go out as one APPEND per follower."""
    net = Network(["a", "b", "c", "d", "e"])
    a = net.elect("a")
    for i in range(100):
        a.propose(b"%d" % i)
    rd = a.ready()
    appends = [m for m in rd.messages if m.type is MT.APPEND]
    assert sorted(m.to for m in appends) == ["b", "c", "d", "e"]
    assert all(len(m.entries) == 100 for m in appends)
    assert len(rd.entries) == 100


def test_bounded_messages_per_agreement_and_when_idle() -> None:
    """One APPEND (and its answer) per follower per batch, no extra message to spread the
    commit index (the next APPEND or heartbeat carries it); idle: heartbeats only."""
    net = Network(["a", "b", "c", "d", "e"])
    a = net.elect("a")
    net.tick(n=2)
    start = len(net.delivered)
    for i in range(10):
        a.propose(b"%d" % i)
    net.settle()
    assert a.commit_index == a.last_index
    assert net.count(MT.APPEND, since=start) == 4
    assert len(net.delivered) - start == 8  # 4 APPEND + 4 APPEND_RESP
    start = len(net.delivered)
    net.tick(n=10)
    kinds = {m.type for m in net.delivered[start:]}
    assert kinds == {MT.HEARTBEAT, MT.HEARTBEAT_RESP}
    assert len(net.delivered) - start == 10 * 4 * 2


def test_flow_control_limits_batches_in_flight() -> None:
    """Replicate state: at most max_inflight APPENDs of max_entries_per_msg in flight;
    probe state: one."""
    net = Network(ABC, config=Config(max_entries_per_msg=10, max_inflight=2))
    a = net.elect("a")
    for i in range(100):
        a.propose(b"%d" % i)
    rd = a.ready()
    to_b = [m for m in rd.messages if m.to == "b"]
    assert [len(m.entries) for m in to_b] == [10, 10]
    assert not a.ready().messages  # window full until answers come
    net.handle_ready(net.nodes["a"])
    net.queue.extend(rd.messages)
    net.settle()
    assert net.log("b") == net.log("a")


def test_batches_hold_at_most_max_bytes_per_msg_as_the_driver_counts_them() -> None:
    """etcd's MaxSizePerMsg: entries are counted by `entry_size` (the driver's: data kept
    beside the log counts as that data), and a batch holds at least one entry."""
    weight = {b"big": 700, b"huge": 5000}
    config = Config(max_entries_per_msg=100, max_inflight=100, max_bytes_per_msg=1000,
                    entry_size=lambda e: weight.get(e.data, len(e.data)))
    net = Network(ABC, config=config)
    a = net.elect("a")
    for data in [b"big", b"x", b"big", b"huge", b"x", b"x"]:
        a.propose(data)
    to_b = [m for m in a.ready().messages if m.to == "b" and m.type is MessageType.APPEND]
    assert [[e.data for e in m.entries] for m in to_b] == [
        [b"big", b"x"], [b"big"], [b"huge"], [b"x", b"x"]]


def test_probe_state_sends_one_append_until_answered() -> None:
    net = Network(ABC)
    net.elect("a")
    net.crash("c")
    a = net.raft("a")
    for _ in range(3):
        a.propose(b"x")
        net.settle()
    # c went quiet: after a rejection or a restart it is probed one message at a time
    net.restart("c")
    net.tick(["a"], n=1)
    pr_c = a._prs["c"]
    assert pr_c.state in (ProgressState.PROBE, ProgressState.REPLICATE)
    net.tick(n=2)
    assert net.log("c") == net.log("a")


def test_lost_appends_are_resent_without_new_proposals() -> None:
    """A batch lost in flight is found by the next heartbeat answer (the follower rejects
    the resulting APPEND, the leader probes back)."""
    net = Network(ABC)
    a = net.elect("a")
    net.tick(n=1)
    net.drop("a", "b", 1.0)
    net.drop("a", "c", 1.0)
    a.propose(b"x")
    net.settle()
    net.recover()
    assert a.commit_index < a.last_index
    net.tick(n=3)
    assert a.commit_index == a.last_index
    assert net.log("b") == net.log("a")


def test_heartbeat_carries_min_of_match_and_commit() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    a.propose(b"x")
    net.settle()
    start = len(net.delivered)
    net.raft("a").step(Message(MT.BEAT, "a", "a"))
    net.settle()
    hb = {m.to: m.commit for m in net.delivered[start:] if m.type is MT.HEARTBEAT}
    assert hb == {"b": a.commit_index}  # c is down: nothing delivered
    msgs = [m for m in a.ready().messages] or []
    a.step(Message(MT.BEAT, "a", "a"))
    msgs = a.ready().messages
    assert {m.to: m.commit for m in msgs}["c"] == min(a.progress()["c"][0], a.commit_index)


def test_duplicated_reordered_stale_messages_are_harmless() -> None:
    """Old APPENDs and answers, delivered again in any order, change nothing."""
    net = Network(ABC, config=Config(max_entries_per_msg=3))
    a = net.elect("a")
    for i in range(12):
        a.propose(b"%d" % i)
        net.settle()
    net.tick(n=1)
    old = [m for m in net.delivered if m.type in (MT.APPEND, MT.APPEND_RESP, MT.HEARTBEAT_RESP)]
    before = {n: (net.log(n), net.raft(n).commit_index) for n in ABC}
    rng = random.Random(7)
    replay = old * 2
    rng.shuffle(replay)
    for m in replay:
        net.raft(m.to).step(m)
    net.settle()
    after = {n: (net.log(n), net.raft(n).commit_index) for n in ABC}
    assert after == before
    net.check_logs()


def test_an_ack_is_dropped_when_a_newer_leader_truncates_its_entries_before_they_persist() -> None:
    """Two APPENDs in one batch: entries 4-5 of term 2, then a term-3 leader's entry 4. The
    acknowledgement of 5 must not go out: entry 5 is never persisted (the simulator found
    this as a "durable before promised" violation)."""
    from raftsql.raft.core import Raft
    from raftsql.raft.messages import ConfState

    c = Raft("c", Config(), random.Random(1), initial=ConfState(voters=ABC))
    c.advance(c.ready())
    c.step(Message(MT.APPEND, "c", "a", term=2, index=3, log_term=1,
                   entries=(Entry(2, 4), Entry(2, 5)), commit=3))
    c.step(Message(MT.APPEND, "c", "b", term=3, index=3, log_term=1, entries=(Entry(3, 4),),
                   commit=3))
    rd = c.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(4, 3)]
    acks = [(m.to, m.term, m.index) for m in rd.messages if m.type is MT.APPEND_RESP]
    assert acks == [("b", 3, 4)]
