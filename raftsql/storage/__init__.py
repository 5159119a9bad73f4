"""Durable storage: the Raft log and hard state (CRC records, torn tails discarded, one fsync
per batch), the snapshot on disk, and the crash-injecting in-memory file system that tests
and the simulator use.

`write_persist` and `attach_snapshot` are the two things a driver does with storage on the
core's behalf; the asyncio driver and the simulator both call them.
"""

from __future__ import annotations

from dataclasses import replace

from raftsql.raft.messages import Message, MessageType
from raftsql.raft.order import Persist
from raftsql.storage.log import Storage
from raftsql.storage.memfs import MemoryFileSystem, SimulatedCrash

__all__ = ["MemoryFileSystem", "SimulatedCrash", "Storage", "attach_snapshot", "write_persist"]


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
