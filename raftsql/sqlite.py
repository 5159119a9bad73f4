"""The replicated state machine: one SQLite database applied deterministically (DESIGN.md §3).

Every node applies the same log entries through one long-lived read-write connection and must
end with byte-identical user tables. What SQLite would otherwise take from the machine comes
from the entry instead: the clock (a VFS whose xCurrentTimeInt64 returns the entry's time_ms)
and randomness (random()/randomblob() drawing from a PRNG seeded by the entry's seed).

Group commit: one SQLite transaction per apply() batch, the applied index written in the same
transaction (blob I/O into raftsql_meta, which moves no counter user SQL can see). A command
with the `transaction` flag runs in a SAVEPOINT; without it each statement is atomic on its own
(SQLite's statement journal), as under rqlite's autocommit. A batch may be cut differently on
each node, so nothing may depend on where a batch starts: the connection counters
(last_insert_rowid(), changes(), total_changes()) are stored with the applied index and
restored on open, so SQL reading them sees the same values on a node that restarted or
installed a snapshot. total_changes() therefore counts user changes since the database was
created, not since the connection opened.

Refused (a per-statement error, identical on every node):
- BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE: the batch transaction belongs to raftsql; atomic
  requests use the `transaction` flag;
- ATTACH/DETACH: one database per cluster, no local files;
- PRAGMAs that set per-connection state a restarted node would lose (foreign_keys,
  recursive_triggers, ...), PRAGMA optimize (it depends on the connection's query history),
  and rqlite's five disallowed PRAGMAs;
- writes to raftsql_meta.
VACUUM runs between transactions when it is the first statement of a command without the
`transaction` flag; anywhere else (and VACUUM INTO always) SQLite itself refuses it: "cannot
VACUUM from within a transaction".

ON CONFLICT ROLLBACK and RAISE(ROLLBACK) end SQLite's transaction, which is the whole batch:
apply() then redoes the batch from its start, with that statement replayed as the failure it was
(see _TransactionLost), so the outcome is what autocommit would give, on every node.

Time budgets: apply_within() and query_within() let an event loop run the common, tiny batch
itself (a single-row write applies in ~20 us; a thread hop costs ~10x that) without ever
being held up long: a progress handler interrupts user SQL once the budget is spent, the
batch is rolled back to where it began (counters included), and the caller runs it again
with apply() / query() on a thread of its own. Since nothing of an over-budget attempt
remains, where a batch runs never changes what it does.

Known gap: once a rowid table holds rowid 9223372036854775807, SQLite picks new rowids at random
from its own PRNG, which apsw gives no way to seed; those rowids differ between nodes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import random
import re
import shutil
import struct
import threading
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import apsw

from raftsql.command import Command, StatementResult
from raftsql.errors import RaftSQLError, StorageError
from raftsql.sqlparams import BadStatementError, disallowed_pragma, is_empty, validate_statements
from raftsql.sqlsession import LOCAL_ERRORS, OP_MODES, QUERY_WRITE_ERROR, Session, run_reads

__all__ = ["BadStatementError", "Database", "QUERY_WRITE_ERROR", "disallowed_pragma",
           "validate_statements"]

# Unix epoch as a Julian day number, in ms: what xCurrentTimeInt64 adds to an entry's time_ms.
JULIAN_UNIX_EPOCH_MS = 210866760000000

_VACUUM = re.compile(r"\s*vacuum(?:\s+main)?\s*;?\s*", re.IGNORECASE)
_LEADING_INT = re.compile(r"\s*[+-]?\d+")
_FILL_COUNTER = ("WITH RECURSIVE n(i) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n "
                 "WHERE i < ?1) INSERT INTO temp.raftsql_counter SELECT i FROM n")
_KEEP = object()  # _Replay.rng_state: the statement leaves the PRNG as it is

# The state row of raftsql_meta: version, applied index, then the connection counters.
_META = struct.Struct("<qqqqq")
_META_VERSION = 1
_META_BLOB_SIZE = 64  # room to grow without changing the row's size (blob writes can't resize)
_vfs_ids = itertools.count(1)
_PROGRESS_STEPS = 1000  # SQLite VM steps between two checks of a time budget
CHECKPOINT_PAGES = 1000  # WAL pages after which apply() checkpoints (SQLite's own default)


@dataclass(slots=True)
class _Counters:
    last_rowid: int = 0
    changes: int = 0
    total: int = 0


class _ClockVFS(apsw.VFS):
    """The default VFS, except that 'now' is the time of the entry being applied."""

    def __init__(self, name: str):
        self.vfs_name = name
        self.now_ms = JULIAN_UNIX_EPOCH_MS  # before the first entry: 1970, never the local clock
        super().__init__(name, "")

    def xCurrentTimeInt64(self) -> int:  # noqa: N802 (SQLite's name)
        return self.now_ms

    def xCurrentTime(self) -> float:  # noqa: N802
        return self.now_ms / 86400000.0


@dataclass(slots=True)
class _Replay:
    """A statement that ended the batch transaction, replayed as the failure it was."""

    result: StatementResult
    rng_state: Any  # the PRNG after the statement (None: no draw yet in this entry)
    counters: _Counters | None  # the connection counters after it (None: leave them)


class _OverBudget(Exception):
    """apply_within() ran out of time: undo the batch, the caller applies it elsewhere."""


class _Budget:
    """A progress handler: interrupts a connection's user SQL once `deadline` has passed."""

    __slots__ = ("session", "deadline", "spent")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.deadline: float | None = None
        self.spent = False

    def __call__(self) -> bool:
        deadline = self.deadline
        if deadline is None or self.session.internal or perf_counter() <= deadline:
            return False  # raftsql's own statements are never interrupted
        self.spent = True
        return True

    def start(self, seconds: float) -> None:
        self.deadline = perf_counter() + seconds
        self.spent = False

    def over(self) -> bool:
        return self.spent or (self.deadline is not None and perf_counter() > self.deadline)

    def stop(self) -> None:
        self.deadline = None
        self.spent = False


