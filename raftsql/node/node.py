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

The node owns its collaborators, each in its own module: the address book, bootstrap and
joining (membership.py), the apply pipeline and snapshots (applier.py), the read path
(reads.py), and request deadlines (waiting.py).
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
from typing import Any

from aiohttp import web

from raftsql.errors import ClusterError, LeadershipLostError, NotLeaderError, RaftSQLError
from raftsql.node.applier import Applier, StateMachine
from raftsql.node.membership import Member, Membership, addr_context, member_dict
from raftsql.node.reads import Reads
from raftsql.node.waiting import Deadlines
from raftsql.raft.core import Config, Raft
from raftsql.raft.messages import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Ready,
    Role,
)
from raftsql.raft.order import Apply, Persist, ReadyOrder, Send, Serve, Synced
from raftsql.sql.command import Command, ReadOptions, StatementResult
from raftsql.storage import Storage, attach_snapshot, write_persist
from raftsql.transport.websocket import Transport

__all__ = ["Member", "Node", "NodeConfig", "StateMachine"]

log = logging.getLogger("raftsql.node")


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
    fk: bool = False  # the SQL state machine enforces foreign keys (entries this node proposes)

    @property
    def advertised_raft_addr(self) -> str:
        return self.raft_addr or self.http_addr

    @property
    def api_url(self) -> str:
        return f"http://{self.http_addr}"


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
        self._wake = asyncio.Event()
        self._inbox: list[Message] = []
        self._calls: list[Callable[[], None]] = []
        self._ticks = 0
        self._persist_submitted = self._persist_finished = 0  # jobs for the persist thread
        self._order: ReadyOrder | None = None  # what of a Ready to do when (raft/order.py)
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._deadlines = Deadlines()
        self._last_contact: float | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._failed = asyncio.Event()
        self.failure: Exception | None = None
        self.applied_index = 0
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self._membership = Membership(self)  # the address book, bootstrap and joining
        self._applier = Applier(self)  # committed entries and snapshots into the state machine
        self._reads = Reads(self)  # ReadIndex and queries

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

    @property
    def ready(self) -> bool:
        return self.leader_id is not None

    def leader_api_url(self) -> str | None:
        if self.leader_id is None:
            return None
        if self.leader_id == self.node_id:
            return self.api_url
        return self._membership.api_url_of(self.leader_id)

    def members(self) -> list[Member]:
        return self._membership.members(self.conf)

    def last_contact(self) -> float | None:
        """Seconds since this node last heard from its leader (0 on the leader)."""
        if self.is_leader:
            return 0.0
        if self._last_contact is None:
            return None
        return time.monotonic() - self._last_contact

    def status(self) -> dict[str, Any]:
        raft = self._raft
        leader_addr = self._membership.raft_addr_of(self.leader_id)
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
                "snapshot_index": self._applier.snapshot_index,
                "voters": len(self.conf.voters),
                "non_voters": len(self.conf.learners),
                "quorum": self.quorum_size,
            },
            "nodes": [member_dict(m) for m in self.members()],
        }

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        self._storage = await self._in_persist(Storage, os.path.join(self.config.data_dir, "raft"))
        if self._sm is None:
            from raftsql.sql.database import Database

            self._sm = Database(os.path.join(self.config.data_dir, "db.sqlite"),
                                fk=self.config.fk, log_end=self._storage.last_index)
        hs = self._storage.hard_state
        self._order = ReadyOrder(hs)
        membership = self._membership
        # No durable term and no snapshot: the bootstrap (or join) never completed. A crash
        # inside the first write can leave a prefix of the bootstrap entries without the
        # hard state: the core writes them again (docs/design.md §4).
        fresh = hs.term == 0 and self._storage.snapshot_meta.index == 0
        membership.load()
        await self._applier.recover()
        self._raft = self._make_raft(fresh and not self.config.join)
        storage = self._storage
        self._transport = Transport(
            self.node_id, self._deliver, secret=self.config.cluster_secret,
            api_url=self.api_url, on_peer_api=membership.note_api_url,
            attach_snapshot=lambda m: attach_snapshot(storage, m),
        )
        self._transport.on_rpc("join", membership.on_join)
        self._transport.on_rpc("info", membership.on_info)
        for node_id, (raft_addr, _) in membership.peers.items():
            self._transport.set_peer(node_id, raft_addr)
        await self._transport.start()
        await self._listen()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"raft-{self.node_id}"),
            loop.create_task(self._ticker(), name=f"tick-{self.node_id}"),
            loop.create_task(membership.learn_api_urls(), name=f"info-{self.node_id}"),
        ]
        if fresh and self.config.join:
            self._tasks.append(loop.create_task(membership.join_cluster(), name="join"))
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
        self._applier.close()
        self._persist_pool.shutdown(wait=True)
        self._reads.close()
        if self._sm is not None:
            self._sm.close()
        if self._storage is not None:
            unsynced = self._order.unsynced if self._order is not None else None
            if unsynced is not None and self.failure is None:
                self._storage.set_hard_state(unsynced)
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
        timeout: float = 30.0, db_timeout: float = 0.0, qualify: bool = False,
    ) -> tuple[list[StatementResult], int]:
        from raftsql.sql.session import steps_for

        # The proposing leader fixes the entry's time, seed, foreign keys and step limit, so
        # apply is deterministic.
        command = Command.new(op, statements, transaction, fk=self.config.fk,
                              max_steps=steps_for(db_timeout), qualify=qualify)
        result, index = await self.propose(command.encode(), timeout)
        if isinstance(result, Exception):
            raise result
        return result, index

    async def read_barrier(self, level: str, timeout: float = 10.0) -> None:
        """weak: this node believes it leads; linearizable: ReadIndex, then wait for apply
        (see Reads.barrier)."""
        if not self.is_leader:
            raise self._not_leader()
        if level == "weak":
            return
        await self._reads.barrier(timeout)

    async def query(self, statements: list[Any], options: ReadOptions | None = None
                    ) -> list[StatementResult]:
        """Run read-only statements on the state machine's read connections (see Reads.query)."""
        return await self._reads.query(statements, options or ReadOptions())

    async def snapshot(self) -> bool:
        """Snapshot the state machine and compact the log now; False if the latest snapshot
        already holds everything applied."""
        if self._stopping:
            raise RaftSQLError("node stopped")
        return await self._applier.snapshot_now()

    async def add_member(
        self, node_id: str, raft_addr: str, api_url: str, voter: bool = True, timeout: float = 10.0
    ) -> None:
        await self._membership.add(node_id, raft_addr, api_url, voter, timeout)

    async def remove_member(self, node_id: str, timeout: float = 10.0) -> None:
        await self._membership.remove(node_id, timeout)

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
        """Carry out the Ready's effects, in the one order (raftsql/raft/order.py)."""
        assert self._order is not None
        writing: asyncio.Future[Any] | None = None
        for effect in self._order.effects(rd, self._leads(rd)):
            if isinstance(effect, Send):
                self._send(effect.messages)
            elif isinstance(effect, Apply):
                self._apply(effect)
            elif isinstance(effect, Persist):
                writing = self._start_persist(effect)
            elif isinstance(effect, Synced):
                if writing is not None:
                    await writing
                self._membership.note_conf_entries(effect.persist.entries)
            elif isinstance(effect, Serve):
                self._reads.on_read_states(effect.read_states)
            else:
                self._on_soft_state(effect.soft_state.role, effect.soft_state.leader_id)

    def _leads(self, rd: Ready) -> bool:
        """Whether this node leads as of `rd` (its soft state, if it has one, is news)."""
        return (rd.soft_state.role if rd.soft_state is not None else self.role) is Role.LEADER

    def _start_persist(self, persist: Persist) -> asyncio.Future[Any] | None:
        """A leader writes on its persist thread: the appends it sends meanwhile wake the
        followers, which would otherwise compete with it for the CPU and the disk. Any other
        node writes on the loop itself (it can do nothing before the fsync anyway, and a
        thread hop costs more than the fsync on a small machine: docs/performance.md), except
        a snapshot, or a write queued behind one, which goes through the thread, in order.
        None: already durable."""
        if self.is_leader or persist.snapshot is not None or self._persisting:
            return self._submit_persist(self._write, persist)
        self._write(persist)
        return None

    def _apply(self, apply: Apply) -> None:
        if apply.snapshot is not None:
            self._applier.queue("restore", apply.snapshot)
        if apply.entries:
            self._membership.note_conf_entries(apply.entries)
            self._applier.queue("apply", apply.entries)

    def _write(self, persist: Persist) -> None:
        assert self._storage is not None
        write_persist(self._storage, persist)

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
            self._fail_uncommitted(LeadershipLostError())

    def _fail_uncommitted(self, exc: Exception) -> None:
        """Leadership was lost: proposals not known to be committed have an unknown outcome.
        Those at or below the commit index (a leader's own removal, say) are committed, and
        complete as usual when this node applies them."""
        commit = self.commit_index
        for index in [i for i in self._proposals if i > commit]:
            self._set_exception(self._proposals.pop(index)[1], exc)
        self._reads.fail(exc)

    def _fail_waiters(self, exc: Exception) -> None:
        for _, fut in self._proposals.values():
            self._set_exception(fut, exc)
        self._proposals.clear()
        self._reads.fail(exc)

    # ---- applying (raftsql/applier.py does the work) -----------------------------

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

    def _set_applied(self, index: int) -> None:
        self.applied_index = index
        self._reads.applied_waiters.release(index)

    # ---- recovery -----------------------------------------------------------------

    def _make_raft(self, bootstrap: bool) -> Raft:
        """The core, from what storage holds; `bootstrap`: as an initial member of a new
        cluster (its membership entries carry the members' Raft addresses)."""
        storage = self._storage
        assert storage is not None
        ticks = max(2, round(self.config.election_ms / self.config.heartbeat_ms))
        entries = storage.entries()
        self._membership.note_conf_entries(entries)
        initial, context = None, None
        if bootstrap:
            members = self.config.initial_cluster or {self.node_id: self.config.advertised_raft_addr}
            if self.node_id not in members:
                raise ClusterError(f"--initial-cluster does not list this node ({self.node_id})")
            initial = ConfState(voters=tuple(sorted(members)))
            context = {i: addr_context(addr, "") for i, addr in members.items()}
        return Raft(
            self.node_id, Config(election_ticks=ticks), random.Random(),
            hard_state=storage.hard_state, snapshot=storage.snapshot_meta,
            entries=entries, applied=self.applied_index, initial=initial,
            initial_context=context,
        )

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
