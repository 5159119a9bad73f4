"""The replicated state machine: one SQLite database applied deterministically (DESIGN.md §3).

Every node applies the same log entries through one long-lived read-write connection and must
end with byte-identical user tables. What SQLite would otherwise take from the machine comes
from the entry instead: the clock (a VFS whose xCurrentTimeInt64 returns the entry's time_ms)
and randomness (random()/randomblob() drawing from a PRNG seeded by the entry's seed).

Group commit: one SQLite transaction per apply() batch, holding the applied index in the
header's application_id field (modulo 2^32, resolved against the Raft log's end at open:
docs/design.md §8), so the database holds no table of raftsql's. A command with the
`transaction` flag runs in a SAVEPOINT; without it each statement is atomic on its own, as
under rqlite's autocommit. Nothing may depend on where a batch starts: the connection counters
start from zero with every command (session.py), foreign_keys is what the command says.

Refused (a per-statement error, identical on every node):
- BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE: the batch transaction belongs to raftsql; atomic
  requests use the `transaction` flag;
- ATTACH/DETACH: one database per cluster, no local files;
- PRAGMAs that set per-connection state a restarted node would lose, PRAGMA optimize, rqlite's
  five disallowed PRAGMAs, and PRAGMA application_id (it holds the applied index);
- writes to raftsql_kv (the config store's) and objects named raftsql_*.
VACUUM runs between transactions when it is the first statement of a command without the
`transaction` flag; anywhere else (and VACUUM INTO always) SQLite itself refuses it: "cannot
VACUUM from within a transaction".

ON CONFLICT ROLLBACK and RAISE(ROLLBACK) end SQLite's transaction, which is the whole batch:
apply() then redoes the batch from its start, with that statement replayed as the failure it was
(see _TransactionLost), so the outcome is what autocommit would give, on every node.

Time budgets: apply_within() and query_within() let an event loop run the common, tiny batch
itself (a thread hop costs ~10x a one-row write): a progress handler interrupts user SQL once
the budget is spent, the batch is rolled back to where it began, and the caller runs it again
on a thread with apply() / query(); where a batch runs never changes what it does.

Config store entries (Op.KV) are applied by the extension the database is given
(raftsql/sql/extension.py), in the same batches; idempotency keys and the extension keep
their bookkeeping in the sidecar file (raftsql/sql/sidecar.py).

Known gap: once a rowid table holds rowid 9223372036854775807, SQLite picks new rowids at random
from its own PRNG, which apsw gives no way to seed; those rowids differ between nodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import apsw

from raftsql.errors import StorageError
from raftsql.sql import backup, keys, load
from raftsql.sql.command import (
    Command,
    Op,
    ReadOptions,
    StatementResult,
    decode_checked,
    writes_bookkeeping,
)
from raftsql.sql.determinism import ClockVFS, EntryRandom
from raftsql.sql.extension import Extension
from raftsql.sql.files import remove_db_files, restore_copy
from raftsql.sql.header import resolve_index, stored_index
from raftsql.sql.keys import KeyStore
from raftsql.sql.params import BadStatementError, disallowed_pragma, is_empty, validate_statements
from raftsql.sql.readers import Readers
from raftsql.sql.session import (
    LOCAL_ERRORS,
    OP_MODES,
    QUERY_WRITE_ERROR,
    Limits,
    Session,
)
from raftsql.sql.sidecar import SIDECAR_SUFFIX, Sidecar

__all__ = ["BadStatementError", "Database", "QUERY_WRITE_ERROR", "disallowed_pragma",
           "resolve_index", "stored_index", "validate_statements"]

# Unix epoch as a Julian day number, in ms: what xCurrentTimeInt64 adds to an entry's time_ms.

_VACUUM = re.compile(r"\s*vacuum(?:\s+main)?\s*;?\s*", re.IGNORECASE)
_KEEP = object()  # _Replay.rng_state: the statement leaves the PRNG as it is
CHECKPOINT_PAGES = 1000  # WAL pages after which apply() checkpoints (SQLite's own default)
_READ = ReadOptions()

log = logging.getLogger("raftsql.sql")


@dataclass(slots=True)
class _Replay:
    """A statement that ended the batch transaction, replayed as the failure it was."""

    result: StatementResult
    rng_state: Any  # the PRNG after the statement (None: no draw yet in this entry)


class _OverBudget(Exception):
    """apply_within() ran out of time: undo the batch, the caller applies it elsewhere."""


class _TransactionLost(Exception):
    """User SQL rolled back the whole batch transaction (ON CONFLICT ROLLBACK, RAISE(ROLLBACK))."""

    def __init__(self, key: tuple[int, int], replay: _Replay):
        super().__init__(key)
        self.key = key
        self.replay = replay


class _Batch:
    """Progress through one apply() call. A segment is the part since the last commit point:
    the unit redone when user SQL rolls the transaction back."""

    __slots__ = ("todo", "results", "replays", "position", "segment_start", "segment_applied")

    def __init__(self, todo: list[tuple[int, int, Any]], results: list[Any]):
        self.todo = todo
        self.results = results
        self.replays: dict[tuple[int, int], _Replay] = {}
        self.position = 0
        self.segment_start = 0
        self.segment_applied = 0


class Database:
    """The SQLite database `raftsql serve` replicates (DATA_DIR/db.sqlite, WAL mode).

    apply(), apply_within(), mark_applied(), restore() and checkpoint() are called by one
    thread at a time, in log order (the driver's apply thread, or its loop for
    apply_within()); query(), query_within() and snapshot() may run on any thread, on
    read-only connections of their own.
    """

    def __init__(self, path: str, *, readers: int = 4, fk: bool = False,
                 extension: Extension | None = None):
        """`fk`: this node's --fk, for its read connections (what apply enforces is what each
        command says). `extension`: what applies Op.KV entries (raftsql/kv/)."""
        self.path = os.path.abspath(path)
        self._lock = threading.Lock()
        self._vfs = ClockVFS()
        self._wal_pages = 0
        self._fk = False  # foreign_keys on the write connection (SQLite's default)
        try:
            self._writer = Session(self._open_writer(), writer=True)
            self._rand = EntryRandom(lambda: self._writer.conn.limit(apsw.SQLITE_LIMIT_LENGTH))
            self._limits: Limits = self._writer.limits
            # Tracking the WAL's size turns SQLite's automatic checkpoint off: apply() and
            # checkpoint() do it instead, never apply_within() (a checkpoint can't be bounded).
            self._writer.conn.set_wal_hook(self._on_wal_commit)
            self._register_functions()
            self._stored_index = self._writer.exec_control("PRAGMA application_id")[0][0]
        except BaseException:
            self._vfs.unregister()
            raise
        self._applied = resolve_index(self._stored_index, None)
        self._dirty = False  # mark_applied() raised _applied past what the header holds
        # When the leader wrote the last command applied (its clock): how old the data is,
        # for freshness_strict. None until a command is applied.
        self.applied_time_ms: int | None = None
        self._readers = Readers(self.path, readers, fk)
        self._extension = extension
        tables = [keys.TABLE, load.TABLE, *(extension.tables if extension else ())]
        self._book = Sidecar(self.path + SIDECAR_SUFFIX, tables)  # raftsql/sql/sidecar.py
        self._keys = KeyStore(self._book)
        self._book_reconciled = False  # what entries not applied wrote is undone (sidecar.py)
        self._loading_at = 0  # the entry of the latest chunk of a load under way (0: none)
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
        conn.create_scalar_function("random", self._rand.random, 0)
        conn.create_scalar_function("randomblob", self._rand.randomblob, 1)
        # The counters of the command, not of the connection (raftsql/sqlsession.py).
        conn.create_scalar_function("changes", self._writer.changes, 0)
        conn.create_scalar_function("total_changes", self._writer.total_changes, 0)

    def _on_wal_commit(self, conn: apsw.Connection, name: str, pages: int) -> int:
        self._wal_pages = pages
        return apsw.SQLITE_OK

    def recover(self, log_end: int,
                stored_after: Callable[[int], Iterable[tuple[int, bytes]] | None] | None = None
                ) -> None:
        """The driver, at start: the Raft log ends at `log_end`. The applied index is
        resolved against it (see the module docstring); a database that claims more than the
        log holds comes from elsewhere and is refused (StorageError).

        `stored_after(index)`: the stored entries (index, data) after `index`, or None when
        some were compacted away. With it, a keys file found behind the database (a power
        cut, raftsql/sql/keys.py) is checked against the log, and the database starts over
        (from the snapshot, which the driver then restores) when it cannot be trusted."""
        finished = load.finish_cut(self)  # a load a crash cut short (sql/load.py)
        if finished is not None:
            self._stored_index = stored_index(finished)
        try:
            self._applied = resolve_index(self._stored_index, log_end)
        except ValueError as e:
            raise StorageError(f"{self.path} does not belong with this Raft log: {e}") from None
        if stored_after is not None and self._book.lost(self._applied, stored_after,
                                                        writes_bookkeeping):
            log.warning("%s: the bookkeeping (idempotency keys, config store sessions) of "
                        "entries up to %d is lost (a power cut?): the database starts over "
                        "from the snapshot and the log", self.path, self._applied)
            self._start_over()
        self._reconcile_book()

    def _start_over(self) -> None:
        """Empty, applied index 0: the driver restores the snapshot and replays the log."""
        empty = self.path + ".empty"
        remove_db_files(empty)
        apsw.Connection(empty).close()
        try:
            self.restore(empty, 0)
        finally:
            remove_db_files(empty)

    def _reconcile_book(self) -> None:
        self._book.rewind(self._applied)  # the database's file may have lost commits
        self._book_reconciled = True
        if self._extension is not None:
            self._extension.committed(self._applied)  # what the file holds

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
        of time is rolled back to where it started. Never checkpoints:
        see checkpoint_due()."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._limits.start(seconds)
            try:
                return self._apply_locked(entries)
            except _OverBudget:
                return None
            finally:
                self._limits.stop()
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
            wal, copied = self._writer.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            if copied == wal:  # the whole WAL is in the fsynced file: durable up to here
                self._book.purge(self._applied)
        except apsw.BusyError:
            return  # a reader holds the WAL: the next one will do (as SQLite's own would)
        except LOCAL_ERRORS as e:
            raise StorageError(f"state machine: checkpoint: {type(e).__name__}: {e}") from e
        self._wal_pages = 0

    def _apply_locked(self, entries: list[tuple[int, bytes]]) -> list[Any]:
        results: list[Any] = [None] * len(entries)
        todo = [(pos, index, data) for pos, (index, data) in enumerate(entries)
                if index > self._applied]
        if not self._book_reconciled:
            self._reconcile_book()
        if todo or self._dirty:
            self._apply_batch(_Batch(todo, results))
        return results

    def _apply_batch(self, batch: _Batch) -> None:
        try:
            self._start_segment(batch)
            while batch.position < len(batch.todo):
                pos, index, data = batch.todo[batch.position]
                try:
                    batch.results[pos] = self._apply_entry(batch, pos, index, data)
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
        self._writer.exec_control("BEGIN IMMEDIATE")

    def _redo_segment(self, batch: _Batch, lost: _TransactionLost) -> None:
        # SQLite rolled back to the segment's start. Run the segment again, the statement that
        # did it replayed as its failure: the same outcome as on a node whose batch began there
        # (the counters start afresh with each command, so they come out the same too).
        batch.replays[lost.key] = lost.replay
        batch.position = batch.segment_start
        self._applied = batch.segment_applied
        self._rolled_back()
        self._writer.exec_control("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        # The applied index, in the same transaction as what it says was applied.
        self._writer.exec_control(f"PRAGMA application_id = {stored_index(self._applied)}")
        self._book.commit(self._applied)  # first: a crash leaves it ahead, never behind
        self._writer.exec_control("COMMIT")
        self._dirty = False
        if self._extension is not None:
            self._extension.committed(self._applied)

    def _rolled_back(self) -> None:
        self._book.rollback()
        if self._extension is not None:
            self._extension.rolled_back()

    def _outside_transaction(self, batch: _Batch, work: Callable[[], Any]) -> Any:
        """Commit what the batch applied so far, do `work` (what SQLite can't do inside a
        transaction), start a new segment. Only before a command's first statement, so the
        commit holds whole entries; a crash before the entry's own commit replays it."""
        if self._limits.deadline is not None:
            raise _OverBudget  # a commit can't be undone
        self._commit()
        try:
            return work()
        finally:
            self._start_segment(batch)

    def _undo(self, batch: _Batch) -> None:
        """Back to where an over-budget batch started, exactly: apply() redoes it next, and
        must give what it would have given. Nothing was committed (a VACUUM, the one thing
        that commits mid-batch, goes over budget before it runs)."""
        assert batch.segment_start == 0
        self._limits.stop()
        self._applied = batch.segment_applied
        try:
            self._rolled_back()
            if self._writer.conn.in_transaction:
                self._writer.exec_control("ROLLBACK")
        except apsw.Error as e:
            raise StorageError(f"state machine: undoing a batch: {type(e).__name__}: {e}") from e

    def _abandon_segment(self, batch: _Batch) -> None:
        self._applied = batch.segment_applied
        with contextlib.suppress(Exception):
            self._rolled_back()
            if self._writer.conn.in_transaction:
                self._writer.exec_control("ROLLBACK")

    def _apply_entry(self, batch: _Batch, pos: int, index: int, data: Any) -> Any:
        try:
            cmd = decode_checked(data)
        except Exception as e:  # a corrupt entry is an error result, the same on every node
            return [StatementResult(error=f"invalid command: {e}")]
        if cmd.key is None:
            return self._apply_command(batch, pos, index, cmd)
        first = self._keys.first_outcome(cmd.key, index, cmd.time_ms, cmd.key_window_ms,
                                         cmd.key_capacity)
        if first is not None:
            return first
        outcome = self._apply_command(batch, pos, index, cmd)
        self._keys.record(cmd.key, index, cmd.time_ms, outcome)
        return outcome

    def _apply_command(self, batch: _Batch, pos: int, index: int, cmd: Command) -> Any:
        if cmd.op is Op.KV:
            return self._apply_extension(index, cmd)
        if cmd.op is Op.LOAD:
            return self._apply_load(batch, index, cmd)
        return self._run_command(batch, pos, cmd)

    def _apply_load(self, batch: _Batch, index: int, cmd: Command) -> list[StatementResult]:
        """A chunk of a SQLite file being loaded (raftsql/sql/load.py); the last one replaces
        the database with the file, between two transactions of the batch."""
        if self._limits.deadline is not None:
            raise _OverBudget  # a load's last chunk commits mid-batch: never inline
        self._book.begin()
        error = load.apply(self._book.conn, index, cmd.statements, cmd.payload,
                           self.path + ".load", lambda file: self._outside_transaction(
                               batch, lambda: self._replaced_by(file, index)), self._book.begin)
        self._loading_at = index if load.leaves_open(cmd.statements, error) else 0
        return [StatementResult(error=error)] if error else []

    def snapshot_deferred(self) -> bool:
        """A load is under way: a snapshot now would copy its chunks, and the next one
        again (sql/load.py). Not if it was left cut short, IDLE_ENTRIES ago."""
        return bool(self._loading_at) and self._applied - self._loading_at < load.IDLE_ENTRIES

    def _replaced_by(self, file: str, index: int) -> str | None:
        error = load.replace(self, file, index)
        if error is None and self._extension is not None:
            self._extension.restored()
        return error

    def checkpoint_durably(self) -> bool:
        """Copy the whole WAL into the fsynced file; False if readers kept it from finishing."""
        try:
            wal, copied = self._writer.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_FULL)
        except apsw.BusyError:
            return False
        return bool(wal == copied)

    def _apply_extension(self, index: int, cmd: Command) -> Any:
        if self._extension is None:
            return [StatementResult(error="this node has no config store")]
        if self._limits.deadline is not None and (self._limits.over()
                                                  or not self._extension.inline(cmd)):
            raise _OverBudget
        self.applied_time_ms = cmd.time_ms
        self._book.begin()
        with self._writer.internal_sql() as cursor:
            return self._extension.apply(cursor, self._book.conn, index, cmd)

    def _run_command(self, batch: _Batch, pos: int, cmd: Command) -> list[StatementResult]:
        if cmd.fk != self._fk:
            self._set_foreign_keys(batch, cmd.fk)
        self._vfs.set_entry_time(cmd.time_ms)
        self.applied_time_ms = cmd.time_ms
        self._rand.reseed(cmd.seed)
        self._writer.start_command(cmd.max_steps, cmd.qualify)
        mode = OP_MODES[cmd.op]
        if cmd.transaction:
            return self._apply_transaction(batch, pos, cmd.statements, mode)
        results: list[StatementResult] = []
        for j, stmt in enumerate(cmd.statements):
            if not is_empty(stmt):
                results.append(self._apply_statement(batch, pos, j, stmt, mode, not results))
        return results

    def _set_foreign_keys(self, batch: _Batch, on: bool) -> None:
        """Enforce foreign keys as the command's leader did (--fk), whatever this node's own
        flag: the pragma is a no-op inside a transaction, so it is set between two."""
        self._outside_transaction(batch, lambda: self._writer.exec_control(
            f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}"))
        self._fk = on

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
        budget = self._limits
        if budget.deadline is not None and budget.over():
            raise _OverBudget  # checked between statements too: many short ones add up
        if first and type(stmt) is str and _VACUUM.fullmatch(stmt):
            result = self._outside_transaction(batch, self._vacuum)
            batch.replays[(pos, j)] = _Replay(result, _KEEP)  # if the segment is redone
            return result
        result = self._writer.run(stmt, mode)
        if budget.spent:
            raise _OverBudget  # the statement was interrupted: its error is not its outcome
        if result.error is not None and not self._writer.conn.in_transaction:
            replay = _Replay(result, self._rand.state)
            raise _TransactionLost((pos, j), replay)
        return result

    def _replay(self, replay: _Replay) -> StatementResult:
        if replay.rng_state is not _KEEP:
            self._rand.set_state(replay.rng_state)
        return replay.result

    def _vacuum(self) -> StatementResult:
        """VACUUM, between two transactions (replaying it after a crash is harmless)."""
        start = perf_counter()
        w = self._writer
        try:
            w.exec_control("VACUUM")  # internal: VACUUM attaches and begins under the hood
            result = StatementResult(time=perf_counter() - start)
        except LOCAL_ERRORS:
            raise
        except apsw.Error as e:
            result = StatementResult(error=str(e), time=perf_counter() - start)
        w.reset_counters()  # what VACUUM does inside changes nothing of the user's
        return result

    # ---- reads

    def query(self, stmts: list[Any], options: ReadOptions = _READ) -> list[StatementResult]:
        """Reads on a read-only connection (any thread): see Readers.query."""
        return self._readers.query(stmts, options)

    def query_within(self, stmts: list[Any], options: ReadOptions, seconds: float
                     ) -> list[StatementResult] | None:
        """query() within `seconds`, else None (an event loop's): see Readers.query_within."""
        return self._readers.query_within(stmts, options, seconds)

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
            applied = self._applied
        backup.copy(self.path, path)  # the index in its header is cleared: restore sets it
        with self._lock:
            self._book.copy_into(path)
            self._book.stamp_durably(applied)  # the log may be compacted up to here next
        # No fsync: the caller checks the file and installs it durably (storage/snapshots.py).
        return applied

    def restore(self, path: str, applied_index: int) -> None:
        """Replace the database with the SQLite file at `path` (InstallSnapshot, or a load),
        which then holds everything up to `applied_index`. Readers see the old or the new
        database, never a mix. Raises ValueError when `path` is not a SQLite database.
        """
        with self._lock:
            self.restore_from(self.restore_source(path), applied_index)
        if self._extension is not None:
            self._extension.restored()

    def restore_source(self, path: str) -> str:
        """A private copy of `path` to restore from, in this database's page size (ValueError:
        SQLite cannot make one). Nothing of this database has changed yet."""
        page_size = self._writer.conn.execute("PRAGMA page_size").fetchall()[0][0]
        return restore_copy(path, self.path + ".restore", page_size)

    def restore_from(self, source_path: str, applied_index: int) -> None:
        """Replace the database with the private copy at `source_path` (restore_source),
        which holds everything up to `applied_index`; the copy is removed."""
        try:
            self._book.load_from(source_path, applied_index)  # out of the copy, first
            source = apsw.Connection(source_path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                with self._writer.conn.backup("main", source, "main") as backup:
                    backup.step()
            finally:
                source.close()
        finally:
            remove_db_files(source_path)
        self._applied = applied_index
        self._dirty = True
        self._apply_batch(_Batch([], []))  # store the index now

    # ---- closing

    def close(self) -> None:
        """Store a pending mark_applied() and close every connection."""
        with self._lock:
            if self._closed:
                return
            if self._dirty:
                self._apply_batch(_Batch([], []))
            self._closed = True
            self._readers.close()
            self._book.close()
            self._writer.conn.close()
            self._vfs.unregister()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
