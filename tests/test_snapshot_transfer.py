"""InstallSnapshot's state transfer: a follower fetches a snapshot's state in chunks,
resumes a cut download, checks the checksum before installing (raftsql/node/snapshots.py,
raftsql/storage/snapshots.py)."""

from __future__ import annotations

import asyncio
import os
import zlib

import pytest

from raftsql.errors import StorageError, TransportError
from raftsql.node.snapshots import Header, SnapshotReceiver, sent_from
from raftsql.raft.messages import Message, MessageType, Snapshot, SnapshotMeta
from raftsql.storage.snapshots import SnapshotFiles, checksum

STATE = os.urandom(300_000)


def snapshot_message(state: bytes = STATE, index: int = 7, term: int = 2) -> Message:
    header = Header({"n1": ["10.0.0.9:4002", ""]}, len(state), zlib.crc32(state))
    m = Message(MessageType.SNAPSHOT, "n2", "n1", term=term,
                snapshot=Snapshot(SnapshotMeta(index, term), header.encode()))
    return sent_from(m, "10.0.0.1:4002")  # as the sender's node does


class Leader:
    """A fetch() serving `state`, cut once after `cut_at` bytes, corrupting it if asked."""

    def __init__(self, state: bytes, cut_at: int | None = None, corrupt_once: bool = False,
                 gone: bool = False) -> None:
        self.state, self.cut_at, self.corrupt_once, self.gone = state, cut_at, corrupt_once, gone
        self.offsets: list[int] = []

    async def fetch(self, raft_addr: str, index: int, term: int, offset: int, out) -> None:
        assert raft_addr == "10.0.0.1:4002"  # the sender's, not the snapshot maker's
        self.offsets.append(offset)
        if self.gone:
            raise TransportError("no such snapshot", 404)
        data = self.state[offset:]
        if self.corrupt_once:
            self.corrupt_once = False
            data = bytes([data[0] ^ 1]) + data[1:]
        if self.cut_at is not None and offset < self.cut_at:
            out.write(data[: self.cut_at - offset])
            self.cut_at = None
            raise TransportError("connection reset")
        for i in range(0, len(data), 65536):
            out.write(data[i : i + 65536])
            await asyncio.sleep(0)


async def receive(tmp_path, leader: Leader, m: Message, timeout: float = 10.0):
    files = SnapshotFiles(str(tmp_path / "snapshots"))
    delivered: list[Message] = []
    receiver = SnapshotReceiver(files, leader.fetch, delivered.append, "n2")
    assert receiver.admit(m) is False  # held back while its state is fetched
    assert receiver.admit(m) is False  # a duplicate does not start a second download
    async with asyncio.timeout(timeout):
        while not delivered and not (receiver._task and receiver._task.done()):
            await asyncio.sleep(0.01)
    return files, receiver, delivered


async def test_a_state_is_fetched_checked_installed_and_then_the_message_delivered(tmp_path):
    m = snapshot_message()
    files, receiver, delivered = await receive(tmp_path, Leader(STATE), m)
    assert delivered == [m] and receiver.received == 1
    with open(files.path(7, 2), "rb") as f:
        assert f.read() == STATE
    assert not os.path.exists(files.partial(7, 2))
    assert receiver.admit(m) is True  # here now: the core may have it


async def test_a_cut_download_resumes_where_it_stopped(tmp_path):
    leader = Leader(STATE, cut_at=100_000)
    files, receiver, delivered = await receive(tmp_path, leader, snapshot_message())
    assert delivered and leader.offsets == [0, 100_000]
    assert checksum(files.path(7, 2)) == (len(STATE), zlib.crc32(STATE))


async def test_a_download_left_by_a_restart_is_resumed(tmp_path):
    files = SnapshotFiles(str(tmp_path / "snapshots"))
    with open(files.partial(7, 2), "wb") as f:
        f.write(STATE[:123_456])
    leader = Leader(STATE)
    _, _, delivered = await receive(tmp_path, leader, snapshot_message())
    assert delivered and leader.offsets == [123_456]


async def test_a_wrong_checksum_fetches_the_state_again(tmp_path):
    leader = Leader(STATE, corrupt_once=True)
    files, _, delivered = await receive(tmp_path, leader, snapshot_message())
    assert delivered and leader.offsets == [0, 0]
    with open(files.path(7, 2), "rb") as f:
        assert f.read() == STATE


async def test_a_snapshot_the_leader_no_longer_has_is_given_up(tmp_path):
    files, receiver, delivered = await receive(tmp_path, Leader(STATE, gone=True),
                                               snapshot_message())
    assert delivered == [] and receiver.received == 0 and not files.has(7, 2)


