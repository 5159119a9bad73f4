"""Idempotency keys: the keys of recent keyed writes, with their results (DESIGN.md §5).

A write may carry a key (`X-Raftsql-Idempotency-Key`). When an entry with a key applies,
the key is looked up among the recent ones: if found, the entry changes nothing and its
result is the first entry's; if not, the entry applies and its key and results are
recorded. A client may therefore resend a write whose outcome it does not know (a timeout,
a leader change) and it is applied at most once.

What is recent must be the same on every node, so it is decided by the entries themselves:
each keyed entry carries the leader's window (`window_ms`, and `capacity`, in log entries),
and for it a key is recent when its entry's time is at most `window_ms` older and its
entry at most `capacity` entries older. Every node judges the same keys at the same
entries, however its batches are cut. Keys no longer recent are marked forgotten a bounded
number at a time (by each keyed entry, in a fixed order), so no entry does unbounded work.

The keys live in a SQLite file of their own beside the database (`db.sqlite-keys`): user SQL
never sees it (the database holds only the user's schema, docs/design.md §8). Its
transaction shadows the database's batch transaction: rolled back with it, and committed
just before it, with the database's applied index (`through`). Neither file is fsynced per
batch (the Raft log is the durable record); a crash of the process keeps both commits'
order, a power cut may take the last commits of either:

- the keys ahead of the database (a crash between the two commits, or a power cut that took
  more of the database): nothing here is undone by deleting (a forgotten key is marked with
  the entry that forgot it), so `rewind(applied)` takes the file back exactly to what it
  held at `applied`. Marked keys are deleted for good only once the database is durable past
  the entry that forgot them (`purge`, after a full checkpoint, and at open);
- the keys behind (a power cut that took more of the keys): the database has applied keyed
  entries whose keys are lost. The database sees it at open (`through` is behind, and the
  Raft log holds a keyed entry after it) and starts over from the snapshot. The stamp is
  made durable whenever the log may be compacted (`stamp_durably`, at each snapshot and
  restore), so the entries after `through` are always still in the log.

Snapshots carry the keys (`copy_into`, `load_from`).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import apsw
import orjson

from raftsql.sql.command import Command, StatementResult

# In a snapshot copy of the database: a name user SQL may not create (raftsql_ is reserved).
SNAPSHOT_TABLE = "raftsql_keys"
MAX_KEY_LENGTH = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    entry INTEGER PRIMARY KEY,  -- the Raft index of the entry that applied (one key each)
    key TEXT NOT NULL,
    time_ms INTEGER NOT NULL,   -- that entry's time (the leader's clock)
    results BLOB NOT NULL,
    forgotten INTEGER           -- the entry that forgot it; NULL while remembered
);
CREATE UNIQUE INDEX IF NOT EXISTS live_keys ON keys(key) WHERE forgotten IS NULL;
CREATE INDEX IF NOT EXISTS live_by_time ON keys(time_ms) WHERE forgotten IS NULL;
CREATE INDEX IF NOT EXISTS by_forgotten ON keys(forgotten) WHERE forgotten IS NOT NULL;
"""
FORGET_PER_ENTRY = 64  # keys marked forgotten by one keyed entry, at most, per reason


