"""The PEP 249 exception tree, and the one place where what the cluster says becomes one of
its classes.

SQLite's messages are mapped the way Python's `sqlite3` maps SQLite's result codes (a
message is all the HTTP API carries of the code): SQLITE_CONSTRAINT and SQLITE_MISMATCH are
IntegrityError, SQLITE_TOOBIG is DataError, SQLITE_RANGE (binding) is ProgrammingError,
SQLITE_CORRUPT and SQLITE_NOTADB are DatabaseError, everything else OperationalError.
"""

from __future__ import annotations

from typing import Any

import orjson

from raftsql.client.http import Response, Unavailable, error_text


class Warning(Exception):  # noqa: A001 - the name PEP 249 gives it
    """Important warnings (PEP 249); raftsql raises none, it exists for `except` clauses."""


class Error(Exception):
    """Base of every error this module raises."""


class InterfaceError(Error):
    """The client was misused, rather than the database."""


class DatabaseError(Error):
    """An error of the database; the base of the classes below."""


class DataError(DatabaseError):
    """A value out of range or too big."""


class OperationalError(DatabaseError):
    """An SQL or cluster condition outside the program's control: syntax, missing tables,
    timeouts, no leader. `maybe_applied` is True when a write's outcome is unknown."""

    maybe_applied = False


class IntegrityError(DatabaseError):
    """A constraint failed (UNIQUE, NOT NULL, CHECK, FOREIGN KEY, datatype mismatch)."""


class InternalError(DatabaseError):
    """The server failed in a way it did not expect."""


class ProgrammingError(DatabaseError):
    """The program is wrong: bad parameters, a closed object, a malformed request."""


class NotSupportedError(DatabaseError):
    """A feature the cluster or this client does not offer."""


EXCEPTIONS = (Warning, Error, InterfaceError, DatabaseError, DataError, OperationalError,
              IntegrityError, InternalError, ProgrammingError, NotSupportedError)

# First match wins; each pattern is a fragment of SQLite's (or the server's) message.
_SQL_ERRORS: tuple[tuple[tuple[str, ...], type[Error]], ...] = (
    # "cannot store ... value in ... column": a STRICT table's SQLITE_CONSTRAINT_DATATYPE
    (("constraint failed", "datatype mismatch", "cannot store"), IntegrityError),
    (("too big", "too large"), DataError),
    (("not enough args", "bindings supplied", "placeholder", "column index out of range",
      "positional and named parameters", "unsupported type"), ProgrammingError),
    (("malformed", "file is not a database", "not a database"), DatabaseError),
)


def sql_error(message: str) -> Error:
    """The exception for one statement's `{"error": message}`."""
    low = message.lower()
    for fragments, cls in _SQL_ERRORS:
        if any(f in low for f in fragments):
            return cls(message)
    return OperationalError(message)


def unavailable_error(e: Unavailable) -> OperationalError:
    err = OperationalError(f"cluster unavailable: {e}")
    err.maybe_applied = e.maybe_applied
    return err


def http_error(response: Response) -> Error:
    """The exception for an answer that is not a 200: the request was refused as a whole."""
    text = error_text(response.body, "(no message)")
    status = response.status
    if status in (401, 403):
        return OperationalError(f"authentication failed ({status}): {text}; "
                                "check the user and password given to connect()")
    if status == 413:
        return DataError(f"request too large ({status}): {text}")
    if status == 400:
        return ProgrammingError(f"bad request ({status}): {text}")
    if status >= 500:
        return InternalError(f"server error ({status}): {text}")
    return OperationalError(f"request refused ({status}): {text}")


def check_results(response: Response, count: int) -> list[dict[str, Any]]:
    """The per-statement results of a data request, or the exception for the first failure
    (the whole request, then the first failing statement)."""
    if response.status != 200:
        raise http_error(response)
    try:
        body = response.json()
    except orjson.JSONDecodeError:
        raise InterfaceError(f"not a JSON answer from {response.url}: "
                             f"{response.body[:200]!r}") from None
    if isinstance(body, dict) and body.get("error"):
        raise OperationalError(str(body["error"]))
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise InterfaceError(f"an answer without results from {response.url}")
    for r in results:
        if isinstance(r, dict) and "error" in r:
            raise sql_error(str(r["error"]))
    if len(results) != count:
        raise InterfaceError(f"{len(results)} results for {count} statements")
    return results


class ExceptionsAsAttributes:
    """PEP 249's optional extension: a connection carries the exception classes, so code
    holding only a connection can catch them."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError
