"""The asyncio driver: one loop per node that runs the pure Raft core.

It turns wall-clock time into ticks, steps incoming messages, persists each Ready (one
fsync per batch), sends messages, hands committed entries to the state machine in log
order, and completes waiting requests. All calls into the core happen on the loop task
between `advance()` and the next `ready()`; everything else (requests, peers, timers) only
queues work and wakes it.

Where the work runs (docs/performance.md has the measurements behind it): a thread hop
costs 100-300 us on a small machine, more than most of the work it would move, so only what
can take long leaves the loop. The leader fsyncs on its persist thread (its loop parses the
next requests meanwhile); other nodes fsync on the loop, since they can do nothing else
before it. Committed entries, and queries, run on the loop when the state machine finishes
them within a 2 ms budget (SQLite is interrupted and the work undone if not), else on the
apply thread and on read threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
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

# The loop applies a small batch (and runs a query) itself when it takes at most this long;
# over it, the work is undone and handed to a thread, and for _INLINE_BACKOFF seconds all of
# it goes to threads directly.
_INLINE_BUDGET = 0.002
_INLINE_BACKOFF = 1.0
_INLINE_APPLY_BYTES = 16384  # larger batches go to the apply thread without trying
_QUERY_THREADS = 4  # read threads (the state machine keeps as many read connections)
_QUERY_SLICE = 0.002  # seconds a read thread works on a batch before sharing the rest


class StateMachine(Protocol):
    """What the driver replicates. Called by one thread at a time, in log order.

    Optional, and used when present (raftsql.sqlite.Database has them): `apply_within(entries,
    seconds)` and `query_within(statements, transaction, seconds)`, which return None, having
    done nothing, rather than take longer than `seconds` (the driver then calls `apply` /
    `query` on a thread); `query(statements, transaction)`; `checkpoint_due()` and
    `checkpoint()`, run on the apply thread.
    """

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


class _Deadlines:
    """Request timeouts, checked on every tick: cheaper than a timer per request (a request
    may time out up to one heartbeat interval late)."""

    def __init__(self) -> None:
        self._items: list[tuple[float, asyncio.Future[Any]]] = []

    def add(self, fut: asyncio.Future[Any], timeout: float) -> asyncio.Future[Any]:
        self._items.append((fut.get_loop().time() + timeout, fut))
        return fut

    def expire(self, now: float) -> None:
        """Fail the futures whose time is up with TimeoutError; forget the completed ones."""
        keep = []
        for item in self._items:
            when, fut = item
            if fut.done():
                continue
            if when <= now:
                fut.set_exception(TimeoutError())
            else:
                keep.append(item)
        self._items = keep


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
        # Work for the apply thread, in log order: ("apply", entries) or ("restore", snapshot).
        self._apply_backlog: list[tuple[str, Any]] = []
        self._applying = False  # a batch (or a snapshot, or a checkpoint) is on the apply thread
        self._inline_apply_off_until = 0.0  # loop time until which nothing is applied inline
        self._inline_query_off_until = 0.0
        self._persist_submitted = self._persist_finished = 0  # jobs for the persist thread
        self._unsynced_hard_state: HardState | None = None  # commit moved; written by next sync
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._read_waiters: list[asyncio.Future[int]] = []  # for the next ReadIndex request
        self._reads: dict[bytes, list[asyncio.Future[int]]] = {}  # ReadIndex context -> waiters
        self._read_seq = 0
        self._query_pool = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix=f"query-{self.node_id}")
        self._query_backlog: collections.deque[tuple[list[Any], bool, asyncio.Future[Any]]] = (
            collections.deque())
        self._query_jobs = 0  # read threads working through the backlog
        self._query_start_scheduled = False
        self._applied_waiters = _Waiters()
        self._deadlines = _Deadlines()
        self._peers: dict[str, tuple[str, str]] = {}  # id -> (raft_addr, api_url)
        self._peers_path = os.path.join(config.data_dir, "peers.json")
        self._last_contact: float | None = None
        self._snapshot_index = 0
        self._applied_term = 0
        self._stopping = False
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
        if transfer and self.is_leader and len(self.conf.voters) > 1 and self.failure is None:
            with contextlib.suppress(RaftSQLError, asyncio.TimeoutError):
                await self.transfer_leadership(None, timeout=2.0)
        self._stopping = True
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
        self._apply_backlog.clear()
        self._apply_pool.shutdown(wait=True)
        self._persist_pool.shutdown(wait=True)
        self._query_pool.shutdown(wait=True)
        for _, _, fut in self._query_backlog:
            self._set_exception(fut, RaftSQLError("node stopped"))
        self._query_backlog.clear()
        if self._sm is not None:
            self._sm.close()
        if self._storage is not None:
            if self._unsynced_hard_state is not None and self.failure is None:
                self._storage.set_hard_state(self._unsynced_hard_state)
            self._storage.close()
        self._stopped.set()
        self._log("stopped")

    async def wait_failed(self) -> None:
        """Returns if the node hits a fatal error (its `failure`); it then serves nothing."""
        await self._failed.wait()

    # ---- requests -----------------------------------------------------------------

    async def propose(self, data: bytes, timeout: float = 30.0) -> tuple[Any, int]:
        """Replicate `data`; return the state machine's result and the entry's index."""
        fut: asyncio.Future[tuple[Any, int]] = asyncio.get_running_loop().create_future()

        def run() -> None:
            assert self._raft is not None
            index = self._raft.propose(data) if self.is_leader else None
            if index is None:
                self._set_exception(fut, self._not_leader())
            else:
                self._proposals[index] = (self._raft.term, fut)

        self._call(run)
        return await self._deadlines.add(fut, timeout)

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
        """weak: this node believes it leads; linearizable: ReadIndex, then wait for apply.

        Every read that arrives before the loop next runs shares one ReadIndex request:
        each of them arrived before the read index was taken, which is all that
        linearizability asks (dissertation §6.4).
        """
        if not self.is_leader:
            raise self._not_leader()
        if level == "weak":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[int] = loop.create_future()
        if not self._read_waiters:
            self._call(self._request_read_index)
        self._read_waiters.append(fut)
        index = await self._deadlines.add(fut, timeout)
        if self.applied_index < index:
            await self._deadlines.add(self._applied_waiters.add(index), deadline - loop.time())

    def _request_read_index(self) -> None:
        assert self._raft is not None
        waiters, self._read_waiters = self._read_waiters, []
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        if self._raft.read_index(ctx):
            self._reads[ctx] = waiters
            return
        exc = self._not_leader()
        for fut in waiters:
            self._set_exception(fut, exc)

    async def query(self, statements: list[Any], *, transaction: bool = False) -> list[StatementResult]:
        """Run read-only statements on the state machine's read connections.

        On the loop itself when they finish within _INLINE_BUDGET (as for applying, see
        _apply_inline); otherwise on a read thread. Queries that wait for a thread together
        go to it together: one thread hop for the batch, not one per query. A thread that has
        spent `_QUERY_SLICE` seconds on its batch lets another thread take the rest, so a
        slow query holds up few others.
        """
        loop = asyncio.get_running_loop()
        query_within = getattr(self._sm, "query_within", None)
        if query_within is not None and loop.time() >= self._inline_query_off_until:
            # Most queries take microseconds: run them here, unless it takes longer (or no
            # read connection is free: then only the threads are waited for).
            started = loop.time()
            results = query_within(statements, transaction, _INLINE_BUDGET)
            if results is not None:
                return results  # type: ignore[no-any-return]
            if loop.time() - started >= _INLINE_BUDGET:
                self._inline_query_off_until = loop.time() + _INLINE_BACKOFF
        fut: asyncio.Future[list[StatementResult]] = loop.create_future()
        self._query_backlog.append((statements, transaction, fut))
        if not self._query_start_scheduled:
            self._query_start_scheduled = True
            loop.call_soon(self._start_query_jobs)
        return await fut

    def _start_query_jobs(self) -> None:
        self._query_start_scheduled = False
        if self._query_backlog and self._query_jobs < _QUERY_THREADS and not self._stopping:
            self._query_jobs += 1
            self._query_pool.submit(self._run_queries, asyncio.get_running_loop())

    def _run_queries(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a read thread: run queued queries until none is left."""
        assert self._sm is not None
        query = self._sm.query  # type: ignore[attr-defined]
        backlog = self._query_backlog
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        started = time.monotonic()
        try:
            while backlog:
                try:
                    statements, transaction, fut = backlog.popleft()
                except IndexError:
                    break
                if fut.done():
                    continue  # its client went away
                try:
                    done.append((fut, query(statements, transaction), None))
                except Exception as e:
                    done.append((fut, None, e))
                if backlog and time.monotonic() - started > _QUERY_SLICE:
                    loop.call_soon_threadsafe(self._queries_done, done, False)
                    done, started = [], time.monotonic()
        finally:
            loop.call_soon_threadsafe(self._queries_done, done, True)

    def _queries_done(self, done: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
                      finished: bool) -> None:
        for fut, result, exc in done:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)
        if finished:
            self._query_jobs -= 1
        self._start_query_jobs()

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
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self._ticks += 1
            self._wake.set()
            self._deadlines.expire(loop.time())

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        """A storage or state machine failure is fatal: never retry, never go on."""
        if self.failure is not None:
            return
        log.critical("node=%s fatal error, stopping: %r", self.node_id, e, exc_info=e)
        self.failure = e if isinstance(e, Exception) else RaftSQLError(repr(e))
        self._stopping = True
        for task in self._tasks:
            task.cancel()
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
        hs = rd.hard_state
        vote_changed = hs is not None and (hs.term, hs.vote) != self._persisted_vote
        must_persist = rd.snapshot is not None or bool(rd.entries) or vote_changed
        if must_persist:
            if hs is None:
                hs = self._unsynced_hard_state
            self._unsynced_hard_state = None
        elif hs is not None:
            # Only the commit index moved: it need not be durable (after a crash it is learned
            # again, never below what was applied), so it waits for the next fsync.
            self._unsynced_hard_state = hs
        # A leader persists on its thread, started first: the appends below wake the
        # followers, which would otherwise compete with it for the CPU and the disk.
        persisting = None
        if must_persist and (self.is_leader or rd.snapshot is not None or self._persisting):
            persisting = self._submit_persist(self._write_ready, rd, hs)
        # A leader may send appends while it persists its own copy (Raft thesis §10.2.1), but
        # only when this Ready does not change its term or vote: those must be durable first.
        early, late = [], rd.messages
        if self.is_leader and not vote_changed:
            early, late = rd.messages, []
        if early:
            self._send(early)
        apply_now = bool(rd.committed_entries) and rd.snapshot is None and self.is_leader
        if apply_now:
            # Committed entries were persisted by earlier Readies: the leader applies them
            # (and answers their clients) while it makes this Ready's entries durable.
            self._note_conf_entries(rd.committed_entries)
            self._queue_apply("apply", rd.committed_entries)
        if must_persist:
            if persisting is not None:
                await persisting
            else:
                # Any other node writes on the loop itself: it can send nothing before the
                # fsync anyway, and a thread hop costs more than the fsync on a small machine
                # (docs/performance.md). A snapshot, or a write queued behind a snapshot being
                # saved, goes through the persist thread, in order.
                self._write_ready(rd, hs)
            if hs is not None:
                self._persisted_vote = (hs.term, hs.vote)
            self._note_conf_entries(rd.entries)
        if late:
            self._send(late)
        if rd.snapshot is not None:
            self._queue_apply("restore", rd.snapshot)
        if rd.committed_entries and not apply_now:
            # A follower answers first: its leader is waiting for that answer, not for this.
            self._note_conf_entries(rd.committed_entries)
            self._queue_apply("apply", rd.committed_entries)
        for rs in rd.read_states:
            for fut in self._reads.pop(rs.context, ()):
                if not fut.done():
                    fut.set_result(rs.index)

    _persisted_vote: tuple[int, str | None] = (0, None)

    def _write_ready(self, rd: Ready, hs: HardState | None) -> None:
        storage = self._storage
        assert storage is not None
        if rd.snapshot is not None:
            storage.save_snapshot(rd.snapshot)
        if rd.entries:
            storage.append(rd.entries)
        if hs is not None:
            storage.set_hard_state(hs)
        storage.sync()

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
        for waiters in [self._read_waiters, *self._reads.values()]:
            for fut in waiters:
                self._set_exception(fut, exc)
        self._read_waiters = []
        self._reads.clear()

    # ---- applying -----------------------------------------------------------------

    def _queue_apply(self, kind: str, payload: Any) -> None:
        """Hand committed entries (or a snapshot to restore) to the state machine, in order."""
        self._apply_backlog.append((kind, payload))
        if not self._applying:
            self._apply_next()

    def _apply_next(self) -> None:
        """Apply what is queued, in order: every queued batch as one (group commit), on the
        loop itself when the state machine finishes it within _INLINE_BUDGET (see
        _apply_inline), else on the apply thread; a restore always on the thread."""
        backlog = self._apply_backlog
        while backlog and not self._applying and not self._stopping:
            kind, payload = backlog[0]
            if kind == "restore":
                del backlog[0]
                self._apply_on_thread(kind, payload, functools.partial(self._restore, payload))
                return
            n = 1
            while n < len(backlog) and backlog[n][0] == "apply":
                n += 1
            entries: list[Entry] = [e for _, batch in backlog[:n] for e in batch]
            del backlog[:n]
            try:
                results = self._apply_inline(entries)
            except Exception as e:  # the state machine failed: like a storage error, fatal
                self._fail(e)
                return
            if results is None:
                self._apply_on_thread(kind, entries, functools.partial(self._apply_entries, entries))
                return
            self._after_apply(entries, results)

    def _apply_on_thread(self, kind: str, payload: Any, job: Callable[[], Any]) -> None:
        self._applying = True
        fut = asyncio.get_running_loop().run_in_executor(self._apply_pool, job)
        fut.add_done_callback(functools.partial(self._on_applied, kind, payload))

    def _on_applied(self, kind: str, payload: Any, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or self._stopping:
            return
        exc = fut.exception()
        if exc is not None:  # the state machine failed: like a storage error, fatal
            self._fail(exc)
            return
        self._applying = False
        if kind == "restore":
            self._set_applied(payload.meta.index, payload.meta.term)
        elif kind == "apply":
            self._after_apply(payload, fut.result())
        self._apply_next()

    def _after_apply(self, entries: list[Entry], results: dict[int, Any]) -> None:
        self._complete_proposals(entries, results)
        self._set_applied(entries[-1].index, entries[-1].term)
        if self.applied_index - self._snapshot_index >= self.config.snapshot_threshold:
            # Taken on the apply thread before any later batch: exactly what is applied.
            self._applying = True  # until _snapshot_done
            task = asyncio.get_running_loop().create_task(self._take_snapshot())
            self._tasks.append(task)
            task.add_done_callback(self._snapshot_done)
            return
        checkpoint_due = getattr(self._sm, "checkpoint_due", None)
        if checkpoint_due is not None and checkpoint_due():
            # The WAL grew past SQLite's checkpoint size: copy it back off the loop.
            self._apply_on_thread("checkpoint", None, self._sm.checkpoint)  # type: ignore[union-attr]

    def _apply_inline(self, entries: list[Entry]) -> dict[int, Any] | None:
        """Apply `entries` on the loop if the state machine can do it within _INLINE_BUDGET.

        A single-row write applies in ~20 us, while handing it to the apply thread and back
        costs ~10 times that on a small machine (docs/performance.md). The state machine's
        apply_within() gives up, undoing everything, once the budget is spent, so the loop is
        never held up longer than that: the batch then goes to the apply thread. Large
        batches go there directly, and so does everything for a second after a batch ran out
        of time. None: not applied here.
        """
        apply_within = getattr(self._sm, "apply_within", None)
        if apply_within is None:
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._inline_apply_off_until:
            return None
        batch = [(e.index, e.data) for e in entries if e.type is EntryType.NORMAL and e.data]
        results: dict[int, Any] = {}
        if batch:
            if sum(len(data) for _, data in batch) > _INLINE_APPLY_BYTES:
                return None
            applied = apply_within(batch, _INLINE_BUDGET)
            if applied is None:
                self._inline_apply_off_until = loop.time() + _INLINE_BACKOFF
                return None
            for (index, _), result in zip(batch, applied, strict=True):
                results[index] = result
        if not batch or batch[-1][0] != entries[-1].index:
            self._sm.mark_applied(entries[-1].index)  # type: ignore[union-attr]
        return results

    def _snapshot_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)
            return
        self._applying = False
        self._apply_next()

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
                fut.set_result((results.get(e.index), e.index))

    def _set_applied(self, index: int, term: int) -> None:
        self.applied_index, self._applied_term = index, term
        self._applied_waiters.release(index)

    async def _change_conf(self, cc: ConfChange, timeout: float) -> None:
        if not self.is_leader:
            raise self._not_leader()
        fut: asyncio.Future[tuple[Any, int]] = asyncio.get_running_loop().create_future()

        def run() -> None:
            assert self._raft is not None
            index = self._raft.propose_conf_change(cc) if self.is_leader else None
            if index is None:
                self._set_exception(fut, ClusterError(
                    "membership change refused: not leader, or another change is pending"))
            else:
                self._proposals[index] = (self._raft.term, fut)

        self._call(run)
        await self._deadlines.add(fut, timeout)
        self._log("membership changed", change=cc.type.name, member=cc.node_id)

    # ---- snapshots ----------------------------------------------------------------

    async def _take_snapshot(self) -> None:
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
        """No durable term and no snapshot: the bootstrap (or join) never completed. A crash
        inside the first write can leave some bootstrap entries without the hard state;
        bootstrapping again replaces them, rather than starting from a partial membership."""
        s = self._storage
        assert s is not None
        return s.hard_state.term == 0 and s.snapshot_meta.index == 0 and not s.snapshot_meta.conf.members()

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
        """Run `fn` on the persist thread (in submission order)."""
        return await self._submit_persist(fn, *args)

    def _submit_persist(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._persist_submitted += 1  # only ever written here, on the loop thread

        def job() -> Any:
            try:
                return fn(*args)
            finally:
                self._persist_finished += 1  # only ever written here, on the persist thread

        return asyncio.get_running_loop().run_in_executor(self._persist_pool, job)

    @property
    def _persisting(self) -> bool:
        """Whether the persist thread has work: storage is touched by one thread at a time."""
        return self._persist_submitted != self._persist_finished

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

