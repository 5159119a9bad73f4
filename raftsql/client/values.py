"""Values in and out of the DB-API: PEP 249's type objects and constructors, parameters as
the HTTP API binds them, rows as SQLite holds them, and which statements are reads.

The API is JSON, so what JSON cannot say is said by convention (`?native`, rqlite's rules):
a BLOB travels as an array of ints 0..255 both ways; dates travel as the ISO text `sqlite3`'s
default adapters write.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from raftsql.client.errors import DataError, ProgrammingError

INT64 = (-(2**63), 2**63 - 1)

# ---- type objects (PEP 249): equal to the declared types of the matching SQLite affinity


class TypeObject:
    """Compares equal to a declared type (`cursor.description[i][1]`) by SQLite's affinity
    rules (https://sqlite.org/datatype3.html §3.1), in their order."""

    def __init__(self, name: str, matches: Callable[[str], bool]):
        self.name = name
        self._matches = matches

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypeObject):
            return other is self
        return isinstance(other, str) and self._matches(other.upper())

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<raftsql type {self.name}>"


def affinity(declared: str) -> str:
    """INTEGER, TEXT, BLOB, REAL or NUMERIC: SQLite's rules, first match wins."""
    d = declared.upper()
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if "BLOB" in d or not d:
        return "BLOB"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "REAL"
    return "NUMERIC"


STRING = TypeObject("STRING", lambda d: affinity(d) == "TEXT")
# No declared type (an expression's column) has BLOB affinity too, so it compares equal.
BINARY = TypeObject("BINARY", lambda d: affinity(d) == "BLOB")
NUMBER = TypeObject("NUMBER", lambda d: affinity(d) in ("INTEGER", "REAL", "NUMERIC"))
# Dates have NUMERIC affinity (so they are NUMBER too); DATETIME goes by the usual names.
DATETIME = TypeObject("DATETIME", lambda d: affinity(d) == "NUMERIC"
                      and ("DATE" in d or "TIME" in d))
# Only a column declared exactly INTEGER PRIMARY KEY is the rowid.
ROWID = TypeObject("ROWID", lambda d: d.strip() in ("INTEGER", "ROWID"))

# ---- constructors (PEP 249)

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249's names
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


# ---- parameters in


def adapt(value: Any, where: int | str) -> Any:
    """One parameter as the HTTP API binds it; `where` names it in errors as sqlite3 does."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise DataError(f"Error binding parameter {where}: "
                            "Python int too large to convert to SQLite INTEGER")
        return value
    if isinstance(value, float):
        if math.isinf(value):
            # JSON has no infinity: orjson would send null, a silent change of value.
            raise DataError(f"Error binding parameter {where}: an infinite float cannot be "
                            "sent over the JSON API")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return list(bytes(value))  # the server binds an array of ints 0..255 as a BLOB
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")  # sqlite3's default adapter
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise ProgrammingError(f"Error binding parameter {where}: "
                           f"type '{type(value).__name__}' is not supported")


def statement(sql: str, parameters: Sequence[Any] | Mapping[str, Any] | None) -> Any:
    """An rqlite body element: "SQL", ["SQL", p1, ...] or ["SQL", {"name": v}]."""
    if not isinstance(sql, str):
        raise ProgrammingError(f"the SQL must be a str, not {type(sql).__name__}")
    if parameters is None:
        return sql
    if isinstance(parameters, Mapping):
        # sqlite3 takes the names without their prefix; accept them with one too.
        named = {str(k).lstrip(":@$"): adapt(v, f":{str(k).lstrip(':@$')}")
                 for k, v in parameters.items()}
        return [sql, named] if named else sql
    if isinstance(parameters, str | bytes) or not isinstance(parameters, Sequence):
        raise ProgrammingError(f"parameters are of unsupported type "
                               f"'{type(parameters).__name__}': give a sequence or a mapping")
    if not parameters:
        return sql
    return [sql, *(adapt(v, i) for i, v in enumerate(parameters, 1))]


# ---- rows out


def row(values: list[Any]) -> tuple[Any, ...]:
    """A row as SQLite holds it: with ?native only a BLOB comes back as a list (of ints)."""
    return tuple(bytes(v) if type(v) is list else v for v in values)


# ---- which statements read (for batches) and which change rows (rowcount, lastrowid)

_COMMENTS = re.compile(r"\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$)", re.S)
_WORD = re.compile(r"[A-Za-z]+")
_WRITE_WORD = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.I)


def first_keyword(sql: str) -> str:
    pos = 0
    while m := _COMMENTS.match(sql, pos):
        if m.end() == pos:
            break
        pos = m.end()
    word = _WORD.match(sql, pos)
    return word.group(0).upper() if word else ""


def is_read(sql: str) -> bool:
    """A statement that only reads, judged by its first keyword (a WITH that names a write
    anywhere, even inside a string, counts as a write: the safe side for a batch)."""
    word = first_keyword(sql)
    if word in ("SELECT", "VALUES", "EXPLAIN"):
        return True
    if word == "WITH":
        return not _WRITE_WORD.search(sql)
    if word == "PRAGMA":
        return "=" not in sql
    return False


def is_dml(sql: str) -> bool:
    """INSERT, UPDATE, DELETE or REPLACE (possibly behind WITH): what has a rowcount."""
    word = first_keyword(sql)
    if word == "WITH":
        return bool(_WRITE_WORD.search(sql))
    return word in ("INSERT", "UPDATE", "DELETE", "REPLACE")


def is_insert(sql: str) -> bool:
    """What updates `lastrowid` (as in sqlite3: INSERT and REPLACE)."""
    return first_keyword(sql) in ("INSERT", "REPLACE")
