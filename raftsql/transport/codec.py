"""The wire format of Raft messages between nodes: pure, independent of the transport.

Every frame starts with two bytes, ``version`` then ``kind``; a frame of another version is
refused with a ValueError that says so (no silent reinterpretation across upgrades).

``KIND_BATCH``: a batch of messages::

    u8 version | u8 kind | u32 header length H (big-endian) | H bytes orjson header | payload

The header is a JSON array with one positional array per message (positional rather than
keyed: this is the hot path, and the version byte covers any future change of shape)::

    [type, to, frm, term, log_term, index, commit, reject, reject_hint, len(context),
     [term, index, type, len(data), ...] (four ints per entry),
     null | [snapshot index, term, voters, learners, len(data)]]

The payload is the raw bytes the lengths refer to, message after message, each message's
context, then its entries' data, then its snapshot's data: entry data is never
base64-encoded or copied into JSON.

``KIND_CHUNK``: one piece of a large frame, ``u8 version | u8 kind | u8 last | bytes``;
the concatenated pieces form one complete frame (`split_frame` / `FrameAssembler`).

``KIND_ACK``: ``u8 version | u8 kind | u64 count``, the receiver's cumulative count of
frames it has delivered on this stream.

Decoding is strict: anything malformed, truncated or hostile raises ValueError and nothing
else, so a bad peer can never crash a node.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from raftsql.raft.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

VERSION = 1
KIND_BATCH = 0
KIND_CHUNK = 1
KIND_ACK = 2

_BATCH_PREFIX = struct.Struct(">BBI")
_ACK = struct.Struct(">BBQ")
_CHUNK_MORE = bytes((VERSION, KIND_CHUNK, 0))
_CHUNK_LAST = bytes((VERSION, KIND_CHUNK, 1))
CHUNK_OVERHEAD = len(_CHUNK_LAST)
_FIELDS = 12  # items per message in the header
# Dict lookups: several times cheaper than calling the enum, and this is per entry.
# A missing key is a KeyError, which decode_batch reports as ValueError.
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_ENTRY_TYPES = {t.value: t for t in EntryType}


# ---- encoding ---------------------------------------------------------------------


def encode_batch(messages: Sequence[Message]) -> bytes:
    """One frame carrying `messages` in order (an empty batch is a valid keep-alive)."""
    header: list[Any] = []
    parts: list[bytes] = [b"", b""]  # prefix and header, filled in last
    append = parts.append
    for m in messages:
        append(m.context)
        flat: list[int] = []
        for e in m.entries:
            flat += (e.term, e.index, e.type, len(e.data))
            append(e.data)
        snap = m.snapshot
        if snap is None:
            snap_header = None
        else:
            meta = snap.meta
            snap_header = [meta.index, meta.term, meta.conf.voters, meta.conf.learners,
                           len(snap.data)]
            append(snap.data)
        header.append([m.type, m.to, m.frm, m.term, m.log_term, m.index, m.commit, m.reject,
                       m.reject_hint, len(m.context), flat, snap_header])
    head = orjson.dumps(header)
    parts[0] = _BATCH_PREFIX.pack(VERSION, KIND_BATCH, len(head))
    parts[1] = head
    return b"".join(parts)


def split_frame(frame: bytes, chunk_size: int) -> Iterator[bytes]:
    """`frame` itself when it fits in `chunk_size`, else chunk frames of `chunk_size` bytes."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    size = len(frame)
    if size <= chunk_size:
        yield frame
        return
    view = memoryview(frame)
    for start in range(0, size, chunk_size):
        stop = start + chunk_size
        yield (_CHUNK_LAST if stop >= size else _CHUNK_MORE) + view[start:stop]


def encode_ack(count: int) -> bytes:
    return _ACK.pack(VERSION, KIND_ACK, count)


# ---- decoding ---------------------------------------------------------------------


def decode_batch(data: bytes) -> list[Message]:
    """The messages of a batch frame; ValueError (only) when the frame is not one."""
    try:
        return _decode_batch(data if type(data) is bytes else bytes(data))
    except ValueError:
        raise
    except Exception as exc:  # a peer must never crash a node: one error type, always
        raise ValueError(f"malformed raft frame: {exc!r}") from exc


def decode_ack(data: bytes) -> int:
    """The cumulative count carried by an ack frame; ValueError when `data` is not one."""
    _check_version(data)
    if len(data) != _ACK.size or data[1] != KIND_ACK:
        raise ValueError(f"malformed raft ack frame ({len(data)} bytes)")
    return int(_ACK.unpack(data)[2])


