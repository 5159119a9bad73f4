"""Snapshot states on disk, beside the Raft log: `DATA_DIR/snapshots/`.

A snapshot's meta and its small data (a header) are saved with the Raft log
(`storage/log.py`); the state machine's state, which may be gigabytes, is a file here, one per
snapshot, `<index>-<term>.db`, and is only ever streamed, never read into memory. A state
file is complete, checked and fsynced before the snapshot that stands for it is saved, so a
crash leaves at worst a file no saved snapshot names, which `prune` removes once a newer
snapshot is in place. A state being written (the node's own snapshot) is `<index>-<term>.new`;
one being downloaded (a follower's InstallSnapshot) is `<index>-<term>.part`, which a download
resumes from after a dropped connection or a restart.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib

from raftsql.storage.fsync import fsync_dir

CHUNK = 1 << 20  # how much of a state is in memory at once
_NAME = re.compile(r"^(\d+)-(\d+)\.(db|part|new)$")


class SnapshotFiles:
    """The state files of one node's snapshots, in the directory `path`."""

    def __init__(self, path: str) -> None:
        self.dir = path  # made when the first state is written

    def path(self, index: int, term: int) -> str:
        """Where the complete state of the snapshot at (index, term) is (or would be)."""
        return os.path.join(self.dir, f"{index}-{term}.db")

    def partial(self, index: int, term: int, *, own: bool = False) -> str:
        """Where that state is downloaded before it is complete (`own`: written by this node,
        a name of its own, so that a download never touches it)."""
        os.makedirs(self.dir, exist_ok=True)
        return os.path.join(self.dir, f"{index}-{term}.{'new' if own else 'part'}")

    def has(self, index: int, term: int) -> bool:
        return os.path.exists(self.path(index, term))

    def install(self, index: int, term: int, *, own: bool = False) -> str:
        """The partial state of (index, term) is complete and checked: make it durable and
        give it its final name."""
        part, final = self.partial(index, term, own=own), self.path(index, term)
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, final)
        fsync_dir(self.dir)
        return final

    def prune(self, index: int, term: int) -> None:
        """The snapshot at (index, term) is saved: remove the states of older ones (complete
        or partial). Newer files stay: a download that may still be wanted."""
        for name in _names(self.dir):
            match = _NAME.match(name)
            if match is None:
                continue
            at = (int(match[1]), int(match[2]))
            if at < (index, term) or (at == (index, term) and match[3] != "db"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.dir, name))

    def discard_partials(self, keep: str | None = None) -> None:
        """Remove unfinished states other than `keep` (one download at a time)."""
        for name in _names(self.dir):
            path = os.path.join(self.dir, name)
            if name.endswith(".part") and path != keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


def checksum(path: str) -> tuple[int, int]:
    """(size, CRC-32) of the file at `path`, read a chunk at a time."""
    size, crc = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
    return size, crc


def _names(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
