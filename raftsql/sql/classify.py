"""Is a statement a read? `/db/request` needs to know (rqlite uses sqlite3_stmt_readonly).

Statements are prepared, never run, on a read-only connection of the node's database. A
statement that does not prepare (it names a table that does not exist yet, say) cannot be
classified: the caller then treats it as a write, which is always safe, because a write goes
through Raft and the leader's apply reports whatever happens to it.
"""

from __future__ import annotations

import re
from typing import Any

import apsw
import apsw.ext

from raftsql.sql.params import is_empty, statement_sql
from raftsql.sql.session import pragma_reads

_READ_KEYWORD = re.compile(r"\s*(?:SELECT|VALUES|EXPLAIN|WITH)\b", re.IGNORECASE)
_PRAGMA_READ = re.compile(r"\s*PRAGMA\s+[^=]*$", re.IGNORECASE | re.DOTALL)


class Classifier:
    """Prepares statements on its own read-only connection to the database file at `path`."""

    def __init__(self, path: str):
        self._path = path
        self._conn: apsw.Connection | None = None
        self._pragma_reads = False

    def _connection(self) -> apsw.Connection | None:
        if self._conn is None:
            try:
                self._conn = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READONLY)
            except apsw.Error:
                return None
            self._conn.authorizer = self._authorize
        return self._conn

    def _authorize(self, code: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        # SQLite counts some pragmas that only report as writes (journal_mode): note them.
        if code == apsw.SQLITE_PRAGMA:
            self._pragma_reads = pragma_reads(arg1 or "", arg2)
        return apsw.SQLITE_OK

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def is_readonly(self, stmt: Any) -> bool | None:
        """True/False as SQLite says for every statement in the text; None if it won't prepare."""
        sql = statement_sql(stmt)
        conn = self._connection()
        if sql is None or conn is None:
            return None
        try:
            while sql.strip(" \t\r\n;"):
                self._pragma_reads = False
                info = apsw.ext.query_info(conn, sql)
                if not (info.is_readonly or self._pragma_reads):
                    return False
                sql = info.query_remaining or ""
        except apsw.Error:
            return None
        return True

    def all_reads(self, statements: list[Any]) -> bool:
        return all(self.is_readonly(s) is True for s in statements if not is_empty(s))

    def looks_like_read(self, stmt: Any) -> bool:
        """For shaping a failed statement: SQLite's answer, else a guess from the first keyword."""
        ro = self.is_readonly(stmt)
        if ro is not None:
            return ro
        sql = statement_sql(stmt) or ""
        return bool(_READ_KEYWORD.match(sql) or _PRAGMA_READ.match(sql))
