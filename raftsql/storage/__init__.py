"""Durable storage: the Raft log and hard state (CRC records, torn tails discarded, one fsync
per batch), the snapshot on disk, and the crash-injecting in-memory file system that tests
and the simulator use.

`write_persist`, `attach_snapshot` and `trailing_base` are what a driver does with storage
on the core's behalf; the asyncio driver and the simulator both call them.
"""

from __future__ import annotations

from dataclasses import replace

from raftsql.raft.core import Raft
from raftsql.raft.messages import Message, MessageType, SnapshotMeta
from raftsql.raft.order import Persist
from raftsql.storage import payloads
from raftsql.storage.log import Storage
from raftsql.storage.memfs import MemoryFileSystem, SimulatedCrash

__all__ = ["MemoryFileSystem", "SimulatedCrash", "Storage", "attach_snapshot", "trailing_base",
           "write_persist"]


def write_persist(storage: Storage, persist: Persist) -> None:
    """Carry out a Persist effect: snapshot, entries, hard state, one fsync."""
    if persist.snapshot is not None:
        storage.save_snapshot(persist.snapshot)
    if persist.entries:
        storage.append(persist.entries)
    if persist.hard_state is not None:
        storage.set_hard_state(persist.hard_state)
    storage.sync()


def attach_snapshot(storage: Storage, m: Message) -> Message | None:
    """The core sends SNAPSHOT messages without the data (docs/design.md §3): put the stored
    snapshot's in. None when there is none to send (the leader tries again later)."""
    if m.type is not MessageType.SNAPSHOT or (m.snapshot is not None and m.snapshot.data):
        return m
    stored = storage.load_snapshot()
    return None if stored is None else replace(m, snapshot=stored)


def trailing_base(raft: Raft, index: int, keep: int, max_bytes: int = 0) -> SnapshotMeta:
    """Where the log should start once a snapshot at `index` is saved: `keep` entries before
    it stay (hashicorp/raft's trailing logs: a follower slightly behind catches up from the
    log, not with the whole state), fewer if their data passes `max_bytes` (0: no limit), so
    that the log stays bounded in bytes too. Called on the driver's loop (it reads the
    core); the driver then saves the snapshot with this base and calls `raft.compact`."""
    lo = max(index - keep, raft.first_index - 1)
    if max_bytes and lo < index:
        size = 0
        for e in reversed(raft.entries(lo + 1, index + 1)):
            size += payloads.size(e)  # data kept beside the log counts as it
            if size > max_bytes:
                lo = e.index
                break
    term = raft.term_at(lo)
    assert term is not None, f"entry {lo} is not in the log"
    return SnapshotMeta(lo, term, raft.conf_at(lo))
