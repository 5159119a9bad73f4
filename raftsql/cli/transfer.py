"""`raftsql backup` and `raftsql restore`: a cluster's database into a file and back,
streamed, with a progress line on a terminal (bytes and rate) and nothing on stdout or
stderr in scripts but errors.

A backup is written beside FILE under a temporary name and renamed into place once whole,
so an interrupted backup never leaves a truncated FILE that looks complete. A restore
carries an idempotency key, so the cluster applies it at most once.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import IO

from raftsql.client.http import (
    IDEMPOTENCY_HEADER,
    auth_headers,
    error_text,
    split_auth,
    split_urls,
)

CHUNK = 1 << 20


class TransferError(Exception):
    """A backup that could not be made: one line for the user."""


def backup(urls: str | None, path: str, *, sql: bool = False, compress: bool = False,
           timeout: float = 60.0, progress: IO[str] | None = None,
           auth: tuple[str, str] | None = None) -> int:
    """Write the cluster's database (a SQLite file; with `sql` a dump) to `path`, trying the
    nodes of `urls` in turn until one answers, as `auth` (else the URLs' userinfo); returns
    the bytes written."""
    query = "&".join(q for q, on in (("fmt=sql", sql), ("compress", compress)) if on)
    target = "/db/backup" + (f"?{query}" if query else "")
    seeds, creds = split_auth(split_urls(urls), auth)
    return _first_node(seeds, timeout, lambda url, conn: _save(
        url, _ask(conn, "GET", target, auth_headers(creds)), path, progress))


def restore(urls: str | None, path: str, *, timeout: float = 600.0,
            progress: IO[str] | None = None, auth: tuple[str, str] | None = None) -> int:
    """Load the SQL dump (or SQLite file) at `path` into the cluster (POST /db/load) through
    the first node of `urls` that answers, as `auth` (else the URLs' userinfo); returns the
    bytes sent."""
    size = os.path.getsize(path)
    seeds, creds = split_auth(split_urls(urls), auth)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size),
               IDEMPOTENCY_HEADER: uuid.uuid4().hex, **auth_headers(creds)}

    def send(url: str, conn: http.client.HTTPConnection) -> int:
        conn.putrequest("POST", "/db/load")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        meter = _Meter(progress)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                conn.send(chunk)
                meter.add(len(chunk))
        meter.finish()
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise TransferError(f"{url}: HTTP {resp.status}: {error_text(body, resp.reason)}")
        errors = [r["error"] for r in json.loads(body).get("results", []) if "error" in r]
        if errors:
            raise TransferError(f"the dump was not loaded (nothing of it was applied): "
                                f"{errors[0]}")
        # A database file answers {"results": []}, or 400 (above) when the nodes refused it.
        return size

    return _first_node(seeds, timeout, send)


def _first_node(seeds: list[str], timeout: float,
                work: Callable[[str, http.client.HTTPConnection], int]) -> int:
    """`work(url, connection)` on the first node of `seeds` that takes a connection."""
    failures = []
    for url in seeds:
        parts = urllib.parse.urlsplit(url)
        cls = (http.client.HTTPSConnection if parts.scheme == "https"
               else http.client.HTTPConnection)
        conn = cls(parts.netloc, timeout=timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                failures.append(f"{url}: {e}")
                continue
            return work(url, conn)
        except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
            # The node, after it took the connection; a local file's error is the caller's.
            raise TransferError(f"{url}: {e or type(e).__name__}") from None
        finally:
            conn.close()
    raise TransferError("no node answered: " + "; ".join(failures))


def _ask(conn: http.client.HTTPConnection, method: str, target: str,
         headers: dict[str, str]) -> http.client.HTTPResponse:
    conn.request(method, target, headers=headers)
    return conn.getresponse()


def _save(url: str, resp: http.client.HTTPResponse, path: str, progress: IO[str] | None
          ) -> int:
    if resp.status != 200:
        raise TransferError(f"{url}: HTTP {resp.status}: {error_text(resp.read(), resp.reason)}")
    part = f"{path}.part"
    meter = _Meter(progress)
    try:
        with open(part, "wb") as out:
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                meter.add(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
        os.remove(part)
        raise TransferError(f"{url}: the backup broke off after {meter.done} bytes "
                            f"({type(e).__name__})") from None
    meter.finish()
    os.replace(part, path)
    return meter.done


class _Meter:
    """Bytes so far and their rate, on one line of a terminal, at most ten times a second."""

    def __init__(self, out: IO[str] | None):
        self.out = out if out is not None and out.isatty() else None
        self.done = 0
        self.start = self.shown = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.out is not None and now - self.shown >= 0.1:
            self.shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        assert self.out is not None
        rate = self.done / max(now - self.start, 1e-6)
        self.out.write(f"\r{_size(self.done)}  {_size(rate)}/s   ")
        self.out.flush()

    def finish(self) -> None:
        if self.out is not None:
            self._show(time.monotonic())
            self.out.write("\n")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def main_backup(urls: str | None, path: str, sql: bool, compress: bool,
                auth: tuple[str, str] | None = None) -> int:
    return _reporting("backup", path, lambda: backup(urls, path, sql=sql, compress=compress,
                                                     progress=sys.stderr, auth=auth))


def main_restore(urls: str | None, path: str, auth: tuple[str, str] | None = None) -> int:
    return _reporting("restore", path, lambda: restore(urls, path, progress=sys.stderr,
                                                       auth=auth))


def _reporting(command: str, path: str, work: Callable[[], int]) -> int:
    """Exit status 0, or 1 with one line on stderr."""
    try:
        work()
    except (TransferError, ValueError) as e:
        print(f"raftsql {command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"raftsql {command}: {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
