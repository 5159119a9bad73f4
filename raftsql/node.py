"""The asyncio driver: one loop per node that runs the pure Raft core.

It turns wall-clock time into ticks, steps incoming messages, persists each Ready (one
fsync per batch), sends messages, hands committed entries to the state machine on a
thread of their own, and completes waiting requests. All calls into the core happen on
the loop task between `advance()` and the next `ready()`; everything else (requests,
peers, timers) only queues work and wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from raftsql.command import Command, StatementResult
from raftsql.errors import ClusterError, LeadershipLostError, NotLeaderError, RaftSQLError
from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from raftsql.raft.storage import Storage
from raftsql.transport import Transport

log = logging.getLogger("raftsql.node")


class StateMachine(Protocol):
    """What the driver replicates. Called only from the apply thread, in log order."""

    def applied_index(self) -> int: ...

    def apply(self, entries: list[tuple[int, bytes]]) -> list[Any]: ...

    def mark_applied(self, index: int) -> None: ...

    def snapshot(self, path: str) -> int: ...

    def restore(self, path: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class NodeConfig:
    node_id: str = "n1"
    data_dir: str = "raftsql-data"
    http_addr: str = "127.0.0.1:4001"
    raft_addr: str | None = None  # where peers reach this node; default: the HTTP address
    initial_cluster: dict[str, str] = field(default_factory=dict)  # id -> raft addr
    join: list[str] = field(default_factory=list)
    non_voter: bool = False
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_threshold: int = 8192
    cluster_secret: str | None = None

    @property
    def advertised_raft_addr(self) -> str:
        return self.raft_addr or self.http_addr

    @property
    def api_url(self) -> str:
        return f"http://{self.http_addr}"


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    api_url: str
    raft_addr: str
    voter: bool


class _Waiters:
    """Futures keyed by log index, completed as the applied index passes them."""

    def __init__(self) -> None:
        self._items: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, index: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._items.append((index, fut))
        return fut

    def release(self, applied: int) -> None:
        keep = []
        for index, fut in self._items:
            if index <= applied:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((index, fut))
        self._items = keep

    def fail(self, exc: Exception) -> None:
        for _, fut in self._items:
            if not fut.done():
                fut.set_exception(exc)
        self._items = []


def _addr_context(raft_addr: str, api_url: str) -> bytes:
    return orjson.dumps({"raft_addr": raft_addr, "api_url": api_url})


class Node:
    """A raftsql node: the Raft core, its durable log, a transport and a state machine.

    `api` builds the client-facing aiohttp application (the rqlite API for `raftsql
    serve`); the Raft routes are added to it, or served alone when `api` is None.
    """

    def __init__(
        self,
        config: NodeConfig,
        state_machine: StateMachine | None = None,
        api: Callable[[Node], web.Application] | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.api_url = config.api_url
        self._sm = state_machine
        self._api = api
        self._raft: Raft | None = None
        self._storage: Storage | None = None
        self._transport: Transport | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._persist_pool = ThreadPoolExecutor(1, thread_name_prefix=f"persist-{self.node_id}")
        self._apply_pool = ThreadPoolExecutor(1, thread_name_prefix=f"apply-{self.node_id}")
        self._wake = asyncio.Event()
        self._inbox: list[Message] = []
        self._calls: list[Callable[[], None]] = []
        self._ticks = 0
        self._apply_queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_seq = 0
        self._applied_waiters = _Waiters()
        self._peers: dict[str, tuple[str, str]] = {}  # id -> (raft_addr, api_url)
        self._peers_path = os.path.join(config.data_dir, "peers.json")
        self._last_contact: float | None = None
        self._snapshot_index = 0
        self._applied_term = 0
        self._stopped = asyncio.Event()
        self._failed = asyncio.Event()
        self.failure: Exception | None = None
        self.applied_index = 0
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None

    # ---- public state -------------------------------------------------------------

    @property
    def database(self) -> Any:
        return self._sm

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
    def member_count(self) -> int:
        return len(self.conf.voters)

    @property
    def quorum_size(self) -> int:
        return self.member_count // 2 + 1

    @property
    def ready(self) -> bool:
        return self.leader_id is not None

    def leader_api_url(self) -> str | None:
        if self.leader_id is None:
            return None
        if self.leader_id == self.node_id:
            return self.api_url
        peer = self._peers.get(self.leader_id)
        return peer[1] if peer else None

    def members(self) -> list[Member]:
        conf = self.conf
        out = []
        for node_id in conf.voters + conf.learners:
            if node_id == self.node_id:
                raft_addr, api_url = self.config.advertised_raft_addr, self.api_url
            else:
                raft_addr, api_url = self._peers.get(node_id, ("", ""))
            out.append(Member(node_id, api_url, raft_addr, node_id in conf.voters))
        return out

    def last_contact(self) -> float | None:
        """Seconds since this node last heard from its leader (0 on the leader)."""
        if self.is_leader:
            return 0.0
        if self._last_contact is None:
            return None
        return time.monotonic() - self._last_contact

    def status(self) -> dict[str, Any]:
        raft = self._raft
        leader_addr = ""
        if self.leader_id == self.node_id:
            leader_addr = self.config.advertised_raft_addr
        elif self.leader_id in self._peers:
            leader_addr = self._peers[self.leader_id][0]
        return {
            "node_id": self.node_id,
            "addr": self.config.advertised_raft_addr,
            "api_addr": self.api_url,
            "leader": {"node_id": self.leader_id or "", "addr": leader_addr},
            "ready": self.ready,
            "raft": {
                "state": self.role.value if self.role is not Role.PRE_CANDIDATE else "Follower",
                "term": self.term,
                "commit_index": self.commit_index,
                "applied_index": self.applied_index,
                "first_log_index": raft.first_index if raft else 0,
                "last_log_index": raft.last_index if raft else 0,
                "snapshot_index": self._snapshot_index,
                "voters": len(self.conf.voters),
                "non_voters": len(self.conf.learners),
                "quorum": self.quorum_size,
            },
            "nodes": [_member_dict(m) for m in self.members()],
        }

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        if self._sm is None:
            from raftsql.sqlite import Database

            self._sm = Database(os.path.join(self.config.data_dir, "db.sqlite"))
        self._storage = await self._in_persist(Storage, os.path.join(self.config.data_dir, "raft"))
        hs = self._storage.hard_state
        self._persisted_vote = (hs.term, hs.vote)
        fresh = self._is_fresh()
        if fresh:
            await self._bootstrap()
        self._load_peers()
        await self._recover_state_machine()
        self._raft = self._make_raft()
        self._transport = Transport(
            self.node_id, self._deliver, secret=self.config.cluster_secret,
            attach_snapshot=self._attach_snapshot,
        )
        self._transport.on_rpc("join", self._on_join)
        self._transport.on_rpc("info", self._on_info)
        for node_id, (raft_addr, _) in self._peers.items():
            self._transport.set_peer(node_id, raft_addr)
        await self._transport.start()
        await self._listen()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"raft-{self.node_id}"),
            loop.create_task(self._apply_loop(), name=f"apply-{self.node_id}"),
            loop.create_task(self._ticker(), name=f"tick-{self.node_id}"),
            loop.create_task(self._learn_api_urls(), name=f"info-{self.node_id}"),
        ]
        if fresh and self.config.join:
            self._tasks.append(loop.create_task(self._join_cluster(), name="join"))
        if self.conf.voters == (self.node_id,):
            self._call(self._raft.campaign)  # a single-voter cluster needs no election timeout
        self._log("started", voters=list(self.conf.voters), applied=self.applied_index)

    async def stop(self, transfer: bool = True) -> None:
        """Stop cleanly; a leader first hands leadership to another voter when it can."""
        if transfer and self.is_leader and len(self.conf.voters) > 1:
            with contextlib.suppress(RaftSQLError, asyncio.TimeoutError):
                await self.transfer_leadership(None, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_waiters(LeadershipLostError("node stopped"))
        if self._transport:
            await self._transport.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        self._apply_pool.shutdown(wait=True)
        self._persist_pool.shutdown(wait=True)
        if self._sm is not None:
            self._sm.close()
        if self._storage is not None:
            self._storage.close()
        self._stopped.set()
        self._log("stopped")

    async def wait_failed(self) -> None:
        """Returns if the node hits a fatal error (its `failure`); it then serves nothing."""
        await self._failed.wait()

    # ---- requests -----------------------------------------------------------------

    async def propose(self, data: bytes, timeout: float = 30.0) -> tuple[Any, int]:
        """Replicate `data`; return the state machine's result and the entry's index."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        index_fut: asyncio.Future[int] = loop.create_future()

        def run() -> None:
            assert self._raft is not None
            index = self._raft.propose(data) if self.is_leader else None
            if index is None:
                self._set_exception(index_fut, self._not_leader())
                return
            self._proposals[index] = (self._raft.term, fut)
            index_fut.set_result(index)

        self._call(run)
        async with asyncio.timeout(timeout):
            index = await index_fut
            return await fut, index

    async def execute(
        self, statements: list[Any], *, transaction: bool = False, op: str = "execute",
        timeout: float = 30.0,
    ) -> tuple[list[StatementResult], int]:
        # The proposing leader fixes the entry's time and seed, so apply is deterministic.
        command = Command(op, statements, transaction, int(time.time() * 1000), random.getrandbits(63))
        result, index = await self.propose(command.encode(), timeout)
        if isinstance(result, Exception):
            raise result
        return result, index

    async def read_barrier(self, level: str, timeout: float = 10.0) -> None:
        """weak: this node believes it leads; linearizable: ReadIndex, then wait for apply."""
        if not self.is_leader:
            raise self._not_leader()
        if level == "weak":
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")

        def run() -> None:
            assert self._raft is not None
            if not self._raft.read_index(ctx):
                self._set_exception(fut, self._not_leader())
            else:
                self._reads[ctx] = fut

        self._call(run)
        async with asyncio.timeout(timeout):
            index = await fut
            if self.applied_index < index:
                await self._applied_waiters.add(index)

    async def query(self, statements: list[Any], *, transaction: bool = False) -> list[StatementResult]:
        assert self._sm is not None
        query = self._sm.query  # type: ignore[attr-defined]
        return await asyncio.get_running_loop().run_in_executor(None, query, statements, transaction)

    async def add_member(
        self, node_id: str, raft_addr: str, api_url: str, voter: bool = True, timeout: float = 10.0
    ) -> None:
        current = self.conf
        if self._peers.get(node_id) == (raft_addr, api_url) and (
            node_id in current.voters if voter else node_id in current.learners
        ):
            return  # joins are idempotent
        kind = ConfChangeType.ADD_VOTER if voter else ConfChangeType.ADD_LEARNER
        self._set_peer(node_id, raft_addr, api_url)
        await self._change_conf(ConfChange(kind, node_id, _addr_context(raft_addr, api_url)), timeout)

    async def remove_member(self, node_id: str, timeout: float = 10.0) -> None:
        if node_id not in self.conf.members():
            raise ClusterError(f"node {node_id} is not a member of the cluster")
        await self._change_conf(ConfChange(ConfChangeType.REMOVE, node_id), timeout)

    async def transfer_leadership(self, target: str | None = None, timeout: float = 5.0) -> None:
        if not self.is_leader:
            raise self._not_leader()
        if target is not None and target not in self.conf.voters:
            raise ClusterError(f"node {target} is not a voter")
        ok = asyncio.get_running_loop().create_future()
        self._call(lambda: ok.set_result(self._raft.transfer_leadership(target)))  # type: ignore[union-attr]
        if not await ok:
            raise ClusterError("leadership transfer refused")
        async with asyncio.timeout(timeout):
            while self.leader_id in (self.node_id, None) or (target and self.leader_id != target):
                await asyncio.sleep(0.02)

    # ---- the Raft loop ------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the Raft loop, between two Readys (the only place the core is touched)."""
        self._calls.append(fn)
        self._wake.set()

    def _deliver(self, messages: list[Message]) -> None:
        leader = self.leader_id
        for m in messages:
            if m.frm == leader or m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
                self._last_contact = time.monotonic()
        self._inbox.extend(messages)
        self._wake.set()

    async def _ticker(self) -> None:
        interval = self.config.heartbeat_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._ticks += 1
            self._wake.set()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a storage failure is fatal: never retry, never go on
            log.critical("node=%s fatal error, stopping: %r", self.node_id, e, exc_info=True)
            self.failure = e
            self._fail_waiters(LeadershipLostError("node failed"))
            self._failed.set()

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
            fn()

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader_id)
        # A leader may send appends while it persists its own copy (Raft thesis §10.2.1), but
        # only when this Ready does not change its term or vote: those must be durable first.
        hs = rd.hard_state
        early, late = [], rd.messages
        if self.is_leader and (hs is None or (hs.term, hs.vote) == self._persisted_vote):
            early, late = rd.messages, []
        if early:
            self._send(early)
        if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            await self._in_persist(self._persist, rd)
            self._note_conf_entries(rd.entries)
        if late:
            self._send(late)
        if rd.snapshot is not None:
            self._apply_queue.put_nowait(("restore", rd.snapshot))
        if rd.committed_entries:
            self._note_conf_entries(rd.committed_entries)
            self._apply_queue.put_nowait(("apply", rd.committed_entries))
        for rs in rd.read_states:
            fut = self._reads.pop(rs.context, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)

    _persisted_vote: tuple[int, str | None] = (0, None)

    def _persist(self, rd: Ready) -> None:
        storage = self._storage
        assert storage is not None
        if rd.snapshot is not None:
            storage.save_snapshot(rd.snapshot)
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        storage.sync()
        if rd.hard_state is not None:
            self._persisted_vote = (rd.hard_state.term, rd.hard_state.vote)

    def _send(self, messages: list[Message]) -> None:
        assert self._transport is not None
        self._transport.send(messages)

    def _on_soft_state(self, role: Role, leader_id: str | None) -> None:
        was_leader = self.is_leader
        if role != self.role or leader_id != self.leader_id:
            self._log("state", role=role.value, leader=leader_id)
        self.role, self.leader_id = role, leader_id
        if leader_id is not None and leader_id != self.node_id:
            self._last_contact = time.monotonic()
        if was_leader and role is not Role.LEADER:
            self._fail_waiters(LeadershipLostError())

    def _fail_waiters(self, exc: Exception) -> None:
        for _, fut in self._proposals.values():
            self._set_exception(fut, exc)
        self._proposals.clear()
        for fut in self._reads.values():
            self._set_exception(fut, exc)
        self._reads.clear()

    # ---- applying -----------------------------------------------------------------

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            kind, payload = await self._apply_queue.get()
            if kind == "restore":
                await loop.run_in_executor(self._apply_pool, self._restore, payload)
                self._set_applied(payload.meta.index, payload.meta.term)
                continue
            entries: list[Entry] = list(payload)
            while not self._apply_queue.empty() and self._apply_queue._queue[0][0] == "apply":  # type: ignore[attr-defined]
                entries.extend(self._apply_queue.get_nowait()[1])  # group commit at apply too
            results = await loop.run_in_executor(self._apply_pool, self._apply_entries, entries)
            self._complete_proposals(entries, results)
            self._set_applied(entries[-1].index, entries[-1].term)
            await self._maybe_snapshot()

    def _apply_entries(self, entries: list[Entry]) -> dict[int, Any]:
        assert self._sm is not None
        batch = [(e.index, e.data) for e in entries if e.type is EntryType.NORMAL and e.data]
        results: dict[int, Any] = {}
        if batch:
            for (index, _), result in zip(batch, self._sm.apply(batch), strict=True):
                results[index] = result
        if not batch or batch[-1][0] != entries[-1].index:
            self._sm.mark_applied(entries[-1].index)
        return results

    def _complete_proposals(self, entries: Sequence[Entry], results: dict[int, Any]) -> None:
        for e in entries:
            waiting = self._proposals.pop(e.index, None)
            if waiting is None:
                continue
            term, fut = waiting
            if fut.done():
                continue
            if term != e.term:  # another leader's entry took this index: ours was lost
                fut.set_exception(LeadershipLostError())
            else:
                fut.set_result(results.get(e.index))

    def _set_applied(self, index: int, term: int) -> None:
        self.applied_index, self._applied_term = index, term
        self._applied_waiters.release(index)

    async def _change_conf(self, cc: ConfChange, timeout: float) -> None:
        if not self.is_leader:
            raise self._not_leader()
        loop = asyncio.get_running_loop()
        index_fut: asyncio.Future[int] = loop.create_future()
        fut: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            assert self._raft is not None
            index = self._raft.propose_conf_change(cc) if self.is_leader else None
            if index is None:
                self._set_exception(index_fut, ClusterError(
                    "membership change refused: not leader, or another change is pending"))
                return
            self._proposals[index] = (self._raft.term, fut)
            index_fut.set_result(index)

        self._call(run)
        async with asyncio.timeout(timeout):
            await index_fut
            await fut
        self._log("membership changed", change=cc.type.name, member=cc.node_id)

    # ---- snapshots ----------------------------------------------------------------

    async def _maybe_snapshot(self) -> None:
        if self.applied_index - self._snapshot_index < self.config.snapshot_threshold:
            return
        index, term = self.applied_index, self._applied_term
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self._apply_pool, self._snapshot_data)
        meta = SnapshotMeta(index, term, self._raft.conf_at(index))  # type: ignore[union-attr]
        await self._in_persist(self._storage.save_snapshot, Snapshot(meta, data))  # type: ignore[union-attr]
        self._snapshot_index = index
        self._call(lambda: self._raft.compact(index, term))  # type: ignore[union-attr]
        self._log("snapshot taken", index=index)

    def _snapshot_data(self) -> bytes:
        assert self._sm is not None
        path = os.path.join(self.config.data_dir, "snapshot.tmp")
        self._sm.snapshot(path)
        with open(path, "rb") as f:
            db = f.read()
        os.remove(path)
        header = orjson.dumps({"peers": self._address_book()})
        return len(header).to_bytes(4, "big") + header + db

    def _restore(self, snapshot: Snapshot) -> None:
        assert self._sm is not None
        data = snapshot.data
        n = int.from_bytes(data[:4], "big")
        peers = orjson.loads(data[4 : 4 + n]).get("peers", {}) if n else {}
        for node_id, (raft_addr, api_url) in peers.items():
            if node_id != self.node_id:
                self._set_peer(node_id, raft_addr, api_url)
        path = os.path.join(self.config.data_dir, "snapshot.tmp")
        with open(path, "wb") as f:
            f.write(data[4 + n :])
        self._sm.restore(path)
        os.remove(path)
        self._snapshot_index = snapshot.meta.index

    def _attach_snapshot(self, m: Message) -> Message:
        assert self._storage is not None and m.snapshot is not None
        stored = self._storage.load_snapshot()
        if stored is None:
            return m
        return Message(**{**_fields(m), "snapshot": stored})

    # ---- bootstrap, recovery, membership ---------------------------------------------

    def _is_fresh(self) -> bool:
        s = self._storage
        assert s is not None
        return not s.snapshot_meta.conf.members() and s.last_index == 0 and s.hard_state.term == 0

    async def _bootstrap(self) -> None:
        """Write the initial membership as committed entries 1..n of term 1, identical on
        every initial member (ids sorted), each carrying the member's address, so a node
        that joins later learns members and addresses from the log like any change."""
        cfg = self.config
        if cfg.join:
            return  # a joining node starts with no members and waits for the leader
        initial = cfg.initial_cluster or {cfg.node_id: cfg.advertised_raft_addr}
        if cfg.node_id not in initial:
            raise ClusterError(f"--initial-cluster does not list this node ({cfg.node_id})")
        entries = [
            Entry(1, i, EntryType.CONF_CHANGE, ConfChange(
                ConfChangeType.ADD_VOTER, node_id, _addr_context(addr, f"http://{addr}")).encode())
            for i, (node_id, addr) in enumerate(sorted(initial.items()), 1)
        ]
        storage = self._storage
        assert storage is not None

        def write() -> None:
            storage.append(entries)
            storage.set_hard_state(HardState(term=1, vote=None, commit=len(entries)))
            storage.sync()

        await self._in_persist(write)

    async def _recover_state_machine(self) -> None:
        storage = self._storage
        assert storage is not None and self._sm is not None
        self._snapshot_index = storage.snapshot_meta.index
        if self._sm.applied_index() < storage.snapshot_meta.index:
            # Crashed after saving a received snapshot but before restoring it.
            snapshot = storage.load_snapshot()
            assert snapshot is not None
            await asyncio.get_running_loop().run_in_executor(self._apply_pool, self._restore, snapshot)
        self.applied_index = self._sm.applied_index()

    def _make_raft(self) -> Raft:
        storage = self._storage
        assert storage is not None
        ticks = max(2, round(self.config.election_ms / self.config.heartbeat_ms))
        entries = storage.entries()
        self._note_conf_entries(entries)
        return Raft(
            self.node_id, Config(election_ticks=ticks), random.Random(),
            hard_state=storage.hard_state, snapshot=storage.snapshot_meta,
            entries=entries, applied=self.applied_index,
        )

    def _note_conf_entries(self, entries: Sequence[Entry]) -> None:
        """Learn members' addresses from membership entries as soon as they are seen."""
        for e in entries:
            if e.type is not EntryType.CONF_CHANGE:
                continue
            cc = ConfChange.decode(e.data)
            if cc.node_id == self.node_id:
                continue
            if cc.type is ConfChangeType.REMOVE:
                continue  # keep the address: the removal may still be truncated
            addrs = orjson.loads(cc.context) if cc.context else {}
            if addrs:
                self._set_peer(cc.node_id, addrs["raft_addr"], addrs["api_url"])

    def _address_book(self) -> dict[str, tuple[str, str]]:
        """Every member's (raft_addr, api_url), this node's included."""
        return {**self._peers, self.node_id: (self.config.advertised_raft_addr, self.api_url)}

    def _set_peer(self, node_id: str, raft_addr: str, api_url: str) -> None:
        if node_id == self.node_id or self._peers.get(node_id) == (raft_addr, api_url):
            return
        self._peers[node_id] = (raft_addr, api_url)
        if self._transport is not None:
            self._transport.set_peer(node_id, raft_addr)
        self._save_peers()

    def _load_peers(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            with open(self._peers_path, "rb") as f:
                stored = orjson.loads(f.read())
            for node_id, (raft_addr, api_url) in stored.items():
                self._peers.setdefault(node_id, (raft_addr, api_url))

    def _save_peers(self) -> None:
        tmp = self._peers_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self._peers))
        os.replace(tmp, self._peers_path)

    async def _on_join(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.is_leader:
            leader = self._peers.get(self.leader_id or "", ("", ""))[0]
            return {"ok": False, "leader": leader, "error": "not leader"}
        try:
            await self.add_member(
                str(payload["id"]), str(payload["raft_addr"]), str(payload["api_url"]),
                voter=bool(payload.get("voter", True)),
            )
        except (TimeoutError, RaftSQLError, KeyError) as e:
            return {"ok": False, "error": str(e) or type(e).__name__}
        return {"ok": True, "leader": self.config.advertised_raft_addr, "peers": self._address_book()}

    async def _on_info(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.node_id, "api_url": self.api_url, "raft_addr": self.config.advertised_raft_addr}

    async def _join_cluster(self) -> None:
        assert self._transport is not None
        payload = {"id": self.node_id, "raft_addr": self.config.advertised_raft_addr,
                   "api_url": self.api_url, "voter": not self.config.non_voter}
        targets = list(self.config.join)
        delay = 0.2
        while True:
            for addr in list(targets):
                try:
                    reply = await self._transport.call(addr, "join", payload, timeout=15.0)
                except (TimeoutError, RaftSQLError, OSError) as e:
                    self._log("join attempt failed", target=addr, error=str(e))
                    continue
                if reply.get("ok"):
                    # Until the log tells it, the new member knows nobody to answer to.
                    for node_id, (raft_addr, api_url) in reply.get("peers", {}).items():
                        self._set_peer(node_id, raft_addr, api_url)
                    self._log("joined cluster", via=addr)
                    return
                if reply.get("leader") and reply["leader"] not in targets:
                    targets.insert(0, reply["leader"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _learn_api_urls(self) -> None:
        """Peers named by --initial-cluster are known by Raft address; ask for their API URL."""
        assert self._transport is not None
        learned: set[str] = set()
        while True:
            for node_id, (raft_addr, _) in list(self._peers.items()):
                if node_id in learned:
                    continue
                with contextlib.suppress(RaftSQLError, asyncio.TimeoutError, OSError, KeyError):
                    info = await self._transport.call(raft_addr, "info", {}, timeout=2.0)
                    self._set_peer(node_id, raft_addr, str(info["api_url"]))
                    learned.add(node_id)
            await asyncio.sleep(1.0)

    # ---- helpers ------------------------------------------------------------------

    async def _listen(self) -> None:
        assert self._transport is not None
        api_app = self._api(self) if self._api else None
        raft_addr = self.config.raft_addr
        if api_app is None or (raft_addr and raft_addr != self.config.http_addr):
            raft_app = web.Application()
            self._transport.add_routes(raft_app)
            await self._serve(raft_app, raft_addr or self.config.http_addr)
        else:
            self._transport.add_routes(api_app)
        if api_app is not None:
            await self._serve(api_app, self.config.http_addr)

    async def _serve(self, app: web.Application, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port), reuse_address=True).start()
        self._runners.append(runner)

    async def _in_persist(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._persist_pool, fn, *args)

    def _not_leader(self) -> NotLeaderError:
        return NotLeaderError(self.leader_id if self.leader_id != self.node_id else None,
                              self.leader_api_url() if self.leader_id != self.node_id else None)

    @staticmethod
    def _set_exception(fut: asyncio.Future[Any], exc: Exception) -> None:
        if not fut.done():
            fut.set_exception(exc)

    def _log(self, event: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        log.info("node=%s term=%d %s %s", self.node_id, self.term, event, extra)


def _fields(m: Message) -> dict[str, Any]:
    return {name: getattr(m, name) for name in m.__dataclass_fields__}


def _member_dict(m: Member) -> dict[str, Any]:
    return {"id": m.id, "api_addr": m.api_url, "addr": m.raft_addr, "voter": m.voter}

