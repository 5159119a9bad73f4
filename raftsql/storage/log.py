"""The durable Raft log: hard state, entries and the latest snapshot, crash-safe.

This is the only module of `raftsql/raft` that touches files, and it does so through a
small `FileSystem` interface: `OSFileSystem` (real files) or `MemoryFileSystem`
(`storage/memfs.py`, which can crash and lose what was not synced).

Directory layout (`DATA_DIR/raft/`):

    log        append-only records: one BASE record, then ENTRY and HARD_STATE records
    snapshot   the latest snapshot's meta and (small) data: magic, meta (with CRC), then
               the data (with CRC); a large state lives beside it (storage/snapshots.py)
    *.tmp      leftovers of an interrupted atomic write, removed at open

A log record (integers little-endian):

    u32 length  of what follows the 8-byte header (the type byte and the payload)
    u32 crc     CRC-32 of the type byte and the payload
    u8  type    1 BASE       u16 version, u64 index, u64 term, voters, learners
                             (the log starts after index; the membership there)
                2 ENTRY      u64 term, u64 index, u8 entry type, data
                3 HARD_STATE u64 term, u64 commit, u8 has_vote, vote (utf-8)

Replay applies records in order: an entry whose index is <= the last index replaces the
suffix from there (how `append` records a conflict, with no extra record), and the
latest hard state wins. Replay stops at the first record that is short or fails its
CRC. If no valid record follows it, it is a torn tail (a crash during an unsynced write)
and the file is truncated there; if a valid record does follow, the damage is in the
middle of the log, where acknowledged entries live, and opening fails with StorageError
rather than silently dropping them.

Writes are buffered: `append` and `set_hard_state` only encode; `sync` writes the batch
with one write and makes it durable with one fsync. Nothing is durable before `sync`
returns (except through `save_snapshot`, which is durable on return).

Snapshots and compaction (Raft §7): `save_snapshot` first replaces the snapshot file
atomically, then replaces the log atomically with one whose BASE is the snapshot's index
and term, or an earlier entry's when the driver keeps trailing entries after compacting
(`base`: a follower slightly behind then catches up from the log, not the whole state).
The log's base is therefore at or below the snapshot's index, and when below it the log
holds the snapshot's last entry. A crash between the two steps leaves a newer snapshot than
the log's base; opening finishes the job with the same rule `save_snapshot` uses, so every
crash point leads to either the old state or the new one.

A `Storage` is not thread-safe: calls must not overlap (a driver may run `sync` in a
worker thread, but not while another call runs).
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from raftsql.errors import StorageError
from raftsql.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from raftsql.storage.fsync import fsync_dir
from raftsql.storage.payloads import is_ref
from raftsql.storage.snapfile import (
    decode_names,
    decode_snapshot,
    encode_names,
    encode_snapshot,
    read_snapshot_meta,
)

LOG_NAME = "log"
SNAPSHOT_NAME = "snapshot"
FORMAT_VERSION = 2  # 2: the BASE record carries the membership at the base

_BASE, _ENTRY, _HARD_STATE = 1, 2, 3
_HEADER = struct.Struct("<II")  # length, crc
_BASE_BODY = struct.Struct("<BHQQ")  # type, version, index, term
_ENTRY_HEAD = struct.Struct("<BQQB")  # type, term, index, entry type; the data follows
_HARD_STATE_HEAD = struct.Struct("<BQQB")  # type, term, commit, has_vote; the vote follows
_MIN_LENGTH = {_BASE: _BASE_BODY.size, _ENTRY: _ENTRY_HEAD.size, _HARD_STATE: _HARD_STATE_HEAD.size}
_TYPE_BYTE = re.compile(b"[\x01-\x03]")  # where a record's type byte could be
_ENTRY_TYPES = {int(t): t for t in EntryType}



class AppendFile(Protocol):
    def write(self, data: bytes) -> None: ...
    def truncate(self, size: int) -> None: ...  # durable after sync()
    def sync(self) -> None: ...
    def close(self) -> None: ...


class FileSystem(Protocol):
    """The few file operations storage needs. OSError means the operation failed."""

    def mkdirs(self, path: str) -> None: ...  # durable on return
    def open_append(self, path: str) -> AppendFile: ...  # the file must exist
    def read(self, path: str, size: int | None = None) -> bytes: ...  # whole file or prefix
    def write_atomic(self, path: str, parts: Iterable[bytes]) -> None: ...  # durable
    def exists(self, path: str) -> bool: ...
    def remove(self, path: str) -> None: ...  # durable at the next write_atomic
    def listdir(self, path: str) -> list[str]: ...


class OSFileSystem:
    """Real files. `write_atomic` = write tmp, fsync, rename, fsync the directory."""

    def mkdirs(self, path: str) -> None:
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
            fsync_dir(os.path.dirname(os.path.abspath(path)))

    def open_append(self, path: str) -> _OSFile:
        return _OSFile(os.open(path, os.O_WRONLY | os.O_APPEND))

    def read(self, path: str, size: int | None = None) -> bytes:
        with open(path, "rb") as f:
            return f.read() if size is None else f.read(size)

    def write_atomic(self, path: str, parts: Iterable[bytes]) -> None:
        tmp = path + ".tmp"
        file = _OSFile(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        try:
            for part in parts:
                file.write(part)
            file.sync()
        finally:
            file.close()
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def remove(self, path: str) -> None:
        os.remove(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))


class _OSFile:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def sync(self) -> None:
        # fdatasync also flushes the file size, which is all the metadata an append changes.
        (getattr(os, "fdatasync", None) or os.fsync)(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class Storage:
    """Durable hard state, log entries after the log's base, and the latest snapshot.

    Invariant: `first_index == log_base.index + 1 <= snapshot_meta.index + 1 <=
    last_index + 1` (the log holds the snapshot's last entry when its base is below it), and
    `entries()` holds exactly the indexes `first_index..last_index`, contiguous.
    """

    def __init__(self, path: str, fs: FileSystem | None = None) -> None:
        self._fs: FileSystem = fs if fs is not None else OSFileSystem()
        self._dir = path.rstrip("/") or "/"
        self._log_path = f"{self._dir}/{LOG_NAME}"
        self._snap_path = f"{self._dir}/{SNAPSHOT_NAME}"
        self.hard_state = HardState()
        self.snapshot_meta = SnapshotMeta()  # the latest snapshot
        self.log_base = SnapshotMeta()  # where the log starts: index, term, membership there
        self._entries: list[Entry] = []
        self._pending: list[bytes] = []  # encoded records not yet written
        self._dropped: list[tuple[int, bytes]] = []  # entries dropped that refer to payloads
        self._dirty = False  # written but not yet synced
        self._broken: str | None = None  # why this object refuses to work
        self._file: AppendFile | None = None
        try:
            self._open()
        except BaseException as exc:
            if self._file is not None:
                self._file.close()
            self._broken = "failed to open"
            if isinstance(exc, OSError):
                raise StorageError(f"cannot open the raft log in {self._dir}: {exc}") from exc
            raise

    # -- reading -----------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.log_base.index + 1

    @property
    def last_index(self) -> int:
        return self.log_base.index + len(self._entries)

    def entries(self) -> list[Entry]:
        """All entries after the log's base, in index order (a copy)."""
        return list(self._entries)

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or not yet there."""
        base = self.log_base.index
        if index == base:
            return self.log_base.term
        if base < index <= base + len(self._entries):
            return self._entries[index - base - 1].term
        return None

    def load_snapshot(self) -> Snapshot | None:
        self._check_usable()
        try:
            if not self._fs.exists(self._snap_path):
                return None
            return decode_snapshot(self._fs.read(self._snap_path), self._snap_path)
        except OSError as exc:
            raise self._fail("reading the snapshot", exc) from exc

    # -- writing -----------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Add entries after (or, on a conflict, in place of a suffix of) the log.

        Written by the next `sync`. Entries at or below the snapshot's index are already
        covered by it (committed, so the log's trailing entries before it never change)
        and skipped.
        """
        self._check_usable()
        base, covered = self.log_base.index, self.snapshot_meta.index
        if entries and entries[0].index <= covered:
            entries = entries[covered + 1 - entries[0].index :]
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index + 1:
            raise StorageError(f"append at index {first} leaves a gap after {self.last_index}")
        self._pending.extend(_encode_entries(entries, first))
        if first <= self.last_index:
            self._drop(self._entries[first - base - 1 :])  # durable at the next sync
            del self._entries[first - base - 1 :]  # §5.3: a conflict replaces the suffix
        self._entries.extend(entries)

    def take_dropped(self) -> list[tuple[int, bytes]]:
        """The entries (index, payload reference: storage/payloads.py) that left the log,
        durably, since the last call. Call after `sync`."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def _drop(self, entries: Sequence[Entry]) -> None:
        self._dropped.extend((e.index, e.data) for e in entries if is_ref(e.data))

    def set_hard_state(self, hs: HardState) -> None:
        """Record the hard state; written by the next `sync`."""
        self._check_usable()
        if hs != self.hard_state:
            self._pending.append(_hard_state_record(hs))
            self.hard_state = hs

    def sync(self) -> None:
        """Write everything appended or set so far, and make it durable with one fsync."""
        self._check_usable()
        assert self._file is not None
        try:
            if self._pending:
                batch = b"".join(self._pending)
                self._pending.clear()
                self._dirty = True
                self._file.write(batch)
            if self._dirty:
                self._file.sync()
                self._dirty = False
        except OSError as exc:
            raise self._fail("writing the raft log", exc) from exc

    def save_snapshot(self, snapshot: Snapshot, base: SnapshotMeta | None = None) -> None:
        """Make `snapshot` the latest one, durably, and drop the log it covers (§7).

        If the log has the snapshot's last entry (same index and term), the entries after
        `base` are kept (default: after the snapshot; `base` is an earlier entry, with the
        membership there, when the driver keeps trailing entries); otherwise the whole log is
        dropped. A snapshot older than the current one is ignored. Everything appended or set
        so far is durable on return too.
        """
        self._check_usable()
        meta = snapshot.meta
        if meta.index < self.snapshot_meta.index:
            return
        try:
            self._fs.write_atomic(self._snap_path, encode_snapshot(snapshot))
        except OSError as exc:
            raise self._fail("writing the snapshot", exc) from exc
        self.snapshot_meta = meta
        self._compact_to(meta, base)

    def close(self) -> None:
        """Sync what is pending (unless storage already failed) and release the file."""
        try:
            if self._broken is None:
                self.sync()
                self._broken = "closed"
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- internals ---------------------------------------------------------------------

    def _open(self) -> None:
        fs = self._fs
        fs.mkdirs(self._dir)
        for name in fs.listdir(self._dir):
            if name.endswith(".tmp"):
                fs.remove(f"{self._dir}/{name}")
        snapshot_meta = SnapshotMeta()
        if fs.exists(self._snap_path):
            snapshot_meta = read_snapshot_meta(fs.read, self._snap_path)
        elif not fs.exists(self._log_path):
            fs.write_atomic(self._log_path, [_base_record(SnapshotMeta())])
        if not fs.exists(self._log_path):
            raise StorageError(f"{self._log_path} is missing but a snapshot exists")
        data = fs.read(self._log_path)
        valid_end = self._replay(data)
        self._file = fs.open_append(self._log_path)
        if valid_end < len(data):  # a torn tail: drop it for good before appending after it
            self._file.truncate(valid_end)
            self._file.sync()
        self._reconcile(snapshot_meta)

    def _replay(self, data: bytes) -> int:
        """Load the log records into memory; return where the valid part ends.

        Sets `log_base`, which `_reconcile` then checks against the snapshot file.
        """
        view = memoryview(data)
        end = len(data)
        first = _read_record(data, view, 0)
        if first is None or data[8] != _BASE:
            raise StorageError(f"{self._log_path} does not start with a valid base record")
        self.log_base = _decode_base(data, 8, first, self._log_path)
        base = self.log_base.index
        entries = self._entries
        unpack_header, unpack_entry = _HEADER.unpack_from, _ENTRY_HEAD.unpack_from
        crc32, entry_types = zlib.crc32, _ENTRY_TYPES
        off = first
        while end - off > _HEADER.size:
            length, crc = unpack_header(data, off)
            start, stop = off + 8, off + 8 + length
            if length == 0 or stop > end or crc32(view[start:stop]) != crc:
                break
            kind = data[start]
            if length < _MIN_LENGTH.get(kind, 0):
                raise StorageError(f"malformed record of type {kind} at offset {off}")
            if kind == _ENTRY:
                _, term, index, etype = unpack_entry(data, start)
                last = base + len(entries)
                if not base < index <= last + 1:
                    raise StorageError(f"entry {index} out of place after {last} at {off}")
                if etype not in entry_types:
                    raise StorageError(f"entry {index} has unknown type {etype}")
                del entries[index - base - 1 :]
                entries.append(Entry(term, index, entry_types[etype], data[start + 18 : stop]))
            elif kind == _HARD_STATE:
                self.hard_state = _decode_hard_state(data, start, stop)
            else:
                raise StorageError(f"unexpected record of type {kind} at offset {off}")
            off = stop
        if off < end and _valid_record_after(data, view, off, base + 1, base + len(entries)):
            raise StorageError(
                f"{self._log_path} is corrupt at offset {off} (valid records follow, "
                "so this is not a torn tail); refusing to drop acknowledged entries"
            )
        return off

    def _reconcile(self, meta: SnapshotMeta) -> None:
        """Check the log's base against the snapshot file's meta.

        A snapshot the log does not hold (its last entry is neither the base nor stored)
        means a crash cut `save_snapshot` short between its two steps: finish it with the
        same rule. One older than the base cannot happen (the snapshot is written first):
        the entries in between would be lost.
        """
        base = self.log_base
        if meta.index < base.index:
            raise StorageError(
                f"the log starts after {base.index} but the snapshot only covers {meta.index}"
            )
        self.snapshot_meta = meta
        if (meta.index, meta.term) == (base.index, base.term):
            self.log_base = meta  # a log of format 1 does not record the membership
        elif self.term(meta.index) != meta.term or (base.index and not base.conf.members()):
            # (the latter: a base of format 1, with no membership: start at the snapshot's)
            self._compact_to(meta, None)
            return
        if self.hard_state.commit < meta.index:  # everything a snapshot holds is committed
            self.hard_state = dataclasses.replace(self.hard_state, commit=meta.index)

    def _compact_to(self, meta: SnapshotMeta, base: SnapshotMeta | None) -> None:
        """Rewrite the log to start at `base` (default `meta`, the snapshot), or at `meta`
        with nothing after it when the log does not hold the snapshot's last entry (§7);
        atomically, durable on return. Nothing to do when that is where the log starts."""
        assert self._file is not None
        keep: list[Entry] = []
        covered = meta.index
        if self.term(meta.index) == meta.term:
            if base is None or base.index >= meta.index:
                base = meta
            elif base.index <= self.log_base.index:
                base = self.log_base  # nothing before the base is left to keep
            if base == self.log_base and self.hard_state.commit >= covered:
                self.sync()
                return
            keep = self._entries[base.index - self.log_base.index :]
            meta = base
        hs = self.hard_state
        if hs.commit < covered:  # everything a snapshot holds is committed
            hs = dataclasses.replace(hs, commit=covered)
        parts = [_base_record(meta), _hard_state_record(hs)]
        if keep:
            parts.extend(_encode_entries(keep, meta.index + 1))
        try:
            self._file.close()
            self._file = None
            self._fs.write_atomic(self._log_path, parts)
            self._file = self._fs.open_append(self._log_path)
        except OSError as exc:
            raise self._fail("rewriting the raft log", exc) from exc
        self._pending.clear()  # all of it is in the new log
        self._dirty = False
        self._drop(self._entries[: len(self._entries) - len(keep)])
        self._entries = keep
        self.log_base = meta
        self.hard_state = hs

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StorageError(f"raft storage in {self._dir} is unusable: {self._broken}")

    def _fail(self, what: str, exc: OSError) -> StorageError:
        # After a failed write or fsync the kernel may have dropped dirty pages: what is on
        # disk is unknown, so this object never works again (the node must restart).
        self._broken = f"{what} failed: {exc}"
        return StorageError(f"{self._broken} ({self._dir})")


# -- log records ---------------------------------------------------------------------------


def _record(body: bytes) -> bytes:
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _base_record(base: SnapshotMeta) -> bytes:
    conf = encode_names(base.conf.voters) + encode_names(base.conf.learners)
    return _record(_BASE_BODY.pack(_BASE, FORMAT_VERSION, base.index, base.term) + conf)


def _hard_state_record(hs: HardState) -> bytes:
    vote = b"" if hs.vote is None else hs.vote.encode()
    head = _HARD_STATE_HEAD.pack(_HARD_STATE, hs.term, hs.commit, hs.vote is not None)
    return _record(head + vote)


def _encode_entries(entries: Sequence[Entry], first: int) -> list[bytes]:
    """Three parts per entry (header, fixed fields, data): one buffer once joined."""
    parts: list[bytes] = []
    add = parts.append
    pack_header, pack_head, crc32 = _HEADER.pack, _ENTRY_HEAD.pack, zlib.crc32
    index = first
    for e in entries:
        if e.index != index:
            raise StorageError(f"append: entry {e.index} where {index} was expected")
        index += 1
        data = e.data
        head = pack_head(_ENTRY, e.term, e.index, e.type)
        add(pack_header(len(data) + 18, crc32(data, crc32(head))))
        add(head)
        add(data)
    return parts


def _read_record(data: bytes, view: memoryview, off: int) -> int | None:
    """The end of the valid record at `off`, or None if there is none there."""
    if len(data) - off <= _HEADER.size:
        return None
    length, crc = _HEADER.unpack_from(data, off)
    stop = off + 8 + length
    if length < _MIN_LENGTH.get(data[off + 8], 1 << 32) or stop > len(data):
        return None
    return stop if zlib.crc32(view[off + 8 : stop]) == crc else None


def _valid_record_after(data: bytes, view: memoryview, off: int, first: int, last: int) -> bool:
    """Whether a valid record starts anywhere after `off` (it cannot be a torn tail then).

    The log so far holds entries first..last. A candidate must look like a record that
    could come next before its CRC is computed: an entry with an index from `first` to
    one past what the bytes in between could hold, a small hard state, a base record.
    So random bytes (say, the torn half of a large entry) cost one cheap test each, not
    a CRC over megabytes.
    """
    end = len(data)
    top = last + 1 + (end - off) // (_HEADER.size + _ENTRY_HEAD.size)
    for match in _TYPE_BYTE.finditer(data, off + 1 + _HEADER.size):
        p = match.start() - _HEADER.size
        length, crc = _HEADER.unpack_from(data, p)
        kind = data[p + 8]
        if kind == _ENTRY:
            if length < _ENTRY_HEAD.size or p + 8 + length > end:
                continue
            index = _ENTRY_HEAD.unpack_from(data, p + 8)[2]
            if not first <= index <= top:
                continue
        elif kind == _HARD_STATE:
            if not _HARD_STATE_HEAD.size <= length <= _HARD_STATE_HEAD.size + 4096:
                continue
        elif length < _BASE_BODY.size or p + 8 + length > end:
            continue
        if _read_record(data, view, p) is not None:
            return True
    return False


def _decode_base(data: bytes, start: int, stop: int, path: str) -> SnapshotMeta:
    _, version, index, term = _BASE_BODY.unpack_from(data, start)
    if version == 1 and stop - start == _BASE_BODY.size:
        return SnapshotMeta(index, term)  # no membership: the snapshot's (see _reconcile)
    if version != FORMAT_VERSION:
        raise StorageError(f"{path}: unknown log format version {version}")
    try:
        body = data[: stop]
        voters, off = decode_names(body, start + _BASE_BODY.size)
        learners, off = decode_names(body, off)
    except struct.error as exc:
        raise StorageError(f"{path}: corrupt base record ({exc})") from exc
    if off != stop:
        raise StorageError(f"{path}: corrupt base record")
    return SnapshotMeta(index, term, ConfState(voters, learners))


def _decode_hard_state(data: bytes, start: int, stop: int) -> HardState:
    _, term, commit, has_vote = _HARD_STATE_HEAD.unpack_from(data, start)
    vote = data[start + _HARD_STATE_HEAD.size : stop].decode() if has_vote else None
    return HardState(term=term, vote=vote, commit=commit)
