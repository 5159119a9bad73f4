"""Loading a SQLite file through the log, in chunks (POST /db/load with a SQLite file).

The leader stages the upload on disk, then proposes it as a sequence of Op.LOAD entries, one
chunk each: statements `[load id, seq, total, size, crc]`, the chunk's bytes as the command's
raw payload (an entry that big keeps its data beside the log, storage/payloads.py, so
neither the log nor memory holds the chunks). Every node applies a chunk by
storing it in the bookkeeping file (`load_chunks`, a versioned table of sql/sidecar.py), so an
open load goes back exactly in time like the other bookkeeping, travels in snapshots, and is
never in memory as a whole. A snapshot due by size waits while a load is under way
(Database.snapshot_deferred), since it would copy the chunks so far, and the next one again:
the load's end, which replaces them all, comes first. The last chunk's entry assembles the file from the table, checks its size and CRC-32, and
replaces the database with it (Database.restore), on every node at the same entry.

The rules are the entries', so every node decides the same: chunk 0 starts a load and drops
any other open one; a chunk that does not follow its load's previous one (a leader change cut
a load short, and another leader started again), or a file that fails its check or is not a
SQLite database, ends the load with an error result and drops its chunks; `seq == -1` aborts.

Replacing the database is made crash-safe by a marker: the assembled file is fsynced and
`db.sqlite.load-index` names the entry it belongs to before the database is touched, and
both go once the new database is durable. A node that died in between finds the marker at
start and does the replacement again from the file (the chunks are gone by then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import apsw

from raftsql.sql.files import remove_db_files
from raftsql.sql.sidecar import Table

log = logging.getLogger("raftsql.sql")

CHUNK_BYTES = 1 << 20  # of the file per entry
# A load whose latest chunk is this many entries old was cut short (a leader change): the
# next snapshot no longer waits for it.
IDLE_ENTRIES = 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS load_chunks (
    entry INTEGER NOT NULL, load TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    dropped INTEGER);
CREATE INDEX IF NOT EXISTS load_chunks_seq ON load_chunks(load, seq);
"""
TABLE = Table("load_chunks", _SCHEMA, "entry, load, seq, data", gone="dropped")


@dataclass(frozen=True, slots=True)
class Chunk:
    load: str
    seq: int  # -1: abort every open load
    total: int
    size: int  # of the whole file
    crc: int  # CRC-32 of the whole file
    data: bytes

    def statements(self) -> list[Any]:
        return [self.load, self.seq, self.total, self.size, self.crc]

    @staticmethod
    def decode(statements: list[Any], payload: bytes) -> Chunk:
        load, seq, total, size, crc = statements
        if not (type(load) is str and all(type(v) is int for v in (seq, total, size, crc))
                and -1 <= seq < total):
            raise ValueError("malformed load chunk")
        return Chunk(load, seq, total, size, crc, payload)


def checksum(path: str) -> tuple[int, int]:
    """(size, CRC-32) of the file at `path`, read a chunk at a time."""
    size, crc = 0, 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            size += len(block)
            crc = zlib.crc32(block, crc)
    return size, crc