async def test_a_newer_snapshot_replaces_an_older_download(tmp_path):
    files = SnapshotFiles(str(tmp_path / "snapshots"))
    delivered: list[Message] = []
    slow = asyncio.Event()

    async def fetch(raft_addr, index, term, offset, out):
        if index == 7:
            await slow.wait()  # never set: the older download hangs
        out.write(STATE)

    receiver = SnapshotReceiver(files, fetch, delivered.append, "n2")
    old, new = snapshot_message(index=7), snapshot_message(index=9)
    assert not receiver.admit(old)
    await asyncio.sleep(0.01)
    assert not receiver.admit(new)
    assert not receiver.admit(old)  # older than the download under way: ignored
    async with asyncio.timeout(5):
        while not delivered:
            await asyncio.sleep(0.01)
    assert delivered == [new] and files.has(9, 2) and not files.has(7, 2)
    assert not os.path.exists(files.partial(7, 2))


def test_prune_keeps_the_saved_snapshot_and_newer_files(tmp_path):
    files = SnapshotFiles(str(tmp_path))
    for name in ("3-1.db", "5-1.db", "5-1.part", "4-1.part", "4-1.new", "8-2.part", "8-2.new",
                 "9-2.db", "x.txt"):
        (tmp_path / name).write_bytes(b"s")
    files.prune(5, 1)
    assert sorted(os.listdir(tmp_path)) == ["5-1.db", "8-2.new", "8-2.part", "9-2.db", "x.txt"]
    files.discard_partials(keep=None)  # a new download: the node's own snapshot stays
    assert sorted(os.listdir(tmp_path)) == ["5-1.db", "8-2.new", "9-2.db", "x.txt"]


def test_a_header_of_another_version_is_refused_clearly():
    with pytest.raises(StorageError, match="unsupported version 1"):
        Header.decode(b'{"v":1,"peers":{}}', 4)
    with pytest.raises(StorageError, match="unreadable"):
        Header.decode(b"\x00\x00\x00\x05hello", 4)


async def test_the_same_snapshot_resent_by_another_node_moves_the_download_there(tmp_path):
    files = SnapshotFiles(str(tmp_path / "snapshots"))
    delivered: list[Message] = []
    asked: list[str] = []

    async def fetch(raft_addr, index, term, offset, out):
        asked.append(raft_addr)
        if raft_addr == "10.0.0.1:4002":  # the old leader, gone
            raise TransportError("connection refused")
        out.write(STATE)

    receiver = SnapshotReceiver(files, fetch, delivered.append, "n2")
    m = snapshot_message()
    assert not receiver.admit(m)
    await asyncio.sleep(0.05)
    assert not receiver.admit(sent_from(m, "10.0.0.3:4002"))  # a new leader holds it too
    async with asyncio.timeout(5):
        while not delivered:
            await asyncio.sleep(0.01)
    assert asked[0] == "10.0.0.1:4002" and asked[-1] == "10.0.0.3:4002"


async def test_another_nodes_copy_of_the_same_snapshot_is_fetched_afresh(tmp_path):
    """Two nodes' files of one snapshot hold the same rows, maybe not the same bytes."""
    files = SnapshotFiles(str(tmp_path / "snapshots"))
    delivered: list[Message] = []
    theirs = os.urandom(200_000)
    hold = asyncio.Event()

    async def fetch(raft_addr, index, term, offset, out):
        if raft_addr == "10.0.0.1:4002":
            out.write(STATE[:50_000])
            await hold.wait()  # never set: the old leader hangs
        out.write(theirs[offset:])

    receiver = SnapshotReceiver(files, fetch, delivered.append, "n2")
    assert not receiver.admit(snapshot_message())
    await asyncio.sleep(0.05)
    other = sent_from(snapshot_message(theirs), "10.0.0.3:4002")
    assert not receiver.admit(other)
    async with asyncio.timeout(5):
        while not delivered:
            await asyncio.sleep(0.01)
    with open(files.path(7, 2), "rb") as f:
        assert f.read() == theirs


def test_a_snapshot_of_the_first_format_is_moved_to_its_file(tmp_path):
    import orjson

    from raftsql.node.snapshots import upgrade_stored
    from raftsql.raft.messages import Entry
    from raftsql.storage import Storage

    storage = Storage(str(tmp_path / "raft"))
    storage.append([Entry(1, i) for i in range(1, 6)])
    storage.sync()
    head = orjson.dumps({"v": 1, "peers": {"n2": ["h:2", "http://h:1"]}})
    storage.save_snapshot(Snapshot(SnapshotMeta(5, 1), len(head).to_bytes(4, "big") + head + STATE))
    files = SnapshotFiles(str(tmp_path / "snapshots"))
    upgrade_stored(storage, files)
    with open(files.path(5, 1), "rb") as f:
        assert f.read() == STATE
    header = Header.decode(storage.load_snapshot().data, 5)
    assert (header.size, header.crc, header.peers) == (len(STATE), zlib.crc32(STATE),
                                                       {"n2": ["h:2", "http://h:1"]})
    upgrade_stored(storage, files)  # once only: now it has its file
    storage.close()
