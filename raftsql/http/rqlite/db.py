"""Data routes: /db/execute, /db/query, /db/request, /db/load (rqlite-api.md §1.2–§1.4,
§2.1, §2.2).

Handlers raise what fails; raftsql/http/respond.py words it (each route says how, in
`request[ROUTE]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from raftsql.errors import RequestError
from raftsql.http import forward
from raftsql.http.body import is_text_body, parse_statements
from raftsql.http.params import Params
from raftsql.http.respond import (
    DISALLOWED_PRAGMA,
    IDEMPOTENCY_KEY,
    LEADER_NOT_FOUND,
    REPLAYED,
    ROUTE,
    SERVED_BY,
    Route,
    json_response,
    read_body,
    request_error,
    text_error,
    unavailable,
    within_idle,
)
from raftsql.http.rqlite.encode import Kind, response_body, result_element
from raftsql.http.state import ApiState, state_of
from raftsql.sql.backup import dump_statements
from raftsql.sql.command import Op, ReadOptions, Replayed, StatementResult
from raftsql.sql.files import unreadable
from raftsql.sql.keys import valid_key
from raftsql.sql.load import CHUNK_BYTES, foreign_tables
from raftsql.sql.params import disallowed_pragma, is_empty
from raftsql.sql.service import Level

QUEUE_WAIT_TIMEOUT = "queue wait timeout"
DISK_RESERVE = 256 << 20  # free space an upload leaves for the log and the database
SQLITE_MAGIC = b"SQLite format 3\x00"
BAD_KEY = f"{IDEMPOTENCY_KEY} must be 1 to 128 printable ASCII characters"
WRITE = Route(json=True, write=True, timeout="timeout waiting for commit")
READ = Route(json=True, timeout="timeout waiting for fsm")


class _Request:
    """One data request: its options, raw body, and what it needs to answer."""

    def __init__(self, request: web.Request, state: ApiState, params: Params, body: bytes,
                 start: float):
        self.http = request
        self.state = state
        self.params = params
        self.body = body
        self.start = start

    def answer(self, results: list[StatementResult], *, kind: Kind, raft_index: int = 0,
               is_read: list[bool] | None = None) -> web.Response:
        p = self.params
        elements = [
            result_element(r, kind=kind, associative=p.associative, timings=p.timings,
                           blob_array=p.blob_array, is_read=is_read[i] if is_read else None,
                           native=p.native)
            for i, r in enumerate(results)
        ]
        body = response_body(
            elements, time=time.perf_counter() - self.start if p.timings else None,
            raft_index=raft_index if p.raft_index else None, pretty=p.pretty,
        )
        headers = {SERVED_BY: self.state.served_here()}
        if isinstance(results, Replayed):
            headers[REPLAYED] = "true"
        return json_response(body, headers=headers)

    def statements(self, *, allow_text: bool = True) -> list[Any]:
        """The body's statements (RequestError 400 if malformed, or more than the node's
        --max-statements)."""
        statements = parse_statements(self.body, self.http.headers.get("Content-Type"),
                                      allow_text=allow_text)
        limit = self.state.max_statements
        if limit and len(statements) > limit:
            raise RequestError(400, f"too many statements: {len(statements)} in one request, "
                               f"at most {limit} (--max-statements)")
        return statements

    def key_is_valid(self) -> bool:
        key = self.http.headers.get(IDEMPOTENCY_KEY)
        return key is None or valid_key(key)

    def refused(self, message: str) -> web.Response:
        """The whole request is refused (nothing was applied): 400."""
        return request_error(message, 400, pretty=self.params.pretty)

    async def on_leader(self, serve: Callable[[], Awaitable[web.Response]], route: Route,
                        body: forward.Body | None = None, timeout: float | None = None,
                        ) -> web.Response:
        p = self.params
        return await forward.on_leader(self.state, self.http, self.body if body is None else body,
                                       serve, route, redirect=p.redirect,
                                       timeout=p.timeout if timeout is None else timeout,
                                       pretty=p.pretty)


async def _begin(request: web.Request, head: bytes = b"", *, read: bool = True) -> _Request:
    """The request's options and body (`head`: what was read of it already; `read` False:
    the caller streams the rest)."""
    start = time.perf_counter()
    state = state_of(request)
    params = Params.parse(request.query)
    body = b""
    if read and request.can_read_body:
        body = await read_body(request, state.max_body_bytes)
    return _Request(request, state, params, head + body, start)


# ---- /db/execute --------------------------------------------------------------------


async def handle_execute(request: web.Request) -> web.Response:
    req = await _begin(request)
    if req.params.queue:
        return await _queued(req)
    statements = req.statements()
    if disallowed_pragma(statements):
        return req.refused(DISALLOWED_PRAGMA)
    if not req.key_is_valid():
        return req.refused(BAD_KEY)
    return await req.on_leader(lambda: _write(req, statements, Op.EXECUTE), WRITE)


async def _write(req: _Request, statements: list[Any], op: Op) -> web.Response:
    """Through the log, on the leader (NotLeaderError, with nothing proposed, elsewhere)."""
    p = req.params
    results, index = await req.state.sql.execute(
        statements, op=op, transaction=p.transaction, timeout=p.timeout,
        db_timeout=p.db_timeout, qualify=p.qualify_columns,
        key=req.http.headers.get(IDEMPOTENCY_KEY))
    is_read = None
    if op is Op.REQUEST and p.associative and any(r.error for r in results):
        sql = req.state.sql
        run = [s for s in statements if not is_empty(s)]
        is_read = [bool(r.error) and sql.looks_like_read(s)
                   for s, r in zip(run, results, strict=False)]
    kind = Kind.REQUEST if op is Op.REQUEST else Kind.EXECUTE
    return req.answer(results, kind=kind, raft_index=index, is_read=is_read)


async def _queued(req: _Request) -> web.Response:
    """rqlite-api.md §2.2: answer at once with a sequence number; `wait` for the flush."""
    p, state = req.params, req.state
    if state.node.leader_id is None and not p.noleader:
        return unavailable(LEADER_NOT_FOUND, json=False)
    empty = not req.body.strip() or req.body.strip() == b"[]"
    if p.wait and empty and not is_text_body(req.http.headers.get("Content-Type")):
        statements: list[Any] = []  # a flush barrier
    else:
        statements = req.statements()
        if disallowed_pragma(statements):
            return req.refused(DISALLOWED_PRAGMA)
    assert state.queue is not None
    seq = await state.queue.put(statements)
    if p.wait:
        try:
            async with asyncio.timeout(p.timeout):
                await state.queue.wait_flushed(seq)
        except TimeoutError:
            return text_error(408, QUEUE_WAIT_TIMEOUT)
    body = response_body(sequence_number=seq, pretty=p.pretty,
                         time=time.perf_counter() - req.start if p.timings else None)
    return json_response(body, headers={SERVED_BY: state.served_here()})


# ---- /db/query ----------------------------------------------------------------------


async def handle_query(request: web.Request) -> web.Response:
    req = await _begin(request)
    if request.method == "GET":
        # Without q, rqlite reads the empty statement: it goes where a read goes and gives
        # no result (an empty q is a 400, see Params).
        statements: list[Any] = [req.params.q or ""]
    else:
        statements = req.statements()
    if disallowed_pragma(statements):
        return req.refused(DISALLOWED_PRAGMA)
    return await req.on_leader(lambda: _read(req, statements), READ)


async def _read(req: _Request, statements: list[Any]) -> web.Response:
    p, state = req.params, req.state
    results, index = await state.sql.read(
        statements, level=Level(p.level), voter=state.is_voter,
        options=ReadOptions(p.transaction, p.db_timeout, p.qualify_columns),
        timeout=p.timeout, linearizable_timeout=p.linearizable_timeout,
        freshness=p.freshness, freshness_strict=p.freshness_strict)
    return req.answer(results, kind=Kind.QUERY, raft_index=index)


# ---- /db/request --------------------------------------------------------------------


async def handle_request(request: web.Request) -> web.Response:
    """Reads and writes in one body: all reads follow the read path, else all go through Raft."""
    req = await _begin(request)
    statements = req.statements(allow_text=False)
    if disallowed_pragma(statements):
        return req.refused(DISALLOWED_PRAGMA)
    if req.state.sql.all_reads(statements):
        return await req.on_leader(lambda: _read(req, statements), READ)
    if req.state.auth is not None:  # only reads needed only the query permission
        await req.state.auth.check(request, ("query", "execute"))
    if not req.key_is_valid():
        return req.refused(BAD_KEY)
    return await req.on_leader(lambda: _write(req, statements, Op.REQUEST), WRITE)


# ---- /db/load -----------------------------------------------------------------------


async def handle_load(request: web.Request) -> web.Response:
    """A SQLite file replaces the database through the log, in chunks (sql/load.py), staged
    on disk here, never whole in memory; any other body is an SQL dump, run as one
    transaction and answered as /db/execute is (rqlite tells the two apart by the first
    bytes, never by Content-Type)."""
    head = await _peek(request, len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        return await _load_file(request, head)
    req = await _begin(request, head)
    try:
        script = dump_statements(req.body.decode("utf-8"))
    except UnicodeDecodeError:
        return req.refused("the body is neither a SQLite file nor SQL text (UTF-8)")
    if not script.strip():
        return req.refused("empty SQL dump")
    if not req.key_is_valid():
        return req.refused(BAD_KEY)

    async def serve() -> web.Response:
        p = req.params
        results, index = await req.state.sql.execute(
            [script], transaction=True, timeout=p.timeout, db_timeout=p.db_timeout,
            key=req.http.headers.get(IDEMPOTENCY_KEY))
        return req.answer(results, kind=Kind.EXECUTE, raft_index=index)

    return await req.on_leader(serve, WRITE)


async def _peek(request: web.Request, n: int) -> bytes:
    if not request.can_read_body:
        return b""
    try:
        return await within_idle(request.content.readexactly(n))
    except asyncio.IncompleteReadError as e:
        return e.partial


async def _load_file(request: web.Request, head: bytes) -> web.Response:
    """Load the upload on the leader once staged (a follower forwards the staged file)."""
    req = await _begin(request, read=False)
    request[ROUTE] = WRITE
    sql = req.state.sql
    async with _staged(req, head) as path:

        async def serve() -> web.Response:
            index = await sql.load_file(path, timeout=req.params.timeout)
            return req.answer([], kind=Kind.EXECUTE, raft_index=index)

        # `timeout` bounds each chunk's commit on the leader: a forward waits for all of them.
        chunks = -(-os.path.getsize(path) // CHUNK_BYTES)
        return await req.on_leader(serve, WRITE, body=lambda: open(path, "rb"),  # noqa: SIM115
                                   timeout=req.params.timeout * max(chunks, 1))


async def handle_boot(request: web.Request) -> web.Response:
    """rqlite's /boot: a SQLite file replaces the database of a single-node cluster directly,
    bypassing the log, at disk speed; the node then snapshots. Not forwarded."""
    head = await _peek(request, len(SQLITE_MAGIC))
    req = await _begin(request, read=False)
    if head != SQLITE_MAGIC:
        return req.refused("/boot takes a SQLite database file")
    request[ROUTE] = WRITE
    async with _staged(req, head) as path:
        refused = await req.state.node.boot(path)
        if refused is not None:
            return req.refused(f"not a SQLite database: {refused}")
        return req.answer([], kind=Kind.EXECUTE)


@contextlib.asynccontextmanager
async def _staged(req: _Request, head: bytes) -> AsyncIterator[str]:
    """The rest of the upload (after `head`) in a file beside the database, which SQLite
    can read (else RequestError 400), removed afterwards. Never in memory as a whole."""
    path = f"{req.state.sql.database.path}.upload-{uuid.uuid4().hex}"
    folder = os.path.dirname(path)
    # A load needs about four times the file (the upload, its chunks beside the log and in
    # the bookkeeping, the new database); the Raft log must never be the one to find the
    # disk full.
    wanted = 4 * (req.http.content_length or 0) + DISK_RESERVE
    if shutil.disk_usage(folder).free < wanted:
        raise RequestError(507, f"not enough free disk space for this upload (about {wanted} "
                           "bytes needed beside the database)")
    try:
        try:
            with open(path, "wb") as f:
                f.write(head)
                written = 0
                while block := await within_idle(req.http.content.read(1 << 20)):
                    f.write(block)  # into the page cache: quick enough for the loop
                    written += len(block)
                    if written % (64 << 20) < len(block) and (
                            shutil.disk_usage(folder).free < 2 * written + DISK_RESERVE):
                        raise RequestError(507, "not enough free disk space for this upload")
        except OSError as e:
            raise RequestError(503, f"cannot stage the upload: {e}") from None
        problem = await asyncio.to_thread(unreadable, path)
        if problem is not None:
            raise RequestError(400, f"not a SQLite database: {problem}")
        foreign = await asyncio.to_thread(foreign_tables, path)
        if foreign:
            raise RequestError(400, f"the file holds raftsql's bookkeeping ({', '.join(foreign)})"
                               ": a snapshot, not a database to load")
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
