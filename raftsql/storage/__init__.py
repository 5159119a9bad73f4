"""Durable storage: the Raft log and hard state (CRC records, torn tails discarded, one fsync
per batch), the snapshot on disk, and the crash-injecting in-memory file system that tests
and the simulator use."""

from raftsql.storage.log import Storage
from raftsql.storage.memfs import MemoryFileSystem, SimulatedCrash

__all__ = ["MemoryFileSystem", "SimulatedCrash", "Storage"]
