"""Request bodies → statements, in rqlite's JSON form (rqlite-api.md §1.2).

Statements stay as the client sent them ("SQL" or ["SQL", params...]) so that a follower
can forward the raw bytes and every node decodes parameters identically at apply time;
here they are only checked, with rqlite's 400 messages.
"""

from __future__ import annotations

from typing import Any

import orjson

from raftsql.errors import RequestError
from raftsql.sql.params import validate_statements

INVALID_JSON = "invalid JSON body"
NO_STATEMENTS = "no statements"


def is_text_body(content_type: str | None) -> bool:
    return (content_type or "").lower().startswith("text/plain")


def parse_statements(body: bytes, content_type: str | None, *, allow_text: bool = True) -> list[Any]:
    """The statements of a POST body; RequestError(400) with rqlite's message when malformed.

    A `text/plain` body (execute and query only) is one statement, which may hold several
    `;`-separated statements. Any other content type is parsed as JSON.
    """
    if allow_text and is_text_body(content_type):
        return [body.decode("utf-8", errors="replace")]
    try:
        value = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        raise RequestError(400, INVALID_JSON) from None
    if value is None:  # an empty body, or `null` (Go decodes it as an empty list)
        raise RequestError(400, NO_STATEMENTS)
    validate_statements(value)  # BadStatementError: a 400 with rqlite's message
    return value
