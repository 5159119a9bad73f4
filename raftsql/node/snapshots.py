"""Snapshots between nodes: the header a snapshot's data holds, and a follower's side of
InstallSnapshot.

A snapshot's data (what the core and the Raft log carry) is only a small header: the format
version, the address book, and the size and CRC-32 of the state, which is a file of its own
(`storage/snapshots.py`). A SNAPSHOT message therefore stays small; the follower fetches the
state from the sender in chunks (the transport's `fetch_snapshot`, an HTTP range request to
the peer listener), checks size and checksum, installs the file, and only then hands the
message to the core, which persists and restores it like any other. A dropped connection
resumes where the download stopped, also after a restart; a leader that has moved on to a
newer snapshot answers 404, and the follower waits for the new one (the leader resends its
snapshot after an election timeout without an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import orjson

from raftsql.errors import StorageError, TransportError
from raftsql.raft.messages import Message, Snapshot
from raftsql.storage import Storage
from raftsql.storage.snapshots import SnapshotFiles, checksum

log = logging.getLogger("raftsql.node")

SNAPSHOT_VERSION = 2  # of the header; 1 held the state inline
RETRY_MIN, RETRY_MAX = 0.2, 2.0  # seconds between attempts to fetch a state

Fetch = Callable[[str, int, int, int, BinaryIO], Awaitable[None]]  # (raft address, index, ...)


def sent_from(m: Message, raft_addr: str) -> Message:
    """A SNAPSHOT message about to leave, naming where its state can be fetched: here (a
    new node may not know the sender's address yet, nor may it be the snapshot's maker)."""
    assert m.snapshot is not None
    header = replace(Header.decode(m.snapshot.data, m.snapshot.meta.index), source=raft_addr)
    return replace(m, snapshot=replace(m.snapshot, data=header.encode()))


@dataclass(frozen=True)
class Header:
    peers: dict[str, Any]
    size: int  # of the state file
    crc: int  # CRC-32 of the state file
    source: str = ""  # the Raft address to fetch it from: set by whoever sends the snapshot

    def encode(self) -> bytes:
        return orjson.dumps({"v": SNAPSHOT_VERSION, "peers": self.peers, "size": self.size,
                             "crc": self.crc, "source": self.source})

    @staticmethod
    def decode(data: bytes, index: int) -> Header:
        try:
            header = orjson.loads(data)
            version = header.get("v")
            if version == SNAPSHOT_VERSION:
                return Header(dict(header["peers"]), int(header["size"]), int(header["crc"]),
                              str(header.get("source", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StorageError(f"snapshot {index}: unreadable header ({e})") from None
        raise StorageError(f"snapshot {index}: unsupported version {version!r} (this node "
                           f"reads version {SNAPSHOT_VERSION})")


def upgrade_stored(storage: Storage, files: SnapshotFiles) -> None:
    """A snapshot saved by raftsql before the state moved to a file of its own (version 1:
    a length, a JSON header, then the state, all in the Raft log's snapshot file): move its
    state to its file and save it again with a version 2 header. Once, at start."""
    meta = storage.snapshot_meta
    if not meta.index or files.has(meta.index, meta.term):
        return
    stored = storage.load_snapshot()
    assert stored is not None
    data = stored.data
    n = int.from_bytes(data[:4], "big")
    try:
        old = orjson.loads(data[4 : 4 + n])
    except ValueError:
        old = None
    if type(old) is not dict or old.get("v") != 1:
        raise StorageError(f"snapshot {meta.index}: its state file "
                           f"{files.path(meta.index, meta.term)} is missing")
    state = memoryview(data)[4 + n :]
    with open(files.partial(meta.index, meta.term, own=True), "wb") as f:
        f.write(state)
    files.install(meta.index, meta.term, own=True)
    header = Header(dict(old.get("peers", {})), len(state), zlib.crc32(state))
    storage.save_snapshot(Snapshot(meta, header.encode()))
    log.info("snapshot %d moved to %s (format 2)", meta.index, files.path(meta.index, meta.term))


class SnapshotReceiver:
    """Holds back SNAPSHOT messages whose state is not here yet, and fetches it.

    `admit(m)` says whether the core may have `m` now; if not, the state is fetched from
    where the message says (its header's `source`) in the background, and `deliver(m)` is
    called once it is installed. One download at a time: a newer snapshot replaces an older
    download, an older one is ignored, and the same one resent by a new leader moves the
    download to it (starting over if its copy differs: nodes' copies of one snapshot hold the
    same rows, not always the same bytes).
    """

    def __init__(self, files: SnapshotFiles, fetch: Fetch, deliver: Callable[[Message], None],
                 name: str) -> None:
        self._files = files
        self._fetch = fetch
        self._deliver = deliver
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._fetching: tuple[int, int] = (0, 0)  # (index, term) being fetched
        self._source = ""  # from where: the latest sender of that snapshot
        self._file = (0, 0)  # and which copy of it: (size, CRC-32)
        self.received = 0  # states fetched and installed, for tests and status

    def admit(self, m: Message) -> bool:
        assert m.snapshot is not None
        meta = m.snapshot.meta
        at = (meta.index, meta.term)
        if self._files.has(*at):
            return True
        busy = self._task is not None and not self._task.done()
        if busy and at < self._fetching:
            return False  # a newer download is under way
        try:
            header = Header.decode(m.snapshot.data, meta.index)
        except StorageError as e:
            log.warning("node=%s ignoring snapshot %d from %s: %s", self._name, meta.index,
                        m.frm, e)
            return False
        if busy and at == self._fetching and (header.size, header.crc) == self._file:
            self._source = header.source  # the same file: go on from its latest sender
            return False
        if busy:
            assert self._task is not None
            self._task.cancel()
            if at == self._fetching:  # another node's copy of it: other bytes, start over
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._files.partial(*at))
        self._fetching, self._source, self._file = at, header.source, (header.size, header.crc)
        self._task = asyncio.get_running_loop().create_task(
            self._receive(m, header), name=f"snapshot-fetch-{self._name}")
        return False

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _receive(self, m: Message, header: Header) -> None:
        assert m.snapshot is not None
        index, term = m.snapshot.meta.index, m.snapshot.meta.term
        part = self._files.partial(index, term)
        self._files.discard_partials(keep=part)
        delay = RETRY_MIN
        while True:
            try:
                if await self._download(self._source, index, term, part, header):
                    break
            except TransportError as e:
                if e.status == 404:
                    log.info("node=%s snapshot %d is gone from %s (it has a newer one); "
                             "waiting for it", self._name, index, self._source)
                    return
                log.info("node=%s fetching snapshot %d from %s: %s; retrying", self._name,
                         index, self._source, e)
            except (OSError, TimeoutError) as e:
                log.info("node=%s fetching snapshot %d from %s: %r; retrying", self._name,
                         index, self._source, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
        await asyncio.to_thread(self._files.install, index, term)
        self.received += 1
        log.info("node=%s received snapshot %d (%d bytes) from %s", self._name, index,
                 header.size, self._source)
        self._deliver(m)

    async def _download(self, source: str, index: int, term: int, part: str,
                        header: Header) -> bool:
        """Fetch what is missing of the state into `part`; True once it is complete and
        its checksum is right (a wrong one starts the download over)."""
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > header.size:
            os.remove(part)
            have = 0
        if have < header.size:
            with open(part, "ab") as out:
                await self._fetch(source, index, term, have, out)
            if os.path.getsize(part) < header.size:
                return False  # cut short: resume from there
        size, crc = await asyncio.to_thread(checksum, part)
        if (size, crc) == (header.size, header.crc):
            return True
        log.warning("node=%s snapshot %d from %s: got %d bytes with CRC %08x, expected %d "
                    "bytes with CRC %08x; fetching it again", self._name, index, source, size,
                    crc, header.size, header.crc)
        os.remove(part)
        return False
