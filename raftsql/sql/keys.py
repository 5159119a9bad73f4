"""Idempotency keys: the keys of recent keyed writes, with their results (DESIGN.md §5).

A write may carry a key (`X-Raftsql-Idempotency-Key`). When an entry with a key applies,
the key is looked up among the recent ones: if found, the entry changes nothing and its
result is the first entry's; if not, the entry applies and its key and results are
recorded. A client may therefore resend a write whose outcome it does not know (a timeout,
a leader change) and it is applied at most once.

What is recent must be the same on every node, so it is decided by the entries themselves:
each keyed entry carries the leader's window (`window_ms`, and `capacity`, in log entries),
and applying it forgets the keys of entries older than its time minus the window or more
than `capacity` entries before it. Every node does exactly this at the same entries, however
its batches are cut.

The keys live in a SQLite file of their own beside the database (`db.sqlite-keys`): user SQL
never sees it (the database holds only the user's schema, docs/design.md §8). Its
transaction shadows the database's batch transaction: rolled back with it, and committed
(and fsynced) just before it, so on disk it is never behind the database. It may be ahead:
after a crash between the two commits, and after a power cut, which can take the last
commits of the database (it is not fsynced: the Raft log replays them) but not of this file.
So nothing here is undone by deleting: a forgotten key is marked with the entry that forgot
it, and `rewind(applied)` takes the file back exactly to what it held at `applied` (keys of
later entries deleted, their forgetting undone). Marked keys are deleted for good only once
the database is durable past the entry that forgot them (`purge`, after a full checkpoint,
and at open). Snapshots carry the keys (`copy_into`, `load_from`).
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Sequence
from typing import Any

import apsw
import orjson

from raftsql.sql.command import StatementResult

# In a snapshot copy of the database: a name user SQL may not create (raftsql_ is reserved).
SNAPSHOT_TABLE = "raftsql_keys"
MAX_KEY_LENGTH = 128

_SCHEMA = """
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


def valid_key(key: str) -> bool:
    """1 to 128 printable ASCII characters (a UUID, a hash, a request id...)."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


class KeyStore:
    """The recent keys of one database. Used by the Database's apply thread only."""

    def __init__(self, path: str):
        self.path = path
        self._conn = apsw.Connection(path)
        self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
        # Durable before the database's commit: the order the module docstring relies on.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)

    # ---- the transaction that shadows the database's

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    # ---- applying a keyed entry

    def first_results(self, key: str, entry: int, time_ms: int, window_ms: int, capacity: int
                      ) -> list[StatementResult] | None:
        """Forget what is no longer recent as of this entry; the results the key's first
        entry gave, or None when it is new."""
        self._begin()
        self._conn.execute("UPDATE keys SET forgotten = ? WHERE forgotten IS NULL AND time_ms < ?",
                           (entry, time_ms - window_ms))
        self._conn.execute("UPDATE keys SET forgotten = ? WHERE forgotten IS NULL AND entry <= ?",
                           (entry, entry - capacity))
        row = self._conn.execute("SELECT results FROM keys WHERE key = ? AND forgotten IS NULL",
                                 (key,)).fetchall()
        return decode_results(row[0][0]) if row else None

    def record(self, key: str, entry: int, time_ms: int, results: Sequence[StatementResult]
               ) -> None:
        self._begin()
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

    def load_from(self, path: str) -> None:
        """Replace the keys with those of the snapshot copy at `path` (none, for a database
        file that is not a snapshot), and take them out of that copy. Committed."""
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
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        finally:
            conn.execute("DETACH snap")

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.rollback()
        self._conn.close()


def remove_key_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


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
