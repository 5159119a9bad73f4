"""An apsw VFS that loses, at a simulated power cut, what SQLite did not sync.

`CrashVFS` becomes the process's default VFS until `close()` (every connection raftsql opens goes through
it, the driver's ClockVFS included) and passes everything to the real one, keeping per file
what a power cut may undo: the file as of its last xSync (read when the first write after
it comes) and the writes and truncates since, in order. `power_cut(directory, rng)` then
leaves each such file under `directory` as its synced image plus a random prefix of those
changes, the last one kept possibly torn (a random prefix of its bytes): what memfs does
for the Raft log (raftsql/storage/memfs.py).

Between `kill(directory)` and `revive(directory)` nothing reaches the files there (writes,
syncs, truncates and deletes are dropped; reads work), so the dead node's connections can be
closed without writing, before the cut.

Not modelled (lenient, so they can only hide a loss, never invent one): files created or
deleted survive as they were, whatever the directory's fsyncs; bytes written by other means
than SQLite (the driver's os-level files) are treated as durable; the WAL index (-shm) is
SQLite's to rebuild.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import apsw

NAME = "raftsql-crash"


@dataclass
class _Pending:
    """A file's changes since its last sync."""
    inode: int
    synced: bytes  # the file as of the last sync
    changes: list[tuple[int, bytes | None]] = field(default_factory=list)
    # (offset, data) for a write; (size, None) for a truncate


def _path(name: Any) -> str | None:
    if name is None:
        return None
    return name.filename() if isinstance(name, apsw.URIFilename) else str(name)


class CrashVFS(apsw.VFS):
    def __init__(self) -> None:
        self._previous_default = apsw.vfs_names()[0]
        super().__init__(NAME, "unix", makedefault=True)
        self.pending: dict[str, _Pending] = {}
        self.dead: set[str] = set()  # directories whose power is off

    def close(self) -> None:
        """Unregister, making the previous default VFS the default again (SQLite would
        pick any registered one)."""
        self.unregister()
        apsw.set_default_vfs(self._previous_default)

    def is_dead(self, path: str | None) -> bool:
        return path is not None and any(path.startswith(d) for d in self.dead)

    def xOpen(self, name: Any, flags: list[int]) -> CrashFile:  # noqa: N802 (SQLite's name)
        return CrashFile(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802
        if self.is_dead(filename):
            return
        self.pending.pop(filename, None)
        super().xDelete(filename, syncdir)

    def changed(self, path: str, offset: int, data: bytes | None) -> None:
        """Note a write (or a truncate, `data` None) about to happen."""
        ino = os.stat(path).st_ino if os.path.exists(path) else -1
        p = self.pending.get(path)
        if p is None or p.inode != ino:  # a file replaced by other means starts afresh
            with open(path, "rb") as f:
                p = self.pending[path] = _Pending(ino, f.read())
        p.changes.append((offset, data))

    def kill(self, directory: str) -> None:
        self.dead.add(os.path.join(directory, ""))

    def revive(self, directory: str) -> None:
        self.dead.discard(os.path.join(directory, ""))

    def power_cut(self, directory: str, rng: random.Random) -> int:
        """Undo, under `directory`, what was not synced (a random prefix survives, its last
        write maybe torn). Returns how many changes were lost."""
        prefix, lost = os.path.join(directory, ""), 0
        for path in [p for p in self.pending if p.startswith(prefix)]:
            p = self.pending.pop(path)
            if not os.path.exists(path) or os.stat(path).st_ino != p.inode:
                continue
            keep = rng.randint(0, len(p.changes))
            image = bytearray(p.synced)
            for offset, data in p.changes[:keep]:
                _change(image, offset, data)
            if keep < len(p.changes) and rng.random() < 0.5:
                offset, data = p.changes[keep]
                if data is not None:  # torn: the disk wrote some of its sectors
                    _change(image, offset, data[:rng.randrange(len(data) + 1)])
            lost += len(p.changes) - keep
            with open(path, "r+b") as f:
                f.truncate(0)
                f.write(image)
        return lost


def _change(image: bytearray, offset: int, data: bytes | None) -> None:
    if data is None:
        del image[offset:]
        return
    if len(image) < offset:
        image.extend(bytes(offset - len(image)))
    image[offset:offset + len(data)] = data


class CrashFile(apsw.VFSFile):
    def __init__(self, vfs: CrashVFS, name: Any, flags: list[int]) -> None:
        super().__init__("unix", name, flags)
        self._vfs = vfs
        self._path = _path(name)

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        if self._path is None:
            return super().xWrite(data, offset)
        if self._vfs.is_dead(self._path):
            return None
        self._vfs.changed(self._path, offset, bytes(data))
        return super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        if self._path is None:
            return super().xTruncate(newsize)
        if self._vfs.is_dead(self._path):
            return None
        self._vfs.changed(self._path, newsize, None)
        return super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:  # noqa: N802
        if self._path is None:
            return super().xSync(flags)
        if self._vfs.is_dead(self._path):
            return None
        self._vfs.pending.pop(self._path, None)
        return super().xSync(flags)
