"""The apply pipeline: committed entries into the state machine, in log order, and snapshots.

Committed entries are applied on the loop itself when the state machine finishes them within
a 2 ms budget (SQLite is interrupted and the work undone if not), else on the apply thread,
which also restores received snapshots, takes snapshots of what is applied and runs WAL
checkpoints. A failure of the state machine is fatal, like a storage error.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any, Protocol

from raftsql.errors import RaftSQLError, StorageError
from raftsql.node.addresses import AddressBook
from raftsql.node.metrics import NodeMetrics
from raftsql.node.snapshots import Header, upgrade_stored
from raftsql.node.waiting import Applied
from raftsql.raft.messages import Entry, EntryType, Snapshot
from raftsql.storage import Storage
from raftsql.storage.payloads import Payloads, is_ref
from raftsql.storage.payloads import size as entry_size
from raftsql.storage.snapshots import SnapshotFiles, checksum

# The loop applies a small batch (and runs a query) itself when it takes at most this long;
# over it, the work is undone and handed to a thread, and for INLINE_BACKOFF seconds all of
# it goes to threads directly.
INLINE_BUDGET = 0.002
INLINE_BACKOFF = 1.0
_INLINE_APPLY_BYTES = 16384  # larger batches go to the apply thread without trying
APPLY_BYTES = 8 << 20  # of data kept beside the log, read for one call of apply()


class StateMachine(Protocol):
    """What the driver replicates. Called by one thread at a time, in log order.

    Optional, and used when present (raftsql.sql.Database has them): `recover(log_end,
    stored_after)`, called once at start with the Raft log's last index and a function
    giving the stored commands after an index (None if some were compacted away), before
    `applied_index()`;
    `apply_within(entries, seconds)` and `query_within(*request, seconds)`, which return
    None, having done nothing, rather than take longer than `seconds` (the driver then calls
    `apply` / `query` on a thread); `query(*request)`; `checkpoint_due()` and
    `checkpoint()`, run on the apply thread; `snapshot_deferred()`, whether a snapshot due
    by size should wait for now.
    """

    def applied_index(self) -> int: ...

    def apply(self, entries: list[tuple[int, bytes]]) -> list[Any]: ...

    def mark_applied(self, index: int) -> None: ...

    def snapshot(self, path: str) -> int: ...

    def restore(self, path: str, index: int) -> None: ...

    def close(self) -> None: ...


class Work(enum.Enum):
    """What the apply thread is given, in log order."""

    APPLY = "apply"
    RESTORE = "restore"
    BOOT = "boot"
    CHECKPOINT = "checkpoint"
    SNAPSHOT = "snapshot"


class Applier:
    """Feeds one node's state machine; owns the apply thread.

    `on_applied(entries, results)` is told of every applied batch (the proposals waiting on
    them), `applied` holds the index; `save_snapshot(index, term, data, trailing)` stores a
    snapshot (its state already in `files`) and compacts the log, keeping `trailing` entries
    (None: the node's default); `fail(exc)` is fatal.
    """

    def __init__(self, sm: StateMachine, *, name: str, files: SnapshotFiles, book: AddressBook,
                 threshold: int, threshold_bytes: int, applied: Applied,
                 on_applied: Callable[[list[Entry], dict[int, Any]], None],
                 save_snapshot: Callable[[int, int, bytes, int | None], Awaitable[None]],
                 fail: Callable[[BaseException], None], metrics: NodeMetrics,
                 payloads: Payloads) -> None:
        self._sm = sm
        self._payloads = payloads
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"apply-{name}")
        self._files = files
        self._book = book
        self._threshold = threshold
        self._threshold_bytes = threshold_bytes  # 0: no limit by size
        self._bytes_since_snapshot = 0  # of the commands applied since the latest snapshot
        self._applied = applied
        self._on_applied = on_applied
        self._save_snapshot = save_snapshot
        self._fail = fail
        self._backlog: list[tuple[Work, Any]] = []  # APPLY entries or RESTORE snapshots
        self._busy = False  # something is on the apply thread (or a snapshot is being saved)
        self._halted = False
        self.inline_off_until = 0.0  # loop time until which nothing is applied inline
        self.snapshot_index = 0
        self.snapshot_time: float | None = None  # when the latest snapshot was taken (unix)
        self.applied_term = 0
        self._snapshot_waiters: list[asyncio.Future[None]] = []  # snapshot_now() callers
        self._trailing: int | None = None  # what the latest snapshot_now() asked to keep
        self._forced = False  # a snapshot_now(force=True) is waiting
        self._snapshotting: asyncio.Task[None] | None = None

    async def recover(self, storage: Storage) -> None:
        """Bring the state machine up to the stored snapshot; set the applied index."""
        recover = getattr(self._sm, "recover", None)
        if recover is not None:
            recover(storage.last_index, functools.partial(stored_after, storage, self._payloads))
        upgrade_stored(storage, self._files)
        meta = storage.snapshot_meta
        self.snapshot_index = meta.index
        if self._sm.applied_index() < meta.index:
            # Crashed after saving a received snapshot but before restoring it.
            snapshot = storage.load_snapshot()
            assert snapshot is not None
            peers = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._restore, snapshot)
            self._book.update(peers)
        elif meta.index:
            self._files.prune(meta.index, meta.term)
        self._applied.set(self._sm.applied_index())
        self._payloads.applied(self._sm.applied_index())

    def halt(self) -> None:
        """The node stops (or failed): start nothing more."""
        self._halted = True
        self._backlog.clear()
        if self._snapshotting is not None:
            self._snapshotting.cancel()

    def close(self) -> None:
        self.halt()
        self._pool.shutdown(wait=True)
        for fut in self._snapshot_waiters:
            if not fut.done():
                fut.set_exception(RaftSQLError("node stopped"))
        self._snapshot_waiters = []

    # ---- applying -----------------------------------------------------------------

    def queue(self, work: Work, payload: Any) -> None:
        """Hand committed entries (or a snapshot to restore) to the state machine, in order."""
        self._backlog.append((work, payload))
        if not self._busy:
            self._apply_next()

    def _apply_next(self) -> None:
        """Apply what is queued, in order: every queued batch as one (group commit), on the
        loop itself when the state machine finishes it within INLINE_BUDGET (see
        _apply_inline), else on the apply thread; a restore always on the thread."""
        backlog = self._backlog
        while backlog and not self._busy and not self._halted:
            work, payload = backlog[0]
            if work is Work.RESTORE:
                del backlog[0]
                self._on_thread(work, payload, functools.partial(self._restore, payload))
                return
            if work is Work.BOOT:
                del backlog[0]
                self._on_thread(work, payload, functools.partial(self._boot, payload[0]))
                return
            n = 1
            while n < len(backlog) and backlog[n][0] is Work.APPLY:
                n += 1
            entries: list[Entry] = [e for _, batch in backlog[:n] for e in batch]
            del backlog[:n]
            try:
                results = self._apply_inline(entries)
            except Exception as e:  # the state machine failed: like a storage error, fatal
                self._fail(e)
                return
            if results is None:
                self._on_thread(work, entries, functools.partial(self._apply_entries, entries))
                return
            self._after_apply(entries, results)
        if self._snapshot_waiters and not self._busy and not self._halted:
            if self._applied.index > self.snapshot_index or self._forced:
                self._start_snapshot()
            else:  # the snapshot just taken holds everything applied
                for fut in self._snapshot_waiters:
                    if not fut.done():
                        fut.set_result(None)
                self._snapshot_waiters = []

    def _on_thread(self, work: Work, payload: Any, job: Callable[[], Any]) -> None:
        self._busy = True
        fut = asyncio.get_running_loop().run_in_executor(self._pool, job)
        fut.add_done_callback(functools.partial(self._done_on_thread, work, payload))

    def _done_on_thread(self, work: Work, payload: Any, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or self._halted:
            return
        exc = fut.exception()
        if exc is not None:  # the state machine failed: like a storage error, fatal
            self._fail(exc)
            return
        self._busy = False
        if work is Work.RESTORE:
            self._book.update(fut.result())
            self._set_applied(payload.meta.index, payload.meta.term)
        elif work is Work.BOOT:
            payload[1].set_result(fut.result())
        elif work is Work.APPLY:
            self._after_apply(payload, fut.result())
        self._apply_next()

    def _after_apply(self, entries: list[Entry], results: dict[int, Any]) -> None:
        self._on_applied(entries, results)
        self._set_applied(entries[-1].index, entries[-1].term)
        self._bytes_since_snapshot += sum(entry_size(e) for e in entries)
        if self._applied.index - self.snapshot_index >= self._threshold or (
                self._threshold_bytes and self._bytes_since_snapshot >= self._threshold_bytes
                and not self._snapshot_deferred()):
            self._start_snapshot()
            return
        checkpoint_due = getattr(self._sm, "checkpoint_due", None)
        if checkpoint_due is not None and checkpoint_due():
            # The WAL grew past SQLite's checkpoint size: copy it back off the loop.
            self._on_thread(Work.CHECKPOINT, None, self._sm.checkpoint)  # type: ignore[attr-defined]

    def _snapshot_deferred(self) -> bool:
        """Whether the state machine asks a snapshot by size to wait (a load is under way,
        whose chunks every snapshot would copy again)."""
        deferred = getattr(self._sm, "snapshot_deferred", None)
        return deferred is not None and bool(deferred())

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
        if apply_within is None or any(is_ref(e.data) for e in entries):
            return None  # (data kept beside the log is read on the apply thread)
        loop = asyncio.get_running_loop()
        if loop.time() < self.inline_off_until:
            return None

        def within(batch: list[tuple[int, bytes]]) -> list[Any] | None:
            if sum(len(data) for _, data in batch) > _INLINE_APPLY_BYTES:
                return None
            applied: list[Any] | None = apply_within(batch, INLINE_BUDGET)
            if applied is None:
                self.inline_off_until = loop.time() + INLINE_BACKOFF
            return applied

        return self._apply_with(entries, within)

    def _apply_entries(self, entries: list[Entry]) -> dict[int, Any]:
        results = self._apply_with(entries, self._sm.apply)
        assert results is not None  # apply() always applies
        return results

    def _apply_with(self, entries: list[Entry],
                    apply: Callable[[list[tuple[int, bytes]]], list[Any] | None]
                    ) -> dict[int, Any] | None:
        """Apply the commands among `entries` through `apply` and mark the last entry applied;
        the results by index, or None when `apply` applied nothing (None)."""
        results: dict[int, Any] = {}
        last = 0
        for batch in command_batches(entries, self._payloads):
            start = perf_counter()
            applied = apply(batch)
            if applied is None:
                return None  # (only ever the first batch: apply_within has no references)
            self._metrics.apply.observe(perf_counter() - start)
            for (index, _), result in zip(batch, applied, strict=True):
                results[index] = result
            last = batch[-1][0]
        if last != entries[-1].index:
            self._sm.mark_applied(entries[-1].index)
        return results

    def _set_applied(self, index: int, term: int) -> None:
        self.applied_term = term
        self._applied.set(index)
        self._payloads.applied(index)

    # ---- snapshots ----------------------------------------------------------------

    async def boot(self, path: str) -> str | None:
        """Replace the state with the file at `path` at the applied index, bypassing the log
        (/boot, a single-node cluster only: no other node holds the old state), then snapshot
        it with nothing trailing, so the log never replays what came before. Why the file
        was refused, or None."""
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.queue(Work.BOOT, (path, fut))
        refused = await fut
        if refused is None:
            await self.snapshot_now(trailing=0, force=True)
        return refused

    def _boot(self, path: str) -> str | None:
        try:
            self._sm.restore(path, self._sm.applied_index())
        except ValueError as e:
            return str(e)
        return None

    async def snapshot_now(self, trailing: int | None = None, force: bool = False) -> bool:
        """Snapshot what is applied and compact the log now (POST /snapshot), keeping
        `trailing` entries before it (None: the default); False, doing nothing, when the
        latest snapshot already holds everything applied (unless `force`: the state changed
        at the same index, a boot)."""
        if self._halted:
            raise RaftSQLError("node stopped")
        if self._applied.index <= self.snapshot_index and not force:
            return False
        self._trailing = trailing
        self._forced |= force
        fut = asyncio.get_running_loop().create_future()
        self._snapshot_waiters.append(fut)
        if not self._busy:
            self._apply_next()  # else once what is on the apply thread is done
        await fut
        return True

    def _start_snapshot(self) -> None:
        self._busy = True  # until _snapshot_done: nothing is applied meanwhile
        self._bytes_since_snapshot = 0
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        task = self._snapshotting = asyncio.get_running_loop().create_task(self._take_snapshot())
        task.add_done_callback(functools.partial(self._snapshot_done, waiters))

    async def _take_snapshot(self) -> None:
        index, term = self._applied.index, self.applied_term
        trailing, self._trailing = self._trailing, None
        self._forced = False
        start = perf_counter()
        loop = asyncio.get_running_loop()
        header = await loop.run_in_executor(self._pool, self._write_state, index, term)
        await self._save_snapshot(index, term, header.encode(), trailing)
        await loop.run_in_executor(self._pool, self._files.prune, index, term)
        self._metrics.snapshot.observe(perf_counter() - start)
        self._metrics.snapshot_bytes.inc(header.size)
        self.snapshot_index = index
        self.snapshot_time = time.time()

    def _snapshot_done(self, waiters: list[asyncio.Future[None]], task: asyncio.Task[None]) -> None:
        self._snapshotting = None
        failure = RaftSQLError("node stopped") if task.cancelled() else task.exception()
        for fut in waiters:
            if fut.done():
                continue
            if failure is None:
                fut.set_result(None)
            else:
                fut.set_exception(failure)
        if task.cancelled() or self._halted:
            return
        if failure is not None:
            self._fail(failure)
            return
        self._busy = False
        self._apply_next()

    def _write_state(self, index: int, term: int) -> Header:
        """On the apply thread: the state machine's state into its file, checked and durable
        (storage/snapshots.py); the header of the snapshot's data describes it."""
        part = self._files.partial(index, term, own=True)
        held = self._sm.snapshot(part)
        if held != index:
            raise StorageError(f"the state machine's snapshot holds {held}, not {index}")
        size, crc = checksum(part)
        self._files.install(index, term, own=True)
        return Header(self._book.everyone(), size, crc)

    def _restore(self, snapshot: Snapshot) -> dict[str, Any]:
        """On the apply thread: restore the state from its file; returns the snapshot's
        address book."""
        meta = snapshot.meta
        header = Header.decode(snapshot.data, meta.index)
        path = self._files.path(meta.index, meta.term)
        if not os.path.exists(path):
            raise StorageError(f"snapshot {meta.index}: its state {path} is missing")
        self._sm.restore(path, meta.index)
        self._files.prune(meta.index, meta.term)
        self.snapshot_index = meta.index
        self.snapshot_time = time.time()
        self._bytes_since_snapshot = 0
        self._metrics.snapshots_installed.inc()
        return header.peers


def command_batches(entries: list[Entry], payloads: Payloads) -> Iterator[list[tuple[int, bytes]]]:
    """The commands among `entries`, (index, data), in batches holding at most
    APPLY_BYTES of data kept beside the log (read as each batch is due)."""
    batch: list[tuple[int, bytes]] = []
    held = 0
    for e in entries:
        if e.type is not EntryType.NORMAL or not e.data:
            continue
        data = e.data
        if is_ref(data):
            if held and held + entry_size(e) > APPLY_BYTES:
                yield batch
                batch, held = [], 0
            held += entry_size(e)
            data = payloads.read(data)
        batch.append((e.index, data))
    if batch:
        yield batch


def stored_after(storage: Storage, payloads: Payloads, index: int
                 ) -> Iterator[tuple[int, bytes]] | None:
    """The stored commands (index, data) after `index`, read one at a time; None when some
    are compacted away."""
    if index < storage.first_index - 1:
        return None
    return ((e.index, payloads.read(e.data) if is_ref(e.data) else e.data)
            for e in storage.entries() if e.index > index and e.type is EntryType.NORMAL
            and e.data)
