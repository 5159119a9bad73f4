"""The bookkeeping file beside the database (`db.sqlite-keys`): replicated state that must
never show through the API (docs/design.md §8), in a SQLite file user SQL never reaches.

Its tables belong to their owners (the idempotency keys, raftsql/sql/keys.py; the config
store's sessions and change history, raftsql/kv/); this file owns what they share: the one
transaction that shadows the database's batch transaction (rolled back with it, committed
just before it, stamped with the database's applied index, `through`), and what happens to
every table at open, at a checkpoint and in a snapshot. Neither file is fsynced per batch
(the Raft log is the durable record); a crash of the process keeps both commits' order, a
power cut may take the last commits of either:

- the file ahead of the database (a crash between the two commits, or a power cut that took
  more of the database): `rewind(applied)` takes every table back exactly to what it held at
  `applied`, which works because rows are never changed in place. A row holds the entry that
  wrote it (`entry`); a *versioned* table marks a row it removes with the entry that removed
  it (its `gone` column) and deletes it for good only once the database is durable past that
  entry (`purge`, after a full checkpoint, and at open). A *history* table's oldest rows are
  deleted outright (`trim`), and its `floor` (the newest entry trimmed) only goes up: after a
  rewind it may claim a little more was trimmed than was, which is safe for a history;
- the file behind (a power cut that took more of it): the database has applied entries whose
  bookkeeping is lost. The database sees it at open (`lost`: `through` is behind, and the Raft
  log holds an entry that writes here after it) and starts over from the snapshot. The stamp
  is made durable whenever the log may be compacted (`stamp_durably`, at each snapshot and
  restore), so the entries after `through` are always still in the log.

A snapshot copy of the database carries each table's live rows as `raftsql_<name>`
(`copy_into`); `load_from` moves them back out of a copy before it becomes the database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import apsw

SIDECAR_SUFFIX = "-keys"  # DATA_DIR/db.sqlite-keys (it held only idempotency keys at first)
_STATE = "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the file, and how it goes back in time (see the module docstring)."""

    name: str
    schema: str  # CREATE ... IF NOT EXISTS statements
    columns: str  # the columns a snapshot copy carries, comma-separated
    gone: str | None = None  # versioned: the column naming the entry that removed a row
    history: bool = False  # a history: oldest rows trimmed, with a floor

    @property
    def snapshot_name(self) -> str:
        return f"raftsql_{self.name}"  # a name user SQL may not create (raftsql_ is reserved)


