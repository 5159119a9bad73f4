"""The snapshot file beside the Raft log (`DATA_DIR/raft/snapshot`): the latest snapshot's
meta and its small data, each with a CRC. Also the encoding of a membership's node names,
which the log's base record shares.

    u8[8] magic, u32 meta length, u32 meta crc
    meta: u64 index, u64 term, u64 data length, u32 data crc, voters, learners
    data
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence

from raftsql.errors import StorageError
from raftsql.raft.messages import ConfState, Snapshot, SnapshotMeta

_SNAP_MAGIC = b"RSQLSNP1"
_SNAP_HEADER = struct.Struct("<8sII")  # magic, meta length, meta crc
_SNAP_META = struct.Struct("<QQQI")  # index, term, data length, data crc; then the conf


def encode_names(names: Sequence[str]) -> bytes:
    out = [struct.pack("<H", len(names))]
    for name in names:
        raw = name.encode()
        out.append(struct.pack("<H", len(raw)) + raw)
    return b"".join(out)


def decode_names(data: bytes, off: int) -> tuple[tuple[str, ...], int]:
    (count,) = struct.unpack_from("<H", data, off)
    off += 2
    names = []
    for _ in range(count):
        (size,) = struct.unpack_from("<H", data, off)
        names.append(data[off + 2 : off + 2 + size].decode())
        off += 2 + size
    return tuple(names), off


def encode_snapshot(snapshot: Snapshot) -> list[bytes]:
    meta, data = snapshot.meta, snapshot.data
    body = _SNAP_META.pack(meta.index, meta.term, len(data), zlib.crc32(data))
    body += encode_names(meta.conf.voters) + encode_names(meta.conf.learners)
    return [_SNAP_HEADER.pack(_SNAP_MAGIC, len(body), zlib.crc32(body)), body, data]


def _parse_meta(head: bytes, path: str) -> tuple[SnapshotMeta, int, int, int]:
    """(meta, offset of the data, data length, data crc) from the start of the file."""
    try:
        magic, size, crc = _SNAP_HEADER.unpack_from(head, 0)
        body = head[_SNAP_HEADER.size : _SNAP_HEADER.size + size]
        if magic != _SNAP_MAGIC or len(body) != size or zlib.crc32(body) != crc:
            raise ValueError("bad magic or checksum")
        index, term, data_len, data_crc = _SNAP_META.unpack_from(body, 0)
        voters, off = decode_names(body, _SNAP_META.size)
        learners, _ = decode_names(body, off)
    except (struct.error, ValueError) as exc:
        raise StorageError(f"{path}: corrupt snapshot header ({exc})") from exc
    meta = SnapshotMeta(index=index, term=term, conf=ConfState(voters, learners))
    return meta, _SNAP_HEADER.size + size, data_len, data_crc


def read_snapshot_meta(read: Callable[[str, int], bytes], path: str) -> SnapshotMeta:
    """The meta of the snapshot file at `path`, reading only its head (`read(path, size)`)."""
    head = read(path, _SNAP_HEADER.size)
    size = _SNAP_HEADER.unpack_from(head, 0)[1] if len(head) == _SNAP_HEADER.size else 0
    return _parse_meta(read(path, _SNAP_HEADER.size + size), path)[0]


def decode_snapshot(raw: bytes, path: str) -> Snapshot:
    meta, off, data_len, data_crc = _parse_meta(raw, path)
    data = raw[off:]
    if len(data) != data_len or zlib.crc32(data) != data_crc:
        raise StorageError(f"{path}: corrupt snapshot data")
    return Snapshot(meta, data)
