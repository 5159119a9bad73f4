"""The response shapes every route shares, and the one error type handlers raise.

Failures come in rqlite's three layers (rqlite-api.md §1.3): per statement inside
`results` (HTTP 200); for the whole request as `{"results":[],"error":"..."}`, which rqlite
sends with 200 and raftsql with the status that says why (400 for a refused request, 503
when it could not be served); and at the transport level as a non-200 status with a short
plain-text body (Go's `http.Error`: the message and a newline), or no body at all for 404,
405 and OPTIONS.
"""

from __future__ import annotations

from aiohttp import web

from raftsql import __version__
from raftsql.http.rqlite.encode import response_body

VERSION = f"raftsql/{__version__}"
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

LEADER_NOT_FOUND = "leader not found"
LEADERSHIP_LOST = "leadership lost while committing log"
STALE_READ = "stale read"
DISALLOWED_PRAGMA = "disallowed pragma"


class HttpError(Exception):
    """Answer with `status` and a plain-text `message` (no body when message is None)."""

    def __init__(self, status: int, message: str | None = None):
        super().__init__(message or str(status))
        self.status = status
        self.message = message


def text_error(status: int, message: str | None) -> web.Response:
    if message is None:
        return web.Response(status=status)
    return web.Response(
        status=status, body=(message + "\n").encode(),
        headers={"Content-Type": TEXT_TYPE, "X-Content-Type-Options": "nosniff"},
    )


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    h = {"Content-Type": JSON_TYPE}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=body, headers=h)


def request_error(message: str, status: int, *, pretty: bool = False) -> web.Response:
    """A whole-request failure in rqlite's shape, `{"results":[],"error":message}`, but with
    a status that says it failed (rqlite answers 200, and clients that read only the
    per-statement errors take that for success)."""
    return json_response(response_body(error=message, pretty=pretty), status=status)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 once it passes `limit` bytes (checked before reading)."""
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, "request body too large")
    content = request.content
    chunks, size = [], 0
    while True:
        chunk = await content.read(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "request body too large")
        chunks.append(chunk)
        if content.is_eof():  # the common case: the whole body came in one read
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
