"""Backups of the database: a consistent SQLite file, or an SQL dump, written to disk a page
or a row at a time, so a backup never holds the database in memory whatever its size.

Both read the database through a read-only connection of their own, inside one read
transaction: in WAL mode the writer goes on applying entries meanwhile, and the backup holds
the database as it was at one applied index.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import IO

import apsw

from raftsql.sql.files import remove_db_files

KV_TABLE = "raftsql_kv"  # the config store's table: in a file backup, not in a dump
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEMA = ("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql NOT NULL "
           "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 "
           "ELSE 3 END, rowid")
TEMP_INFIX = ".backup-"  # DB_NAME.backup-*: the files a backup is staged in, beside the DB


def temp_path(db_path: str, name: str) -> str:
    """Where a backup of `db_path` is staged: its directory, so a big one fits where the
    database fits; `remove_stale` clears what a crash left there."""
    return os.path.abspath(db_path) + TEMP_INFIX + name


def remove_stale(db_path: str) -> None:
    """Remove the staged backups a crashed node left beside `db_path`."""
    folder, base = os.path.split(os.path.abspath(db_path))
    for name in os.listdir(folder):
        if name.startswith(base + TEMP_INFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


def copy(db_path: str, out_path: str, *, vacuum: bool = False) -> None:
    """A self-contained copy of the database at `out_path` (rollback-journal mode, so it
    opens anywhere as one file), by SQLite's backup API or, with `vacuum`, VACUUM INTO (a
    compact copy, slower to make). Raftsql's applied index is cleared from the copy's
    header: the file is the user's database and nothing else."""
    remove_db_files(out_path)
    source = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        if vacuum:
            source.execute("VACUUM INTO ?", (out_path,))
        else:
            target = apsw.Connection(out_path)
            try:
                # One step: one read transaction, copied through the page cache.
                with target.backup("main", source, "main") as backup:
                    backup.step()
            finally:
                target.close()
    finally:
        source.close()
    target = apsw.Connection(out_path)
    try:
        target.execute("PRAGMA journal_mode=DELETE; PRAGMA application_id=0").fetchall()
    finally:
        target.close()


def dump(db_path: str, out: IO[str], tables: list[str] | None = None) -> None:
    """An SQL script that sqlite3 (or /db/load) loads into an empty database: the schema and
    rows of `tables` (every table when None; the config store's table is never in it, only
    its API writes that), then their indexes, triggers and views, as sqlite3's `.dump`
    writes it, without its `PRAGMA foreign_keys=OFF` (raftsql refuses that pragma).
    KeyError names a table that does not exist."""
    source = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        with source:  # one read transaction: the schema and every row at one index
            for line in _script(source, tables):
                out.write(line)
                out.write("\n")
    finally:
        source.close()


def dump_to(db_path: str, path: str, tables: list[str] | None = None) -> None:
    """dump() into the file at `path`."""
    with open(path, "w", encoding="utf-8") as out:
        dump(db_path, out, tables)


_DUMP_START = re.compile(r"\A\s*(?:PRAGMA\s+foreign_keys\s*=\s*OFF\s*;\s*)?"
                         r"BEGIN(?:\s+TRANSACTION)?\s*;", re.IGNORECASE)
_DUMP_END = re.compile(r"(?:COMMIT|END)(?:\s+TRANSACTION)?\s*;\s*\Z", re.IGNORECASE)


def dump_statements(text: str) -> str:
    """The statements of an SQL dump (sqlite3's `.dump`, or dump()), without the
    transaction it wraps them in: /db/load runs them in a transaction of its own."""
    body, started = _DUMP_START.subn("", text, count=1)
    if started:
        body = _DUMP_END.sub("", body.rstrip(), count=1)
    return body


def _script(db: apsw.Connection, tables: list[str] | None) -> Iterator[str]:
    schema = [(str(t), str(n), str(tbl), str(sql)) for t, n, tbl, sql in db.execute(_SCHEMA)
              if tbl != KV_TABLE]
    if tables is not None:
        known = {tbl for _, _, tbl, _ in schema}
        missing = [t for t in tables if t not in known]
        if missing:
            raise KeyError(missing[0])
        schema = [e for e in schema if e[2] in tables]
    yield "BEGIN TRANSACTION;"
    for kind, name, _, sql in schema:
        if kind != "table":
            continue
        if name == "sqlite_sequence":
            yield "DELETE FROM sqlite_sequence;"
        elif name.startswith("sqlite_"):
            continue  # sqlite_stat1 and the like: SQLite's own
        else:
            yield sql + ";"
        if not sql.upper().startswith("CREATE VIRTUAL"):
            yield from _inserts(db, name)
    for kind, name, _, sql in schema:
        if kind != "table" and not name.startswith("sqlite_"):
            yield sql + ";"
    yield "COMMIT;"


def _inserts(db: apsw.Connection, table: str) -> Iterator[str]:
    name = quote_name(table)
    for row in db.execute(f"SELECT * FROM {name}"):
        yield f"INSERT INTO {name} VALUES({','.join(apsw.format_sql_value(v) for v in row)});"


def quote_name(name: str) -> str:
    """An identifier as SQL text: bare when it can be (as sqlite3's .dump writes it)."""
    if _BARE.fullmatch(name) and name.upper() not in apsw.keywords:
        return name
    return '"' + name.replace('"', '""') + '"'