class FrameAssembler:
    """Reassembles chunked frames of one stream; whole frames pass through unchanged.

    `feed` returns a complete frame, or None while a chunked frame is incomplete. At most
    `max_size` bytes are buffered: a larger chunked frame raises ValueError.
    """

    __slots__ = ("_max_size", "_parts", "_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> int:
        """Bytes buffered of an incomplete chunked frame."""
        return self._size

    def feed(self, data: bytes) -> bytes | None:
        _check_version(data)
        kind = data[1]
        if kind == KIND_BATCH:
            if self._parts:
                self._reset()
                raise ValueError("raft batch frame arrived inside a chunked frame")
            return data
        if kind != KIND_CHUNK or len(data) <= CHUNK_OVERHEAD or data[2] > 1:
            self._reset()
            raise ValueError(f"malformed raft frame (kind {kind}, {len(data)} bytes)")
        self._size += len(data) - CHUNK_OVERHEAD
        if self._size > self._max_size:
            self._reset()
            raise ValueError(f"chunked raft frame exceeds {self._max_size} bytes")
        self._parts.append(data[CHUNK_OVERHEAD:])
        if not data[2]:
            return None
        frame = b"".join(self._parts)
        self._reset()
        return frame

    def _reset(self) -> None:
        self._parts = []
        self._size = 0


def _check_version(data: bytes) -> None:
    if len(data) < 2:
        raise ValueError(f"raft frame truncated ({len(data)} bytes)")
    if data[0] != VERSION:
        raise ValueError(
            f"unsupported raft frame version {data[0]} (this node speaks version {VERSION}): "
            "are all nodes running the same raftsql release?"
        )


def _decode_batch(data: bytes) -> list[Message]:
    size = len(data)
    _check_version(data)
    if size < _BATCH_PREFIX.size:
        raise ValueError(f"raft frame truncated ({size} bytes)")
    _, kind, head_len = _BATCH_PREFIX.unpack_from(data)
    if kind != KIND_BATCH:
        raise ValueError(f"expected a raft batch frame, got kind {kind}")
    pos = _BATCH_PREFIX.size + head_len
    if pos > size:
        raise ValueError("raft frame truncated inside its header")
    header = orjson.loads(memoryview(data)[_BATCH_PREFIX.size : pos])
    if type(header) is not list:
        raise ValueError("raft frame header is not a list")
    messages = []
    for item in header:
        message, pos = _decode_message(item, data, pos)
        messages.append(message)
    if pos != size:
        raise ValueError(f"raft frame has {size - pos} trailing bytes")
    return messages


def _decode_message(item: Any, data: bytes, pos: int) -> tuple[Message, int]:
    if type(item) is not list or len(item) != _FIELDS:
        raise ValueError("malformed message in raft frame header")
    kind, to, frm, term, log_term, index, commit, reject, hint, ctx_len, flat, snap = item
    for n in (term, log_term, index, commit, hint, ctx_len):
        if type(n) is not int or n < 0:
            raise ValueError("malformed number in raft message")
    if type(kind) is not int or type(to) is not str or type(frm) is not str:
        raise ValueError("malformed raft message type or node id")
    if type(reject) is not bool:
        raise ValueError("malformed raft message reject flag")
    context, pos = _take(data, pos, ctx_len)
    entries, pos = _decode_entries(flat, data, pos)
    snapshot, pos = (None, pos) if snap is None else _decode_snapshot(snap, data, pos)
    message = Message(_MESSAGE_TYPES[kind], to, frm, term, log_term, index, entries, commit,
                      reject, hint, snapshot, context)
    return message, pos


def _decode_entries(flat: Any, data: bytes, pos: int) -> tuple[tuple[Entry, ...], int]:
    if type(flat) is not list or len(flat) % 4:
        raise ValueError("malformed entries in raft message")
    entries = []
    it = iter(flat)
    for term, index, kind, length in zip(it, it, it, it, strict=True):
        if (type(term) is not int or type(index) is not int or type(kind) is not int
                or type(length) is not int or term < 0 or index < 0 or length < 0):
            raise ValueError("malformed entry in raft message")
        end = pos + length
        if end > len(data):
            raise ValueError("raft frame truncated inside entry data")
        entries.append(Entry(term, index, _ENTRY_TYPES[kind], data[pos:end]))
        pos = end
    return tuple(entries), pos


def _decode_snapshot(snap: Any, data: bytes, pos: int) -> tuple[Snapshot, int]:
    if type(snap) is not list or len(snap) != 5:
        raise ValueError("malformed snapshot in raft message")
    index, term, voters, learners, length = snap
    for n in (index, term, length):
        if type(n) is not int or n < 0:
            raise ValueError("malformed number in raft snapshot")
    conf = ConfState(_node_ids(voters), _node_ids(learners))
    payload, pos = _take(data, pos, length)
    return Snapshot(SnapshotMeta(index, term, conf), payload), pos


def _node_ids(value: Any) -> tuple[str, ...]:
    if type(value) is not list or any(type(v) is not str for v in value):
        raise ValueError("malformed node id list in raft snapshot")
    return tuple(value)


def _take(data: bytes, pos: int, length: int) -> tuple[bytes, int]:
    end = pos + length
    if end > len(data):
        raise ValueError("raft frame truncated inside its payload")
    return data[pos:end], end
