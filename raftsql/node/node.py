"""The asyncio driver: one loop per node that runs the pure Raft core.

It turns the clock's time into ticks, steps incoming messages, carries out each Ready's
effects in the one order (raftsql/raft/order.py), hands committed entries to the state
machine in log order, and completes waiting requests. All calls into the core happen on the
loop task between `advance()` and the next `ready()`; everything else (requests, peers,
timers) only queues work and wakes it.

Where the work runs (measured in docs/performance.md): a thread hop costs 100-300 us on a
small machine, more than most of the work it would move, so only what can take long leaves
the loop. The leader fsyncs on its persist thread (its loop parses the next requests
meanwhile); other nodes fsync on the loop, having nothing else to do first. Committed
entries and queries run on the loop when done within a 2 ms budget, else on threads.

The node wires its collaborators, each given only what it uses: the address book
(addresses.py), membership and joining (membership.py), applying and snapshots (applier.py),
reads (reads.py), proposals (proposals.py), data beside the log (payloads.py), the persist
thread (persist.py), deadlines and the applied index (waiting.py), the clock (clock.py).
It knows nothing of what its state machine stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
from collections.abc import Callable
from time import perf_counter
from typing import Any

from raftsql.errors import (
    ClusterError,
    LeadershipLostError,
    NodeStoppedError,
    NotLeaderError,
    RaftSQLError,
)
from raftsql.node.addresses import AddressBook, Member, addr_context
from raftsql.node.applier import Applier, StateMachine, Work
from raftsql.node.clock import Clock, RealClock
from raftsql.node.config import NodeConfig, PeerTransport
from raftsql.node.membership import Membership
from raftsql.node.metrics import NodeMetrics
from raftsql.node.payloads import MSG_BYTES, Landing, Proposing, outgoing
from raftsql.node.persist import PersistThread
from raftsql.node.proposals import Proposals
from raftsql.node.reads import Reads
from raftsql.node.snapshots import SnapshotReceiver, sent_from
from raftsql.node.waiting import Applied, Deadlines
from raftsql.raft.core import Raft
from raftsql.raft.messages import (
    ConfChange,
    Config,
    ConfState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from raftsql.raft.order import Apply, Persist, ReadyOrder, Send, Serve, Synced
from raftsql.storage import Storage, attach_snapshot, trailing_base, write_persist
from raftsql.storage.lock import lock_data_dir
from raftsql.storage.log import SNAPSHOT_NAME, FileSystem
from raftsql.storage.payloads import Payloads
from raftsql.storage.payloads import size as entry_size
from raftsql.storage.snapshots import SnapshotFiles

log = logging.getLogger("raftsql.node")

_LEADER_MESSAGES = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
# Trailing entries kept before a snapshot hold at most this much data: they are in memory, and
# a follower further behind than that (big writes, a load) is better served by the snapshot.
TRAILING_BYTES = 8 << 20


class Node:
    """A raftsql node: the Raft core, its durable log, a transport and a state machine.

    Without a `transport`, the node makes the WebSocket one and serves it on its Raft
    address itself; `raftsql.server` passes its own, to serve it beside the HTTP API. The
    simulator gives its `clock`, `rng` (election timeouts) and `log_fs` (the Raft log's)."""

    def __init__(self, config: NodeConfig, state_machine: StateMachine,
                 transport: PeerTransport | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None, log_fs: FileSystem | None = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.api_url = config.api_url
        self.database = state_machine
        self._own_transport = transport is None
        if transport is None:
            from raftsql.transport.websocket import Transport

            transport = Transport(self.node_id, secret=config.cluster_secret,
                                  api_url=self.api_url)
        self._transport, self._clock = transport, clock or RealClock()
        self._rng, self._log_fs = rng or random.Random(), log_fs
        self._raft: Raft | None = None
        self._storage: Storage | None = None
        self._order: ReadyOrder | None = None  # what of a Ready to do when (raft/order.py)
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._inbox: list[Message] = []
        self._calls: list[Callable[[Raft], None]] = []
        self._ticks = 0
        self._last_contact: float | None = None
        self._stopped = asyncio.Event()
        self._unlock: Callable[[], None] = lambda: None  # the data directory's lock
        self._failed = asyncio.Event()
        self.failure: Exception | None = None
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self._leader_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._persist = PersistThread(f"persist-{self.node_id}")
        self._proposals = Proposals()
        self._deadlines = Deadlines(self._clock)
        self._applied = Applied()
        self.book = AddressBook(self.node_id, config.advertised_raft_addr, self.api_url,
                                os.path.join(config.data_dir, "peers.json"))
        self._membership = Membership(
            self.book, transport, self._clock, change=self._change_conf,
            conf=lambda: self.conf, leader=lambda: self.leader_id, log=self._log)
        self.metrics = NodeMetrics()
        self._files = SnapshotFiles(os.path.join(config.data_dir, "snapshots"))
        self._payloads = Payloads(os.path.join(config.data_dir, "raft", "payloads"))
        self._landing = Landing(self._payloads, self._deliver_admitted, self._fail, self.node_id)
        self._proposing = Proposing(self._payloads)
        self._receiver = SnapshotReceiver(self._files, transport.fetch_snapshot,
                                          self._deliver_admitted, self.node_id)
        self._applier = Applier(
            state_machine, name=self.node_id, files=self._files, book=self.book,
            threshold=config.snapshot_threshold,
            threshold_bytes=config.snapshot_threshold_bytes, applied=self._applied,
            on_applied=self._proposals.complete, save_snapshot=self._save_snapshot,
            fail=self._fail, metrics=self.metrics, payloads=self._payloads)
        self.metrics.watch(lambda: self.status()["raft"])
        self._reads = Reads(state_machine, name=self.node_id, call=self._call,
                            not_leader=self._not_leader, deadlines=self._deadlines,
                            applied=self._applied)

    # ---- public state -------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied.index

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def term(self) -> int:
        return self._raft.term if self._raft else 0

    @property
    def commit_index(self) -> int:
        return self._raft.commit_index if self._raft else 0

    @property
    def conf(self) -> ConfState:
        return self._raft.conf if self._raft else ConfState()

    @property
    def removed(self) -> bool:
        """This node is no longer in the cluster's membership (as far as its log says)."""
        members = self.conf.members()
        return bool(members) and self.node_id not in members

    @property
    def member_count(self) -> int:
        return len(self.conf.voters)

    @property
    def quorum_size(self) -> int:
        return self.member_count // 2 + 1

    def leader_api_url(self) -> str | None:
        return None if self.leader_id is None else self.book.api_url_of(self.leader_id)

    def members(self) -> list[Member]:
        return self.book.members(self.conf)

    def last_contact(self) -> float | None:
        """Seconds since this node last heard from its leader (0 on the leader)."""
        if self.is_leader:
            return 0.0
        if self._last_contact is None:
            return None
        return self._clock.now() - self._last_contact

    def status(self) -> dict[str, Any]:
        raft = self._raft
        return {
            "node_id": self.node_id,
            "addr": self.book.raft_addr,
            "api_addr": self.api_url,
            "leader": {"node_id": self.leader_id or "",
                       "addr": self.book.raft_addr_of(self.leader_id)},
            "ready": self.leader_id is not None,
            "raft": {
                "state": self.role.value if self.role is not Role.PRE_CANDIDATE else "Follower",
                "term": self.term,
                "commit_index": self.commit_index,
                "applied_index": self.applied_index,
                "first_log_index": raft.first_index if raft else 0,
                "last_log_index": raft.last_index if raft else 0,
                "snapshot_index": self._applier.snapshot_index,
                "snapshot_time": self._applier.snapshot_time,
                "voters": len(self.conf.voters),
                "non_voters": len(self.conf.learners),
                "quorum": self.quorum_size,
                **({"lag": self._lag()} if self.is_leader else {}),
            },
            "nodes": [{"id": m.id, "api_addr": m.api_url, "addr": m.raft_addr, "voter": m.voter}
                      for m in self.members()],
        }

    def _lag(self) -> dict[str, int]:
        """On the leader: how many entries each follower's log is behind its own."""
        if self._raft is None:
            return {}
        last = self._raft.last_index
        return {node: last - match for node, (match, _) in self._raft.progress().items()
                if node != self.node_id}

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._unlock = lock_data_dir(self.config.data_dir)
        raft_dir = os.path.join(self.config.data_dir, "raft")
        storage = self._storage = await self._persist.run(Storage, raft_dir, self._log_fs)
        await self._persist.run(self._payloads.open, storage.entries())
        hs = storage.hard_state
        self._order = ReadyOrder(hs)
        # No durable term and no snapshot: the bootstrap (or join) never completed. A crash
        # inside the first write can leave a prefix of the bootstrap entries without the
        # hard state: the core writes them again (docs/design.md §4).
        fresh = hs.term == 0 and storage.snapshot_meta.index == 0
        self.book.load()
        await self._applier.recover(storage)
        if storage.snapshot_meta.index:
            with contextlib.suppress(OSError):  # when the stored snapshot was written
                self._applier.snapshot_time = os.path.getmtime(
                    os.path.join(raft_dir, SNAPSHOT_NAME))
        self._raft = self._make_raft(storage, bootstrap=fresh and not self.config.join)
        transport = self._transport
        transport.bind(self._deliver, attach=functools.partial(self._attach, storage),
                       snapshot_file=self._snapshot_file, on_peer_api=self.book.note_api_url)
        transport.on_rpc("join", self._membership.on_join)
        transport.on_rpc("info", self._membership.on_info)
        self.book.subscribe(transport.set_peer)
        await transport.start()
        if self._own_transport:
            await transport.listen(self.config.advertised_raft_addr)
        self._spawn(self._run(), "raft")
        self._spawn(self._ticker(), "tick")
        self._spawn(self._membership.learn_api_urls(), "info")
        if self.config.join:
            # Also on a restart: a member that moved is re-added with its new addresses, and a
            # read replica started without --non-voter is promoted (Membership.add).
            self._spawn(self._membership.join(self.config.join, not self.config.non_voter), "join")
        if self.conf.voters == (self.node_id,):
            self._call(lambda raft: raft.campaign())  # a single voter needs no election timeout
        self._log("started", voters=list(self.conf.voters), applied=self.applied_index)

    async def stop(self, transfer: bool = True) -> None:
        """Stop cleanly; a leader first hands leadership to another voter when it can."""
        if transfer and self.is_leader and len(self.conf.voters) > 1 and self.failure is None:
            with contextlib.suppress(RaftSQLError, asyncio.TimeoutError):
                await self.transfer_leadership(None, timeout=2.0)
        self._halt(NodeStoppedError())
        self._receiver.close()
        self._landing.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._transport.close()
        self._applier.close()
        self._persist.shutdown()
        self._reads.close()
        self.database.close()
        if self._storage is not None:
            unsynced = self._order.unsynced if self._order is not None else None
            if unsynced is not None and self.failure is None:
                self._storage.set_hard_state(unsynced)
            self._storage.close()
        self._unlock()
        self._stopped.set()
        self._log("stopped")

    async def wait_failed(self) -> None:
        """Returns if the node hits a fatal error (its `failure`); it then serves nothing."""
        await self._failed.wait()

    def _halt(self, exc: Exception) -> None:
        self._applier.halt()
        for task in self._tasks:
            task.cancel()
        self._proposals.fail_all(exc)
        self._reads.fail(exc)
        self._applied.fail(exc)

    def _fail(self, e: BaseException) -> None:
        """A storage or state machine failure is fatal: never retry, never go on."""
        if self.failure is not None:
            return
        log.critical("node=%s fatal error, stopping: %r", self.node_id, e, exc_info=e)
        self.failure = e if isinstance(e, Exception) else RaftSQLError(repr(e))
        self._halt(NodeStoppedError("node failed"))
        self._failed.set()

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(
            coro, name=f"{name}-{self.node_id}"))

    # ---- requests -----------------------------------------------------------------

    async def propose(self, data: bytes, timeout: float = 30.0) -> tuple[Any, int]:
        """Replicate `data`; return the state machine's result and the entry's index."""
        if self.is_leader:
            self.metrics.proposals.inc()
            if self._proposing.waits(data):  # big data is kept beside the log, not in it
                data = await self._proposing.prepare(data)
        result: tuple[Any, int] = await self._proposal(lambda raft: raft.propose(data), timeout,
                                                       None)
        return result

    async def read_barrier(self, linearizable: bool, timeout: float = 10.0) -> None:
        """This node leads (else NotLeaderError); if `linearizable`, it has also confirmed
        with a quorum that it still does (ReadIndex) and applied everything committed
        before the call."""
        if not self.is_leader:
            raise self._not_leader()
        if linearizable:
            await self._reads.barrier(timeout)

    async def query(self, *request: Any) -> Any:
        """Run a read on the state machine's read side (its `query(*request)`)."""
        return await self._reads.query(*request)

    async def snapshot(self, trailing: int | None = None) -> bool:
        """Snapshot the state machine and compact the log now, keeping `trailing` entries
        before it (None: --trailing-logs); False if the latest snapshot already holds
        everything applied."""
        return await self._applier.snapshot_now(trailing)

    async def boot(self, path: str) -> str | None:
        """Replace the state machine's state with the file at `path`, bypassing the log, then
        snapshot (rqlite's /boot): a single-node cluster only, where no other node holds the
        state it replaces. Why the file was refused, or None."""
        if not self.is_leader:
            raise self._not_leader()
        conf = self.conf
        if conf.voters != (self.node_id,) or conf.learners:
            raise ClusterError(f"boot is for a single-node cluster, and this one has "
                               f"{len(conf.members())} members: load the file through the log "
                               "with POST /db/load")
        return await self._applier.boot(path)

    async def remove_member(self, node_id: str, timeout: float = 10.0) -> None:
        await self._membership.remove(node_id, timeout)

    async def transfer_leadership(self, target: str | None = None, timeout: float = 5.0) -> None:
        if not self.is_leader:
            raise self._not_leader()
        if target is not None and target not in self.conf.voters:
            raise ClusterError(f"node {target} is not a voter")
        ok: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._call(lambda raft: ok.set_result(raft.transfer_leadership(target)))
        if not await ok:
            raise ClusterError("leadership transfer refused", 503)
        moved = asyncio.get_running_loop().create_future()
        self._leader_waiters.append((lambda: self.leader_id not in (self.node_id, None) and (
            target is None or self.leader_id == target), moved))
        await self._deadlines.add(moved, timeout)

    async def _change_conf(self, cc: ConfChange, timeout: float) -> None:
        refused = ClusterError("membership change refused: another change is in progress, or "
                               "the leader has not yet committed an entry of its term", 503)
        await self._proposal(lambda raft: raft.propose_conf_change(cc), timeout, refused)

    async def _proposal(self, propose: Callable[[Raft], int | None], timeout: float,
                        refused: Exception | None) -> Any:
        """Propose on the loop (None from the core: not leader, or `refused`); wait for the
        entry to be applied."""
        if not self.is_leader:
            raise self._not_leader()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def run(raft: Raft) -> None:
            index = propose(raft) if self.is_leader else None
            if index is not None:
                self._proposals.add(index, raft.term, fut)
            elif not fut.done():
                fut.set_exception(refused if refused is not None and self.is_leader
                                  else self._not_leader())

        self._call(run)
        return await self._deadlines.add(fut, timeout)

    # ---- the Raft loop ------------------------------------------------------------

    def _call(self, fn: Callable[[Raft], None]) -> None:
        """Run `fn(raft)` on the loop, between two Readies (the only place the core is used)."""
        self._calls.append(fn)
        self._wake.set()

    def _deliver(self, messages: list[Message]) -> None:
        leader = self.leader_id
        for m in messages:
            if m.frm == leader or m.type in _LEADER_MESSAGES:
                self._last_contact = self._clock.now()
            if m.type is MessageType.SNAPSHOT and not self._receiver.admit(m):
                continue  # its state is being fetched; delivered once it is here
            if self._landing.offer(m):
                continue  # its entries' data is being stored; delivered once it is
            self._inbox.append(m)
        self._wake.set()

    def _deliver_admitted(self, m: Message) -> None:
        self._inbox.append(m)
        self._wake.set()

    def _attach(self, storage: Storage, m: Message) -> Message | None:
        """A message leaving: a SNAPSHOT gets the stored snapshot, fetched from this node;
        an APPEND the data its entries keep beside the log."""
        if m.type is not MessageType.SNAPSHOT:
            return outgoing(self._payloads, m, storage.log_base.index, self.node_id)
        attached = attach_snapshot(storage, m)
        return None if attached is None else sent_from(attached, self.book.raft_addr)

    def _snapshot_file(self, index: int, term: int) -> str | None:
        """The state of snapshot (index, term), for a follower fetching it."""
        return self._files.path(index, term) if self._files.has(index, term) else None

    async def _ticker(self) -> None:
        interval = self.config.heartbeat_ms / 1000
        while True:
            await self._clock.sleep(interval)
            self._ticks += 1
            self._wake.set()
            self._deadlines.expire()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fail(e)

    async def _loop(self) -> None:
        raft = self._raft
        assert raft is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._step_inputs(raft)
            if raft.has_ready():
                rd = raft.ready()
                await self._handle_ready(rd)
                raft.advance(rd)
                self._wake.set()

    def _step_inputs(self, raft: Raft) -> None:
        inbox, self._inbox = self._inbox, []
        for m in inbox:
            try:
                raft.step(m)
            except Exception:  # a peer's message must never kill the node
                log.exception("node=%s dropping message %s from %s", self.node_id, m.type, m.frm)
        ticks, self._ticks = self._ticks, 0
        for _ in range(ticks):
            raft.tick()
        calls, self._calls = self._calls, []
        for fn in calls:
            fn(raft)

    async def _handle_ready(self, rd: Ready) -> None:
        """Carry out the Ready's effects, in the one order (raftsql/raft/order.py)."""
        assert self._order is not None
        leads = (rd.soft_state.role if rd.soft_state else self.role) is Role.LEADER
        writing: asyncio.Future[Any] | None = None
        for effect in self._order.effects(rd, leads):
            if isinstance(effect, Send):
                self._transport.send(effect.messages)
            elif isinstance(effect, Apply):
                if effect.snapshot is not None:
                    self._applier.queue(Work.RESTORE, effect.snapshot)
                if effect.entries:
                    self.book.note_conf_entries(effect.entries)
                    self._applier.queue(Work.APPLY, effect.entries)
            elif isinstance(effect, Persist):
                writing = self._start_persist(effect)
            elif isinstance(effect, Synced):
                if writing is not None:
                    await writing
                self.book.note_conf_entries(effect.persist.entries)
            elif isinstance(effect, Serve):
                self._reads.on_read_states(effect.read_states)
            else:
                self._on_soft_state(effect.soft_state.role, effect.soft_state.leader_id)

    def _start_persist(self, persist: Persist) -> asyncio.Future[Any] | None:
        """A leader writes on its persist thread: the appends it sends meanwhile wake the
        followers, which would otherwise compete with it for the CPU and the disk. Any other
        node writes on the loop itself (it can do nothing before the fsync anyway, and a
        thread hop costs more than the fsync on a small machine: docs/performance.md), except
        a snapshot, or a write queued behind one, which goes through the thread, in order.
        None: already durable."""
        storage = self._storage
        assert storage is not None
        if self.is_leader or persist.snapshot is not None or self._persist.busy:
            return self._persist.submit(self._write_persist, storage, persist)
        self._write_persist(storage, persist)
        return None

    def _write_persist(self, storage: Storage, persist: Persist) -> None:
        start = perf_counter()
        write_persist(storage, persist)
        self.metrics.fsync.observe(perf_counter() - start)
        self._payloads.forget(storage.take_dropped())

    def _on_soft_state(self, role: Role, leader_id: str | None) -> None:
        was_leader = self.is_leader
        if role != self.role or leader_id != self.leader_id:
            self._log("state", role=role.value, leader=leader_id)
        if leader_id is not None and leader_id != self.leader_id:
            self.metrics.leader_changes.inc()
        self.role, self.leader_id = role, leader_id
        if leader_id is not None and leader_id != self.node_id:
            self._last_contact = self._clock.now()
        if was_leader and role is not Role.LEADER:
            exc = LeadershipLostError()
            self._proposals.fail_uncommitted(self.commit_index, exc)
            self._reads.fail(exc)
        waiting, self._leader_waiters = self._leader_waiters, []
        for done, fut in waiting:
            if fut.done():
                continue
            if done():
                fut.set_result(None)
            else:
                self._leader_waiters.append((done, fut))

    async def _save_snapshot(self, index: int, term: int, data: bytes,
                             trailing: int | None) -> None:
        """The applier saved the state machine at `index`: store it, compact the log up to
        `trailing` entries before it (None: --trailing-logs)."""
        raft, storage = self._raft, self._storage
        assert raft is not None and storage is not None
        keep = self.config.trailing_logs if trailing is None else trailing
        base = trailing_base(raft, index, keep, TRAILING_BYTES)
        if base.index > index:
            return  # the core installed a newer snapshot from the leader meanwhile
        meta = SnapshotMeta(index, term, raft.conf_at(index))
        await self._persist.run(self._compact, storage, Snapshot(meta, data), base)
        self._call(lambda raft: raft.compact(base.index, base.term))
        self._log("snapshot taken", index=index, log_from=base.index + 1)

    def _compact(self, storage: Storage, snapshot: Snapshot, base: SnapshotMeta) -> None:
        storage.save_snapshot(snapshot, base)
        self._payloads.forget(storage.take_dropped(), log=storage.entries())

    # ---- helpers ------------------------------------------------------------------

    def _make_raft(self, storage: Storage, bootstrap: bool) -> Raft:
        """The core, from what storage holds; `bootstrap`: as an initial member of a new
        cluster (its membership entries carry the members' Raft addresses)."""
        ticks = max(2, round(self.config.election_ms / self.config.heartbeat_ms))
        entries = storage.entries()
        self.book.note_conf_entries(entries)
        initial, context = None, None
        if bootstrap:
            members = self.config.initial_cluster or {self.node_id: self.book.raft_addr}
            if self.node_id not in members:
                raise ClusterError(f"--initial-cluster does not list this node ({self.node_id})")
            initial = ConfState(voters=tuple(sorted(members)))
            context = {i: addr_context(addr, "") for i, addr in members.items()}
        return Raft(
            self.node_id, Config(election_ticks=ticks, max_bytes_per_msg=MSG_BYTES,
                                 entry_size=entry_size), self._rng,
            hard_state=storage.hard_state, snapshot=storage.log_base,
            entries=entries, applied=self.applied_index, initial=initial,
            initial_context=context,
        )

    def _not_leader(self) -> NotLeaderError:
        if self.leader_id is None or self.leader_id == self.node_id:
            return NotLeaderError(None, None)
        return NotLeaderError(self.leader_id, self.leader_api_url())

    def _log(self, event: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        log.info("node=%s term=%d %s %s", self.node_id, self.term, event, extra)