def valid_key(key: str) -> bool:
    """1 to 128 printable ASCII characters (a UUID, a hash, a request id...)."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


class KeyStore:
    """The recent keys of one database. Used by the Database's apply thread only."""

    def __init__(self, path: str):
        self.path = path
        self._conn = apsw.Connection(path)
        self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self._conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self._conn.execute(_SCHEMA)

    # ---- the transaction that shadows the database's

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    def commit(self, through: int) -> None:
        """Commit what the batch did; the database has then applied `through`."""
        if self._conn.in_transaction:
            self._set_through(through)
            self._conn.execute("COMMIT")

    def _set_through(self, through: int) -> None:
        self._conn.execute("INSERT OR REPLACE INTO state VALUES ('through', ?)", (through,))

    def through(self) -> int | None:
        """The database's applied index at this file's last commit (None: a new file)."""
        rows = self._conn.execute("SELECT value FROM state WHERE name = 'through'").fetchall()
        return int(rows[0][0]) if rows else None

    def lost(self, applied: int,
             stored_after: Callable[[int], list[tuple[int, bytes]] | None]) -> bool:
        """Whether keys of entries up to `applied` may be lost: this file's stamp is behind,
        and after it the log holds a keyed entry or no longer holds every entry."""
        through = self.through() or 0
        if through >= applied:
            return False
        stored = stored_after(through)
        return stored is None or any(_keyed(data) for index, data in stored if index <= applied)

    def stamp_durably(self, through: int) -> None:
        """Everything here is right as of the database's `through`, on disk whatever happens
        (before the log is compacted up to it)."""
        self.rollback()
        self._conn.execute("BEGIN IMMEDIATE")
        self._set_through(through)
        self._conn.execute("COMMIT")
        self._conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_FULL)  # the WAL, then the file

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    # ---- applying a keyed entry

    def first_results(self, key: str, entry: int, time_ms: int, window_ms: int, capacity: int
                      ) -> list[StatementResult] | None:
        """The results the key's first entry gave, if it is recent for this entry; else None
        (the key is new). Marks a few keys no longer recent as forgotten on the way."""
        self._begin()
        oldest_time, oldest_entry = time_ms - window_ms, entry - capacity
        conn = self._conn
        conn.execute("UPDATE keys SET forgotten = ?1 WHERE entry IN (SELECT entry FROM keys "
                     "WHERE forgotten IS NULL AND time_ms < ?2 ORDER BY time_ms, entry LIMIT ?3)",
                     (entry, oldest_time, FORGET_PER_ENTRY))
        conn.execute("UPDATE keys SET forgotten = ?1 WHERE entry IN (SELECT entry FROM keys "
                     "WHERE forgotten IS NULL AND entry <= ?2 ORDER BY entry LIMIT ?3)",
                     (entry, oldest_entry, FORGET_PER_ENTRY))
        row = conn.execute("SELECT results FROM keys WHERE key = ? AND forgotten IS NULL "
                           "AND time_ms >= ? AND entry > ?",
                           (key, oldest_time, oldest_entry)).fetchall()
        return decode_results(row[0][0]) if row else None

    def record(self, key: str, entry: int, time_ms: int, results: Sequence[StatementResult]
               ) -> None:
        self._begin()
        # The key may be there still, no longer recent but not yet marked: it goes now.
        self._conn.execute("UPDATE keys SET forgotten = ? WHERE key = ? AND forgotten IS NULL",
                           (entry, key))
        self._conn.execute("INSERT INTO keys(entry, key, time_ms, results) VALUES (?,?,?,?)",
                           (entry, key, time_ms, encode_results(results)))

    # ---- opening, snapshots

    def rewind(self, applied: int) -> None:
        """Back to what this held when the database had applied `applied`: at open, when the
        database may have lost commits this file kept (see the module docstring)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM keys WHERE entry > ?", (applied,))
        conn.execute("UPDATE keys SET forgotten = NULL WHERE forgotten > ?", (applied,))
        conn.execute("DELETE FROM keys WHERE forgotten <= ?", (applied,))  # durable there
        self._set_through(applied)
        conn.execute("COMMIT")

    def purge(self, durable: int) -> None:
        """The database is durable up to `durable`: what was forgotten by then can go."""
        self.rollback()
        self._conn.execute("DELETE FROM keys WHERE forgotten <= ?", (durable,))

    def count(self) -> int:
        """Keys remembered (not forgotten)."""
        sql = "SELECT count(*) FROM keys WHERE forgotten IS NULL"
        return int(self._conn.execute(sql).fetchall()[0][0])

    def copy_into(self, path: str) -> None:
        """Add the keys remembered to the snapshot copy of the database at `path`."""
        conn = self._conn
        conn.execute("ATTACH ? AS snap", (path,))
        try:
            conn.execute(f"CREATE TABLE snap.{SNAPSHOT_TABLE} AS SELECT entry, key, time_ms, "
                         "results FROM main.keys WHERE forgotten IS NULL")
        finally:
            conn.execute("DETACH snap")

    def load_from(self, path: str, index: int) -> None:
        """Replace the keys with those of the snapshot copy at `path` (none, for a database
        file that is not a snapshot), which holds everything up to `index`, and take them out
        of that copy. Committed, durably."""
        conn = self._conn
        self.rollback()
        conn.execute("ATTACH ? AS snap", (path,))
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM snap.sqlite_schema")}
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM keys")
            if SNAPSHOT_TABLE in tables:
                conn.execute("INSERT INTO keys(entry, key, time_ms, results) SELECT entry, key, "
                             f"time_ms, results FROM snap.{SNAPSHOT_TABLE}")
                conn.execute(f"DROP TABLE snap.{SNAPSHOT_TABLE}")
            self._set_through(index)
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        finally:
            conn.execute("DETACH snap")
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_FULL)  # before the log is compacted

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.rollback()
        self._conn.close()


def _keyed(data: bytes) -> bool:
    """Whether a stored entry is a command with an idempotency key."""
    if b'"ik"' not in data:
        return False
    try:
        return Command.decode(data).key is not None
    except Exception:
        return False


# ---- results, as stored -----------------------------------------------------------------

def _value_out(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(v)).decode("ascii")}
    return v


def _value_in(v: Any) -> Any:
    return base64.b64decode(v["b"]) if type(v) is dict else v


def encode_results(results: Sequence[StatementResult]) -> bytes:
    return orjson.dumps([
        {"c": r.columns, "d": r.decltypes, "r": [[_value_out(v) for v in row] for row in r.rows],
         "i": r.last_insert_id, "a": r.rows_affected, "e": r.error, "t": r.time}
        for r in results
    ])


def decode_results(data: bytes) -> list[StatementResult]:
    return [
        StatementResult(columns=d["c"], decltypes=d["d"],
                        rows=[tuple(_value_in(v) for v in row) for row in d["r"]],
                        last_insert_id=d["i"], rows_affected=d["a"], error=d["e"], time=d["t"])
        for d in orjson.loads(data)
    ]
