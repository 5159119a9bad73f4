"""The apply pipeline: committed entries into the state machine, in log order, and snapshots.

Committed entries are applied on the loop itself when the state machine finishes them within
a 2 ms budget (SQLite is interrupted and the work undone if not), else on the apply thread,
which also restores received snapshots, takes snapshots of what is applied and runs WAL
checkpoints. A failure of the state machine is fatal, like a storage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from raftsql.errors import RaftSQLError
from raftsql.raft.messages import Entry, EntryType, Snapshot, SnapshotMeta

if TYPE_CHECKING:
    from raftsql.node.node import Node

# The loop applies a small batch (and runs a query) itself when it takes at most this long;
# over it, the work is undone and handed to a thread, and for INLINE_BACKOFF seconds all of
# it goes to threads directly.
INLINE_BUDGET = 0.002
INLINE_BACKOFF = 1.0
_INLINE_APPLY_BYTES = 16384  # larger batches go to the apply thread without trying


class StateMachine(Protocol):
    """What the driver replicates. Called by one thread at a time, in log order.

    Optional, and used when present (raftsql.sqlite.Database has them): `apply_within(entries,
    seconds)` and `query_within(statements, options, seconds)`, which return None, having
    done nothing, rather than take longer than `seconds` (the driver then calls `apply` /
    `query` on a thread); `query(statements, options)`; `checkpoint_due()` and
    `checkpoint()`, run on the apply thread.
    """

    def applied_index(self) -> int: ...

    def apply(self, entries: list[tuple[int, bytes]]) -> list[Any]: ...

    def mark_applied(self, index: int) -> None: ...

    def snapshot(self, path: str) -> int: ...

    def restore(self, path: str, index: int) -> None: ...

    def close(self) -> None: ...


class Applier:
    """Feeds one node's state machine; owns the apply thread."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"apply-{node.node_id}")
        # Work for the apply thread, in log order: ("apply", entries) or ("restore", snapshot).
        self._backlog: list[tuple[str, Any]] = []
        self._applying = False  # a batch (or a snapshot, or a checkpoint) is on the apply thread
        self.inline_off_until = 0.0  # loop time until which nothing is applied inline
        self.snapshot_index = 0
        self.applied_term = 0
        self._snapshot_waiters: list[asyncio.Future[None]] = []  # snapshot_now() callers

    @property
    def _sm(self) -> StateMachine | None:
        return self._node._sm

    async def recover(self) -> None:
        """Bring the state machine up to the stored snapshot; set the node's applied index."""
        node = self._node
        storage = node._storage
        assert storage is not None and self._sm is not None
        self.snapshot_index = storage.snapshot_meta.index
        if self._sm.applied_index() < storage.snapshot_meta.index:
            # Crashed after saving a received snapshot but before restoring it.
            snapshot = storage.load_snapshot()
            assert snapshot is not None
            await asyncio.get_running_loop().run_in_executor(self._pool, self._restore, snapshot)
        node.applied_index = self._sm.applied_index()

    def close(self) -> None:
        self._backlog.clear()
        self._pool.shutdown(wait=True)
        for fut in self._snapshot_waiters:
            if not fut.done():
                fut.set_exception(RaftSQLError("node stopped"))
        self._snapshot_waiters = []

    # ---- applying -----------------------------------------------------------------

    def queue(self, kind: str, payload: Any) -> None:
        """Hand committed entries (or a snapshot to restore) to the state machine, in order."""
        self._backlog.append((kind, payload))
        if not self._applying:
            self._apply_next()

    def _apply_next(self) -> None:
        """Apply what is queued, in order: every queued batch as one (group commit), on the
        loop itself when the state machine finishes it within INLINE_BUDGET (see
        _apply_inline), else on the apply thread; a restore always on the thread."""
        backlog = self._backlog
        while backlog and not self._applying and not self._node._stopping:
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
                self._node._fail(e)
                return
            if results is None:
                self._apply_on_thread(kind, entries, functools.partial(self._apply_entries, entries))
                return
            self._after_apply(entries, results)
        if self._snapshot_waiters and not self._applying and not self._node._stopping:
            if self._node.applied_index > self.snapshot_index:
                self._start_snapshot()
            else:  # the snapshot just taken holds everything applied
                for fut in self._snapshot_waiters:
                    if not fut.done():
                        fut.set_result(None)
                self._snapshot_waiters = []

    def _apply_on_thread(self, kind: str, payload: Any, job: Callable[[], Any]) -> None:
        self._applying = True
        fut = asyncio.get_running_loop().run_in_executor(self._pool, job)
        fut.add_done_callback(functools.partial(self._on_applied, kind, payload))

    def _on_applied(self, kind: str, payload: Any, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or self._node._stopping:
            return
        exc = fut.exception()
        if exc is not None:  # the state machine failed: like a storage error, fatal
            self._node._fail(exc)
            return
        self._applying = False
        if kind == "restore":
            self._set_applied(payload.meta.index, payload.meta.term)
        elif kind == "apply":
            self._after_apply(payload, fut.result())
        self._apply_next()

    def _after_apply(self, entries: list[Entry], results: dict[int, Any]) -> None:
        node = self._node
        node._complete_proposals(entries, results)
        self._set_applied(entries[-1].index, entries[-1].term)
        if node.applied_index - self.snapshot_index >= node.config.snapshot_threshold:
            self._start_snapshot()
            return
        checkpoint_due = getattr(self._sm, "checkpoint_due", None)
        if checkpoint_due is not None and checkpoint_due():
            # The WAL grew past SQLite's checkpoint size: copy it back off the loop.
            self._apply_on_thread("checkpoint", None, self._sm.checkpoint)  # type: ignore[union-attr]

    def _apply_inline(self, entries: list[Entry]) -> dict[int, Any] | None:
        """Apply `entries` on the loop if the state machine can do it within INLINE_BUDGET.

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
        if now < self.inline_off_until:
            return None
        batch = [(e.index, e.data) for e in entries if e.type is EntryType.NORMAL and e.data]
        results: dict[int, Any] = {}
        if batch:
            if sum(len(data) for _, data in batch) > _INLINE_APPLY_BYTES:
                return None
            applied = apply_within(batch, INLINE_BUDGET)
            if applied is None:
                self.inline_off_until = loop.time() + INLINE_BACKOFF
                return None
            for (index, _), result in zip(batch, applied, strict=True):
                results[index] = result
        if not batch or batch[-1][0] != entries[-1].index:
            self._sm.mark_applied(entries[-1].index)  # type: ignore[union-attr]
        return results

    async def snapshot_now(self) -> bool:
        """Snapshot what is applied and compact the log now (POST /snapshot); False, doing
        nothing, when the latest snapshot already holds everything applied."""
        if self._node.applied_index <= self.snapshot_index:
            return False
        fut = asyncio.get_running_loop().create_future()
        self._snapshot_waiters.append(fut)
        if not self._applying:
            self._apply_next()  # else once what is on the apply thread is done
        await fut
        return True

    def _start_snapshot(self) -> None:
        # Taken on the apply thread before any later batch: exactly what is applied.
        node = self._node
        self._applying = True  # until _snapshot_done
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        task = asyncio.get_running_loop().create_task(self._take_snapshot())
        node._tasks.append(task)
        task.add_done_callback(functools.partial(self._snapshot_done, waiters))

    def _snapshot_done(self, waiters: list[asyncio.Future[None]], task: asyncio.Task[None]) -> None:
        node = self._node
        with contextlib.suppress(ValueError):
            node._tasks.remove(task)
        failure = RaftSQLError("node stopped") if task.cancelled() else task.exception()
        for fut in waiters:
            if fut.done():
                continue
            if failure is None:
                fut.set_result(None)
            else:
                fut.set_exception(failure)
        if task.cancelled() or node._stopping:
            return
        if failure is not None:
            node._fail(failure)
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

    def _set_applied(self, index: int, term: int) -> None:
        self.applied_term = term
        self._node._set_applied(index)

    # ---- snapshots ----------------------------------------------------------------

    async def _take_snapshot(self) -> None:
        node = self._node
        index, term = node.applied_index, self.applied_term
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self._pool, self._snapshot_data)
        meta = SnapshotMeta(index, term, node._raft.conf_at(index))  # type: ignore[union-attr]
        await node._in_persist(node._storage.save_snapshot, Snapshot(meta, data))  # type: ignore[union-attr]
        self.snapshot_index = index
        node._call(lambda: node._raft.compact(index, term))  # type: ignore[union-attr]
        node._log("snapshot taken", index=index)

    def _snapshot_data(self) -> bytes:
        assert self._sm is not None
        path = os.path.join(self._node.config.data_dir, "snapshot.tmp")
        self._sm.snapshot(path)
        with open(path, "rb") as f:
            db = f.read()
        os.remove(path)
        header = orjson.dumps({"peers": self._node._membership.address_book()})
        return len(header).to_bytes(4, "big") + header + db

    def _restore(self, snapshot: Snapshot) -> None:
        assert self._sm is not None
        node = self._node
        data = snapshot.data
        n = int.from_bytes(data[:4], "big")
        peers = orjson.loads(data[4 : 4 + n]).get("peers", {}) if n else {}
        for node_id, (raft_addr, api_url) in peers.items():
            if node_id != node.node_id:
                node._membership.set_peer(node_id, raft_addr, api_url)
        path = os.path.join(node.config.data_dir, "snapshot.tmp")
        with open(path, "wb") as f:
            f.write(data[4 + n :])
        self._sm.restore(path, snapshot.meta.index)
        os.remove(path)
        self.snapshot_index = snapshot.meta.index