class Sidecar:
    """The file and its transaction. Used by the Database's apply thread only; readers open
    connections of their own (`path`)."""

    def __init__(self, path: str, tables: Sequence[Table]):
        self.path = path
        self.tables = tuple(tables)
        self.conn = apsw.Connection(path)
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self.conn.execute(_STATE + "".join(t.schema for t in self.tables))

    # ---- the transaction that shadows the database's

    def begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self, through: int) -> None:
        """Commit what the batch did; the database has then applied `through`."""
        if self.conn.in_transaction:
            self._set("through", through)
            self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _set(self, name: str, value: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, value))

    def _get(self, name: str) -> int | None:
        rows = self.conn.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchall()
        return int(rows[0][0]) if rows else None

    def through(self) -> int | None:
        """The database's applied index at this file's last commit (None: a new file)."""
        return self._get("through")

    def lost(self, applied: int, stored_after: Callable[[int], Iterable[tuple[int, bytes]] | None],
             writes_here: Callable[[bytes], bool]) -> bool:
        """Whether bookkeeping of entries up to `applied` may be lost: the stamp is behind, and
        after it the log holds an entry that `writes_here`, or no longer holds every entry."""
        through = self.through() or 0
        if through >= applied:
            return False
        stored = stored_after(through)
        return stored is None or any(writes_here(data) for index, data in stored
                                     if index <= applied)

    def stamp_durably(self, through: int) -> None:
        """Everything here is right as of the database's `through`, on disk whatever happens
        (before the log is compacted up to it)."""
        self.rollback()
        self.conn.execute("BEGIN IMMEDIATE")
        self._set("through", through)
        self.conn.execute("COMMIT")
        self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_FULL)  # the WAL, then the file

    def floor(self, table: Table) -> int:
        return history_floor(self.conn, table)

    # ---- opening, checkpoints, snapshots

    def rewind(self, applied: int) -> None:
        """Back to what this held when the database had applied `applied`: at open, when the
        database may have lost commits this file kept (see the module docstring)."""
        conn = self.conn
        self.rollback()
        conn.execute("BEGIN IMMEDIATE")
        for t in self.tables:
            conn.execute(f"DELETE FROM {t.name} WHERE entry > ?", (applied,))
            if t.gone:
                conn.execute(f"UPDATE {t.name} SET {t.gone} = NULL WHERE {t.gone} > ?",
                             (applied,))
                conn.execute(f"DELETE FROM {t.name} WHERE {t.gone} <= ?", (applied,))
        self._set("through", applied)
        conn.execute("COMMIT")

    def purge(self, durable: int) -> None:
        """The database is durable up to `durable`: rows removed by then can go."""
        self.rollback()
        for t in self.tables:
            if t.gone:
                self.conn.execute(f"DELETE FROM {t.name} WHERE {t.gone} <= ?", (durable,))

    def copy_into(self, path: str) -> None:
        """Add every table's live rows to the snapshot copy of the database at `path`."""
        conn = self.conn
        conn.execute("ATTACH ? AS snap", (path,))
        try:
            for t in self.tables:
                live = f" WHERE {t.gone} IS NULL" if t.gone else ""
                conn.execute(f"CREATE TABLE snap.{t.snapshot_name} AS SELECT {t.columns} "
                             f"FROM main.{t.name}{live}")
        finally:
            conn.execute("DETACH snap")

    def load_from(self, path: str, index: int) -> None:
        """Replace every table with the rows of the snapshot copy at `path` (none, for a
        database file that is not a snapshot), which holds everything up to `index`, and
        take them out of that copy. Committed, durably."""
        conn = self.conn
        self.rollback()
        conn.execute("ATTACH ? AS snap", (path,))
        try:
            present = {r[0] for r in conn.execute("SELECT name FROM snap.sqlite_schema")}
            conn.execute("BEGIN IMMEDIATE")
            for t in self.tables:
                conn.execute(f"DELETE FROM {t.name}")
                if t.snapshot_name in present:
                    conn.execute(f"INSERT INTO {t.name}({t.columns}) SELECT {t.columns} "
                                 f"FROM snap.{t.snapshot_name} ORDER BY rowid")
                    conn.execute(f"DROP TABLE snap.{t.snapshot_name}")
                if t.history:  # what came before the copy's oldest row is not known here
                    oldest = conn.execute(f"SELECT min(entry) FROM {t.name}").fetchall()[0][0]
                    self._set(f"floor:{t.name}", index if oldest is None else oldest - 1)
            self._set("through", index)
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
        self.conn.close()


# ---- history tables, for their owners (on the file's connection, or a reader's)

def history_floor(conn: apsw.Connection, table: Table) -> int:
    """The newest entry whose rows `trim_history` deleted (0: none): a history holds every
    row of the entries after it."""
    rows = conn.execute("SELECT value FROM state WHERE name = ?",
                        (f"floor:{table.name}",)).fetchall()
    return int(rows[0][0]) if rows else 0


def trim_history(conn: apsw.Connection, table: Table, keep: int) -> None:
    """Delete a history's oldest entries' rows beyond its newest `keep` rows (whole entries
    only), raising its floor; in the batch's transaction. A history is a rowid table whose
    rows are inserted in log order, so its rowids are consecutive and this is two lookups."""
    name = table.name
    rows = conn.execute(f"SELECT entry FROM {name} WHERE rowid <= (SELECT max(rowid) FROM "
                        f"{name}) - ? ORDER BY rowid DESC LIMIT 1", (keep,)).fetchall()
    if rows:
        newest = int(rows[0][0])
        conn.execute(f"DELETE FROM {name} WHERE entry <= ?", (newest,))
        conn.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                     "value = max(value, excluded.value)", (f"floor:{name}", newest))
