"""Simulated nodes and the driver's part of Raft, shared by the simulator and the tests.

A `SimNode` is what one server has: a `MemoryFileSystem` holding its durable Raft log
(the real `Storage`), the core (`Raft`, None while the node is down) and a state machine
(the list of entries it applied). `Cluster.handle_ready` carries out a Ready's effects in
the order the real driver uses, because it takes them from the same code,
`raftsql.raft.order.ReadyOrder`; it can crash the node at any point of that, and a crash
loses exactly what was not fsynced (torn tails included). Bootstrap and the attaching of a
snapshot to a message are the driver's code too (`Raft(initial=...)`,
`raftsql.storage.attach_snapshot`). How messages travel is up to a subclass (`transmit`);
the checker watches everything, and also that no message promises what was not durable
when it went out.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from raftsql.raft.order import Apply, Persist, ReadyOrder, Send, Serve, Synced
from raftsql.simulation.checker import Checker, SafetyViolation
from raftsql.storage import (
    MemoryFileSystem,
    SimulatedCrash,
    Storage,
    attach_snapshot,
    trailing_base,
    write_persist,
)

MT = MessageType
RAFT_DIR = "/data/raft"
# Where a crash may hit while a Ready is handled: before it is durable ("ready": only a
# leader's early messages went out, and its early applies happened), in the middle of
# persisting it ("persist": at a random write, fsync, rename... of it, or just after), once
# it is durable but before its messages went out ("persisted"), before applying ("sent"),
# before `advance()` ("applied"). A point the Ready has no effect for crashes at the next.
CRASH_POINTS = ("ready", "persist", "persisted", "sent", "applied")


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """A state machine's snapshot: the entries it applied."""
    return json.dumps([[e.index, e.term, int(e.type), e.data.hex()] for e in entries]).encode()


def decode_entries(data: bytes) -> list[Entry]:
    return [Entry(t, i, EntryType(k), bytes.fromhex(d)) for i, t, k, d in json.loads(data)]


@dataclass(eq=False)
class SimNode:
    id: str
    bootstrap: ConfState | None  # the initial membership, for an initial member
    fs: MemoryFileSystem = field(default_factory=MemoryFileSystem)
    storage: Storage | None = None
    raft: Raft | None = None  # None while down
    applied: list[Entry] = field(default_factory=list)  # the state machine
    read_states: list[ReadState] = field(default_factory=list)
    order: ReadyOrder | None = None  # the driver's, while up
    synced_commit: int = 0  # the commit index of the hard state last fsynced
    synced_last: int = 0  # the last index of the log last fsynced
    synced_vote: tuple[int, str | None] = (0, None)  # the term and vote last fsynced

    @property
    def data(self) -> list[bytes]:
        return [e.data for e in self.applied if e.type is EntryType.NORMAL and e.data]

    @property
    def applied_index(self) -> int:
        return self.applied[-1].index if self.applied else 0


