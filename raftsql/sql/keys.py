"""Idempotency keys: the keys of recent keyed writes, with their results (DESIGN.md §5).

A write may carry a key (`X-Raftsql-Idempotency-Key`). When an entry with a key applies,
the key is looked up among the recent ones: if found, the entry changes nothing and its
result is the first entry's; if not, the entry applies and its key and results are
recorded. A client may therefore resend a write whose outcome it does not know (a timeout,
a leader change) and it is applied at most once.

What is recent must be the same on every node, so it is decided by the entries themselves:
each keyed entry carries the leader's window (`window_ms`, and `capacity`, the most keys
kept), and applying it first forgets the keys older than its time minus the window, then,
after recording its own, all but the newest `capacity`. Every node does exactly this at the
same entries, however its batches are cut.

The keys live in a SQLite file of their own beside the database (`db.sqlite-keys`): user SQL
never sees it (the database holds only the user's schema, docs/design.md §8). It is written
in a transaction that follows the database's batch transaction (rolled back with it,
committed just before it, and fsynced), so on disk it never holds less than the database
has applied: a crash between the two commits leaves keys of entries the database has not
applied, and opening forgets those (`discard_after`); the entries replay and record them
again. Snapshots carry the keys (`copy_into`, `load_from`).
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

# In a snapshot copy of the database: names user SQL may not create (raftsql_ is reserved).
SNAPSHOT_TABLE = "raftsql_keys"
SNAPSHOT_COUNTER = "raftsql_keys_counter"
MAX_KEY_LENGTH = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order keys were recorded in
    key TEXT NOT NULL UNIQUE,
    entry INTEGER NOT NULL,                 -- the Raft index of the entry that applied
    time_ms INTEGER NOT NULL,               -- that entry's time (the leader's clock)
    results BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_time ON keys(time_ms);
CREATE INDEX IF NOT EXISTS keys_by_entry ON keys(entry);
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

    def first_results(self, key: str, time_ms: int, window_ms: int) -> list[StatementResult] | None:
        """Forget keys older than the window as of this entry; the results the key's first
        entry gave, or None when it is new."""
        self._begin()
        self._conn.execute("DELETE FROM keys WHERE time_ms < ?", (time_ms - window_ms,))
        row = self._conn.execute("SELECT results FROM keys WHERE key = ?", (key,)).fetchall()
        return decode_results(row[0][0]) if row else None

    def record(self, key: str, entry: int, time_ms: int, results: Sequence[StatementResult],
               capacity: int) -> None:
        self._begin()
        self._conn.execute("INSERT INTO keys(key, entry, time_ms, results) VALUES (?,?,?,?)",
                           (key, entry, time_ms, encode_results(results)))
        self._conn.execute("DELETE FROM keys WHERE seq <= ?",
                           (self._conn.last_insert_rowid() - capacity,))

    # ---- opening, snapshots

    def discard_after(self, applied: int) -> None:
        """Forget keys of entries the database has not applied (see the module docstring)."""
        self._conn.execute("DELETE FROM keys WHERE entry > ?", (applied,))

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM keys").fetchall()[0][0])

    def copy_into(self, path: str) -> None:
        """Add the keys to the snapshot copy of the database at `path`."""
        conn = self._conn
        conn.execute("ATTACH ? AS snap", (path,))
        try:
            conn.execute(f"CREATE TABLE snap.{SNAPSHOT_TABLE} AS SELECT * FROM main.keys;"
                         f"CREATE TABLE snap.{SNAPSHOT_COUNTER} AS SELECT seq FROM "
                         "main.sqlite_sequence WHERE name = 'keys'")
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
            conn.execute("DELETE FROM keys; DELETE FROM sqlite_sequence WHERE name = 'keys'")
            if SNAPSHOT_TABLE in tables:
                conn.execute(f"INSERT INTO keys SELECT * FROM snap.{SNAPSHOT_TABLE}")
                conn.execute(f"DROP TABLE snap.{SNAPSHOT_TABLE}")
            if SNAPSHOT_COUNTER in tables:
                conn.execute("DELETE FROM sqlite_sequence WHERE name = 'keys';"
                             "INSERT INTO sqlite_sequence(name, seq) SELECT 'keys', seq FROM "
                             f"snap.{SNAPSHOT_COUNTER}")
                conn.execute(f"DROP TABLE snap.{SNAPSHOT_COUNTER}")
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
