"""Simulated nodes and the driver's part of Raft, shared by the simulator and the tests.

A `SimNode` is what one server has: a `MemoryFileSystem` holding its durable Raft log
(the real `Storage`), the core (`Raft`, None while the node is down) and a state machine
(the list of entries it applied). `Cluster.handle_ready` does what the real driver does
with a Ready, in the contract's order (docs/design.md §2): persist the snapshot, entries
and hard state with one `sync()`, send, apply, then `advance()`; it can crash the node at
any point of that, and a crash loses exactly what was not fsynced (torn tails included).
How messages travel is up to a subclass (`transmit`); the checker watches everything.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

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
from raftsql.simulation.checker import Checker, SafetyViolation
from raftsql.storage.log import Storage
from raftsql.storage.memfs import MemoryFileSystem, SimulatedCrash

MT = MessageType
RAFT_DIR = "/data/raft"
# Where a crash may hit while a Ready is handled: before persisting it ("ready": only a
# leader's early messages went out), in the middle of persisting it ("persist": at a
# random write, fsync, rename... of it, or just after), once it is durable but before
# its messages went out ("persisted"), before applying ("sent"), before `advance()`
# ("applied").
CRASH_POINTS = ("ready", "persist", "persisted", "sent", "applied")


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """A state machine's snapshot: the entries it applied."""
    return json.dumps([[e.index, e.term, int(e.type), e.data.hex()] for e in entries]).encode()


def decode_entries(data: bytes) -> list[Entry]:
    return [Entry(t, i, EntryType(k), bytes.fromhex(d)) for i, t, k, d in json.loads(data)]


@dataclass(slots=True)
class Pending:
    """A Ready taken from the core and not yet advanced (its persistence is under way)."""

    rd: Ready
    sent: bool  # its messages went out before it was persisted (a leader's, §10.2.1)
    prev_term: int | None  # the term of the entry before its entries


@dataclass(eq=False)
class SimNode:
    id: str
    bootstrap: ConfState | None  # the initial membership, for an initial member
    fs: MemoryFileSystem = field(default_factory=MemoryFileSystem)
    storage: Storage | None = None
    raft: Raft | None = None  # None while down
    applied: list[Entry] = field(default_factory=list)  # the state machine
    read_states: list[ReadState] = field(default_factory=list)
    pending: deque[Pending] = field(default_factory=deque)  # Readies taken, not yet advanced
    synced_commit: int = 0  # the commit index of the hard state last fsynced

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
        self.early_send = False  # leaders send while persisting (dissertation §10.2.1)

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
        self.checker.on_persisted(node_id, storage.entries(), meta.term)
        if node.bootstrap and storage.hard_state.term == 0 and meta.index == 0:
            meta = SnapshotMeta(0, 0, node.bootstrap)  # a new cluster (docs/design.md §4)
        node.raft = Raft(
            node_id, self.config, random.Random(f"{node_id}/{self.rng.random()}"),
            hard_state=storage.hard_state, snapshot=meta, entries=storage.entries(),
            applied=node.applied_index,
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
        node.raft = node.storage = None
        node.pending.clear()
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

    def compact(self, node_id: str, index: int | None = None) -> None:
        """The driver's part of a snapshot (docs/design.md §3): store the state machine at
        `index` (default: applied), then tell the core."""
        node, raft = self.nodes[node_id], self.raft(node_id)
        index = raft.applied if index is None else index
        term = raft.term_at(index)
        assert term is not None and node.storage is not None
        data = encode_entries(node.applied[:index])  # the state machine holds 1..applied
        node.storage.save_snapshot(Snapshot(SnapshotMeta(index, term, raft.conf_at(index)), data))
        raft.compact(index, term)
        self.note(f"{node_id} compacts to {index} (term {term})")

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
        """The driver sends its latest stored snapshot's data with SNAPSHOT (None: it has
        none to send)."""
        if m.type is not MT.SNAPSHOT or (m.snapshot is not None and m.snapshot.data):
            return m
        storage = self.nodes[m.frm].storage
        stored = None if storage is None else storage.load_snapshot()
        return None if stored is None else replace(m, snapshot=stored)

    def handle_ready(self, node: SimNode, crash_at: str | None = None) -> Ready | None:
        """One Ready, handled in the contract's order; crash at `crash_at` (one of
        CRASH_POINTS) if given. Returns the Ready, or None if the node crashed."""
        pending = self.begin_ready(node)
        if crash_at == "ready":
            self.crash(node.id)
            return None
        return pending.rd if self.finish_ready(node, pending, crash_at) else None

    def begin_ready(self, node: SimNode) -> Pending:
        """Take a Ready. A leader whose term and vote are durable already sends (§10.2.1:
        it counts its own copy only once `advance()`d); the rest waits for `finish_ready`.
        Until then the node may take more input (and, pipelining, one more Ready)."""
        raft = node.raft
        assert raft is not None and node.storage is not None
        self.checker.observe(node.id, raft)
        rd = raft.ready()
        prev_term = self.checker.on_ready(node.id, raft, rd)
        durable = node.storage.hard_state
        early = self.early_send and raft.role is Role.LEADER and (
            (raft.term, raft.vote) == (durable.term, durable.vote))
        if early:
            self.transmit(node, rd.messages)
        pending = Pending(rd, early, prev_term)
        node.pending.append(pending)
        return pending

    def finish_ready(self, node: SimNode, pending: Pending, crash_at: str | None = None) -> bool:
        """Persist, send, apply and advance the oldest Ready taken (`pending`). False if
        the node crashed (at `crash_at`)."""
        raft = node.raft
        assert raft is not None and node.pending[0] is pending
        rd = pending.rd
        if not self._persist(node, rd, crash_at == "persist") or crash_at == "persisted":
            self.crash(node.id)
            return False
        node.pending.popleft()
        self.checker.on_persisted(node.id, rd.entries, pending.prev_term)
        if not pending.sent:
            self.transmit(node, rd.messages)
        if crash_at == "sent":
            self.crash(node.id)
            return False
        self._apply(node, rd)
        if crash_at == "applied":
            self.crash(node.id)
            return False
        raft.advance(rd)
        if not node.pending and raft.snapshot_meta.index <= raft.applied:
            raft._log.check()  # the log's cursors, unless a snapshot is still being installed
        self.checker.observe(node.id, raft)
        return True

    def _persist(self, node: SimNode, rd: Ready, crash: bool) -> bool:
        """Step 1: snapshot, entries and hard state with one fsync. False: crashed."""
        storage = node.storage
        assert storage is not None
        if crash:  # fail at one of the file system operations (or just after the last)
            node.fs.crash_after(self.rng.randrange(12))
        try:
            if rd.snapshot is not None:
                storage.save_snapshot(rd.snapshot)
            if rd.entries:
                storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            storage.sync()
        except SimulatedCrash:
            self.note(f"{node.id} crashes while persisting")
            return False
        node.synced_commit = storage.hard_state.commit
        return not crash

    def _apply(self, node: SimNode, rd: Ready) -> None:
        """Step 3 (and 4): restore the snapshot, apply committed entries, serve reads."""
        if rd.snapshot is not None:
            entries = decode_entries(rd.snapshot.data)
            self.checker.on_restore(node.id, rd.snapshot.meta, entries)
            node.applied = entries
        if rd.committed_entries:
            self.checker.on_apply(node.id, node.applied_index, rd.committed_entries)
            node.applied.extend(rd.committed_entries)
        for rs in rd.read_states:
            self.checker.read_answered(node.id, rs)
            node.read_states.append(rs)

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
