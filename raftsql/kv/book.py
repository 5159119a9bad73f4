"""Reading the config store's bookkeeping (sessions, the change history) from the database's
sidecar file, on a read-only connection of its own (WAL: never in the apply thread's way).
Queries are small and indexed, so they run on the event loop."""

from __future__ import annotations

from typing import Any

import apsw

from raftsql.kv import model
from raftsql.kv.machine import CHANGES
from raftsql.kv.model import SESSION_COLUMNS, Session, session_of
from raftsql.sql.sidecar import history_floor


class Book:
    def __init__(self, path: str):
        self._path = path
        self._conn: apsw.Connection | None = None

    @property
    def conn(self) -> apsw.Connection:
        if self._conn is None:  # opened late: the database creates the file first
            self._conn = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READONLY)
            self._conn.set_busy_timeout(5000)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- sessions

    def session(self, sid: str) -> Session | None:
        rows = self.conn.execute(f"SELECT {SESSION_COLUMNS} FROM kv_sessions WHERE id = ? AND "
                                 "gone IS NULL", (sid,)).fetchall()
        return session_of(rows[0]) if rows else None

    def sessions(self, node: str | None = None) -> list[Session]:
        sql = f"SELECT {SESSION_COLUMNS} FROM kv_sessions WHERE gone IS NULL"
        args: tuple[Any, ...] = ()
        if node is not None:
            sql, args = sql + " AND node = ?", (node,)
        return [session_of(r) for r in self.conn.execute(sql + " ORDER BY entry, id", args)]

    # ---- the change history

    def floor(self) -> int:
        return history_floor(self.conn, CHANGES)

    def last_change(self, key: str, prefix: bool) -> int:
        """The newest index at which `key` (or a key under the prefix) changed, as far as the
        history tells: at most its floor when it holds no change of it."""
        where, args = _where(key, prefix)
        rows = self.conn.execute(f"SELECT max(entry) FROM kv_changes WHERE {where}",
                                 args).fetchall()
        return rows[0][0] if rows[0][0] is not None else self.floor()

    def changes(self, key: str, prefix: bool, after: int, limit: int
                ) -> tuple[list[dict[str, Any]], int, int]:
        """The changes of `key` (or under the prefix) after index `after`, in log order, whole
        entries only, up to about `limit`; with the index through which that is complete, and
        the floor (the caller refuses `after` below it)."""
        where, args = _where(key, prefix)
        select = (f"SELECT entry, key, op, value, flags, create_index, modify_index, "
                  f"lock_index, session, prev_value, prev_flags, prev_create, prev_modify, "
                  f"prev_lock, prev_session FROM kv_changes WHERE {where} AND ")
        with self.conn:  # one read transaction: the rows, the stamp and the floor agree
            floor = self.floor()
            through = self.conn.execute("SELECT value FROM state WHERE name = 'through'"
                                        ).fetchall()
            rows = self.conn.execute(select + "entry > ? ORDER BY rowid LIMIT ?",
                                     (*args, after, limit + 1)).fetchall()
            complete = int(through[0][0]) if through else 0
            if len(rows) > limit:  # cut before the first entry that might not be whole
                last = rows[-1][0]
                rows = [r for r in rows if r[0] != last]
                complete = last - 1
                if not rows:  # one entry larger than the limit: that entry whole, alone
                    rows = self.conn.execute(select + "entry = ? ORDER BY rowid",
                                             (*args, last)).fetchall()
                    complete = last
        return [_change(r) for r in rows], max(complete, after), floor


def _where(key: str, prefix: bool) -> tuple[str, tuple[Any, ...]]:
    if not prefix:
        return "key = ?", (key,)
    low, high = model.prefix_range(key)
    if high is None:
        return "key >= ?", (low,)
    return "key >= ? AND key < ?", (low, high)


def _state(value: Any, flags: Any, create: Any, modify: Any, lock: Any, session: Any
           ) -> dict[str, Any] | None:
    if modify is None:
        return None
    return {"Value": model.encode_value(value), "Flags": flags or 0, "CreateIndex": create,
            "ModifyIndex": modify, "LockIndex": lock or 0, "Session": session or ""}


def _change(r: tuple[Any, ...]) -> dict[str, Any]:
    entry, key, op = r[0], r[1], r[2]
    change: dict[str, Any] = {"Index": entry, "Key": key, "Op": op}
    new = _state(*r[3:9]) if op == "set" else None
    change.update(new or {"Value": None, "Flags": 0, "CreateIndex": 0, "ModifyIndex": entry,
                          "LockIndex": 0, "Session": ""})
    change["Prev"] = _state(*r[9:15])
    return change
