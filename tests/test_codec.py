"""The peer wire format: round trips, and hostile input only ever raising ValueError."""

from __future__ import annotations

import contextlib
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftsql.raft.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from raftsql.transport.codec import (
    CHUNK_OVERHEAD,
    VERSION,
    FrameAssembler,
    decode_ack,
    decode_batch,
    encode_ack,
    encode_batch,
    split_frame,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
node_ids = st.text(max_size=8)
blobs = st.binary(max_size=64)
entries = st.builds(Entry, u64, u64, st.sampled_from(EntryType), blobs)
snapshots = st.builds(
    Snapshot,
    st.builds(SnapshotMeta, u64, u64,
              st.builds(ConfState, st.lists(node_ids, max_size=4).map(tuple),
                        st.lists(node_ids, max_size=4).map(tuple))),
    blobs,
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType), to=node_ids, frm=node_ids, term=u64, log_term=u64,
    index=u64, entries=st.lists(entries, max_size=5).map(tuple), commit=u64,
    reject=st.booleans(), reject_hint=u64, snapshot=st.none() | snapshots, context=blobs,
)
batches = st.lists(messages, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=30,
)


def only_value_errors(decode, data):
    with contextlib.suppress(ValueError):
        decode(data)


@given(batches)
def test_round_trip(batch):
    assert decode_batch(encode_batch(batch)) == batch


@given(batches)
def test_decoded_types_are_exact(batch):
    for got in decode_batch(encode_batch(batch)):
        assert type(got.type) is MessageType and type(got.context) is bytes
        assert all(type(e.type) is EntryType and type(e.data) is bytes for e in got.entries)


def test_entry_data_travels_raw_not_base64():
    data = bytes(range(256)) * 64
    frame = encode_batch([Message(MessageType.APPEND, "b", "a", entries=(Entry(1, 1, data=data),))])
    assert data in frame
    assert len(frame) < len(data) + 100


def test_empty_batch_is_a_valid_frame():
    assert decode_batch(encode_batch([])) == []


def test_unknown_version_is_refused_clearly():
    frame = bytearray(encode_batch([Message(MessageType.HEARTBEAT, "b", "a")]))
    frame[0] = VERSION + 1
    with pytest.raises(ValueError, match="unsupported raft frame version"):
        decode_batch(bytes(frame))
    with pytest.raises(ValueError, match="unsupported raft frame version"):
        FrameAssembler(1 << 20).feed(bytes(frame))


@given(st.binary(max_size=300))
def test_garbage_only_raises_value_error(data):
    only_value_errors(decode_batch, data)
    only_value_errors(decode_ack, data)
    only_value_errors(FrameAssembler(100).feed, data)


@given(st.binary(max_size=300))
def test_garbage_behind_a_valid_prefix_only_raises_value_error(data):
    only_value_errors(decode_batch, bytes((VERSION, 0)) + data)
    only_value_errors(decode_batch, struct.pack(">BBI", VERSION, 0, len(data)) + data)


@given(batches.filter(bool), st.data())
def test_truncated_frames_are_refused(batch, data):
    frame = encode_batch(batch)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(ValueError):
        decode_batch(frame[:cut])


@given(batches, st.data())
def test_mutated_frames_only_raise_value_error(batch, data):
    frame = bytearray(encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    only_value_errors(decode_batch, bytes(frame))
    only_value_errors(decode_batch, bytes(frame) + data.draw(st.binary(max_size=8)))


@given(json_values, st.binary(max_size=64))
def test_hostile_headers_only_raise_value_error(header, payload):
    head = orjson.dumps(header)
    only_value_errors(decode_batch, struct.pack(">BBI", VERSION, 0, len(head)) + head + payload)


@settings(max_examples=300)
@given(messages, st.data())
def test_a_wrong_field_in_a_valid_header_only_raises_value_error(message, data):
    frame = encode_batch([message])
    head_len = struct.unpack_from(">I", frame, 2)[0]
    header = orjson.loads(frame[6 : 6 + head_len])
    fields = header[0]
    at = data.draw(st.integers(0, len(fields) - 1))
    fields[at] = data.draw(json_values)
    head = orjson.dumps(header)
    payload = frame[6 + head_len :]
    only_value_errors(decode_batch, struct.pack(">BBI", VERSION, 0, len(head)) + head + payload)


def test_deeply_nested_header_is_a_value_error():
    head = b"[" * 5000 + b"]" * 5000
    with pytest.raises(ValueError):
        decode_batch(struct.pack(">BBI", VERSION, 0, len(head)) + head)


# ---- chunks and acks ------------------------------------------------------------------


@given(st.binary(min_size=2, max_size=2000), st.integers(1, 300))
def test_split_frames_reassemble(payload, chunk_size):
    frame = bytes((VERSION, 0)) + payload  # the assembler passes batch frames through
    parts = list(split_frame(frame, chunk_size))
    if len(frame) <= chunk_size:
        assert parts == [frame]
    else:
        assert all(len(p) <= chunk_size + CHUNK_OVERHEAD for p in parts)
    assembler = FrameAssembler(len(frame))
    out = [assembler.feed(p) for p in parts]
    assert out[-1] == frame and all(o is None for o in out[:-1])
    assert assembler.pending == 0


def test_chunked_frame_over_the_limit_is_refused():
    frame = encode_batch([Message(MessageType.SNAPSHOT, "b", "a",
                                  snapshot=Snapshot(SnapshotMeta(1, 1), b"x" * 1000))])
    assembler = FrameAssembler(500)
    with pytest.raises(ValueError, match="exceeds"):
        for part in split_frame(frame, 100):
            assembler.feed(part)
    assert assembler.pending == 0


def test_batch_inside_a_chunked_frame_is_refused():
    frame = encode_batch([Message(MessageType.APPEND, "b", "a", context=b"y" * 300)])
    first = next(split_frame(frame, 100))
    assembler = FrameAssembler(1 << 20)
    assert assembler.feed(first) is None
    with pytest.raises(ValueError):
        assembler.feed(encode_batch([]))


def test_a_chunk_that_is_not_a_batch_does_not_decode():
    with pytest.raises(ValueError):
        decode_batch(next(split_frame(b"\x01\x00" + b"z" * 50, 10)))


@given(u64)
def test_ack_round_trip(count):
    assert decode_ack(encode_ack(count)) == count


def test_ack_is_not_a_batch():
    with pytest.raises(ValueError):
        decode_batch(encode_ack(3))
    with pytest.raises(ValueError):
        decode_ack(encode_batch([]))
