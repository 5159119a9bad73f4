"""Data routes: /db/execute, /db/query, /db/request (rqlite-api.md §1.2–§1.4, §2.1, §2.2)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from raftsql.errors import LeadershipLostError, StaleReadError
from raftsql.http import forward
from raftsql.http.body import is_text_body, parse_statements
from raftsql.http.params import Params
from raftsql.http.respond import (
    DISALLOWED_PRAGMA,
    LEADER_NOT_FOUND,
    LEADERSHIP_LOST,
    json_response,
    read_body,
    request_error,
    text_error,
)
from raftsql.http.rqlite.encode import response_body, result_element
from raftsql.http.state import ApiState, state_of
from raftsql.sql.command import ReadOptions, StatementResult
from raftsql.sql.params import disallowed_pragma, is_empty

EXECUTE_TIMEOUT_ERROR = "timeout waiting for commit"
READ_TIMEOUT_ERROR = "timeout waiting for fsm"
QUEUE_WAIT_TIMEOUT = "queue wait timeout"


class _Request:
    """One data request: its options, raw body, and what it needs to answer."""

    def __init__(self, request: web.Request, state: ApiState, params: Params, body: bytes,
                 start: float):
        self.http = request
        self.state = state
        self.params = params
        self.body = body
        self.start = start

    def answer(self, results: list[StatementResult], *, kind: str, raft_index: int = 0,
               is_read: list[bool] | None = None) -> web.Response:
        p = self.params
        elements = [
            result_element(r, kind=kind, associative=p.associative, timings=p.timings,
                           blob_array=p.blob_array, is_read=is_read[i] if is_read else None)
            for i, r in enumerate(results)
        ]
        body = response_body(
            elements, time=time.perf_counter() - self.start if p.timings else None,
            raft_index=raft_index if p.raft_index else None, pretty=p.pretty,
        )
        return json_response(body, headers={forward.SERVED_BY: self.state.served_here()})

    def refused(self, message: str) -> web.Response:
        """The whole request is refused (nothing was applied): 400."""
        return request_error(message, 400, pretty=self.params.pretty)

    def unavailable(self, message: str) -> web.Response:
        return forward.unavailable(message, pretty=self.params.pretty)

    async def on_leader(self, serve: Any, *, idempotent: bool) -> web.Response:
        p = self.params
        return await forward.on_leader(self.state, self.http, self.body, serve,
                                       redirect=p.redirect, timeout=p.timeout,
                                       idempotent=idempotent, pretty=p.pretty)


async def _begin(request: web.Request) -> _Request:
    start = time.perf_counter()
    state = state_of(request)
    params = Params.parse(request.query)
    body = await read_body(request, state.max_body_bytes) if request.can_read_body else b""
    return _Request(request, state, params, body, start)


# ---- /db/execute --------------------------------------------------------------------


async def handle_execute(request: web.Request) -> web.Response:
    req = await _begin(request)
    if req.params.queue:
        return await _queued(req)
    statements = parse_statements(req.body, request.headers.get("Content-Type"))
    if disallowed_pragma(statements):
        return req.refused(DISALLOWED_PRAGMA)
    return await req.on_leader(lambda: _write(req, statements, op="execute", kind="execute"),
                               idempotent=False)


async def _write(req: _Request, statements: list[Any], *, op: str, kind: str) -> web.Response:
    """Through the log, on the leader (NotLeaderError, with nothing proposed, elsewhere)."""
    p = req.params
    try:
        results, index = await req.state.node.execute(
            statements, transaction=p.transaction, op=op, timeout=p.timeout,
            db_timeout=p.db_timeout, qualify=p.qualify_columns)
    except LeadershipLostError as e:
        return req.unavailable(f"{e or LEADERSHIP_LOST}; {forward.MAYBE_APPLIED}")
    except TimeoutError:
        return req.unavailable(f"{EXECUTE_TIMEOUT_ERROR}; {forward.MAYBE_APPLIED}")
    is_read = None
    if kind == "request" and p.associative and any(r.error for r in results):
        classifier = req.state.classifier
        run = [s for s in statements if not is_empty(s)]
        is_read = [bool(r.error) and classifier.looks_like_read(s) for s, r in zip(run, results, strict=False)]
    return req.answer(results, kind=kind, raft_index=index, is_read=is_read)


async def _queued(req: _Request) -> web.Response:
    """rqlite-api.md §2.2: answer at once with a sequence number; `wait` for the flush."""
    p, state = req.params, req.state
    if state.node.leader_id is None and not p.noleader:
        return forward.failure(LEADER_NOT_FOUND)
    empty = not req.body.strip() or req.body.strip() == b"[]"
    if p.wait and empty and not is_text_body(req.http.headers.get("Content-Type")):
        statements: list[Any] = []  # a flush barrier
    else:
        statements = parse_statements(req.body, req.http.headers.get("Content-Type"))
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
    return json_response(body, headers={forward.SERVED_BY: state.served_here()})


# ---- /db/query ----------------------------------------------------------------------


async def handle_query(request: web.Request) -> web.Response:
    req = await _begin(request)
    if request.method == "GET":
        # Without q, rqlite reads the empty statement: it goes where a read goes and gives
        # no result (an empty q is a 400, see Params).
        statements: list[Any] = [req.params.q or ""]
    else:
        statements = parse_statements(req.body, request.headers.get("Content-Type"))
    if disallowed_pragma(statements):
        return req.refused(DISALLOWED_PRAGMA)
    return await req.on_leader(lambda: _read(req, statements), idempotent=True)


async def _read(req: _Request, statements: list[Any]) -> web.Response:
    try:
        results, index = await read(req.state, req.params, statements)
    except StaleReadError as e:
        return req.unavailable(str(e))
    except LeadershipLostError as e:
        return req.unavailable(str(e) or LEADERSHIP_LOST)
    except TimeoutError:
        return req.unavailable(READ_TIMEOUT_ERROR)
    return req.answer(results, kind="query", raft_index=index)


async def read(state: ApiState, params: Params, statements: list[Any]
               ) -> tuple[list[StatementResult], int]:
    """Serve reads at the requested level (rqlite-api.md §2.1); raftsql's default is linearizable.
    With the results, the Raft index of a strong read's entry (0 for the other levels).

    none: this node's copy, refused as `stale read` when `freshness` is set and the leader
    was last heard from longer ago (the leader itself ignores freshness); weak: the node
    must believe it leads; linearizable: ReadIndex, then wait until applied; strong: through
    the log; auto: weak on a voter, none on a read replica.
    """
    node = state.node
    level = params.level
    options = ReadOptions(params.transaction, params.db_timeout, params.qualify_columns)
    if level == "auto":
        level = "weak" if state.is_voter() else "none"
    if level == "none":
        if params.freshness > 0 and not node.is_leader and _stale(state, params):
            raise StaleReadError()
        return await node.query(statements, options), 0
    if level == "strong":
        return await node.execute(statements, transaction=params.transaction, op="query",
                                  timeout=params.timeout, db_timeout=params.db_timeout,
                                  qualify=params.qualify_columns)
    timeout = params.linearizable_timeout if level == "linearizable" else params.timeout
    await node.read_barrier(level, timeout)
    return await node.query(statements, options), 0


def _stale(state: ApiState, params: Params) -> bool:
    """rqlite's freshness test on a node that does not lead: the leader was heard from longer
    than `freshness` ago; or, with `freshness_strict`, this node has not applied all it knows
    to be committed and what it applied last was written by the leader longer ago than that
    (leader's clock against ours, as in rqlite)."""
    node = state.node
    contact = node.last_contact()
    if contact is None or contact > params.freshness:
        return True
    if not params.freshness_strict:
        return False
    raft = node.status()["raft"]
    if raft["applied_index"] >= raft["commit_index"]:
        return False
    written = getattr(node.database, "applied_time_ms", None)
    return written is None or time.time() - written / 1000 > params.freshness


# ---- /db/request --------------------------------------------------------------------


async def handle_request(request: web.Request) -> web.Response:
    """Reads and writes in one body: all reads follow the read path, else all go through Raft."""
    req = await _begin(request)
    statements = parse_statements(req.body, request.headers.get("Content-Type"), allow_text=False)
    if disallowed_pragma(statements):
        return req.refused(DISALLOWED_PRAGMA)
    if req.state.classifier.all_reads(statements):
        return await req.on_leader(lambda: _read(req, statements), idempotent=True)
    return await req.on_leader(lambda: _write(req, statements, op="request", kind="request"),
                               idempotent=False)