class _TransactionLost(Exception):
    """User SQL rolled back the whole batch transaction (ON CONFLICT ROLLBACK, RAISE(ROLLBACK))."""

    def __init__(self, key: tuple[int, int], replay: _Replay):
        super().__init__(key)
        self.key = key
        self.replay = replay


class _Batch:
    """Progress through one apply() call. A segment is the part since the last commit point:
    the unit redone when user SQL rolls the transaction back."""

    __slots__ = ("todo", "results", "replays", "position", "segment_start", "segment_applied",
                 "segment_counters")

    def __init__(self, todo: list[tuple[int, int, Any]], results: list[Any]):
        self.todo = todo
        self.results = results
        self.replays: dict[tuple[int, int], _Replay] = {}
        self.position = 0
        self.segment_start = 0
        self.segment_applied = 0
        self.segment_counters = _Counters()


def _decode_command(data: Any) -> Command:
    cmd = Command.decode(data)
    if cmd.op not in OP_MODES:
        raise ValueError(f"unknown op {cmd.op!r}")
    if type(cmd.statements) is not list:
        raise ValueError("statements must be a list")
    if type(cmd.time_ms) is not int or not 0 <= cmd.time_ms + JULIAN_UNIX_EPOCH_MS < 1 << 63:
        raise ValueError(f"bad time {cmd.time_ms!r}")
    if type(cmd.seed) is not int:
        raise ValueError(f"bad seed {cmd.seed!r}")
    return cmd