class Cluster:
    """Nodes and the driver loop around each core; messages go to `transmit`."""

    def __init__(self, config: Config, rng: random.Random, *, trace: int | None = 200) -> None:
        self.config = config
        self.rng = rng
        self.nodes: dict[str, SimNode] = {}
        self.now = 0  # logical time, in ticks
        self.trace: deque[tuple[int, str, Message | None]] = deque(maxlen=trace)
        self.checker = Checker(self._running, self._durable_term, self.note)

    def _running(self, node_id: str) -> Raft | None:
        node = self.nodes.get(node_id)
        return None if node is None else node.raft

    def _durable_term(self, node_id: str) -> int:
        storage = self.nodes[node_id].storage  # its hard state is synced whenever we look
        return -1 if storage is None else storage.hard_state.term

    def note(self, event: str, m: Message | None = None) -> None:
        self.trace.append((self.now, event, m))

    def trace_lines(self) -> list[str]:
        return [f"{t:>6} {event}" + (f" {describe(m)}" if m else "") for t, event, m in self.trace]

    # ---- nodes -------------------------------------------------------------------

    def add_node(self, node_id: str, conf: ConfState | None = None) -> SimNode:
        """A new node: an initial member if `conf` is given, else a joiner (no membership)."""
        node = self.nodes[node_id] = SimNode(node_id, conf)
        self.start(node_id)
        return node

    def start(self, node_id: str) -> None:
        """Start (or restart) a node from what its file system holds, as the driver does."""
        node = self.nodes[node_id]
        storage = node.storage = Storage(RAFT_DIR, node.fs)
        meta = storage.snapshot_meta
        if node.applied_index < meta.index:  # the state machine lost more than the snapshot holds
            stored = storage.load_snapshot()
            assert stored is not None
            node.applied = decode_entries(stored.data)
            self.checker.on_restore(node_id, meta, node.applied)
        if node.applied_index > storage.last_index:
            raise SafetyViolation(f"{node_id} applied {node.applied_index} but its log ends at"
                                  f" {storage.last_index}: applied entries were not durable")
        # What a crash kept of a torn write is durable too: record it for Log Matching.
        self.checker.on_persisted(node_id, storage.entries(), storage.log_base.term)
        node.synced_last = storage.last_index
        node.synced_vote = (storage.hard_state.term, storage.hard_state.vote)
        node.order = ReadyOrder(storage.hard_state)
        node.raft = Raft(
            node_id, self.config, random.Random(f"{node_id}/{self.rng.random()}"),
            hard_state=storage.hard_state, snapshot=storage.log_base, entries=storage.entries(),
            applied=node.applied_index, initial=node.bootstrap,
        )
        self.note(f"{node_id} starts: term={node.raft.term} commit={node.raft.commit_index}"
                  f" last={node.raft.last_index} applied={node.applied_index}")
        self.checker.on_start(node_id, node.raft, node.synced_commit)

    def crash(self, node_id: str) -> None:
        """Power off: the file system loses what was not fsynced, the core all it had."""
        node = self.nodes[node_id]
        if node.raft is None:
            return
        node.fs.crash(self.rng)
        node.raft = node.storage = node.order = None
        node.applied = node.applied[: self.state_machine_kept(node)]
        self.checker.on_stop(node_id)
        self.note(f"{node_id} crashes")

    def state_machine_kept(self, node: SimNode) -> int:
        """How many applied entries the state machine keeps in a crash. Here none: it is
        rebuilt from the snapshot and the log, as a volatile one would be."""
        return 0

    def restart(self, node_id: str) -> None:
        self.crash(node_id)
        self.start(node_id)

    def raft(self, node_id: str) -> Raft:
        r = self.nodes[node_id].raft
        assert r is not None, f"{node_id} is down"
        return r

    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def leader(self) -> str | None:
        """The leader of the highest term among running nodes, if any."""
        leaders = [n.raft for n in self.alive() if n.raft is not None and n.raft.role is Role.LEADER]
        return max(leaders, key=lambda r: r.term).id if leaders else None

    def compact(self, node_id: str, index: int | None = None, trailing: int = 0) -> None:
        """The driver's part of a snapshot (docs/design.md §3): store the state machine at
        `index` (default: applied), keeping `trailing` entries before it, then tell the core."""
        node, raft = self.nodes[node_id], self.raft(node_id)
        index = raft.applied if index is None else index
        term = raft.term_at(index)
        assert term is not None and node.storage is not None
        data = encode_entries(node.applied[:index])  # the state machine holds 1..applied
        base = trailing_base(raft, index, trailing)
        node.storage.save_snapshot(Snapshot(SnapshotMeta(index, term, raft.conf_at(index)), data),
                                   base)
        raft.compact(base.index, base.term)
        self.note(f"{node_id} compacts to {base.index} (term {base.term}), snapshot at {index}")

    # ---- the driver --------------------------------------------------------------

    def step(self, m: Message) -> bool:
        """Hand a message to its node; False if it is down (the message is lost)."""
        node = self.nodes.get(m.to)
        if node is None or node.raft is None:
            return False
        node.raft.step(m)
        self.checker.observe(m.to, node.raft)
        return True

    def tick_node(self, node: SimNode) -> None:
        if node.raft is not None:
            node.raft.tick()
            self.checker.observe(node.id, node.raft)

    def transmit(self, node: SimNode, messages: list[Message]) -> None:
        raise NotImplementedError

    def attach_snapshot(self, m: Message) -> Message | None:
        """What the driver's transport does before sending (None: nothing to send)."""
        storage = self.nodes[m.frm].storage
        return None if storage is None else attach_snapshot(storage, m)

    def handle_ready(self, node: SimNode, crash_at: str | None = None) -> Ready | None:
        """Take a Ready and carry out its effects in the driver's order, then `advance()`;
        crash at `crash_at` (one of CRASH_POINTS) if given. Returns the Ready, or None if
        the node crashed."""
        raft, order = node.raft, node.order
        assert raft is not None and order is not None
        self.checker.observe(node.id, raft)
        rd = raft.ready()
        prev_term = self.checker.on_ready(node.id, raft, rd)
        point = crash_at
        for effect in order.effects(rd, raft.role is Role.LEADER):
            if isinstance(effect, Synced):
                if point == "ready" or not self._sync(node, effect.persist, point == "persist"):
                    return self._crash_in_ready(node)
                self.checker.on_persisted(node.id, effect.persist.entries, prev_term)
                if point == "persisted":
                    return self._crash_in_ready(node)
                point = {"ready": None, "persist": None}.get(point, point)
            elif isinstance(effect, Send):
                self._send(node, effect.messages)
            elif isinstance(effect, Apply | Serve):
                if point in ("ready", "persist", "persisted", "sent"):
                    return self._crash_in_ready(node)  # this Ready persisted nothing
                self._apply(node, effect)
        if point is not None:
            return self._crash_in_ready(node)
        raft.advance(rd)
        if raft.snapshot_meta.index <= raft.applied:
            raft._log.check()  # the log's cursors, unless a snapshot is still being installed
        self.checker.observe(node.id, raft)
        return rd

    def _crash_in_ready(self, node: SimNode) -> None:
        self.crash(node.id)
        return None

    def _sync(self, node: SimNode, persist: Persist, crash: bool) -> bool:
        """Write the Persist with one fsync, as the driver does. False: crashed (at one of
        the file system's operations, or just after the last)."""
        storage = node.storage
        assert storage is not None
        if crash:
            node.fs.crash_after(self.rng.randrange(12))
        try:
            write_persist(storage, persist)
        except SimulatedCrash:
            self.note(f"{node.id} crashes while persisting")
            return False
        if crash:
            return False
        node.synced_commit = storage.hard_state.commit
        node.synced_last = storage.last_index
        node.synced_vote = (storage.hard_state.term, storage.hard_state.vote)
        return True

    def _send(self, node: SimNode, messages: list[Message]) -> None:
        for m in messages:
            self.checker.on_send(m, node.synced_last, node.synced_vote)
        self.transmit(node, messages)

    def _apply(self, node: SimNode, effect: Apply | Serve) -> None:
        """Restore the snapshot, apply committed entries; serve reads."""
        if isinstance(effect, Serve):
            for rs in effect.read_states:
                self.checker.read_answered(node.id, rs)
                node.read_states.append(rs)
            return
        if effect.snapshot is not None:
            entries = decode_entries(effect.snapshot.data)
            self.checker.on_restore(node.id, effect.snapshot.meta, entries)
            node.applied = entries
        if effect.entries:
            self.checker.on_apply(node.id, node.applied_index, effect.entries)
            node.applied.extend(effect.entries)

    # ---- full checks -------------------------------------------------------------

    def check_logs(self) -> None:
        self.checker.check_logs([n.raft for n in self.alive() if n.raft is not None])


