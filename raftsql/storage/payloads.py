"""Large entries' data beside the log, so that neither the log nor memory holds it.

An entry whose data passes DETACH_BYTES (a load's chunk, a big INSERT) is stored in its own
file, `DATA_DIR/payloads/KEY`, and the Raft log (on disk and in the core's memory) holds a
reference instead: MARK, the key, the data's size and CRC-32, REF_BYTES in all. Commands
never start with MARK (they are JSON). The driver keeps one rule, so that every entry in a
node's log has its data on that node:

- a payload is durable before the entry that refers to it is: the leader stores it before it
  proposes the reference; a follower stores what arrives (on the wire the reference is
  followed by the data, `attach()`) before the core sees the message;
- it is removed only once its entry is durably out of the log (compacted, or replaced by a
  conflicting leader's entry: Storage reports those) and the state machine has applied past
  its index (a received snapshot drops entries still queued to be applied before it), unless
  the entry came back meanwhile (a later leader may send a replaced entry again: landing it
  cancels the removal); or, by `sweep`, when no entry refers to it and it is a minute old
  (a proposal that never reached the log, an arrival the core refused); at start, `open`.

The data comes back where it is needed: `read()` when it is applied, `attach()` when it is
sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable

from raftsql.errors import StorageError
from raftsql.raft.messages import Entry, Message
from raftsql.storage.fsync import fsync_dir

MARK = b"\0P"
_REF = struct.Struct(">2s16sQI")  # MARK, key, size, CRC-32
REF_BYTES = _REF.size
DETACH_BYTES = 64 << 10  # data larger than this goes beside the log
SWEEP_AGE = 60.0  # seconds a file no entry refers to is left alone (it may be on its way)


def is_ref(data: bytes) -> bool:
    return len(data) == REF_BYTES and data[:2] == MARK


def is_wire(data: bytes) -> bool:
    """A reference followed by its data: an entry as it travels between nodes."""
    return len(data) > REF_BYTES and data[:2] == MARK


def size(e: Entry) -> int:
    """The bytes an entry stands for: its payload's size for a reference. What batches
    (core Config.entry_size), snapshot thresholds and trailing logs count."""
    data = e.data
    return _REF.unpack(data)[2] if is_ref(data) else len(data)


class Payloads:
    """The payload files of one node's log."""

    def __init__(self, folder: str) -> None:
        self._dir = folder
        # Held while deciding a file's fate: removals (persist and apply threads) against
        # arrivals that keep a file (the landing thread).
        self._lock = threading.Lock()
        self._dropped: list[tuple[int, bytes]] = []  # out of the log, not yet applied past
        self._applied = 0

    def open(self, entries: Iterable[Entry]) -> int:
        """At start, with the log's entries: remove the files none of them refers to; how
        many."""
        if not os.path.isdir(self._dir):
            os.makedirs(self._dir)
            fsync_dir(os.path.dirname(self._dir))
        return self.sweep(entries, min_age=0.0)

    def sweep(self, entries: Iterable[Entry], min_age: float = SWEEP_AGE) -> int:
        """Remove the files that none of `entries` (the log's) refers to, none waits to be
        applied, and were last stored at least `min_age` seconds ago; how many."""
        with self._lock:
            wanted = {_key(e.data) for e in entries if is_ref(e.data)}
            wanted.update(_key(ref) for _, ref in self._dropped)
            cutoff, removed = time.time() - min_age, 0
            for name in os.listdir(self._dir):
                path = os.path.join(self._dir, name)
                if name.removesuffix(".tmp") not in wanted and os.path.getmtime(path) <= cutoff:
                    os.remove(path)
                    removed += 1
        return removed

    def detach(self, data: bytes) -> bytes:
        """Store `data` durably; the reference the log holds instead."""
        if data[:2] == MARK:
            raise ValueError("a command may not start with the payload mark")
        ref = _REF.pack(MARK, uuid.uuid4().bytes, len(data), zlib.crc32(data))
        self._store(ref, data)
        self._sync_dir()
        return ref

    def read(self, ref: bytes) -> bytes:
        """The data `ref` stands for, checked (StorageError if missing or damaged)."""
        _, _, length, crc = _REF.unpack(ref)
        path = self._path(_key(ref))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StorageError(f"payload {path}: {e}") from e
        if len(data) != length or zlib.crc32(data) != crc:
            raise StorageError(f"payload {path} is damaged: {len(data)} bytes, expected "
                               f"{length} with CRC {crc:08x}")
        return data

    def attach(self, m: Message) -> Message:
        """`m` as it leaves: its entries' references followed by their data."""
        if not any(is_ref(e.data) for e in m.entries):
            return m
        entries = tuple(Entry(e.term, e.index, e.type, e.data + self.read(e.data))
                        if is_ref(e.data) else e for e in m.entries)
        return dataclasses.replace(m, entries=entries)

    def land(self, entries: Iterable[Entry]) -> list[Entry]:
        """Entries arrived with their data (`is_wire`): the data stored durably, the
        references in their place."""
        out, stored = [], False
        for e in entries:
            if is_wire(e.data):
                ref, data = e.data[:REF_BYTES], e.data[REF_BYTES:]
                _, _, length, crc = _REF.unpack(ref)
                if len(data) != length or zlib.crc32(data) != crc:
                    raise ValueError(f"entry {e.index}: its data does not match its reference")
                if not self._keep(ref):  # (else resent: it is here)
                    self._store(ref, data)
                    stored = True
                e = Entry(e.term, e.index, e.type, ref)
            out.append(e)
        if stored:
            self._sync_dir()
        return out

    def forget(self, dropped: list[tuple[int, bytes]], log: list[Entry] | None = None) -> None:
        """These entries (index, reference) left the log durably (Storage.take_dropped):
        their files go once the state machine applied past them. With the `log` after a
        compaction, the files none of its entries came to refer to go too (`sweep`)."""
        if dropped:
            with self._lock:
                self._dropped.extend(dropped)
            self.applied(0)
        if log is not None:
            self.sweep(log)

    def applied(self, index: int) -> None:
        """The state machine applied everything up to `index`."""
        with self._lock:
            self._applied = max(self._applied, index)
            if not self._dropped:
                return
            done = [ref for i, ref in self._dropped if i <= self._applied]
            self._dropped = [(i, ref) for i, ref in self._dropped if i > self._applied]
            for ref in done:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._path(_key(ref)))

    def _keep(self, ref: bytes) -> bool:
        """An entry arrived again: its file is no longer to be removed. Whether it is here
        (then marked as just stored, so that no sweep takes it)."""
        with self._lock:
            self._dropped = [(i, r) for i, r in self._dropped if r != ref]
            try:
                os.utime(self._path(_key(ref)))
            except FileNotFoundError:
                return False
            return True

    def has(self, ref: bytes) -> bool:
        return os.path.exists(self._path(_key(ref)))

    def _store(self, ref: bytes, data: bytes) -> None:
        path = self._path(_key(ref))
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _sync_dir(self) -> None:
        fsync_dir(self._dir)

    def _path(self, key: str) -> str:
        return os.path.join(self._dir, key)


def _key(ref: bytes) -> str:
    """The name of the file holding `ref`'s data."""
    return ref[2:18].hex()


