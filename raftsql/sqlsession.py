"""Running statements on an apsw connection: the hooks, the refusals, the error texts.

Shared by the write path (apply, on the one read-write connection) and the read path (query,
on a pool of read-only connections); raftsql/sqlite.py owns the connections and transactions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from time import perf_counter
from typing import Any

import apsw

from raftsql.command import StatementResult
from raftsql.errors import StorageError
from raftsql.sqlparams import BadStatementError, NamedParams, decode_statement, is_empty

QUERY_WRITE_ERROR = "attempt to change database via query operation"

MODE_EXECUTE = 0  # rows only from statements that write and return rows (RETURNING)
MODE_REQUEST = 1  # rows from every statement that returns columns (/db/request)
MODE_QUERY = 2  # rows always; a statement that writes is refused
OP_MODES = {"execute": MODE_EXECUTE, "request": MODE_REQUEST, "query": MODE_QUERY}

# Errors that come from this machine (disk, memory, locks), not from the SQL: recording them as
# a statement's result would make this node's database differ from the others', so apply stops.
LOCAL_ERRORS = (
    apsw.IOError, apsw.FullError, apsw.CorruptError, apsw.NotADBError, apsw.CantOpenError,
    apsw.NoMemError, apsw.BusyError, apsw.ProtocolError, apsw.ReadOnlyError,
)

_TXN_REFUSED = ("explicit transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) "
                "is not supported: use the transaction flag")
_ATTACH_REFUSED = "ATTACH and DETACH are not supported: a cluster replicates one database"
_META_REFUSED = "raftsql_meta is maintained by raftsql and cannot be modified"
_OPTIMIZE_REFUSED = "PRAGMA optimize is not deterministic across nodes: use ANALYZE"
# Settings that live in the connection, not the file: a restarted node would silently lose them.
_CONNECTION_PRAGMAS = frozenset((
    "foreign_keys", "defer_foreign_keys", "recursive_triggers", "reverse_unordered_selects",
    "case_sensitive_like", "ignore_check_constraints", "automatic_index", "analysis_limit",
    "legacy_alter_table", "trusted_schema", "writable_schema", "max_page_count", "locking_mode",
    "soft_heap_limit", "hard_heap_limit", "count_changes", "full_column_names",
    "short_column_names", "empty_result_callbacks", "schema_version",
    "journal_mode", "wal_autocheckpoint", "synchronous", "query_only",
))
_RQLITE_DISALLOWED = ("journal_mode", "wal_autocheckpoint", "synchronous", "query_only")
_TABLE_WRITES = (apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE, apsw.SQLITE_DROP_TABLE)
_BINDINGS_COUNT = re.compile(r"uses (\d+) and there are (\d+) supplied.*offset is (\d+)", re.S)
_NO_BINDINGS = re.compile(r"Statement has (\d+) bindings but you didn't supply any")


def _refusal(code: int, arg1: str | None, arg2: str | None) -> str | None:
    """Why user SQL may not do this (authorizer action), or None when it may."""
    if code == apsw.SQLITE_TRANSACTION or code == apsw.SQLITE_SAVEPOINT:
        return _TXN_REFUSED
    if code == apsw.SQLITE_ATTACH or code == apsw.SQLITE_DETACH:
        return _ATTACH_REFUSED
    if code == apsw.SQLITE_PRAGMA:
        return _pragma_refusal((arg1 or "").lower(), arg2)
    if code in _TABLE_WRITES and arg1 == "raftsql_meta":
        return _META_REFUSED
    if code in (apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_CREATE_TRIGGER) and arg2 == "raftsql_meta":
        return _META_REFUSED
    return None


def _pragma_refusal(name: str, value: str | None) -> str | None:
    if name == "optimize":
        return _OPTIMIZE_REFUSED
    if name == "wal_checkpoint" or (value is not None and name in _RQLITE_DISALLOWED):
        return "disallowed pragma"
    if value is not None and name in _CONNECTION_PRAGMAS:
        return (f"PRAGMA {name} cannot be set: it is per-connection state, "
                "which a restarted node would lose")
    return None


class Session:
    """One apsw connection, its cursor, and the hooks statement execution relies on.

    The exec tracer runs before each statement of a (possibly multi-statement) string: it
    captures the column description, which apsw can't give after a statement that returned no
    rows, and refuses what the mode forbids. The authorizer refuses what the determinism rules
    forbid; `internal` lets raftsql's own control statements through.
    """

    __slots__ = ("conn", "cursor", "control", "writer", "internal", "deny", "desc", "readonly",
                 "rows", "nstmt", "mode")

    def __init__(self, conn: apsw.Connection, writer: bool):
        self.conn = conn
        self.writer = writer
        self.internal = False
        self.deny: str | None = None
        self.desc: tuple[tuple[str, str | None], ...] = ()
        self.readonly = True
        self.rows: list[tuple[Any, ...]] = []
        self.nstmt = 0
        self.mode = MODE_QUERY
        conn.authorizer = self._authorize
        conn.set_busy_timeout(5000)
        self.cursor = conn.cursor()
        self.cursor.exec_trace = self._trace
        self.control = conn.cursor()  # untraced, for raftsql's own statements

    def _authorize(self, code: int, arg1: str | None, arg2: str | None, db: str | None,
                   trigger: str | None) -> int:
        if self.internal:
            return apsw.SQLITE_OK
        reason = _refusal(code, arg1, arg2)
        if reason is None:
            return apsw.SQLITE_OK
        self.deny = reason
        return apsw.SQLITE_DENY

    def _trace(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        if self.nstmt:
            del self.rows[:]  # a multi-statement string reports its last statement, as Go's driver
        self.nstmt += 1
        self.desc = cursor.getdescription()
        self.readonly = cursor.is_readonly
        if type(bindings) is NamedParams and len(bindings) < cursor.bindings_count:
            self.deny = (f"not enough args to execute query: want {cursor.bindings_count} "
                         f"got {len(bindings)}")
            return False
        if self.mode == MODE_QUERY and not self.readonly:
            self.deny = QUERY_WRITE_ERROR
            return False
        return True

    @contextlib.contextmanager
    def internal_sql(self) -> Iterator[apsw.Cursor]:
        self.internal = True
        try:
            yield self.control
        finally:
            self.internal = False

    def exec_control(self, sql: str, bindings: Any = None) -> list[tuple[Any, ...]]:
        # Never cached: a cached BEGIN would later skip the authorizer for the user's own BEGIN.
        with self.internal_sql() as cur:
            return cur.execute(sql, bindings, can_cache=False).fetchall()

    def run(self, stmt: Any, mode: int) -> StatementResult:
        """Execute one statement element; SQL errors become the result's error."""
        start = perf_counter()
        try:
            sql, bindings = decode_statement(stmt)
        except BadStatementError as e:
            return StatementResult(error=str(e))
        self.mode = mode
        error = self._execute(sql, bindings)
        if error is not None:
            return StatementResult(error=error, time=perf_counter() - start)
        return self._result(mode, perf_counter() - start)

    def _execute(self, sql: str, bindings: Any) -> str | None:
        """Run `sql` to completion; the error text, or None."""
        try:
            self._step_all(sql, bindings)
        except LOCAL_ERRORS as e:
            if self.writer and not (isinstance(e, apsw.FullError) and self._autoincrement_spent()):
                raise StorageError(f"state machine: {type(e).__name__}: {e}") from e
            return _message(e, self.mode)
        except apsw.BindingsError as e:
            retry = _trimmed_bindings(e, bindings) if self.nstmt == 0 else None
            if retry is not None:  # nothing ran yet: bind again without the extra values
                return self._execute(sql, retry)
            return _bindings_message(e, bindings)
        except (apsw.ExecTraceAbort, apsw.AuthError) as e:
            return self.deny or str(e)
        except Exception as e:  # SQL errors, and errors raised by raftsql's SQL functions
            return _message(e, self.mode)
        return None

    def _step_all(self, sql: str, bindings: Any) -> None:
        self.nstmt = 0
        self.deny = None
        self.desc = ()
        rows = self.rows = []
        append = rows.append
        for row in self.cursor.execute(sql, bindings):
            append(row)

    def _autoincrement_spent(self) -> bool:
        """SQLITE_FULL is also SQLite's answer to an AUTOINCREMENT key past INT64_MAX: that one
        comes from the SQL, and is the same on every node."""
        try:
            return bool(self.exec_control(
                "SELECT 1 FROM sqlite_sequence WHERE seq >= 9223372036854775807 LIMIT 1"))
        except apsw.Error:
            return False

    def _result(self, mode: int, elapsed: float) -> StatementResult:
        desc = self.desc
        if (desc and (mode != MODE_EXECUTE or not self.readonly)) or mode == MODE_QUERY:
            return StatementResult(columns=[d[0] for d in desc], decltypes=[d[1] for d in desc],
                                   rows=self.rows, time=elapsed)
        conn = self.conn
        return StatementResult(last_insert_id=conn.last_insert_rowid(),
                               rows_affected=conn.changes(), time=elapsed)


