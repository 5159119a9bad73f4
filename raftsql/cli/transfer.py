"""`raftsql backup`: a cluster's database into a file, streamed, with a progress line on a
terminal (bytes and rate) and nothing on stdout or stderr in scripts but errors.

The file is written beside FILE under a temporary name and renamed into place once whole, so
an interrupted backup never leaves a truncated FILE that looks complete.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.parse
from typing import IO

from raftsql.client.http import error_text, split_urls

CHUNK = 1 << 20


class TransferError(Exception):
    """A backup that could not be made: one line for the user."""


def backup(urls: str | None, path: str, *, sql: bool = False, compress: bool = False,
           timeout: float = 60.0, progress: IO[str] | None = None) -> int:
    """Write the cluster's database (a SQLite file; with `sql` a dump) to `path`, trying the
    nodes of `urls` in turn until one answers; returns the bytes written."""
    query = "&".join(q for q, on in (("fmt=sql", sql), ("compress", compress)) if on)
    target = "/db/backup" + (f"?{query}" if query else "")
    failures = []
    for url in split_urls(urls):
        parts = urllib.parse.urlsplit(url)
        cls = (http.client.HTTPSConnection if parts.scheme == "https"
               else http.client.HTTPConnection)
        conn = cls(parts.netloc, timeout=timeout)
        try:
            try:
                conn.request("GET", target)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"{url}: {e}")
                continue
            return _save(url, resp, path, progress)
        finally:
            conn.close()
    raise TransferError("no node answered: " + "; ".join(failures))


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


def main_backup(urls: str | None, path: str, sql: bool, compress: bool) -> int:
    try:
        backup(urls, path, sql=sql, compress=compress, progress=sys.stderr)
    except (TransferError, ValueError) as e:
        print(f"raftsql backup: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"raftsql backup: {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