def chunks(f: BinaryIO, load: str, size: int, crc: int) -> Iterator[Chunk]:
    """The chunks the file `f` (of `size` bytes with CRC `crc`) is proposed as, read as
    they are needed."""
    total = max(1, -(-size // CHUNK_BYTES))
    for seq in range(total):
        yield Chunk(load, seq, total, size, crc, f.read(CHUNK_BYTES))


class Loads:
    """The open load, in the bookkeeping file; used by the Database's apply thread, inside
    the batch's transaction (`conn` is the sidecar's connection)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    def add(self, index: int, chunk: Chunk) -> str | None:
        """Store `chunk` (entry `index`). An error text when it ends its load in failure;
        else None (the caller assembles the file once the last chunk is in)."""
        conn = self._conn
        if chunk.seq <= 0:
            self.drop(index, None)  # a new load (or an abort) ends every other one
            if chunk.seq < 0:
                return None
        else:
            rows = conn.execute(
                "SELECT max(seq) FROM load_chunks WHERE load = ? AND dropped IS NULL",
                (chunk.load,)).fetchall()
            if rows[0][0] != chunk.seq - 1:
                self.drop(index, chunk.load)
                return (f"load {chunk.load}: chunk {chunk.seq} does not follow chunk "
                        f"{rows[0][0]} (interrupted by a leader change?): nothing loaded")
        conn.execute("INSERT INTO load_chunks(entry, load, seq, data) VALUES (?, ?, ?, ?)",
                     (index, chunk.load, chunk.seq, chunk.data))
        return None

    def assemble(self, index: int, chunk: Chunk, path: str) -> str | None:
        """Write the load's file to `path` from its chunks; an error text (the chunks then
        dropped, `path` removed) if its size or CRC is not what the entries said."""
        size, crc = 0, 0
        with open(path, "wb") as f:
            for (data,) in self._conn.execute(
                    "SELECT data FROM load_chunks WHERE load = ? AND dropped IS NULL "
                    "ORDER BY seq", (chunk.load,)):
                f.write(data)
                size += len(data)
                crc = zlib.crc32(data, crc)
        if (size, crc) == (chunk.size, chunk.crc):
            return None
        os.remove(path)
        self.drop(index, chunk.load)
        return (f"load {chunk.load}: the file is {size} bytes with CRC {crc:08x}, the "
                f"upload was {chunk.size} bytes with CRC {chunk.crc:08x}: nothing loaded")

    def drop(self, index: int, load: str | None) -> None:
        """End `load` (None: every open one): its chunks are dropped at entry `index`."""
        where = "" if load is None else " AND load = ?"
        self._conn.execute(f"UPDATE load_chunks SET dropped = ? WHERE dropped IS NULL{where}",
                           (index,) if load is None else (index, load))


def foreign_tables(path: str) -> list[str]:
    """raftsql's bookkeeping tables in the database file at `path` (only raftsql_kv, the
    config store's keys, may come with a file a user loads: the rest are a snapshot's)."""
    conn = apsw.Connection(f"file:{path}?immutable=1",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE name LIKE 'raftsql\\_%' ESCAPE '\\' "
            "AND name != 'raftsql_kv' ORDER BY name")]
    finally:
        conn.close()


def mark(db_path: str, file: str, index: int) -> None:
    """`file` (assembled) replaces the database at entry `index`: durable before it starts."""
    _fsync(file)
    marker = db_path + ".load-index"
    with open(marker + ".tmp", "w") as f:
        f.write(f"{index} {file}")
        f.flush()
        os.fsync(f.fileno())
    os.replace(marker + ".tmp", marker)
    _fsync(os.path.dirname(marker) or ".")


def pending(db_path: str) -> tuple[int, str] | None:
    """A replacement that a crash cut short: (entry, file), or None."""
    try:
        with open(db_path + ".load-index") as f:
            index, _, file = f.read().partition(" ")
    except FileNotFoundError:
        return None
    return (int(index), file) if os.path.exists(file) else None


def unmark(db_path: str, file: str) -> None:
    for path in (db_path + ".load-index", file):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Target(Protocol):
    """What a load replaces: the Database (sql/database.py)."""

    path: str

    def restore_source(self, path: str) -> str: ...
    def restore_from(self, source_path: str, applied_index: int) -> None: ...
    def checkpoint_durably(self) -> bool: ...


def apply(conn: apsw.Connection, index: int, statements: list[Any], payload: bytes,
          file: str, replace_with: Callable[[str], str | None],
          begin: Callable[[], None]) -> str | None:
    """Apply the chunk entry `index` in the sidecar transaction on `conn`: the error text of
    its result, or None. The last chunk assembles the load into `file` and hands it to
    `replace_with` (which commits the batch so far first, and may begin anew: `begin`)."""
    try:
        chunk = Chunk.decode(statements, payload)
    except (ValueError, TypeError) as e:
        return f"invalid load chunk: {e}"
    loads = Loads(conn)
    error = loads.add(index, chunk)
    if error is None and chunk.seq == chunk.total - 1:
        error = loads.assemble(index, chunk, file) or replace_with(file)
        if error is not None:  # (drop again after assemble's own drop: harmless)
            begin()
            loads.drop(index, chunk.load)
    return error


def leaves_open(statements: list[Any], error: str | None) -> bool:
    """Whether the chunk entry (`statements`, applied with `error`) leaves its load open."""
    try:
        chunk = Chunk.decode(statements, b"")
    except (ValueError, TypeError):
        return False
    return error is None and 0 <= chunk.seq < chunk.total - 1


def replace(db: Target, file: str, index: int) -> str | None:
    """Replace the database with the assembled `file` at entry `index`, or say why not
    (nothing changed): made crash-safe by the marker (see the module docstring)."""
    try:
        source = db.restore_source(file)
        foreign = foreign_tables(source)
    except (ValueError, apsw.Error) as e:
        remove_db_files(file)
        return f"the file is {e}: nothing loaded"
    if foreign:
        remove_db_files(source)
        remove_db_files(file)
        return (f"the file holds raftsql's bookkeeping ({', '.join(foreign)}): a snapshot, "
                "not a database to load: nothing loaded")
    mark(db.path, file, index)
    db.restore_from(source, index)
    if db.checkpoint_durably():
        unmark(db.path, file)
    return None


def finish_cut(db: Target) -> int | None:
    """At start: a replacement a crash cut short is done again; its entry, or None."""
    cut = pending(db.path)
    if cut is None:
        return None
    index, file = cut
    log.warning("%s: finishing the load of entry %d that a crash cut short", db.path, index)
    db.restore_from(db.restore_source(file), index)
    if db.checkpoint_durably():
        unmark(db.path, file)
    return index
