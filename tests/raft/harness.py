"""An in-memory cluster for the core's tests, in the style of etcd's `network`.

The nodes, their durable storage (the real `Storage` on a `MemoryFileSystem`), the
driver's handling of each Ready and the safety checks are the simulator's
(`raftsql/simulation/cluster.py`); this adds a FIFO network for hand-written scenarios.
`settle()` runs every node's Ready (persist, send, apply, advance) and delivers messages
until nothing moves. Links can be cut, nodes isolated, crashed (losing all that was not
fsynced) and restarted; every message delivered is recorded for counting.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import ConfChange, ConfState, Entry, Message, MessageType, Ready
from raftsql.simulation.cluster import Cluster, SimNode

MT = MessageType
Node = SimNode


class Network(Cluster):
    def __init__(
        self,
        voters: Iterable[str],
        *,
        learners: Iterable[str] = (),
        config: Config | None = None,
        seed: int = 1,
    ) -> None:
        super().__init__(config or Config(), random.Random(seed))
        self.queue: deque[Message] = deque()
        self.cut_links: set[tuple[str, str]] = set()
        self.drop_rates: dict[tuple[str, str], float] = {}
        self.delivered: list[Message] = []
        self.reorder = 0.0  # chance to deliver a random queued message instead of the oldest
        self.duplicate = 0.0  # chance to deliver a message twice
        conf = ConfState(tuple(voters), tuple(learners))
        for node_id in conf.members():
            self.add_node(node_id, conf)

    def crash(self, node_id: str) -> None:
        """Lose everything not persisted, including messages not yet delivered to it."""
        super().crash(node_id)
        self.queue = deque(m for m in self.queue if m.to != node_id)

    # ---- the network -------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def reconnect(self, node_id: str) -> None:
        self.cut_links = {link for link in self.cut_links if node_id not in link}

    def drop(self, frm: str, to: str, rate: float) -> None:
        self.drop_rates[(frm, to)] = rate

    def recover(self) -> None:
        self.cut_links.clear()
        self.drop_rates.clear()

    def transmit(self, node: SimNode, messages: list[Message]) -> None:
        self.queue.extend(messages)

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.raft is None or (m.frm, m.to) in self.cut_links:
            return
        if self.rng.random() < self.drop_rates.get((m.frm, m.to), 0.0):
            return
        attached = self.attach_snapshot(m)  # at delivery, so tests see the core's message
        if attached is not None:
            self.delivered.append(attached)
            self.step(attached)

    # ---- driving -----------------------------------------------------------------

    def handle_ready(self, node: SimNode, crash_at: str | None = None) -> Ready:
        rd = super().handle_ready(node, crash_at)
        assert rd is not None, f"{node.id} crashed"
        return rd

    def crash_during_ready(self, node_id: str, point: str) -> None:
        """Take the node's next Ready and crash at `point` of handling it (one of
        CRASH_POINTS: "persist" cuts the write short at a random operation)."""
        node = self.nodes[node_id]
        assert node.raft is not None and node.raft.has_ready(), f"{node_id} has nothing to do"
        assert super().handle_ready(node, point) is None

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
            busy = self.deliver_next() or busy
            if not busy:
                self.check_state_machines()
                return
        raise AssertionError("the network did not settle")

    def deliver_next(self) -> bool:
        """Deliver the next queued message (see `reorder`); False if none is queued."""
        if not self.queue:
            return False
        self._deliver(self._next_message())
        return True

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
                self.tick_node(self.nodes[node_id])
            self.settle()

    def campaign(self, node_id: str) -> None:
        self.raft(node_id).campaign()
        self.settle()

    def elect(self, node_id: str) -> Raft:
        self.campaign(node_id)
        raft = self.raft(node_id)
        assert raft.role.value == "Leader", f"{node_id} is {raft.role}"
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

    def count(self, kind: MessageType, since: int = 0, **match: object) -> int:
        return sum(
            1 for m in self.delivered[since:]
            if m.type is kind and all(getattr(m, k) == v for k, v in match.items())
        )

    def log(self, node_id: str) -> list[tuple[int, int]]:
        """(index, term) of every entry in memory."""
        raft = self.raft(node_id)
        return [(e.index, e.term) for e in raft.entries(raft.first_index, raft.last_index + 1)]
