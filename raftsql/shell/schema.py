"""The cluster's schema held locally, and a dump of the cluster's data.

The shell's own `db` is an in-memory "shadow": the cluster's CREATE statements replayed into
an empty database, so apsw's completion, `.tables`, `.schema` and `.indexes` work unchanged
on it. It never holds rows; a dump reads those from the cluster.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw

SCHEMA_SQL = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql NOT NULL"
# Replayed in this order: a table must exist before its indexes, views and triggers.
_ORDER = {"table": 0, "index": 1, "view": 2, "trigger": 3}
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DUMP_PAGE = 1000  # rows per request while dumping: no single answer grows without bound


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the cluster's sqlite_master."""

    type: str
    name: str
    tbl_name: str
    sql: str

    @property
    def internal(self) -> bool:
        return self.name.startswith("sqlite_")


def entries(rows: Iterable[list[Any]]) -> list[Entry]:
    """sqlite_master rows, in the order they can be replayed."""
    out = [Entry(*(str(v) for v in row[:4])) for row in rows]
    return sorted(out, key=lambda e: _ORDER.get(e.type, 9))


def build_shadow(schema: Iterable[Entry]) -> apsw.Connection:
    """A fresh in-memory database holding the schema. An entry SQLite cannot replay here (a
    module that is not loaded, the shadow tables a virtual table creates itself) is skipped:
    the shadow serves completion and listing, and a missing entry only costs a completion."""
    db = apsw.Connection(":memory:")
    for entry in schema:
        if entry.internal:
            continue  # sqlite_sequence, sqlite_stat1: bookkeeping never shows
        with contextlib.suppress(apsw.Error):
            db.execute(entry.sql)
    return db


def quote_name(name: str) -> str:
    """An identifier as SQL text: bare when it can be (as sqlite3's .dump writes it)."""
    if _BARE.fullmatch(name) and name.upper() not in apsw.keywords:
        return name
    return '"' + name.replace('"', '""') + '"'


# A function that runs one read on the cluster and returns (columns, rows).
Reader = Callable[[str, dict[str, Any] | None], tuple[list[str], list[list[Any]]]]


def dump(schema: list[Entry], tables: list[str], read: Reader) -> Iterator[str]:
    """A script sqlite3 loads into an empty database: the named tables' schema and rows (all
    tables when `tables` is empty), then their indexes, triggers and views, as sqlite3's own
    `.dump` writes it. Values are SQL literals (BLOBs as X'..').

    Unlike sqlite3's, it starts without `PRAGMA foreign_keys=OFF`: raftsql refuses that
    per-connection pragma, and the script must load back through the shell too (foreign
    keys are off unless a database turns them on, in SQLite and in raftsql)."""
    yield "BEGIN TRANSACTION;"
    chosen = [e for e in schema if not tables or e.tbl_name in tables]
    for entry in chosen:
        if entry.type != "table":
            continue
        if entry.name == "sqlite_sequence":
            yield "DELETE FROM sqlite_sequence;"
        elif entry.internal:
            continue
        else:
            yield entry.sql + ";"
        if not entry.sql.upper().startswith("CREATE VIRTUAL"):
            yield from _rows(entry.name, read)
    for entry in chosen:
        if entry.type != "table" and not entry.internal:
            yield entry.sql + ";"
    yield "COMMIT;"


def _rows(table: str, read: Reader) -> Iterator[str]:
    """INSERTs for every row of `table`, read a page at a time in rowid order; a table
    without rowid is read in one request."""
    name = quote_name(table)
    after: int | None = None
    while True:
        try:
            columns, rows = read(f"SELECT _rowid_, * FROM {name} WHERE _rowid_ > :after "
                                 f"ORDER BY _rowid_ LIMIT {DUMP_PAGE}",
                                 {"after": after if after is not None else -(1 << 63)})
        except NoRowid:
            _, rows = read(f"SELECT * FROM {name}", None)
            yield from (_insert(name, row) for row in rows)
            return
        yield from (_insert(name, row[1:]) for row in rows)
        if len(rows) < DUMP_PAGE:
            return
        after = rows[-1][0]


class NoRowid(Exception):
    """The reader's way to say the table has no rowid (a WITHOUT ROWID table)."""


def _insert(name: str, row: Iterable[Any]) -> str:
    return f"INSERT INTO {name} VALUES({','.join(apsw.format_sql_value(v) for v in row)});"
