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

The keys live in the bookkeeping file beside the database (raftsql/sql/sidecar.py: user SQL
never sees it, and it goes back exactly to any applied index): a key no longer recent is
marked with the entry that forgot it (`forgotten`), never deleted by that entry. Snapshots
carry the keys remembered.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson

from raftsql.sql.command import Replayed, StatementResult
from raftsql.sql.sidecar import Sidecar, Table

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
FORGET_PER_ENTRY = 64  # keys marked forgotten by one keyed entry, at most, per reason
TABLE = Table("keys", _SCHEMA, "entry, key, time_ms, results", gone="forgotten")
SNAPSHOT_TABLE = TABLE.snapshot_name  # in a snapshot copy of the database


def valid_key(key: str) -> bool:
    """1 to 128 printable ASCII characters (a UUID, a hash, a request id...)."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


class KeyStore:
    """The recent keys of one database, in its bookkeeping file. Used by the Database's apply
    thread only."""

    def __init__(self, sidecar: Sidecar):
        self._sidecar = sidecar
        self._conn = sidecar.conn

    # ---- applying a keyed entry

    def first_outcome(self, key: str, entry: int, time_ms: int, window_ms: int, capacity: int
                      ) -> Any:
        """What the key's first entry gave (see decode_outcome), if it is recent for this
        entry; else None (the key is new). Marks a few keys no longer recent as forgotten on
        the way."""
        self._sidecar.begin()
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
        return decode_outcome(row[0][0]) if row else None

    def record(self, key: str, entry: int, time_ms: int, outcome: Any) -> None:
        self._sidecar.begin()
        # The key may be there still, no longer recent but not yet marked: it goes now.
        self._conn.execute("UPDATE keys SET forgotten = ? WHERE key = ? AND forgotten IS NULL",
                           (entry, key))
        self._conn.execute("INSERT INTO keys(entry, key, time_ms, results) VALUES (?,?,?,?)",
                           (entry, key, time_ms, encode_outcome(outcome)))

    def count(self) -> int:
        """Keys remembered (not forgotten)."""
        sql = "SELECT count(*) FROM keys WHERE forgotten IS NULL"
        return int(self._conn.execute(sql).fetchall()[0][0])


# ---- results, as stored -----------------------------------------------------------------

def _value_out(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(v)).decode("ascii")}
    return v


def _value_in(v: Any) -> Any:
    return base64.b64decode(v["b"]) if type(v) is dict else v


def encode_outcome(outcome: Any) -> bytes:
    """An entry's outcome as stored: its statements' results, or (a config store entry's,
    raftsql/kv/) any JSON value."""
    return encode_results(outcome) if isinstance(outcome, list) else orjson.dumps({"kv": outcome})


def decode_outcome(data: bytes) -> Any:
    """A stored outcome, as a repeat of its entry gives it: statement results are Replayed."""
    stored = orjson.loads(data)
    return stored["kv"] if type(stored) is dict else Replayed(_results(stored))


def encode_results(results: Sequence[StatementResult]) -> bytes:
    return orjson.dumps([
        {"c": r.columns, "d": r.decltypes, "r": [[_value_out(v) for v in row] for row in r.rows],
         "i": r.last_insert_id, "a": r.rows_affected, "e": r.error, "t": r.time}
        for r in results
    ])


def decode_results(data: bytes) -> list[StatementResult]:
    return _results(orjson.loads(data))


def _results(stored: list[Any]) -> list[StatementResult]:
    return [
        StatementResult(columns=d["c"], decltypes=d["d"],
                        rows=[tuple(_value_in(v) for v in row) for row in d["r"]],
                        last_insert_id=d["i"], rows_affected=d["a"], error=d["e"], time=d["t"])
        for d in stored
    ]
