"""Running statements on an apsw connection: the hooks, the refusals, the error texts.

Shared by the write path (apply, on the one read-write connection) and the read path (query,
on a pool of read-only connections); raftsql/sqlite.py owns the connections and transactions.

The connection counters user SQL can see (last_insert_rowid(), changes(), total_changes(), and
the last_insert_id / rows_affected of a result) count from the start of each command on the
write connection: as if every request ran on a connection of its own. A node that restarted,
installed a snapshot or cut the log into other batches therefore reports exactly what the
others report, and nothing of raftsql's own bookkeeping ever shows in them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from time import perf_counter
from typing import Any

import apsw

from raftsql.errors import StorageError
from raftsql.sql.command import Op, ReadOptions, StatementResult
from raftsql.sql.params import BadStatementError, NamedParams, decode_statement, is_empty

QUERY_WRITE_ERROR = "attempt to change database via query operation"
EXECUTE_TIMEOUT = "execute timeout"  # rqlite's words for a statement past db_timeout
QUERY_TIMEOUT = "query timeout"

MODE_EXECUTE = 0  # rows only from statements that write and return rows (RETURNING)
MODE_REQUEST = 1  # rows from every statement that returns columns (/db/request)
MODE_QUERY = 2  # rows always; a statement that writes is refused
OP_MODES = {Op.EXECUTE: MODE_EXECUTE, Op.REQUEST: MODE_REQUEST, Op.QUERY: MODE_QUERY}

# Errors that come from this machine (disk, memory, locks), not from the SQL: recording them as
# a statement's result would make this node's database differ from the others', so apply stops.
LOCAL_ERRORS = (
    apsw.IOError, apsw.FullError, apsw.CorruptError, apsw.NotADBError, apsw.CantOpenError,
    apsw.NoMemError, apsw.BusyError, apsw.ProtocolError, apsw.ReadOnlyError,
)

PROGRESS_STEPS = 1000  # SQLite VM steps between two calls of a connection's progress handler

_TXN_REFUSED = ("explicit transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) "
                "is not supported: use the transaction flag")
_ATTACH_REFUSED = "ATTACH and DETACH are not supported: a cluster replicates one database"
_CREATE_CODES = frozenset((
    apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_CREATE_VIEW,
    apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX,
    apsw.SQLITE_CREATE_TEMP_VIEW, apsw.SQLITE_CREATE_TEMP_TRIGGER, apsw.SQLITE_CREATE_VTABLE,
))
RESERVED_PREFIX = "raftsql_"  # raftsql's own tables (a snapshot's keys, the config store)
# The config store's table (raftsql/kv/): SQL reads it, only the KV API writes it. A trigger or
# index on it would run or change with the KV API's own writes, so those are refused too.
_PRODUCT_TABLE = "raftsql_kv"
_ON_TABLE = frozenset((  # the authorizer names the table first...
    apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE, apsw.SQLITE_DROP_TABLE))
_PRODUCT_WRITES = _ON_TABLE | frozenset((  # ...or second
    apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_CREATE_TRIGGER,
    apsw.SQLITE_CREATE_TEMP_TRIGGER, apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_DROP_INDEX,
    apsw.SQLITE_DROP_TRIGGER,
))
_PRODUCT_REFUSED = ("raftsql_kv is the config store's table: SQL may read it, only the KV API "
                    "(/v1/kv, /v1/txn) writes it")
_OPTIMIZE_REFUSED = "PRAGMA optimize is not deterministic across nodes: use ANALYZE"
_APPLICATION_ID_REFUSED = ("PRAGMA application_id is reserved: raftsql keeps the applied log "
                           "index in that header field")
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
# Pragmas whose argument names what to report on: with it they still only read.
_READ_ARGUMENT_PRAGMAS = frozenset((
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
))
_BINDINGS_COUNT = re.compile(r"uses (\d+) and there are (\d+) supplied.*offset is (\d+)", re.S)
_NO_BINDINGS = re.compile(r"Statement has (\d+) bindings but you didn't supply any")
_UNNAMED_BINDING = re.compile(r"Binding (\d+) has no name")


def pragma_reads(name: str, arg: str | None) -> bool:
    """Whether `PRAGMA name[=arg | (arg)]` only reports (SQLite's authorizer gives name, arg)."""
    return arg is None or name.lower() in _READ_ARGUMENT_PRAGMAS


def _refusal(code: int, arg1: str | None, arg2: str | None, mode: int) -> str | None:
    """Why user SQL may not do this (authorizer action), or None when it may."""
    if code == apsw.SQLITE_TRANSACTION or code == apsw.SQLITE_SAVEPOINT:
        return _TXN_REFUSED
    if code == apsw.SQLITE_ATTACH or code == apsw.SQLITE_DETACH:
        return _ATTACH_REFUSED
    if code in _CREATE_CODES and (arg1 or "").lower().startswith(RESERVED_PREFIX):
        return f"object name reserved for raftsql: {arg1}"
    if code in _PRODUCT_WRITES:
        table = arg1 if code in _ON_TABLE else arg2
        if (table or "").lower() == _PRODUCT_TABLE:
            return _PRODUCT_REFUSED
    if code == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        reason = _pragma_refusal(name, arg2)
        if reason is None and mode == MODE_QUERY and not pragma_reads(name, arg2):
            reason = QUERY_WRITE_ERROR  # a setting would change a pooled read connection
        return reason
    return None


def _pragma_refusal(name: str, value: str | None) -> str | None:
    if name == "application_id":
        return _APPLICATION_ID_REFUSED
    if name == "optimize":
        return _OPTIMIZE_REFUSED
    if name == "wal_checkpoint" or (value is not None and name in _RQLITE_DISALLOWED):
        return "disallowed pragma"
    if value is not None and name in _CONNECTION_PRAGMAS:
        return (f"PRAGMA {name} cannot be set: it is per-connection state, "
                "which a restarted node would lose")
    return None


class Limits:
    """A connection's progress handler, called every PROGRESS_STEPS VM steps; it interrupts
    user SQL (never raftsql's own statements) for three reasons:

    - a time budget (`start()`): apply_within()/query_within() give up, `spent` is set, and
      the caller redoes the work elsewhere;
    - a step limit per statement (`max_steps`, db_timeout on the write path): counted, not
      timed, so every node stops the same statement at the same point;
    - a time limit per statement (`statement_seconds`, db_timeout on the read path).
    `timed_out` tells the last two from the first.
    """

    __slots__ = ("session", "deadline", "spent", "max_steps", "statement_seconds", "calls",
                 "statement_deadline", "timed_out")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.deadline: float | None = None
        self.spent = False
        self.max_steps = 0
        self.statement_seconds = 0.0
        self.calls = 0
        self.statement_deadline: float | None = None
        self.timed_out = False

    def __call__(self) -> bool:
        if self.session.internal:
            return False
        if self.max_steps:
            self.calls += 1
            if self.calls * PROGRESS_STEPS > self.max_steps:
                self.timed_out = True
                return True
        if self.deadline is None and self.statement_deadline is None:
            return False
        now = perf_counter()
        if self.statement_deadline is not None and now > self.statement_deadline:
            self.timed_out = True
            return True
        if self.deadline is not None and now > self.deadline:
            self.spent = True
            return True
        return False

    def statement_started(self) -> None:
        self.calls = 0
        self.timed_out = False
        if self.statement_seconds:
            self.statement_deadline = perf_counter() + self.statement_seconds

    def start(self, seconds: float) -> None:
        self.deadline = perf_counter() + seconds
        self.spent = False

    def over(self) -> bool:
        return self.spent or (self.deadline is not None and perf_counter() > self.deadline)

    def stop(self) -> None:
        self.deadline = None
        self.spent = False


_steps_per_second = 0.0


def steps_for(seconds: float) -> int:
    """db_timeout as a count of VM steps, at the speed this machine runs SQLite (measured
    once): what the leader puts in a command, so every node interrupts at the same step."""
    global _steps_per_second
    if seconds <= 0:
        return 0
    if not _steps_per_second:
        conn = apsw.Connection(":memory:")
        calls = [0]
        conn.set_progress_handler(lambda: calls.__setitem__(0, calls[0] + 1) or False,
                                  PROGRESS_STEPS)
        start = perf_counter()
        conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                     "WHERE i < 100000) SELECT count(*) FROM n").fetchall()
        _steps_per_second = calls[0] * PROGRESS_STEPS / max(perf_counter() - start, 1e-6)
        conn.close()
    return max(PROGRESS_STEPS, int(seconds * _steps_per_second))


