"""Applying the config store's entries: the extension the database is given
(raftsql/sql/extension.py).

The keys are rows of `raftsql_kv` in the replicated database (created by the first entry that
writes one, so a database that never used the config store holds only the user's schema).
Sessions, lock delays and the change history are bookkeeping, in the database's sidecar file
(raftsql/sql/sidecar.py), where SQL never sees them. A row's indexes are Raft log indexes: an
entry's writes all carry its index.

Everything an operation decides comes from the entry and the state: time (for lock delays)
is the entry's, the leader's clock when it proposed. A session expires only when the leader
proposes its destruction, so every node releases (or deletes) the same keys at the same entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import apsw

from raftsql.kv import model
from raftsql.kv.model import COLUMNS, Entry, KvError, entry_of
from raftsql.sql.command import Command
from raftsql.sql.sidecar import Table, trim_history

log = logging.getLogger("raftsql.kv")

KV_SCHEMA = ("CREATE TABLE IF NOT EXISTS raftsql_kv (key TEXT PRIMARY KEY, value BLOB, "
             "flags INTEGER, create_index INTEGER, modify_index INTEGER, lock_index INTEGER, "
             "session TEXT)")
HISTORY = 100_000  # changes kept for watchers: `raftsql serve --kv-history`

SESSIONS = Table("kv_sessions", """
CREATE TABLE IF NOT EXISTS kv_sessions (
    id TEXT NOT NULL, name TEXT, node TEXT, ttl_ms INTEGER, behavior TEXT,
    lock_delay_ms INTEGER, checks TEXT,
    entry INTEGER NOT NULL,  -- the entry that created it (its CreateIndex)
    gone INTEGER             -- the entry that destroyed it; NULL while it lives
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_live_sessions ON kv_sessions(id) WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS kv_sessions_gone ON kv_sessions(gone) WHERE gone IS NOT NULL;
""", "id, name, node, ttl_ms, behavior, lock_delay_ms, checks, entry", gone="gone")

LOCK_DELAYS = Table("kv_lock_delays", """
CREATE TABLE IF NOT EXISTS kv_lock_delays (
    key TEXT NOT NULL, until_ms INTEGER NOT NULL, entry INTEGER NOT NULL, gone INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS kv_live_delays ON kv_lock_delays(key) WHERE gone IS NULL;
CREATE INDEX IF NOT EXISTS kv_delays_gone ON kv_lock_delays(gone) WHERE gone IS NOT NULL;
""", "key, until_ms, entry", gone="gone")

_CHANGE_COLUMNS = ("entry, key, op, value, flags, create_index, modify_index, lock_index, "
                   "session, prev_value, prev_flags, prev_create, prev_modify, prev_lock, "
                   "prev_session")
CHANGES = Table("kv_changes", """
CREATE TABLE IF NOT EXISTS kv_changes (
    entry INTEGER NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL,
    value BLOB, flags INTEGER, create_index INTEGER, modify_index INTEGER, lock_index INTEGER,
    session TEXT,
    prev_value BLOB, prev_flags INTEGER, prev_create INTEGER, prev_modify INTEGER,
    prev_lock INTEGER, prev_session TEXT
);
CREATE INDEX IF NOT EXISTS kv_changes_entry ON kv_changes(entry);
CREATE INDEX IF NOT EXISTS kv_changes_key ON kv_changes(key, entry);
""", _CHANGE_COLUMNS, history=True)

TABLES = (SESSIONS, LOCK_DELAYS, CHANGES)
Notify = Callable[[int, Sequence[str] | None], None]  # (index, keys changed; None: all)


_BAD_ENTRY = (KvError, ValueError, TypeError, KeyError, AttributeError)  # not apsw.Error: local


class _Failed(Exception):
    """An operation's condition does not hold: a transaction rolls back, a PUT answers false."""


class KvMachine:
    """The config store's state machine (an Extension). Apply runs on the database's apply
    thread; `notify` is told, after each commit, which keys changed at which index."""

    tables: Sequence[Table] = TABLES

    def __init__(self, *, history: int = HISTORY) -> None:
        self.history = history
        self.notify: Notify | None = None  # set by the service once its loop runs
        self.visible = 0  # readers see everything the config store applied up to here
        self._pending: list[tuple[int, list[str]]] = []
        self._table_made = False

    # ---- the Extension protocol

    def apply(self, db: apsw.Cursor, book: apsw.Connection, index: int, cmd: Command) -> Any:
        run = _Entry(db, book, index, cmd.time_ms, self)
        made = self._table_made
        for conn in (db, book):
            conn.execute("SAVEPOINT raftsql_kv")
        try:
            outcome = run.transaction(cmd.statements) if cmd.transaction else run.single(
                cmd.statements)
            undo = isinstance(outcome, dict) and "errors" in outcome
        except _BAD_ENTRY as e:  # the same on every node: an answer, not a failure
            outcome, undo = {"error": str(e) if isinstance(e, KvError) else
                             f"invalid entry: {type(e).__name__}: {e}"}, True
        if undo:  # all or nothing
            for conn in (db, book):
                conn.execute("ROLLBACK TO raftsql_kv")
            run.changed = []
            self._table_made = False  # if this entry made it, it is gone again
        elif not run.changed and not made:
            # No key written (a read, a failed condition, a delete of nothing, a session):
            # the table this entry may have made goes again; it shows once a key is written.
            db.execute("ROLLBACK TO raftsql_kv")
            self._table_made = False
        for conn in (db, book):
            conn.execute("RELEASE raftsql_kv")
        if run.changed:
            self._pending.append((index, run.changed))
            trim_history(book, CHANGES, self.history)
        return outcome

    def inline(self, cmd: Command) -> bool:
        """One small operation: not a tree, a session's end (all its keys) or a transaction."""
        ops = cmd.statements
        return (not cmd.transaction and len(ops) == 1 and type(ops[0]) is dict
                and ops[0].get("v") not in ("get-tree", "delete-tree", "session-destroy"))

    def committed(self, applied: int) -> None:
        self.visible = max(self.visible, applied)
        pending, self._pending = self._pending, []
        if self.notify is not None:
            for index, keys in pending:
                self.notify(index, keys)

    def rolled_back(self) -> None:
        self._pending = []
        self._table_made = False  # its creation may have been undone too

    def restored(self) -> None:
        self._pending = []
        self._table_made = False
        if self.notify is not None:
            self.notify(self.visible, None)

    def make_table(self, db: apsw.Cursor) -> None:
        if not self._table_made:
            db.execute(KV_SCHEMA)
            self._table_made = True


class _Entry:
    """One entry being applied."""

    def __init__(self, db: apsw.Cursor, book: apsw.Connection, index: int, time_ms: int,
                 machine: KvMachine):
        self.db = db
        self.book = book
        self.index = index
        self.time_ms = time_ms
        self.machine = machine
        self.changed: list[str] = []

    # ---- the two shapes of an entry

    def single(self, ops: list[Any]) -> Any:
        """One operation: a failed condition answers False."""
        if len(ops) != 1 or type(ops[0]) is not dict:
            raise KvError("expected one operation")
        verb = ops[0].get("v")
        if verb in model.SESSION_VERBS:
            return self._session(ops[0])
        try:
            self._kv(ops[0])
        except _Failed:
            return False
        return True

    def transaction(self, ops: list[Any]) -> Any:
        """Consul's /v1/txn: the results, or the first error (then apply undoes the entry)."""
        results: list[dict[str, Any]] = []
        for i, o in enumerate(ops):
            try:
                if type(o) is not dict or o.get("v") not in model.KV_VERBS:
                    raise KvError(f"unknown operation {o.get('v') if type(o) is dict else o!r}")
                results.extend(e.consul(with_value=o["v"] in ("get", "get-tree"))
                               for e in self._kv(o))
            except (_Failed, KvError) as e:
                return {"errors": [{"OpIndex": i, "What": str(e)}]}
        return {"results": [{"KV": r} for r in results]}

    # ---- KV verbs

    def _kv(self, o: dict[str, Any]) -> list[Entry]:
        """Apply one KV verb; the entries it reports (Consul's txn results)."""
        verb = o.get("v")
        if verb not in model.KV_VERBS:
            raise KvError(f"unknown operation {verb!r}")
        key = model.check_key(o.get("k", ""), prefix=verb in model.TREE_VERBS)
        index = model.check_index(o.get("i", 0))
        flags = model.check_index(o.get("f", 0), "flags")
        self.machine.make_table(self.db)
        if verb == "get-tree":
            return self._tree(key)
        if verb == "delete-tree":
            for e in self._tree(key):
                self._remove(e)
            return []
        old = self._get(key)
        value = model.decode_value(o.get("d"))
        if verb == "set":
            return [self._set(key, old, value, flags)]
        if verb == "cas":
            if (old.modify_index if old else 0) != index:
                raise _Failed(f'failed to set key "{key}", index is stale')
            return [self._set(key, old, value, flags)]
        if verb == "lock":
            return [self._lock(key, old, value, flags, self._session_of(o))]
        if verb == "unlock":
            return [self._unlock(key, old, value, flags, self._session_of(o))]
        if verb == "delete":
            if old:
                self._remove(old)
            return []
        if verb == "delete-cas":
            if old is None or index == 0 or old.modify_index != index:
                raise _Failed(f'failed to delete key "{key}", index is stale')
            self._remove(old)
            return []
        if verb == "check-not-exists":
            if old is not None:
                raise _Failed(f'key "{key}" exists')
            return []
        if old is None:
            raise _Failed(f'key "{key}" doesn\'t exist')
        if verb == "check-index" and old.modify_index != index:
            raise _Failed(f'current modify index {old.modify_index} != {index}')
        if verb == "check-session" and old.session != o.get("s"):
            raise _Failed(f'key "{key}" is not locked by session "{o.get("s")}"')
        return [old]  # get, and the checks that held

    def _lock(self, key: str, old: Entry | None, value: bytes, flags: int, session: str
              ) -> Entry:
        if old is not None and old.session:
            if old.session != session:
                raise _Failed(f'failed to lock key "{key}", lock is already held')
            return self._write(old, key, value, flags, old.lock_index, session)  # a re-acquire
        until = self.book.execute("SELECT until_ms FROM kv_lock_delays WHERE key = ? AND "
                                  "gone IS NULL", (key,)).fetchall()
        if until and until[0][0] > self.time_ms:
            raise _Failed(f'failed to lock key "{key}", lock delay is in effect')
        return self._write(old, key, value, flags, (old.lock_index if old else 0) + 1, session)

    def _unlock(self, key: str, old: Entry | None, value: bytes, flags: int, session: str
                ) -> Entry:
        if old is None or old.session != session:
            raise _Failed(f'failed to unlock key "{key}", lock isn\'t held, or is held by '
                          "another session")
        return self._write(old, key, value, flags, old.lock_index, None)

    def _session_of(self, o: dict[str, Any]) -> str:
        session = o.get("s")
        if not session or type(session) is not str:
            raise KvError("missing session")
        if not self._live(session):
            raise KvError(f'invalid session "{session}"')
        return session

    # ---- rows

    def _get(self, key: str) -> Entry | None:
        rows = self.db.execute(f"SELECT {COLUMNS} FROM raftsql_kv WHERE key = ?",
                               (key,)).fetchall()
        return entry_of(rows[0]) if rows else None

    def _tree(self, prefix: str) -> list[Entry]:
        low, high = model.prefix_range(prefix)
        sql = f"SELECT {COLUMNS} FROM raftsql_kv WHERE key >= ?"
        args: tuple[Any, ...] = (low,)
        if high is not None:
            sql, args = sql + " AND key < ?", (low, high)
        return [entry_of(r) for r in self.db.execute(sql + " ORDER BY key", args)]

    def _set(self, key: str, old: Entry | None, value: bytes, flags: int) -> Entry:
        return self._write(old, key, value, flags, old.lock_index if old else 0,
                           old.session if old else None)

    def _write(self, old: Entry | None, key: str, value: bytes, flags: int, lock_index: int,
               session: str | None) -> Entry:
        new = Entry(key, value, flags, old.create_index if old else self.index, self.index,
                    lock_index, session)
        self.db.execute(
            f"INSERT INTO raftsql_kv ({COLUMNS}) VALUES (?,?,?,?,?,?,?) ON CONFLICT(key) DO "
            "UPDATE SET value = excluded.value, flags = excluded.flags, "
            "modify_index = excluded.modify_index, lock_index = excluded.lock_index, "
            "session = excluded.session",
            (key, value, flags, new.create_index, self.index, lock_index, session))
        self._record("set", key, new, old)
        return new

    def _remove(self, old: Entry) -> None:
        self.db.execute("DELETE FROM raftsql_kv WHERE key = ?", (old.key,))
        self._record("delete", old.key, None, old)

    def _record(self, what: str, key: str, new: Entry | None, old: Entry | None) -> None:
        n = (new.value, new.flags, new.create_index, new.modify_index, new.lock_index,
             new.session) if new else (None,) * 6
        p = (old.value, old.flags, old.create_index, old.modify_index, old.lock_index,
             old.session) if old else (None,) * 6
        self.book.execute(f"INSERT INTO kv_changes ({_CHANGE_COLUMNS}) VALUES "
                          "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (self.index, key, what, *n, *p))
        self.changed.append(key)

    # ---- sessions

    def _live(self, session: str) -> tuple[Any, ...] | None:
        rows = self.book.execute("SELECT behavior, lock_delay_ms FROM kv_sessions WHERE id = ? "
                                 "AND gone IS NULL", (session,)).fetchall()
        return rows[0] if rows else None

    def _session(self, o: dict[str, Any]) -> Any:
        sid = o.get("s")
        if type(sid) is not str or not sid:
            raise KvError("missing session")
        if o["v"] == "session-destroy":
            self._invalidate(sid)
            return True
        if self._live(sid):
            raise KvError(f'session "{sid}" exists')
        checks = o.get("checks") or []
        self.book.execute(f"INSERT INTO kv_sessions ({SESSIONS.columns}) VALUES (?,?,?,?,?,?,?,?)",
                          (sid, str(o.get("n", "")), str(o.get("node", "")), int(o.get("ttl", 0)),
                           o.get("b", "release"), int(o.get("ld", 0)), ",".join(checks),
                           self.index))
        return {"ID": sid}

    def _invalidate(self, sid: str) -> None:
        """Destroyed or expired: its locks go (released, or their keys deleted, as its
        behavior says), each key closed to new locks for its lock delay."""
        live = self._live(sid)
        if live is None:
            return
        behavior, delay_ms = live
        self.book.execute("UPDATE kv_sessions SET gone = ? WHERE id = ? AND gone IS NULL",
                          (self.index, sid))
        self.machine.make_table(self.db)
        held = [entry_of(r) for r in self.db.execute(
            f"SELECT {COLUMNS} FROM raftsql_kv WHERE session = ? ORDER BY key", (sid,))]
        for e in held:
            if behavior == "delete":
                self._remove(e)
            else:
                self._write(e, e.key, e.value or b"", e.flags, e.lock_index, None)
            if delay_ms > 0:
                self.book.execute("UPDATE kv_lock_delays SET gone = ? WHERE key = ? AND "
                                  "gone IS NULL", (self.index, e.key))
                self.book.execute("INSERT INTO kv_lock_delays (key, until_ms, entry) VALUES "
                                  "(?,?,?)", (e.key, self.time_ms + delay_ms, self.index))
