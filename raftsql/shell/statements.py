"""SQL text as the shell sends it: split into statements, parameters encoded for the wire,
values decoded from it, and the one-line words for what went wrong.

Nothing here talks to the cluster; everything is a pure function, so it is tested alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import apsw

from raftsql.client.http import ClientError, Refused, Response, Unavailable

# A statement that changes the schema: the shadow must be fetched again after it.
_DDL = re.compile(r"^\s*(CREATE|DROP|ALTER)\b", re.IGNORECASE)
# Explicit transaction control, which rqlite (and raftsql) refuse inside a request: the shell
# gathers such a block and sends it as one request with the `transaction` flag instead.
_BEGIN = re.compile(r"^\s*BEGIN\b(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(\s+TRANSACTION)?\s*;?\s*$",
                    re.IGNORECASE)
_COMMIT = re.compile(r"^\s*(COMMIT|END)(\s+TRANSACTION)?\s*;?\s*$", re.IGNORECASE)
_ROLLBACK = re.compile(r"^\s*ROLLBACK(\s+TRANSACTION)?\s*;?\s*$", re.IGNORECASE)
_COMMENT = re.compile(r"(--[^\n]*(\n|$)|/\*.*?(\*/|$))", re.DOTALL)
# SQLite's messages name the token they stumbled on: `near "SELEC": syntax error`.
_NEAR = re.compile(r'near "((?:[^"]|"")+)"')


def split_statements(sql: str) -> Iterator[str]:
    """Each statement of `sql`, in order: it ends at a `;` that apsw.complete() says closes it,
    so semicolons inside strings, comments and trigger bodies do not split. A tail without `;`
    is a statement too; pieces of only whitespace and comments are dropped."""
    start = 0
    pos = sql.find(";")
    while pos >= 0:
        if apsw.complete(sql[start:pos + 1]):
            yield from _unless_empty(sql[start:pos + 1])
            start = pos + 1
        pos = sql.find(";", pos + 1)
    yield from _unless_empty(sql[start:])


def _unless_empty(piece: str) -> Iterator[str]:
    body = piece.rstrip().removesuffix(";")
    if apsw.incomplete(body + "\n").status != apsw.SQLITE_EMPTY:
        yield piece.strip()


def strip_comments(sql: str) -> str:
    """The statement without its leading comments (what its first keyword is judged by)."""
    text = sql.lstrip()
    while True:
        m = _COMMENT.match(text)
        if not m:
            return text
        text = text[m.end():].lstrip()


def is_ddl(sql: str) -> bool:
    return bool(_DDL.match(strip_comments(sql)))


def transaction_word(sql: str) -> str | None:
    """"begin", "commit" or "rollback" when the statement is only that, else None."""
    text = strip_comments(sql)
    for word, pattern in (("begin", _BEGIN), ("commit", _COMMIT), ("rollback", _ROLLBACK)):
        if pattern.match(text):
            return word
    return None


def to_wire(value: Any) -> Any:
    """A parameter as the HTTP API binds it: a BLOB travels as an array of byte values."""
    if isinstance(value, bytes | bytearray | memoryview):
        return list(bytes(value))
    return value


def from_wire(value: Any) -> Any:
    """A value of a `?native` answer as SQLite holds it: arrays of ints are BLOBs."""
    if isinstance(value, list):
        return bytes(value)
    return value


def statement_body(sql: str, bindings: Mapping[str, Any] | None) -> Any:
    """One element of a request body: the SQL alone, or with the named parameters (never
    spliced into the text, so quoting cannot go wrong)."""
    if not bindings:
        return sql
    return [sql, {name: to_wire(v) for name, v in bindings.items()}]


def with_position(message: str, sql: str) -> str:
    """The error message, and when it names a token of the statement, the statement with a
    caret under that token (as sqlite3 and apsw show it)."""
    m = _NEAR.search(message)
    if not m:
        return message
    token = m.group(1).replace('""', '"')
    at = sql.find(token)
    if at < 0:
        return message
    line_start = sql.rfind("\n", 0, at) + 1
    line_end = sql.find("\n", at)
    line = sql[line_start:line_end if line_end >= 0 else len(sql)]
    return f"{message}\n  {line}\n  {' ' * (at - line_start)}^--- error here"


def describe(error: BaseException, timeout: float) -> str:
    """One line for a failure of the client core or the network, never a traceback."""
    if isinstance(error, Unavailable):
        text = re.sub(r" \(gave up after [^)]*\)", "", str(error))
        text = text.replace("; the request may have been applied", "")
        outcome = ("the statement may have been applied" if error.maybe_applied
                   else "nothing was applied")
        return f"the cluster did not answer in {timeout:g}s (node {text}); {outcome}"
    if isinstance(error, Refused):
        return f"the cluster refused the request ({error.status}): {error}"
    if isinstance(error, ClientError):
        return str(error)
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__


def answer_text(response: Response) -> str:
    """The server's words in a non-200 answer: its JSON `error`, else its text."""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    return response.body.decode(errors="replace").strip() or f"HTTP {response.status}"
