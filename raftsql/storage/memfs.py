"""An in-memory file system that can crash, for the storage tests and the simulator.

It implements the `FileSystem` interface of `raftsql/storage/log.py` with no real
files and no `os`: paths are plain strings split on "/". Everything the running
process sees (the page cache) is kept apart from what a crash would leave on disk, so
`crash(rng)` can lose exactly what was never made durable.

Crash model (what `crash(rng)` keeps, and what it may lose):

* File contents. Each file (inode) keeps its durable bytes (as of its last `sync`) and
  its current bytes. Appended bytes are durable only after `sync`. A crash keeps the
  durable bytes plus a random prefix of the unsynced tail (a torn write: possibly
  nothing, possibly a record cut in half), and sometimes 1-32 bytes of garbage after it
  (random or zeros, as when the file size reached the disk but its data did not). A
  `truncate` not yet synced is atomic: either it reached the disk, with the torn tail
  written after it, or the crash brings back the durable bytes unchanged.
  Not modelled: a hole in the middle of the unsynced tail with valid data after it
  (storage refuses to open such a log, see there).
* Names. Creating, renaming and removing a file changes the directory, which is durable
  only after a directory fsync (done by `write_atomic` after its rename, and by
  `mkdirs`). Namespace changes reach the disk in the order they were made, as a
  journaling file system commits them: a crash keeps a random prefix of the changes made
  since the last directory fsync. A directory fsync commits all pending changes, in any
  directory (one journal). A file's name and its data are independent: a name can
  survive while its unsynced data does not (why `write_atomic` syncs before renaming).
* Directories themselves are durable once `mkdirs` returns.

After a crash, handles opened before it fail with OSError, and what survived is the new
durable state. `crash_after(n)` arms a crash point: the next `n` mutating operations
succeed and the one after raises `SimulatedCrash` without taking effect (every call then
raises until `crash()`), so tests can stop a multi-step operation at every step.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field


class SimulatedCrash(Exception):
    """The simulated process died here (an armed `crash_after` point was reached)."""


@dataclass(eq=False, slots=True)
class _Inode:
    data: bytearray = field(default_factory=bytearray)  # what the process reads
    durable: bytes = b""  # what the disk holds as of the last sync
    low: int = 0  # data[:low] == durable[:low]: the part no truncate touched since the sync

    def sync(self) -> None:
        self.durable = bytes(self.data)
        self.low = len(self.data)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class MemoryFileSystem:
    def __init__(self) -> None:
        self._names: dict[str, _Inode] = {}  # the namespace the process sees
        self._durable_names: dict[str, _Inode] = {}  # as of the last directory fsync
        # Namespace changes since the last directory fsync, oldest first:
        # ("link", path, inode), ("rename", src, dst) or ("unlink", path, None).
        self._journal: list[tuple[str, str, _Inode | str | None]] = []
        self._dirs: set[str] = set()
        self._epoch = 0  # bumped by each crash; stale handles refuse to work
        self._countdown: int | None = None
        self._dead = False

    # -- the FileSystem interface ------------------------------------------------------

    def mkdirs(self, path: str) -> None:
        self._tick()
        while path and path not in self._dirs:
            self._dirs.add(path)
            path = _parent(path)

    def open_append(self, path: str) -> _MemFile:
        self._check_alive()
        inode = self._names.get(path)
        if inode is None:
            raise FileNotFoundError(path)
        return _MemFile(self, inode)

    def read(self, path: str, size: int | None = None) -> bytes:
        self._check_alive()
        inode = self._names.get(path)
        if inode is None:
            raise FileNotFoundError(path)
        return bytes(inode.data if size is None else inode.data[:size])

    def write_atomic(self, path: str, parts: Iterable[bytes]) -> None:
        """Write `path.tmp`, sync it, rename it over `path`, sync the directory."""
        self._require_dir(path)
        tmp = path + ".tmp"
        inode = _Inode()
        self._tick()
        self._link(tmp, inode)
        self._tick()
        for part in parts:
            inode.data += part
        self._tick()
        inode.sync()
        self._tick()
        self._rename(tmp, path)
        self._tick()
        self._sync_dir()

    def exists(self, path: str) -> bool:
        self._check_alive()
        return path in self._names or path in self._dirs

    def remove(self, path: str) -> None:
        """Not durable until the next directory fsync."""
        self._tick()
        if path not in self._names:
            raise FileNotFoundError(path)
        del self._names[path]
        self._journal.append(("unlink", path, None))

    def listdir(self, path: str) -> list[str]:
        self._check_alive()
        if path not in self._dirs:
            raise FileNotFoundError(path)
        return sorted(name.rpartition("/")[2] for name in self._names if _parent(name) == path)

    # -- crash injection ---------------------------------------------------------------

    def crash_after(self, operations: int) -> None:
        """Let `operations` more mutating operations succeed, then raise SimulatedCrash."""
        self._countdown = operations

    def crash(self, rng: random.Random) -> None:
        """Lose what was not durable (see the module docstring), as a power cut would."""
        names = dict(self._durable_names)
        for op, name, arg in self._journal[: rng.randint(0, len(self._journal))]:
            if op == "link" and isinstance(arg, _Inode):
                names[name] = arg
            elif op == "rename" and isinstance(arg, str):
                names[arg] = names.pop(name)
            else:
                names.pop(name, None)
        seen: set[int] = set()
        for name in sorted(names):
            inode = names[name]
            if id(inode) not in seen:
                seen.add(id(inode))
                inode.data = bytearray(_torn(inode, rng))
                inode.sync()
        self._names = names
        self._durable_names = dict(names)
        self._journal = []
        self._epoch += 1
        self._countdown = None
        self._dead = False

    def durable_bytes(self, path: str) -> bytes | None:
        """What a crash right now would surely keep of `path` (for tests)."""
        inode = self._durable_names.get(path)
        return None if inode is None else inode.durable

    # -- internals ---------------------------------------------------------------------

    def _tick(self) -> None:
        self._check_alive()
        if self._countdown is not None:
            if self._countdown == 0:
                self._dead = True
                raise SimulatedCrash("simulated crash point reached")
            self._countdown -= 1

    def _check_alive(self) -> None:
        if self._dead:
            raise SimulatedCrash("the simulated process has crashed; call crash(rng)")

    def _require_dir(self, path: str) -> None:
        self._check_alive()
        if _parent(path) not in self._dirs:
            raise FileNotFoundError(_parent(path))

    def _link(self, path: str, inode: _Inode) -> None:
        self._names[path] = inode
        self._journal.append(("link", path, inode))

    def _rename(self, src: str, dst: str) -> None:
        self._names[dst] = self._names.pop(src)
        self._journal.append(("rename", src, dst))

    def _sync_dir(self) -> None:
        self._durable_names = dict(self._names)
        self._journal = []


def _torn(inode: _Inode, rng: random.Random) -> bytes:
    """The bytes a crash leaves in this file: durable + a torn prefix of the rest."""
    if inode.low < len(inode.durable) and rng.random() < 0.5:
        return inode.durable  # the truncate (and all written after it) never reached the disk
    tail = inode.data[inode.low :]
    kept = bytes(inode.data[: inode.low]) + bytes(tail[: rng.randint(0, len(tail))])
    if tail and rng.random() < 0.25:
        size = rng.randint(1, 32)
        kept += bytes(size) if rng.random() < 0.5 else rng.randbytes(size)
    return kept


class _MemFile:
    """A file opened for appending; stale (OSError) once the file system crashed."""

    def __init__(self, fs: MemoryFileSystem, inode: _Inode) -> None:
        self._fs = fs
        self._inode = inode
        self._epoch = fs._epoch
        self._closed = False

    def write(self, data: bytes) -> None:
        self._check()
        self._inode.data += data

    def truncate(self, size: int) -> None:
        self._check()
        if size > len(self._inode.data):
            raise ValueError("truncate cannot grow a file")
        del self._inode.data[size:]
        self._inode.low = min(self._inode.low, size)

    def sync(self) -> None:
        self._check()
        self._inode.sync()

    def close(self) -> None:
        self._closed = True

    def _check(self) -> None:
        self._fs._tick()
        if self._closed:
            raise ValueError("I/O operation on a closed file")
        if self._epoch != self._fs._epoch:
            raise OSError("stale file handle: the file system crashed since it was opened")
