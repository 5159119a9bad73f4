"""Automatic backups (`raftsql serve --backup-dir DIR --backup-interval 1h`): every
interval, this node's database copied into DIR, when it changed since the last backup there.

Every node backs up its own copy, so each machine keeps backups of its own whichever node
leads (all copies are identical at the same applied index). A backup is a SQLite file as
GET /db/backup makes it (backup.copy), gzipped with `compress`, named
`raftsql-<UTC time>-<digest>.sqlite[.gz]`: the digest (of the uncompressed file) says whether
anything changed since the newest backup, with no state kept anywhere else. It is written
under a temporary name, fsynced and renamed, so DIR only ever holds whole backups; the
`keep` newest are kept, older ones removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import hashlib
import logging
import os
import shutil

from raftsql.sql import backup

log = logging.getLogger("raftsql.backup")

PREFIX = "raftsql-"
DIGEST_CHARS = 16  # of the SHA-256, hex


class AutoBackup:
    def __init__(self, db_path: str, directory: str, *, interval: float, keep: int = 0,
                 compress: bool = False) -> None:
        """`keep`: how many backups to keep (0: all)."""
        self._db = db_path
        self.directory = directory
        self._interval = interval
        self._keep = keep
        self._compress = compress
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.to_thread(self.run_once)
            except OSError as e:  # a full disk, a directory gone: try again next time
                log.error("automatic backup into %s failed: %s", self.directory, e)

    def backups(self) -> list[str]:
        """The backups in the directory, oldest first (their names sort by time)."""
        names = [n for n in os.listdir(self.directory)
                 if n.startswith(PREFIX) and n.endswith((".sqlite", ".sqlite.gz"))]
        return sorted(names)

    def run_once(self, now: dt.datetime | None = None) -> str | None:
        """Back up now if the database changed since the newest backup: the new file's
        name, or None when nothing changed."""
        staged = backup.temp_path(self._db, "auto")
        try:
            backup.copy(self._db, staged)
            digest = _digest(staged)
            existing = self.backups()
            if existing and _digest_of_name(existing[-1]) == digest:
                return None
            stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
            name = f"{PREFIX}{stamp}-{digest}.sqlite" + (".gz" if self._compress else "")
            self._publish(staged, name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)
        self._prune()
        log.info("backed up the database to %s", os.path.join(self.directory, name))
        return name

    def _publish(self, staged: str, name: str) -> None:
        part = os.path.join(self.directory, f".{name}.part")
        with open(staged, "rb") as src, open(part, "wb") as raw:
            if self._compress:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            else:
                shutil.copyfileobj(src, raw, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, os.path.join(self.directory, name))
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)

    def _prune(self) -> None:
        if self._keep <= 0:
            return
        for name in self.backups()[:-self._keep]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.directory, name))


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:DIGEST_CHARS]


def _digest_of_name(name: str) -> str:
    return name.removesuffix(".gz").removesuffix(".sqlite").rsplit("-", 1)[-1]