class Session:
    """One apsw connection, its cursor, and the hooks statement execution relies on.

    The exec tracer runs before each statement of a (possibly multi-statement) string: it
    captures the column description, which apsw can't give after a statement that returned no
    rows, and refuses what the mode forbids. The authorizer refuses what the determinism rules
    forbid; `internal` lets raftsql's own control statements through.
    """

    __slots__ = ("conn", "cursor", "control", "writer", "internal", "deny", "desc", "readonly",
                 "rows", "nstmt", "mode", "limits", "pragma", "qualify", "base_total")

    def __init__(self, conn: apsw.Connection, writer: bool):
        self.conn = conn
        self.writer = writer
        self.internal = False
        self.deny: str | None = None
        self.desc: tuple[tuple[str, str | None], ...] | list[tuple[str, str | None]] = ()
        self.readonly = True
        self.pragma = False  # the statement being prepared is a PRAGMA that only reads
        self.qualify = False
        self.rows: list[tuple[Any, ...]] = []
        self.nstmt = 0
        self.mode = MODE_QUERY
        self.base_total = conn.total_changes()
        conn.authorizer = self._authorize
        conn.set_busy_timeout(5000)
        self.limits = Limits(self)
        conn.set_progress_handler(self.limits, PROGRESS_STEPS)
        self.cursor = conn.cursor()
        self.cursor.exec_trace = self._trace
        self.control = conn.cursor()  # untraced, for raftsql's own statements

    # ---- the counters user SQL sees, from the start of the command

    def start_command(self, max_steps: int = 0, qualify: bool = False) -> None:
        self.limits.max_steps = max_steps
        self.qualify = qualify
        self.reset_counters()

    def reset_counters(self) -> None:
        self.conn.set_last_insert_rowid(0)
        self.base_total = self.conn.total_changes()

    def changes(self) -> int:
        """changes() of this command: 0 until one of its statements changed something.
        (A statement changing no rows sets SQLite's changes() to 0, and moves no total.)"""
        conn = self.conn
        return conn.changes() if conn.total_changes() != self.base_total else 0

    def total_changes(self) -> int:
        return self.conn.total_changes() - self.base_total

    # ---- hooks

    def _authorize(self, code: int, arg1: str | None, arg2: str | None, db: str | None,
                   trigger: str | None) -> int:
        if self.internal:
            return apsw.SQLITE_OK
        reason = _refusal(code, arg1, arg2, self.mode)
        if reason is None:
            if code == apsw.SQLITE_PRAGMA:
                self.pragma = True
            return apsw.SQLITE_OK
        self.deny = reason
        return apsw.SQLITE_DENY

    def _trace(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        if self.nstmt:
            del self.rows[:]  # a multi-statement string reports its last statement, as Go's driver
        self.nstmt += 1
        self.desc = self._describe(cursor) if self.qualify else cursor.getdescription()
        self.readonly = cursor.is_readonly
        pragma, self.pragma = self.pragma, False
        self.limits.statement_started()
        if type(bindings) is NamedParams and len(bindings) < cursor.bindings_count:
            self.deny = (f"not enough args to execute query: want {cursor.bindings_count} "
                         f"got {len(bindings)}")
            return False
        if self.mode == MODE_QUERY and not self.readonly and not pragma:
            # A pragma that reads may still count as a write to SQLite (journal_mode): the
            # authorizer refused the ones that set something, the read-only connection the rest.
            self.deny = QUERY_WRITE_ERROR
            return False
        return True

    @staticmethod
    def _describe(cursor: apsw.Cursor) -> list[tuple[str, str | None]]:
        """qualify_columns: `table.column` for columns that come from a table (as rqlite)."""
        return [(f"{table}.{name}" if table else name, decltype)
                for name, decltype, _db, table, _origin in cursor.description_full]

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

    # ---- running a statement

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
        except apsw.InterruptError as e:
            if self.limits.timed_out:
                return QUERY_TIMEOUT if self.mode == MODE_QUERY else EXECUTE_TIMEOUT
            return str(e)
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
        self.pragma = False
        self.desc = ()
        rows = self.rows = []
        append = rows.append
        # A statement under a step limit is prepared afresh: SQLite counts a cached statement's
        # steps across its runs, so where the handler fires would differ between nodes.
        cache = not self.limits.max_steps
        for row in self.cursor.execute(sql, bindings, can_cache=cache):
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
        return StatementResult(last_insert_id=self.conn.last_insert_rowid(),
                               rows_affected=self.changes(), time=elapsed)


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
    """apsw's binding errors in the words rqlite's Go driver uses (or plain SQL words)."""
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
    m = _UNNAMED_BINDING.search(str(e))
    if m is not None:
        return (f"parameter {int(m.group(1)) + 1} is a ? placeholder, which named parameters "
                "cannot bind: pass positional parameters")
    return "the parameters do not match the statement's placeholders"


def run_reads(session: Session, stmts: list[Any], options: ReadOptions) -> list[StatementResult]:
    results: list[StatementResult] = []
    transaction = options.transaction
    session.limits.statement_seconds = options.db_timeout
    session.qualify = options.qualify
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
        session.limits.statement_seconds = 0.0
        session.limits.statement_deadline = None
        session.qualify = False
        if not session.conn.get_autocommit():
            session.exec_control("ROLLBACK")
    return results
