"""GET /db/backup (rqlite-api.md §1.4): the database as a SQLite file or an SQL dump, streamed.

The backup is staged on disk beside the database (raftsql/sql/backup.py) and streamed from
there a chunk at a time, gzipped on the way with `?compress`: it never sits in memory,
whatever its size. By default the leader serves it after a linearizable barrier, so it holds
every write acknowledged before the request; a follower forwards the request and streams the
leader's answer back. `?noleader` backs up this node's own copy, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
import zlib

from aiohttp import web

from raftsql.errors import RequestError
from raftsql.http import forward
from raftsql.http.params import Params
from raftsql.http.respond import ROUTE, SERVED_BY, Route
from raftsql.http.state import state_of
from raftsql.sql import backup

BACKUP = Route(json=False, timeout="timeout waiting for the backup's read barrier")
CHUNK = 1 << 20  # bytes read from the staged file and written to the client at a time
FORMATS = ("binary", "delete", "sql")  # binary and delete are the same file here
SQL_TYPE = "application/sql"
BINARY_TYPE = "application/octet-stream"


async def handle_backup(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    params = Params.parse(request.query)
    fmt = params.raw.get("fmt", "binary").lower()
    if fmt not in FORMATS:
        raise RequestError(400, f"invalid backup format {fmt!r}: binary, delete or sql")
    tables = [t for t in params.raw.get("tables", "").split(",") if t] or None
    if tables and fmt != "sql":
        raise RequestError(400, "tables is only for fmt=sql")

    async def serve() -> web.StreamResponse:
        path = backup.temp_path(state.sql.database.path, uuid.uuid4().hex)
        try:
            try:
                await state.sql.backup(path, dump=fmt == "sql", tables=tables,
                                       vacuum=params.flag("vacuum"), local=params.noleader,
                                       timeout=params.timeout)
            except KeyError as e:
                raise RequestError(400, f"no such table: {e.args[0]}") from None
            return await _stream(request, path, sql=fmt == "sql",
                                 compress=params.flag("compress"), served_by=state.served_here())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    if params.noleader:
        request[ROUTE] = BACKUP
        return await serve()
    return await forward.on_leader(state, request, b"", serve, BACKUP, redirect=params.redirect,
                                   timeout=params.timeout, stream=True)


async def _stream(request: web.Request, path: str, *, sql: bool, compress: bool,
                  served_by: str) -> web.StreamResponse:
    """The staged file at `path`, a chunk at a time (gzipped with `compress`)."""
    response = web.StreamResponse(headers={
        "Content-Type": SQL_TYPE if sql and not compress else BINARY_TYPE, SERVED_BY: served_by})
    if not compress:
        response.content_length = os.path.getsize(path)
    await response.prepare(request)
    gzip = zlib.compressobj(wbits=31) if compress else None  # 31: the gzip format
    loop = asyncio.get_running_loop()
    with open(path, "rb") as f:
        os.remove(path)  # the open file streams on; nothing stays behind, whatever happens
        while chunk := await loop.run_in_executor(None, f.read, CHUNK):
            await response.write(gzip.compress(chunk) if gzip else chunk)
    if gzip:
        await response.write(gzip.flush())
    await response.write_eof()
    return response
