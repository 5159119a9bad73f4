"""rqlite request bodies: validating statement shapes and decoding parameters.

A statement is what the client sent as one element of the JSON body: a string `"SQL"`, or
an array `["SQL", p1, p2, ...]` / `["SQL", {"name": v}]` (rqlite-api.md §1.2). The HTTP layer
validates shapes before proposing; apply decodes again (a corrupt entry must not crash a node).
"""

from __future__ import annotations

import re
from typing import Any

from raftsql.errors import BadStatementError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

# rqlite's own regexes (db/db.go BreakingPragmas): anchored at the start of each statement.
_DISALLOWED_PRAGMA = re.compile(
    r"\s*PRAGMA\s+(?:"
    r"(?:\w+\.)?journal_mode\s*=|wal_autocheckpoint\s*=|(?:\w+\.)?wal_checkpoint"
    r"|(?:\w+\.)?synchronous\s*=|(?:\w+\.)?query_only\s*="
    r")",
    re.IGNORECASE,
)
# rqlite's ParseHex: optional surrounding whitespace, x or X, quoted hex digits in pairs.
_HEX_BLOB = re.compile(r"\s*[xX]'((?:[0-9a-fA-F]{2})*)'\s*")


class NamedParams(dict):
    """Named parameters. A name the statement uses but the client left out binds NULL,
    as the Go driver does (it only checks the count, `not enough args ...`)."""

    def __missing__(self, key: str) -> None:
        return None


def validate_statements(stmts: Any) -> None:
    """Raise BadStatementError as rqlite's request parser would (http/request_parser.go)."""
    if not isinstance(stmts, list):
        raise BadStatementError("invalid request")
    if not stmts:
        raise BadStatementError("no statements")
    for stmt in stmts:
        if type(stmt) is str:
            continue
        if type(stmt) is not list or not stmt or type(stmt[0]) is not str:
            raise BadStatementError("invalid request")
        for param in stmt[1:]:
            if type(param) is dict:
                for value in param.values():
                    decode_value(value)
            else:
                decode_value(param)


def statement_sql(stmt: Any) -> str | None:
    """The SQL text of a statement element, or None when the element has no valid shape."""
    if type(stmt) is str:
        return stmt
    if type(stmt) is list and stmt and type(stmt[0]) is str:
        return stmt[0]
    return None


def disallowed_pragma(stmts: list[Any]) -> bool:
    """True when a statement is one of the five PRAGMAs rqlite refuses (rqlite-api.md §2.5)."""
    for stmt in stmts:
        sql = statement_sql(stmt)
        if sql and _DISALLOWED_PRAGMA.match(sql):
            return True
    return False


def is_empty(stmt: Any) -> bool:
    """rqlite skips empty SQL strings silently: they get no result element."""
    return stmt == "" or (type(stmt) is list and len(stmt) > 0 and stmt[0] == "")


def decode_statement(stmt: Any) -> tuple[str, list[Any] | NamedParams | None]:
    """(sql, bindings) for apsw: a list for positional parameters, NamedParams for named ones."""
    if type(stmt) is str:
        return stmt, None
    if type(stmt) is not list or not stmt or type(stmt[0]) is not str:
        raise BadStatementError("invalid request")
    if len(stmt) == 1:
        return stmt[0], None
    positional: list[Any] = []
    named: NamedParams | None = None
    for param in stmt[1:]:
        if type(param) is dict:
            named = NamedParams() if named is None else named
            for name, value in param.items():
                named[name] = decode_value(value)
        else:
            positional.append(decode_value(param))
    if named is None:
        return stmt[0], positional
    if positional:
        # The Go driver binds positionals by ordinal and names by name in one call; apsw
        # binds a statement either way but not both.
        raise BadStatementError("mixing positional and named parameters is not supported")
    return stmt[0], named


def decode_value(value: Any) -> Any:
    """One JSON parameter as the SQLite value rqlite binds (rqlite-api.md §1.2)."""
    kind = type(value)
    if kind is str:
        if "'" in value:
            m = _HEX_BLOB.fullmatch(value)
            if m:
                return bytes.fromhex(m.group(1))
        return value
    if kind is int:
        return value if INT64_MIN <= value <= INT64_MAX else float(value)
    if kind is float or value is None:
        return value
    if kind is bool:
        return int(value)
    if kind is list and all(type(b) is int and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise BadStatementError("unsupported type")
