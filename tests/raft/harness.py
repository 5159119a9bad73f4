"""An in-memory cluster for the core's tests, in the style of etcd's `network`.

Each node has a `Store` (what it persisted: hard state, snapshot, entries) and a state
machine (the list of entries it applied). `settle()` runs every node's Ready the way a
driver must: persist, then send, then apply, then advance; and delivers messages until
nothing moves. Links can be cut, nodes isolated, crashed (losing all that was not
persisted) and restarted; every message delivered is recorded for counting.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

MT = MessageType


def encode_entries(entries: Iterable[Entry]) -> bytes:
    return json.dumps([[e.index, e.term, int(e.type), e.data.hex()] for e in entries]).encode()


def decode_entries(data: bytes) -> list[Entry]:
    return [Entry(t, i, EntryType(k), bytes.fromhex(d)) for i, t, k, d in json.loads(data)]


@dataclass
class Store:
    """Durable state of one node: survives crashes."""

    hard_state: HardState = HardState()
    snapshot: Snapshot = field(default_factory=lambda: Snapshot(SnapshotMeta()))
    entries: list[Entry] = field(default_factory=list)

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []  # a received snapshot replaces the whole log
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
            base = self.snapshot.meta.index
            assert all(e.index == base + 1 + i for i, e in enumerate(self.entries)), "log gap"
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state


@dataclass
class Node:
    id: str
    store: Store
    raft: Raft | None = None
    applied: list[Entry] = field(default_factory=list)  # the state machine
    read_states: list[ReadState] = field(default_factory=list)

    @property
    def data(self) -> list[bytes]:
        return [e.data for e in self.applied if e.type is EntryType.NORMAL and e.data]


class Network:
    def __init__(
        self,
        voters: Iterable[str],
        *,
        learners: Iterable[str] = (),
        config: Config | None = None,
        seed: int = 1,
    ) -> None:
        self.config = config or Config()
        self.rng = random.Random(seed)
        self.nodes: dict[str, Node] = {}
        self.queue: deque[Message] = deque()
        self.cut_links: set[tuple[str, str]] = set()
        self.drop_rates: dict[tuple[str, str], float] = {}
        self.delivered: list[Message] = []
        self.leaders: dict[int, str] = {}  # term -> leader: Election Safety
        self.leader_tails: dict[tuple[str, int], tuple[int, int | None]] = {}
        self.reorder = 0.0  # chance to deliver a random queued message instead of the oldest
        self.duplicate = 0.0  # chance to deliver a message twice
        conf = ConfState(tuple(voters), tuple(learners))
        for node_id in conf.members():
            self.add_node(node_id, SnapshotMeta(0, 0, conf))

    # ---- nodes -------------------------------------------------------------------

    def add_node(self, node_id: str, snapshot: SnapshotMeta | None = None) -> Node:
        """A new node; without `snapshot` it is a joiner with no membership."""
        store = Store(snapshot=Snapshot(snapshot or SnapshotMeta()))
        node = self.nodes[node_id] = Node(node_id, store)
        self.start(node_id)
        return node

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        s = node.store
        node.applied = decode_entries(s.snapshot.data) if s.snapshot.data else []
        node.raft = Raft(
            node_id, self.config, random.Random(f"{node_id}/{self.rng.random()}"),
            hard_state=s.hard_state, snapshot=s.snapshot.meta, entries=list(s.entries),
        )

    def crash(self, node_id: str) -> None:
        """Lose everything not persisted, including messages not yet sent."""
        self.nodes[node_id].raft = None
        self.queue = deque(m for m in self.queue if m.to != node_id)

    def restart(self, node_id: str) -> None:
        self.crash(node_id)
        self.start(node_id)

    def raft(self, node_id: str) -> Raft:
        r = self.nodes[node_id].raft
        assert r is not None, f"{node_id} is down"
        return r

    def alive(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def leader(self) -> str | None:
        """The leader of the highest term among live nodes, if any."""
        leaders = [n.raft for n in self.alive() if n.raft.role is Role.LEADER]  # type: ignore[union-attr]
        return max(leaders, key=lambda r: r.term).id if leaders else None  # type: ignore[union-attr]

    def compact(self, node_id: str, index: int | None = None) -> None:
        """The driver's part of a snapshot: store the state machine at `index`, then tell
        the core."""
        node, raft = self.nodes[node_id], self.raft(node_id)
        index = raft.applied if index is None else index
        term = raft.term_at(index)
        assert term is not None
        data = encode_entries(e for e in node.applied if e.index <= index)
        node.store.snapshot = Snapshot(SnapshotMeta(index, term, raft.conf_at(index)), data)
        node.store.entries = [e for e in node.store.entries if e.index > index]
        raft.compact(index, term)

    # ---- the network -------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def drop(self, frm: str, to: str, rate: float) -> None:
        self.drop_rates[(frm, to)] = rate

    def recover(self) -> None:
        self.cut_links.clear()
        self.drop_rates.clear()

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.raft is None or (m.frm, m.to) in self.cut_links:
            return
        if self.rng.random() < self.drop_rates.get((m.frm, m.to), 0.0):
            return
        if m.type is MT.SNAPSHOT and m.snapshot is not None and not m.snapshot.data:
            m = replace(m, snapshot=self.nodes[m.frm].store.snapshot)  # the driver attaches it
        self.delivered.append(m)
        node.raft.step(m)

    # ---- driving -----------------------------------------------------------------

    def handle_ready(self, node: Node) -> Ready:
        raft = node.raft
        assert raft is not None
        rd = raft.ready()
        node.store.save(rd)  # 1. persist
        self.queue.extend(rd.messages)  # 2. send
        if rd.snapshot is not None:  # 3. apply
            node.applied = decode_entries(rd.snapshot.data)
        for e in rd.committed_entries:
            last = node.applied[-1].index if node.applied else 0
            assert e.index == last + 1, f"{node.id} applies {e.index} after {last}"
            node.applied.append(e)
        node.read_states.extend(rd.read_states)  # 4. reads
        raft.advance(rd)
        self._check(node)
        return rd

    def _check(self, node: Node) -> None:
        raft = node.raft
        assert raft is not None
        raft._log.check()
        if raft.role is Role.LEADER:
            other = self.leaders.setdefault(raft.term, raft.id)
            assert other == raft.id, f"two leaders in term {raft.term}: {other}, {raft.id}"
            # Leader Append-Only: the last entry seen before is still there (by Log
            # Matching, so is everything before it).
            seen = self.leader_tails.get((raft.id, raft.term))
            if seen is not None and seen[0] >= raft.first_index - 1:
                assert raft.term_at(seen[0]) == seen[1], f"leader {raft.id} rewrote its log"
            self.leader_tails[(raft.id, raft.term)] = (raft.last_index, raft.term_at(raft.last_index))

    def settle(self, limit: int = 100_000, until: Callable[[], bool] | None = None) -> None:
        """Run Readies and deliver messages until nothing is left to do (or `until()`)."""
        for _ in range(limit):
            if until is not None and until():
                return
            busy = False
            for node in self.alive():
                if node.raft is not None and node.raft.has_ready():
                    self.handle_ready(node)
                    busy = True
            if until is not None and until():
                return
            if self.queue:
                self._deliver(self._next_message())
                busy = True
            if not busy:
                self.check_state_machines()
                return
        raise AssertionError("the network did not settle")

    def _next_message(self) -> Message:
        if self.reorder and self.rng.random() < self.reorder:
            i = self.rng.randrange(len(self.queue))
            m = self.queue[i]
            del self.queue[i]
        else:
            m = self.queue.popleft()
        if self.duplicate and self.rng.random() < self.duplicate:
            self.queue.insert(self.rng.randrange(len(self.queue) + 1), m)
        return m

    def send(self, *msgs: Message) -> None:
        for m in msgs:
            self._deliver(m)
        self.settle()

    def tick(self, ids: Iterable[str] | None = None, n: int = 1) -> None:
        targets = list(self.nodes) if ids is None else list(ids)
        for _ in range(n):
            for node_id in targets:
                raft = self.nodes[node_id].raft
                if raft is not None:
                    raft.tick()
            self.settle()

    def campaign(self, node_id: str) -> None:
        self.raft(node_id).campaign()
        self.settle()

    def elect(self, node_id: str) -> Raft:
        self.campaign(node_id)
        raft = self.raft(node_id)
        assert raft.role is Role.LEADER, f"{node_id} is {raft.role}"
        return raft

    def propose(self, node_id: str, data: bytes) -> int | None:
        index = self.raft(node_id).propose(data)
        self.settle()
        return index

    def change(self, node_id: str, cc: ConfChange) -> int | None:
        index = self.raft(node_id).propose_conf_change(cc)
        self.settle()
        return index

    # ---- checks ------------------------------------------------------------------

    def check_state_machines(self) -> None:
        """State Machine Safety: no two nodes apply different entries at one index."""
        by_index: dict[int, Entry] = {}
        for node in self.nodes.values():
            for e in node.applied:
                seen = by_index.setdefault(e.index, e)
                assert seen == e, f"{node.id} applied {e} where another applied {seen}"

    def check_logs(self) -> None:
        """Log Matching: two logs with an entry of the same index and term are identical up
        to it. Leader Completeness: a leader holds every entry committed anywhere."""
        logs = {n.id: n.raft for n in self.alive()}
        for a in logs.values():
            for b in logs.values():
                assert a is not None and b is not None
                hi = min(a.last_index, b.last_index)
                lo = max(a.first_index, b.first_index)
                same = [i for i in range(lo, hi + 1) if a.term_at(i) == b.term_at(i)]
                if same:
                    top = max(same)
                    assert a.entries(lo, top + 1) == b.entries(lo, top + 1), (a.id, b.id)
                if b.role is Role.LEADER and b.term >= a.term:
                    for i in range(max(a.first_index, b.first_index), a.commit_index + 1):
                        assert a.term_at(i) == b.term_at(i), f"leader {b.id} lacks {i} of {a.id}"

    def count(self, kind: MessageType, since: int = 0, **match: object) -> int:
        return sum(
            1 for m in self.delivered[since:]
            if m.type is kind and all(getattr(m, k) == v for k, v in match.items())
        )

    def log(self, node_id: str) -> list[tuple[int, int]]:
        """(index, term) of every entry in memory."""
        raft = self.raft(node_id)
        return [(e.index, e.term) for e in raft.entries(raft.first_index, raft.last_index + 1)]
