"""A snapshot's state between peers, beside the Raft stream: served from disk with Range
support (sendfile), fetched a chunk at a time into the follower's partial file, so that a cut
download resumes where it stopped (raftsql/node/snapshots.py drives it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

import aiohttp
from aiohttp import web

from raftsql.errors import TransportError
from raftsql.transport.rpc import text_response

CHUNK = 1 << 20


def serve_state(request: web.Request, state_file: Callable[[int, int], str | None]
                ) -> web.StreamResponse:
    """GET /raft/snapshot/INDEX/TERM: the file `state_file(index, term)` names, or 404."""
    try:
        index, term = int(request.match_info["index"]), int(request.match_info["term"])
    except ValueError:
        return text_response(400, "snapshot index and term must be integers")
    path = state_file(index, term)
    if path is None:
        return text_response(404, f"no snapshot {index} of term {term} here")
    return web.FileResponse(path, chunk_size=256 * 1024)  # answers Range with 206


async def fetch_state(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                      offset: int, out: BinaryIO, *, timeout: aiohttp.ClientTimeout,
                      tls: dict[str, Any]) -> None:
    """Append what `url` serves from byte `offset` on to `out`. TransportError (status 404:
    the peer no longer has it); whatever arrived before a failure stays written."""
    try:
        async with session.get(url, headers={**headers, "Range": f"bytes={offset}-"},
                               timeout=timeout, **tls) as resp:
            if resp.status not in (200, 206):
                text = (await resp.read())[:200].decode("utf-8", "replace")
                raise TransportError(f"{url}: {resp.status} {text}", resp.status)
            if resp.status == 200 and offset:
                raise TransportError(f"{url}: no range support")
            # Into the page cache: quick enough for the loop (installing it fsyncs).
            async for chunk in resp.content.iter_chunked(CHUNK):
                out.write(chunk)
    except aiohttp.ClientError as exc:
        raise TransportError(f"{url}: {exc}") from exc
    finally:
        out.flush()
