"""The seeded scheduler: one whole cluster per seed, under random faults.

`run_seed(seed)` builds a cluster of 3-7 initial members (plus two spare nodes that
membership changes may add), with a core configuration drawn from the seed, and runs
`steps` scheduling steps. Each step is one of:

- deliver a message whose delay has passed (usually the oldest; with reordering on, any);
- advance logical time by a tick: every running node ticks (one sometimes skips: clock skew);
- a client action: propose, ReadIndex (at any node), leadership transfer, a membership
  change (add voter, add learner, promote, demote, remove, the leader included), a
  snapshot (the driver saves its state machine and compacts), a forced campaign;
- a fault: crash a node (between Readies, or at any point inside one: before, during or
  after persisting, after sending, after applying; often the leader, a leader just
  elected, or one that just took proposals), partition the network (two sides, one more
  node isolated, one link cut in one direction), reconnect a node, or change how lossy,
  duplicating, reordering and slow the network is. Faults come in storms. A crashed
  node restarts within four election timeouts, a partition heals within six.

Every Ready is handled as the real driver handles it, in the order of the driver's own
code (`raftsql.raft.order`, run by `Cluster.handle_ready`); after every
input the checker (`checker.py`) verifies the safety properties. Then the faults heal
(network repaired, every node up) and the run must show **liveness**: within
`LIVENESS_TIMEOUTS` election timeouts a leader is elected and a new proposal is applied
on every member of the leader's configuration.

Everything is drawn from `random.Random(seed)`: the same seed gives the same run, event
for event.
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections import Counter
from dataclasses import dataclass, field

from raftsql.raft.core import Config
from raftsql.raft.messages import ConfChange, ConfChangeType, ConfState, Message, MessageType, Role
from raftsql.simulation.checker import SafetyViolation
from raftsql.simulation.cluster import CRASH_POINTS, Cluster, SimNode
from raftsql.storage.memfs import SimulatedCrash

MT = MessageType
DEFAULT_STEPS = 2000
SPARES = 2  # nodes outside the initial cluster, for membership changes to add
MAX_VOTERS = 7
LIVENESS_TIMEOUTS = 50  # after healing: a commit on all members within this many timeouts
TRACE_EVENTS = 200


@dataclass
class Stats:
    seeds: int = 0
    steps: int = 0
    ticks: int = 0
    elections: int = 0
    commits: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    liveness_ticks: int = 0  # the most ticks a healed cluster needed ...
    liveness_timeouts: float = 0.0  # ... and the most election timeouts

    def add(self, other: Stats) -> None:
        self.seeds += other.seeds
        self.steps += other.steps
        self.ticks += other.ticks
        self.elections += other.elections
        self.commits += other.commits
        self.faults.update(other.faults)
        self.actions.update(other.actions)
        self.liveness_ticks = max(self.liveness_ticks, other.liveness_ticks)
        self.liveness_timeouts = max(self.liveness_timeouts, other.liveness_timeouts)


@dataclass
class SeedResult:
    seed: int
    nodes: int
    stats: Stats
    violation: str | None = None
    trace: list[str] = field(default_factory=list)  # the last events (all, if asked)


def run_seed(seed: int, nodes: int | None = None, steps: int = DEFAULT_STEPS,
             trace: int | None = TRACE_EVENTS) -> SeedResult:
    """Run one seed. `trace`: how many of the last events to keep (None: all)."""
    sim = Simulation(seed, nodes, trace=trace)
    violation = None
    try:
        sim.run(steps)
        sim.heal()
        sim.check_logs()
    except SafetyViolation as exc:
        violation = str(exc)
    except Exception as exc:  # the core or storage broke: as bad as a violation
        frames = traceback.format_exception(exc)
        violation = f"unexpected {type(exc).__name__}: {exc}\n" + "".join(frames[-6:])
    sim.note("violation: " + violation.splitlines()[0] if violation else "ok")
    sim.stats.elections = len(sim.checker.leaders)
    sim.stats.commits = len(sim.checker.committed)
    show = violation is not None or trace is None
    return SeedResult(seed, sim.size, sim.stats, violation, sim.trace_lines() if show else [])


def random_config(rng: random.Random, knobs: random.Random) -> Config:
    """A core configuration; `knobs` draws those added later, so that adding one does not
    reshuffle every seed's schedule (the tests pin seeds that hit rare bugs)."""
    election = rng.randint(4, 8)
    return Config(
        election_ticks=election,
        heartbeat_ticks=rng.choice([1, 1, 2]) if election > 5 else 1,
        max_entries_per_msg=rng.choice([1, 1, 2, 4, 1024]),
        max_inflight=rng.choice([1, 2, 4]),
        pre_vote=rng.random() < 0.85,
        check_quorum=rng.random() < 0.85,
        max_bytes_per_msg=knobs.choice([0, 0, 1, 40]),  # commands are a few bytes each
    )