def _message(e: Exception, mode: int) -> str:
    if isinstance(e, apsw.ReadOnlyError) and mode == MODE_QUERY:
        return QUERY_WRITE_ERROR
    return str(e) or type(e).__name__


def _trimmed_bindings(e: apsw.BindingsError, bindings: Any) -> list[Any] | None:
    """Go's driver ignores extra positional values; apsw refuses them. The values to retry with."""
    m = _BINDINGS_COUNT.search(str(e))
    if m is None or type(bindings) is not list:
        return None
    uses, supplied, offset = (int(g) for g in m.groups())
    return bindings[:uses] if offset == 0 and supplied > uses else None


def _bindings_message(e: apsw.BindingsError, bindings: Any) -> str:
    got = len(bindings) if bindings is not None else 0
    m = _BINDINGS_COUNT.search(str(e))
    if m is not None:
        uses, supplied, offset = (int(g) for g in m.groups())
        if supplied - offset < uses:
            return f"not enough args to execute query: want {uses} got {got}"
        return f"too many args to execute query: want {offset + uses} got {got}"
    m = _NO_BINDINGS.search(str(e))
    if m is not None:
        return f"not enough args to execute query: want {m.group(1)} got 0"
    return str(e)


def run_reads(session: Session, stmts: list[Any], transaction: bool) -> list[StatementResult]:
    results: list[StatementResult] = []
    if transaction:
        session.exec_control("BEGIN")
    try:
        for stmt in stmts:
            if is_empty(stmt):
                continue
            result = session.run(stmt, MODE_QUERY)
            results.append(result)
            if transaction and result.error is not None:
                break
    finally:
        if not session.conn.get_autocommit():
            session.exec_control("ROLLBACK")
    return results