class Database:
    """The SQLite database `raftsql serve` replicates (DATA_DIR/db.sqlite, WAL mode).

    apply(), apply_within(), mark_applied(), restore() and checkpoint() are called by one
    thread at a time, in log order (the driver's apply thread, or its loop for
    apply_within()); query(), query_within() and snapshot() may run on any thread, on
    read-only connections of their own.
    """

    def __init__(self, path: str, *, readers: int = 4):
        self.path = os.path.abspath(path)
        self._lock = threading.Lock()
        self._vfs = _ClockVFS(f"raftsql-clock-{os.getpid()}-{next(_vfs_ids)}")
        self._rng: random.Random | None = None
        self._seed = 0
        self._tc_offset = 0  # conn.total_changes() minus what user SQL sees as total_changes()
        self._wal_pages = 0
        try:
            self._writer = Session(self._open_writer(), writer=True)
            self._budget = _Budget(self._writer)
            self._writer.conn.set_progress_handler(self._budget, _PROGRESS_STEPS)
            # Tracking the WAL's size turns SQLite's automatic checkpoint off: apply() and
            # checkpoint() do it instead, never apply_within() (a checkpoint can't be bounded).
            self._writer.conn.set_wal_hook(self._on_wal_commit)
            self._register_functions()
            applied, counters = self._init_meta()
            self._set_counters(counters)
        except BaseException:
            self._vfs.unregister()
            raise
        self._applied = applied
        self._dirty = False  # mark_applied() raised _applied past what raftsql_meta holds
        self._readers: queue.SimpleQueue[Session] = queue.SimpleQueue()
        self._reader_budgets: dict[Session, _Budget] = {}
        self._reader_count = 0
        self._max_readers = readers
        self._pool_lock = threading.Lock()
        self._closed = False

    # ---- opening

    def _open_writer(self) -> apsw.Connection:
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        conn = apsw.Connection(self.path, flags=flags, vfs=self._vfs.vfs_name,
                               statementcachesize=512)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        # The Raft log is the durable record: after a power cut the database may lose its last
        # commits, applied index included, and the log replays them.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _register_functions(self) -> None:
        conn = self._writer.conn
        # Not deterministic to SQLite: ORDER BY random() must draw once per row.
        conn.create_scalar_function("random", self._random, 0)
        conn.create_scalar_function("randomblob", self._randomblob, 1)
        conn.create_scalar_function("total_changes", self._total_changes, 0)

    def _open_reader(self) -> Session:
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
        session = Session(conn, writer=False)
        budget = self._reader_budgets[session] = _Budget(session)
        conn.set_progress_handler(budget, _PROGRESS_STEPS)
        return session

    def _on_wal_commit(self, conn: apsw.Connection, name: str, pages: int) -> int:
        self._wal_pages = pages
        return apsw.SQLITE_OK

    # ---- deterministic functions

    def _entry_rng(self) -> random.Random:
        rng = self._rng
        if rng is None:  # most entries draw nothing: seed lazily
            rng = self._rng = random.Random(self._seed & 0xFFFFFFFFFFFFFFFF)
        return rng

    def _random(self) -> int:
        return self._entry_rng().getrandbits(64) - (1 << 63)

    def _randomblob(self, n: Any) -> bytes:
        size = _sqlite_int(n)
        if size > self._writer.conn.limit(apsw.SQLITE_LIMIT_LENGTH):
            raise apsw.TooBigError("string or blob too big")
        return self._entry_rng().randbytes(max(size, 1))

    def _total_changes(self) -> int:
        return self._writer.conn.total_changes() - self._tc_offset

    # ---- raftsql_meta: the applied index and the connection counters, in one fixed-size blob

    def _init_meta(self) -> tuple[int, _Counters]:
        """Create raftsql_meta when it is missing (new or restored database) and read it."""
        w = self._writer
        try:
            rows = w.exec_control("SELECT state FROM raftsql_meta WHERE id = 1")
        except apsw.SQLError:  # no such table, or not ours
            w.exec_control("DROP TABLE IF EXISTS raftsql_meta")
            w.exec_control("CREATE TABLE raftsql_meta(id INTEGER PRIMARY KEY, state BLOB NOT NULL)")
            rows = []
        state = rows[0][0] if rows else None
        if type(state) is not bytes or len(state) != _META_BLOB_SIZE:
            w.exec_control("INSERT OR REPLACE INTO raftsql_meta VALUES(1, zeroblob(?))",
                           (_META_BLOB_SIZE,))
            return 0, _Counters()
        version, applied, last_rowid, changes, total = _META.unpack_from(state)
        if version == 0:
            return 0, _Counters()
        if version != _META_VERSION:
            raise StorageError(f"raftsql_meta: unsupported state version {version}")
        return applied, _Counters(last_rowid, changes, total)

    def _write_meta(self) -> None:
        conn = self._writer.conn
        state = _META.pack(_META_VERSION, self._applied, conn.last_insert_rowid(), conn.changes(),
                           self._total_changes())
        # Blob I/O rather than an UPDATE: it moves none of the counters user SQL can see.
        blob = conn.blob_open("main", "raftsql_meta", "state", 1, True)
        try:
            blob.write(state)
        finally:
            blob.close()

    def _counters(self) -> _Counters:
        conn = self._writer.conn
        return _Counters(conn.last_insert_rowid(), conn.changes(), self._total_changes())

    def _set_counters(self, counters: _Counters) -> None:
        """Make last_insert_rowid(), changes() and total_changes() read `counters`."""
        w = self._writer
        # Only a statement that changes N rows sets changes() to N: change N rows of a scratch
        # table in temp (never part of the replicated file), then drop it.
        w.exec_control("CREATE TEMP TABLE IF NOT EXISTS raftsql_counter(x)")
        w.exec_control(_FILL_COUNTER, (counters.changes,))
        w.exec_control("DROP TABLE temp.raftsql_counter")
        w.conn.set_last_insert_rowid(counters.last_rowid)
        self._tc_offset = w.conn.total_changes() - counters.total

    # ---- applying committed entries

    def applied_index(self) -> int:
        """The last log index applied (or marked applied): replay starts after it."""
        return self._applied

    def mark_applied(self, index: int) -> None:
        """An entry with nothing to apply (no-op, configuration). Stored with the next batch
        (or at close): until then a restart replays it, which is harmless."""
        with self._lock:
            if index > self._applied:
                self._applied = index
                self._dirty = True

    def apply(self, entries: list[tuple[int, bytes]]) -> list[Any]:
        """Apply committed entries (index, Command bytes) in one transaction.

        One result per entry: the list of StatementResult, or None for an entry at or below
        applied_index() (already applied: replay after a restart is idempotent).
        """
        with self._lock:
            results = self._apply_locked(entries)
            if self._wal_pages >= CHECKPOINT_PAGES:
                self._checkpoint()
            return results

    def apply_within(self, entries: list[tuple[int, bytes]], seconds: float) -> list[Any] | None:
        """apply(), for a caller that must not be held up longer than `seconds` (an event
        loop): None, with nothing applied, if it would take longer, if it holds a VACUUM
        (which can't be undone), or if another thread is applying. The caller then applies
        the same entries with apply(): the outcome is the same, since a batch that runs out
        of time is rolled back to where it started, counters included. Never checkpoints:
        see checkpoint_due()."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._budget.start(seconds)
            try:
                return self._apply_locked(entries)
            except _OverBudget:
                return None
            finally:
                self._budget.stop()
        finally:
            self._lock.release()

    def checkpoint_due(self) -> bool:
        """The WAL has grown enough that checkpoint() should run (on the apply thread)."""
        return self._wal_pages >= CHECKPOINT_PAGES

    def checkpoint(self) -> None:
        """Copy the WAL back into the database, as SQLite's automatic checkpoint would."""
        with self._lock:
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            self._writer.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        except apsw.BusyError:
            return  # a reader holds the WAL: the next one will do (as SQLite's own would)
        except LOCAL_ERRORS as e:
            raise StorageError(f"state machine: checkpoint: {type(e).__name__}: {e}") from e
        self._wal_pages = 0

    def _apply_locked(self, entries: list[tuple[int, bytes]]) -> list[Any]:
        results: list[Any] = [None] * len(entries)
        todo = [(pos, index, data) for pos, (index, data) in enumerate(entries)
                if index > self._applied]
        if todo or self._dirty:
            self._apply_batch(_Batch(todo, results))
        return results

    def _apply_batch(self, batch: _Batch) -> None:
        try:
            self._start_segment(batch)
            while batch.position < len(batch.todo):
                pos, index, data = batch.todo[batch.position]
                try:
                    batch.results[pos] = self._apply_entry(batch, pos, data)
                except _TransactionLost as lost:
                    self._redo_segment(batch, lost)
                    continue
                self._applied = index
                batch.position += 1
            self._commit()
        except _OverBudget:
            self._undo(batch)
            raise
        except BaseException as e:
            self._abandon_segment(batch)
            if isinstance(e, LOCAL_ERRORS):
                raise StorageError(f"state machine: {type(e).__name__}: {e}") from e
            raise

    def _start_segment(self, batch: _Batch) -> None:
        batch.segment_start = batch.position
        batch.segment_applied = self._applied
        batch.segment_counters = self._counters()
        self._writer.exec_control("BEGIN IMMEDIATE")

    def _redo_segment(self, batch: _Batch, lost: _TransactionLost) -> None:
        # SQLite rolled back to the segment's start. Run the segment again, the statement that
        # did it replayed as its failure: the same outcome as on a node whose batch began there.
        batch.replays[lost.key] = lost.replay
        batch.position = batch.segment_start
        self._applied = batch.segment_applied
        self._writer.exec_control("BEGIN IMMEDIATE")
        self._set_counters(batch.segment_counters)

    def _commit(self) -> None:
        self._write_meta()
        self._writer.exec_control("COMMIT")
        self._dirty = False

    def _undo(self, batch: _Batch) -> None:
        """Back to where an over-budget batch started, exactly: apply() redoes it next, and
        must give what it would have given. Nothing was committed (a VACUUM, the one thing
        that commits mid-batch, goes over budget before it runs)."""
        assert batch.segment_start == 0
        self._budget.stop()
        self._applied = batch.segment_applied
        try:
            if self._writer.conn.in_transaction:
                self._writer.exec_control("ROLLBACK")
            self._set_counters(batch.segment_counters)
        except apsw.Error as e:
            raise StorageError(f"state machine: undoing a batch: {type(e).__name__}: {e}") from e

    def _abandon_segment(self, batch: _Batch) -> None:
        self._applied = batch.segment_applied
        with contextlib.suppress(Exception):
            if self._writer.conn.in_transaction:
                self._writer.exec_control("ROLLBACK")
            self._set_counters(batch.segment_counters)

    def _apply_entry(self, batch: _Batch, pos: int, data: Any) -> list[StatementResult]:
        try:
            cmd = _decode_command(data)
        except Exception as e:  # a corrupt entry is an error result, the same on every node
            return [StatementResult(error=f"invalid command: {e}")]
        self._vfs.now_ms = cmd.time_ms + JULIAN_UNIX_EPOCH_MS
        self._seed = cmd.seed
        self._rng = None
        mode = OP_MODES[cmd.op]
        if cmd.transaction:
            return self._apply_transaction(batch, pos, cmd.statements, mode)
        results: list[StatementResult] = []
        for j, stmt in enumerate(cmd.statements):
            if not is_empty(stmt):
                results.append(self._apply_statement(batch, pos, j, stmt, mode, not results))
        return results

    def _apply_transaction(self, batch: _Batch, pos: int, stmts: list[Any],
                           mode: int) -> list[StatementResult]:
        """rqlite's ?transaction: stop at the first error, undo the command's statements."""
        w = self._writer
        w.exec_control("SAVEPOINT raftsql_tx")
        results: list[StatementResult] = []
        for j, stmt in enumerate(stmts):
            if is_empty(stmt):
                continue
            result = self._apply_statement(batch, pos, j, stmt, mode, False)
            results.append(result)
            if result.error is not None:
                w.exec_control("ROLLBACK TO raftsql_tx")
                break
        w.exec_control("RELEASE raftsql_tx")
        return results

    def _apply_statement(self, batch: _Batch, pos: int, j: int, stmt: Any, mode: int,
                         first: bool) -> StatementResult:
        if batch.replays:
            replay = batch.replays.get((pos, j))
            if replay is not None:
                return self._replay(replay)
        budget = self._budget
        if budget.deadline is not None and budget.over():
            raise _OverBudget  # checked between statements too: many short ones add up
        if first and type(stmt) is str and _VACUUM.fullmatch(stmt):
            if budget.deadline is not None:
                raise _OverBudget  # VACUUM commits what came before it: it can't be undone
            return self._vacuum(batch, pos, j)
        result = self._writer.run(stmt, mode)
        if budget.spent:
            raise _OverBudget  # the statement was interrupted: its error is not its outcome
        if result.error is not None and not self._writer.conn.in_transaction:
            rng = self._rng
            replay = _Replay(result, rng.getstate() if rng else None, self._counters())
            raise _TransactionLost((pos, j), replay)
        return result

    def _replay(self, replay: _Replay) -> StatementResult:
        if replay.counters is not None:
            self._set_counters(replay.counters)
        if replay.rng_state is not _KEEP:
            self._rng = None
            if replay.rng_state is not None:
                self._rng = random.Random()
                self._rng.setstate(replay.rng_state)
        return replay.result

    def _vacuum(self, batch: _Batch, pos: int, j: int) -> StatementResult:
        """VACUUM can't run in a transaction: commit the segment, vacuum, start the next one.

        Only a command's first statement gets here, so the commit holds whole entries; a crash
        before the entry's own commit replays it, VACUUM included, which is harmless.
        """
        start = perf_counter()
        self._commit()
        w = self._writer
        try:
            w.exec_control("VACUUM")  # internal: VACUUM attaches and begins under the hood
            result = StatementResult(last_insert_id=w.conn.last_insert_rowid(),
                                     rows_affected=w.conn.changes(), time=perf_counter() - start)
        except LOCAL_ERRORS:
            raise
        except apsw.Error as e:
            result = StatementResult(error=str(e), time=perf_counter() - start)
        batch.replays[(pos, j)] = _Replay(result, _KEEP, None)
        self._start_segment(batch)
        return result

    # ---- reads

    def query(self, stmts: list[Any], transaction: bool = False) -> list[StatementResult]:
        """Run reads on a read-only connection of the pool (any thread).

        A statement that writes fails with rqlite's "attempt to change database via query
        operation". With `transaction` the reads share one snapshot and stop at the first error.
        """
        session = self._acquire_reader()
        try:
            return run_reads(session, stmts, transaction)
        finally:
            self._release_reader(session)

    def query_within(self, stmts: list[Any], transaction: bool, seconds: float
                     ) -> list[StatementResult] | None:
        """query(), for a caller that must not be held up longer than `seconds` (an event
        loop): None if it would take longer, or if no read connection is free right now."""
        session = self._try_acquire_reader()
        if session is None:
            return None
        budget = self._reader_budgets[session]
        budget.start(seconds)
        try:
            results = run_reads(session, stmts, transaction)
            return None if budget.spent else results  # spent: a statement was interrupted
        finally:
            budget.stop()
            self._release_reader(session)

    def _try_acquire_reader(self) -> Session | None:
        if self._closed:
            raise RaftSQLError("store not open")
        with contextlib.suppress(queue.Empty):
            return self._readers.get_nowait()
        with self._pool_lock:
            if self._reader_count >= self._max_readers:
                return None
            self._reader_count += 1
        try:
            return self._open_reader()
        except BaseException:
            with self._pool_lock:
                self._reader_count -= 1
            raise

    def _acquire_reader(self) -> Session:
        if self._closed:
            raise RaftSQLError("store not open")
        with contextlib.suppress(queue.Empty):
            return self._readers.get_nowait()
        with self._pool_lock:
            grow = self._reader_count < self._max_readers
            self._reader_count += grow
        if not grow:
            return self._readers.get()
        try:
            return self._open_reader()
        except BaseException:
            with self._pool_lock:
                self._reader_count -= 1
            raise

    def _release_reader(self, session: Session) -> None:
        if self._closed:
            session.conn.close()
        else:
            self._readers.put(session)

    # ---- snapshots

    def snapshot(self, path: str) -> int:
        """Copy the database into `path` (a self-contained file, rollback-journal mode) through
        the backup API, from a read transaction of its own; returns the applied index it holds.

        A pending mark_applied() is stored first, so a snapshot taken between batches holds
        everything applied so far.
        """
        with self._lock:
            if self._dirty:
                self._apply_batch(_Batch([], []))
        _remove_db_files(path)
        source = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            target = apsw.Connection(path)
            try:
                with target.backup("main", source, "main") as backup:
                    backup.step()
                target.execute("PRAGMA journal_mode=DELETE").fetchall()
                row = target.execute("SELECT state FROM raftsql_meta WHERE id = 1").fetchone()
            finally:
                target.close()
        finally:
            source.close()
        _fsync_file(path)
        return _META.unpack_from(row[0])[1] if row else 0

    def restore(self, path: str, applied_index: int | None = None) -> None:
        """Replace the database with the SQLite file at `path` (InstallSnapshot, or a load).

        The applied index and counters come from the file's raftsql_meta (zero when it has
        none), or applied_index when given. Readers see the old or the new database, never a mix.
        Raises ValueError when `path` is not a SQLite database.
        """
        with self._lock:
            source_path = self._prepare_restore_source(path)
            try:
                source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READONLY)
                try:
                    with self._writer.conn.backup("main", source, "main") as backup:
                        backup.step()
                finally:
                    source.close()
            finally:
                _remove_db_files(source_path)
            applied, counters = self._init_meta()
            if applied_index is not None:
                applied = applied_index
            self._applied = applied
            self._set_counters(counters)
            self._dirty = applied_index is not None
            if self._dirty:
                self._apply_batch(_Batch([], []))  # store the given index now

    def _prepare_restore_source(self, path: str) -> str:
        """A private copy of `path` with this database's page size (a WAL-mode backup target
        can't change its page size) in rollback-journal mode."""
        copy = self.path + ".restore"
        _remove_db_files(copy)
        shutil.copyfile(path, copy)
        page_size = self._writer.conn.execute("PRAGMA page_size").fetchall()[0][0]
        try:
            conn = apsw.Connection(copy)
            try:
                conn.execute("PRAGMA journal_mode=DELETE").fetchall()
                if conn.execute("PRAGMA page_size").fetchall()[0][0] != page_size:
                    conn.execute(f"PRAGMA page_size={int(page_size)}; VACUUM")
            finally:
                conn.close()
        except (apsw.NotADBError, apsw.CorruptError) as e:
            _remove_db_files(copy)
            raise ValueError(f"not a SQLite database: {e}") from e
        return copy

    # ---- closing

    def close(self) -> None:
        """Store a pending mark_applied() and close every connection."""
        with self._lock:
            if self._closed:
                return
            if self._dirty:
                self._apply_batch(_Batch([], []))
            self._closed = True
            with contextlib.suppress(queue.Empty):
                while True:
                    self._readers.get_nowait().conn.close()
            self._writer.conn.close()
            self._vfs.unregister()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sqlite_int(value: Any) -> int:
    """A function argument read as an integer, as sqlite3_value_int64 would (near enough:
    what matters is that every node reads it the same way)."""
    if type(value) is int:
        return value
    if type(value) is float:
        return int(value) if abs(value) < 1 << 63 else 0
    if type(value) is bytes:
        value = value.decode("latin-1")
    if type(value) is str:
        m = _LEADING_INT.match(value)
        return int(m.group()) if m else 0
    return 0


def _remove_db_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