class Simulation(Cluster):
    def __init__(self, seed: int, nodes: int | None = None, *, trace: int | None = TRACE_EVENTS) -> None:
        rng = random.Random(seed)
        self.size = nodes or rng.randint(3, 7)
        super().__init__(random_config(rng, random.Random(f"knobs-{seed}")), rng, trace=trace)
        self.stats = Stats(seeds=1)
        self.flight: list[tuple[int, int, Message]] = []  # a heap of (due time, sequence, message)
        self.sent = 0
        self.blocked: set[tuple[str, str]] = set()  # (from, to) links that lose everything
        self.drop_rate = self.dup_rate = self.reorder_rate = 0.0
        self.max_delay = 0
        self.proposals = 0
        self.doomed: dict[str, str] = {}  # node -> where its next Ready crashes
        self.leader_doom: int | None = None  # the next leader crashes in this many Readies
        self.wake_at: dict[str, int] = {}  # a crashed node restarts at this time
        self.partition_until = 0  # the partition heals then
        self.depose_rate = 0.0  # how often a leader is cut off just after proposals
        ids = [f"n{i}" for i in range(1, self.size + SPARES + 1)]
        members = ids[: self.size]
        learners = members[-1:] if self.size > 3 and rng.random() < 0.3 else []
        conf = ConfState(tuple(n for n in members if n not in learners), tuple(learners))
        self.note(f"seed {seed}: {self.config}, voters={conf.voters} learners={conf.learners}")
        for node_id in ids:
            self.add_node(node_id, conf if node_id in members else None)

    def crash(self, node_id: str) -> None:
        """Also decide when it comes back: within a few election timeouts."""
        super().crash(node_id)
        self.doomed.pop(node_id, None)
        self.wake_at[node_id] = self.now + self.rng.randint(1, 4 * self.config.election_ticks)

    def state_machine_kept(self, node: SimNode) -> int:
        """Like SQLite with synchronous=NORMAL: a crash may lose the last transactions."""
        n = len(node.applied)
        return n if self.rng.random() < 0.5 else self.rng.randint(0, n)

    def fault(self, kind: str) -> None:
        self.stats.faults[kind] += 1

    # ---- the network -------------------------------------------------------------

    def transmit(self, node: SimNode, messages: list[Message]) -> None:
        rng = self.rng
        for m in messages:
            attached = self.attach_snapshot(m)
            if attached is None:
                self.note("no snapshot stored, not sent:", m)
            elif self.drop_rate and rng.random() < self.drop_rate:
                self.fault("drop")
                self.note("drop", m)
            else:
                self._enqueue(attached)
                if self.dup_rate and rng.random() < self.dup_rate:
                    self.fault("duplicate")
                    self._enqueue(attached)

    def _enqueue(self, m: Message) -> None:
        delay = 0
        if self.max_delay and self.rng.random() < 0.3:
            delay = self.rng.randint(1, self.max_delay)
            self.fault("delay")
        self.sent += 1
        heapq.heappush(self.flight, (self.now + delay, self.sent, m))

    def deliver_one(self, reorder: bool = True) -> bool:
        """Deliver one message that is due; False if none is."""
        flight = self.flight
        if not flight or flight[0][0] > self.now:
            return False
        if reorder and self.reorder_rate and self.rng.random() < self.reorder_rate:
            due = [i for i, item in enumerate(flight) if item[0] <= self.now]
            i = self.rng.choice(due)
            m = flight[i][2]
            flight[i] = flight[-1]
            flight.pop()
            heapq.heapify(flight)
            self.fault("reorder")
        else:
            m = heapq.heappop(flight)[2]
        if (m.frm, m.to) in self.blocked:
            self.note("cut off", m)
            return True
        self.note("deliver", m)
        if m.type is MT.SNAPSHOT:
            self.stats.actions["snapshot sent"] += 1
        if self.step(m) and reorder and self.rng.random() < 0.7:
            self.ready(self.nodes[m.to])  # else the node gathers more input first
        return True

    # ---- time and Readies --------------------------------------------------------

    def tick(self, skew: bool = True) -> None:
        self.now += 1
        self.stats.ticks += 1
        for node_id, when in list(self.wake_at.items()):
            if when <= self.now:
                del self.wake_at[node_id]
                if self.nodes[node_id].raft is None:
                    self.fault("restart")
                    self.start(node_id)
        if self.blocked and self.now >= self.partition_until:
            self.blocked.clear()
            self.note("the partition heals")
        for node in self.alive():
            if not (skew and self.rng.random() < 0.03):
                self.tick_node(node)
        for node in self.alive():
            self.flush(node)

    def ready(self, node: SimNode) -> None:
        """The node's driver handles its next Ready, if it has one (crashing at the point its
        doom says, if it is doomed)."""
        raft = node.raft
        if raft is None or not raft.has_ready():
            return
        if self.leader_doom is not None and raft.role is Role.LEADER:
            self.leader_doom -= 1
            if self.leader_doom == 0 and node.id not in self.doomed:
                self.leader_doom = None
                self.doomed[node.id] = self.rng.choice(CRASH_POINTS)
        point = self.doomed.pop(node.id, None)
        if point is not None:
            self.fault(f"crash in Ready ({point})")
        self.handle_ready(node, point)

    def flush(self, node: SimNode) -> None:
        """Handle every Ready the node has."""
        while node.raft is not None and node.raft.has_ready():
            self.ready(node)

    def settle(self) -> None:
        """Readies and due messages, in order, until none is left."""
        busy = True
        while busy:
            for node in self.alive():
                self.flush(node)
            busy = False
            while self.deliver_one(reorder=False):
                busy = True

    # ---- the run -----------------------------------------------------------------

    def run(self, steps: int) -> None:
        rng = self.rng
        storm = False  # faults come in bursts: several in one election timeout
        for _ in range(steps):
            self.stats.steps += 1
            if rng.random() < (0.01 if storm else 0.003):
                storm = not storm
                self.note("a storm begins" if storm else "the storm ends")
            r = rng.random()
            faults = 0.05 if storm else 0.008
            self.depose_rate = 0.3 if storm else 0.03
            if r < faults:
                self.inject_fault()
            elif r < faults + 0.07:
                self.client_action()
            elif r < 0.92 and self.deliver_one():
                pass
            else:
                self.tick()

    def inject_fault(self) -> None:
        rng = self.rng
        down = [n for n in self.nodes.values() if n.raft is None]
        r = rng.random()
        if r < 0.1 and down:
            node = rng.choice(down)
            self.fault("restart")
            self.start(node.id)
        elif r < 0.45:
            self.crash_random()
        elif r < 0.55:
            # Figure 8 is made of leaders that fall soon after winning: the next leader
            # crashes in one of its first Readies.
            self.leader_doom = rng.randint(1, 4)
            self.note(f"the next leader will crash in its Ready #{self.leader_doom}")
        elif r < 0.7:
            self.partition()
        elif r < 0.75:
            self.reconnect()
        else:
            self.weather()

    def crash_random(self) -> None:
        """Crash a node now, or at a random point of its next Ready."""
        alive = [n for n in self.alive() if n.id not in self.doomed]
        if not alive:
            return
        leader = self.leader()
        if leader in self.doomed or self.rng.random() < 0.5:
            leader = None
        node = self.nodes[leader] if leader else self.rng.choice(alive)
        if self.rng.random() < 0.6:
            self.doomed[node.id] = point = self.rng.choice(CRASH_POINTS)
            self.note(f"{node.id} will crash at '{point}' of its next Ready")
        else:
            self.fault("crash")
            self.crash(node.id)

    def partition(self) -> None:
        """Split the network in two, isolate one more node, or cut one link one way."""
        rng, ids = self.rng, list(self.nodes)
        self.partition_until = self.now + rng.randint(1, 6) * self.config.election_ticks
        r = rng.random()
        if r < 0.4:
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            self.blocked.clear()
            self.fault("partition")
            self.note(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")
            for a in ids[:cut]:
                for b in ids[cut:]:
                    self.blocked |= {(a, b), (b, a)}
        elif r < 0.8:
            leader = self.leader()
            self.isolate(leader if leader and rng.random() < 0.5 else rng.choice(ids))
        else:
            a, b = rng.sample(ids, 2)
            self.blocked.add((a, b))
            self.fault("one-way cut")
            self.note(f"link {a}->{b} cut")

    def isolate(self, node_id: str) -> None:
        self.fault("isolate")
        self.note(f"{node_id} isolated")
        for other in self.nodes:
            if other != node_id:
                self.blocked |= {(node_id, other), (other, node_id)}

    def reconnect(self) -> None:
        """Give one node back all its links."""
        cut_off = [n for n in self.nodes if any((n, o) in self.blocked for o in self.nodes)]
        if cut_off:
            node_id = self.rng.choice(cut_off)
            self.note(f"{node_id} reconnected")
            self.blocked = {link for link in self.blocked if node_id not in link}

    def weather(self) -> None:
        """Change how unreliable the network is."""
        rng = self.rng
        self.drop_rate = rng.choice([0.0, 0.0, 0.02, 0.1, 0.3])
        self.dup_rate = rng.choice([0.0, 0.0, 0.05, 0.2])
        self.reorder_rate = rng.choice([0.0, 0.1, 0.5])
        self.max_delay = rng.choice([0, 0, 2, 5, 2 * self.config.election_ticks])
        self.fault("network change")
        self.note(f"network: drop={self.drop_rate} duplicate={self.dup_rate}"
                  f" reorder={self.reorder_rate} max delay={self.max_delay}")

    # ---- clients and operators ---------------------------------------------------

    def client_action(self) -> None:
        rng = self.rng
        alive = self.alive()
        if not alive:
            return
        leader_id = self.leader()
        leader = self.nodes[leader_id] if leader_id else None
        r = rng.random()
        if r < 0.4:
            # To any node that believes it leads: a deposed one grows a divergent tail.
            leaders = [n for n in alive if n.raft is not None and n.raft.role is Role.LEADER]
            if leaders:
                self.propose(rng.choice(leaders))
        elif r < 0.55:
            self.read(rng.choice(alive))
        elif r < 0.62:
            self.transfer(leader, rng.choice(alive))
        elif r < 0.77:
            if leader is not None:
                self.change_membership(leader)
        elif r < 0.92:
            self.snapshot(rng.choice(alive))
        else:
            node = rng.choice(alive)
            self.stats.actions["campaign"] += 1
            self.note(f"{node.id} campaigns")
            assert node.raft is not None
            node.raft.campaign()
            self.checker.observe(node.id, node.raft)
            self.ready(node)

    def propose(self, node: SimNode) -> None:
        assert node.raft is not None
        for _ in range(self.rng.randint(1, 3)):
            self.proposals += 1
            index = node.raft.propose(b"v%d" % self.proposals)
            if index is not None:
                self.stats.actions["proposal"] += 1
                self.note(f"{node.id} proposes v{self.proposals} at {index}")
        r = self.rng.random()
        if r < 0.03 and node.id not in self.doomed:
            # It persists them and dies before they leave: a divergent tail (Figure 8).
            self.doomed[node.id] = "persisted"
            self.note(f"{node.id} will crash at 'persisted' of its next Ready")
        elif r < self.depose_rate:
            self.isolate(node.id)  # the leader is cut off just after taking proposals
        if self.rng.random() < 0.5:
            self.ready(node)

    def read(self, node: SimNode) -> None:
        assert node.raft is not None
        self.proposals += 1
        ctx = b"r%d" % self.proposals
        self.stats.actions["read"] += 1
        self.checker.read_started(ctx)
        self.note(f"{node.id} starts read {ctx.decode()} (committed: {self.checker.max_committed})")
        self.step(Message(MT.READ_INDEX, node.id, node.id, context=ctx))

    def transfer(self, leader: SimNode | None, via: SimNode) -> None:
        rng = self.rng
        voters = list(self.nodes)
        target = rng.choice(voters)
        self.stats.actions["transfer"] += 1
        if leader is not None and leader.raft is not None and rng.random() < 0.7:
            to = target if rng.random() < 0.7 else None
            self.note(f"{leader.id} transfers leadership to {to}")
            leader.raft.transfer_leadership(to)
            self.checker.observe(leader.id, leader.raft)
        else:
            self.note(f"{via.id} asked to transfer leadership to {target}")
            self.step(Message(MT.TRANSFER_LEADER, via.id, target))

    def change_membership(self, leader: SimNode) -> None:
        raft = leader.raft
        assert raft is not None
        conf, rng = raft.conf, self.rng
        outside = [n for n in self.nodes if n not in conf.members()]
        options: list[tuple[str, ConfChangeType, str]] = []
        for n in outside:
            options.append(("add learner", ConfChangeType.ADD_LEARNER, n))
            if len(conf.voters) < MAX_VOTERS:
                options.append(("add voter", ConfChangeType.ADD_VOTER, n))
        for n in conf.learners:
            options.append(("remove", ConfChangeType.REMOVE, n))
            if len(conf.voters) < MAX_VOTERS:
                options.append(("promote", ConfChangeType.ADD_VOTER, n))
        for n in conf.voters:
            kind = "remove leader" if n == leader.id else "remove"
            options.append((kind, ConfChangeType.REMOVE, n))
            options.append(("demote", ConfChangeType.ADD_LEARNER, n))
        name, kind, target = rng.choice(options)
        index = raft.propose_conf_change(ConfChange(kind, target))
        if index is not None:
            self.fault(name)
            self.note(f"{leader.id} proposes {name} {target} at {index}")
            self.ready(leader)

    def snapshot(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        assert node.storage is not None
        # The core's log may start before the stored snapshot (trailing entries), or after
        # it (a received snapshot not yet persisted).
        first = max(raft.snapshot_meta.index, node.storage.snapshot_meta.index)
        if raft.applied <= first:
            return
        index = raft.applied if self.rng.random() < 0.7 else self.rng.randint(first + 1, raft.applied)
        trailing = self.rng.choice((0, 0, 2, 5))  # entries kept before the snapshot
        self.fault("snapshot" if not trailing else "snapshot with trailing entries")
        if self.rng.random() < 0.1:  # power cut while the snapshot is written
            node.fs.crash_after(self.rng.randrange(10))
            try:
                self.compact(node.id, index, trailing)
            except SimulatedCrash:
                self.fault("crash while saving a snapshot")
                self.note(f"{node.id} crashes while saving a snapshot at {index}")
            self.crash(node.id)
            return
        self.compact(node.id, index, trailing)

    # ---- healing and liveness ----------------------------------------------------

    def heal(self) -> None:
        """Repair the network, restart every node, then require progress within
        LIVENESS_TIMEOUTS election timeouts."""
        self.blocked.clear()
        self.drop_rate = self.dup_rate = self.reorder_rate = 0.0
        self.max_delay = 0
        self.doomed.clear()
        self.wake_at.clear()
        self.leader_doom = None
        self.note("heal: network repaired, every node up")
        for node in self.nodes.values():
            if node.raft is None:
                self.start(node.id)
        start, bound = self.now, LIVENESS_TIMEOUTS * self.config.election_ticks
        final: tuple[int, int] | None = None  # (index, term) of the proposal to commit
        while self.now - start < bound:
            self.tick(skew=False)
            self.settle()
            leader_id = self.leader()
            if leader_id is None:
                continue
            leader = self.raft(leader_id)
            if final is None or leader.term_at(final[0]) != final[1]:
                index = leader.propose(b"final")
                final = None if index is None else (index, leader.term)
                continue
            members = leader.conf.members()
            if all(self._has_applied(self.nodes[n], *final) for n in members):
                self.stats.liveness_ticks = self.now - start
                self.stats.liveness_timeouts = (self.now - start) / self.config.election_ticks
                self.note(f"live: v{final} applied on {', '.join(members)} after"
                          f" {self.now - start} ticks")
                return
        raise SafetyViolation(
            f"Liveness violated: {bound} ticks after healing, no proposal was applied on all"
            f" members (leader: {self.leader()}; final entry: {final}; nodes: "
            + "; ".join(self._status(n) for n in self.nodes.values()) + ")")

    @staticmethod
    def _has_applied(node: SimNode, index: int, term: int) -> bool:
        return node.applied_index >= index and node.applied[index - 1].term == term

    @staticmethod
    def _status(node: SimNode) -> str:
        r = node.raft
        if r is None:
            return f"{node.id} down"
        return (f"{node.id} {r.role.value} t{r.term} commit={r.commit_index} last={r.last_index}"
                f" applied={node.applied_index} voters={','.join(r.conf.voters)}"
                f" learners={','.join(r.conf.learners)}")