def describe(m: Message) -> str:
    """A message in one short line, for traces."""
    head = f"{m.frm}->{m.to} {m.type.name} t{m.term}"
    kind = m.type
    if kind is MT.APPEND:
        span = f" [{m.entries[0].index}..{m.entries[-1].index}]" if m.entries else ""
        return f"{head} prev={m.index}/t{m.log_term} n={len(m.entries)}{span} commit={m.commit}"
    if kind is MT.APPEND_RESP:
        if m.reject:
            return f"{head} reject {m.index} hint={m.reject_hint}/t{m.log_term}"
        return f"{head} index={m.index}"
    if kind in (MT.VOTE, MT.PRE_VOTE):
        return f"{head} last={m.index}/t{m.log_term}" + (" transfer" if m.context else "")
    if kind in (MT.VOTE_RESP, MT.PRE_VOTE_RESP):
        return f"{head} " + ("rejected" if m.reject else "granted")
    if kind in (MT.HEARTBEAT, MT.HEARTBEAT_RESP):
        commit = f" commit={m.commit}" if kind is MT.HEARTBEAT else ""
        return head + commit + (f" ctx={m.context.decode()}" if m.context else "")
    if kind is MT.SNAPSHOT and m.snapshot is not None:
        meta = m.snapshot.meta
        return f"{head} snapshot={meta.index}/t{meta.term} voters={','.join(meta.conf.voters)}"
    if kind in (MT.READ_INDEX, MT.READ_INDEX_RESP):
        return f"{head} index={m.index} ctx={m.context.decode()}"
    return head
