"""Seeded random faults over the in-memory network: loss, duplication, reordering,
partitions, crashes that lose unpersisted state, compaction and membership changes.

After every step: Election Safety, Log Matching, Leader Completeness and State Machine
Safety (the harness checks them). After healing: one leader, every member caught up.
(The full simulator lives elsewhere; this is the core's own smoke test of the same.)
"""

from __future__ import annotations

import random

import pytest

from raftsql.raft.core import Config
from raftsql.raft.messages import ConfChange, ConfChangeType, Role
from tests.raft.harness import Network

POOL = ["a", "b", "c", "d", "e"]


def random_config(rng: random.Random) -> Config:
    return Config(
        election_ticks=rng.choice([5, 10]),
        max_entries_per_msg=rng.choice([1, 3, 1024]),
        max_inflight=rng.choice([1, 2, 4]),
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
    )


def chaos_step(net: Network, rng: random.Random, counter: list[int]) -> None:
    action = rng.random()
    leader = net.leader()
    nodes = list(net.nodes)
    if action < 0.30 and leader:
        for _ in range(rng.randint(1, 5)):
            counter[0] += 1
            net.raft(leader).propose(b"v%d" % counter[0])
    elif action < 0.35 and leader:
        net.raft(leader).read_index(b"r%d" % counter[0])
    elif action < 0.40 and leader:
        change_membership(net, leader, rng)
    elif action < 0.45 and leader:
        net.raft(leader).transfer_leadership(rng.choice(nodes))
    elif action < 0.52:
        a, b = rng.sample(nodes, 2)
        net.cut(a, b)
    elif action < 0.56:
        net.isolate(rng.choice(nodes))
    elif action < 0.62:
        net.recover()
    elif action < 0.66:
        a, b = rng.sample(nodes, 2)
        net.drop(a, b, rng.random())
    elif action < 0.70:
        crash_mid_ready(net, rng.choice(nodes))
    elif action < 0.74:
        victim = rng.choice(nodes)
        net.crash(victim) if net.nodes[victim].raft else net.start(victim)
    elif action < 0.78 and net.alive():
        node = rng.choice(net.alive())
        if node.raft is not None and node.raft.applied > node.raft.snapshot_meta.index:
            net.compact(node.id, rng.randint(node.raft.snapshot_meta.index + 1, node.raft.applied))
    else:
        net.tick(rng.sample(nodes, rng.randint(1, len(nodes))), n=rng.randint(1, 3))
        return
    net.settle()


def crash_mid_ready(net: Network, node_id: str) -> None:
    """Crash after ready() but before persisting it: its entries, hard state and
    messages are lost."""
    raft = net.nodes[node_id].raft
    if raft is None:
        return
    if raft.has_ready():
        raft.ready()
    net.restart(node_id)


def change_membership(net: Network, leader: str, rng: random.Random) -> None:
    conf = net.raft(leader).conf
    outside = [n for n in POOL if n not in conf.members()]
    kinds = [ConfChangeType.REMOVE]
    if outside:
        kinds += [ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER]
    if conf.learners:
        kinds.append(ConfChangeType.ADD_VOTER)
    kind = rng.choice(kinds)
    if kind is ConfChangeType.REMOVE:
        target = rng.choice(conf.members())
    elif kind is ConfChangeType.ADD_VOTER and conf.learners and (not outside or rng.random() < 0.5):
        target = rng.choice(conf.learners)
    else:
        target = rng.choice(outside)
    net.raft(leader).propose_conf_change(ConfChange(kind, target))


def heal(net: Network) -> None:
    net.recover()
    net.reorder = net.duplicate = 0.0
    for node in net.nodes.values():
        if node.raft is None:
            net.start(node.id)
    for _ in range(1000):
        net.tick()
        leader = net.leader()
        if leader is None:
            continue
        r = net.raft(leader)
        if r.lead_transferee is not None:
            continue
        r.propose(b"final")  # commits everything before it in the leader's term
        net.tick(n=3)
        if caught_up(net, net.leader()):
            return
    raise AssertionError("the cluster did not converge after healing")


def caught_up(net: Network, leader: str | None) -> bool:
    if leader is None:
        return False
    lead = net.raft(leader)
    if lead.role is not Role.LEADER or lead.applied != lead.last_index:
        return False
    members = lead.conf.members()
    return all(net.raft(n).applied == lead.applied for n in members) and all(
        net.nodes[n].data == net.nodes[leader].data for n in members
    )


@pytest.mark.parametrize("seed", range(50))
def test_random_faults(seed: int) -> None:
    rng = random.Random(seed)
    net = Network(POOL[:3], config=random_config(rng), seed=seed)
    for n in POOL[3:]:
        net.add_node(n)  # not members yet: may be added by a change
    net.reorder = rng.choice([0.0, 0.2])
    net.duplicate = rng.choice([0.0, 0.1])
    counter = [0]
    for _ in range(200):
        chaos_step(net, rng, counter)
        net.check_logs()
    heal(net)
    net.check_logs()
    leader = net.leader()
    assert leader is not None
    assert len([n for n in net.alive() if n.raft and n.raft.role is Role.LEADER and
                n.raft.term == net.raft(leader).term]) == 1
