"""Large entries' data beside the log (raftsql/storage/payloads.py) and the Storage's report
of the references that left the log."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from raftsql.errors import StorageError
from raftsql.node import applier
from raftsql.node.payloads import Proposing
from raftsql.raft.messages import Entry, Message, MessageType, Snapshot, SnapshotMeta
from raftsql.storage import Storage
from raftsql.storage.payloads import REF_BYTES, Payloads, is_ref, is_wire, size


@pytest.fixture
def payloads(tmp_path) -> Payloads:
    p = Payloads(str(tmp_path / "payloads"))
    p.open([])
    return p


def test_the_log_holds_a_reference_and_the_data_comes_back_checked(payloads, tmp_path):
    data = os.urandom(100_000)
    ref = payloads.detach(data)
    assert is_ref(ref) and len(ref) == REF_BYTES
    assert size(Entry(1, 5, data=ref)) == len(data)
    assert payloads.read(ref) == data
    [name] = os.listdir(tmp_path / "payloads")
    with open(tmp_path / "payloads" / name, "r+b") as f:
        f.write(b"X")  # damaged on disk
    with pytest.raises(StorageError, match="damaged"):
        payloads.read(ref)
    os.remove(tmp_path / "payloads" / name)
    with pytest.raises(StorageError, match="payload"):
        payloads.read(ref)


def test_a_command_may_not_look_like_a_reference(payloads):
    with pytest.raises(ValueError):
        payloads.detach(b"\0P" + b"x" * 100_000)


def test_what_is_sent_carries_the_data_and_lands_as_the_same_reference(payloads, tmp_path):
    data = os.urandom(70_000)
    ref = payloads.detach(data)
    m = Message(MessageType.APPEND, "b", "a", 3, entries=(Entry(3, 7, data=b"small"),
                                                          Entry(3, 8, data=ref)))
    sent = payloads.attach(m)
    assert sent.entries[0].data == b"small"
    assert is_wire(sent.entries[1].data) and sent.entries[1].data == ref + data
    other = Payloads(str(tmp_path / "other"))
    other.open([])
    landed = other.land(sent.entries)
    assert [e.data for e in landed] == [b"small", ref]
    assert other.read(ref) == data
    heartbeat = Message(MessageType.HEARTBEAT, "b", "a", 3)
    assert payloads.attach(heartbeat) is heartbeat


def test_data_that_does_not_match_its_reference_is_refused(payloads, tmp_path):
    ref = payloads.detach(os.urandom(70_000))
    other = Payloads(str(tmp_path / "other"))
    other.open([])
    with pytest.raises(ValueError, match="does not match"):
        other.land([Entry(1, 1, data=ref + os.urandom(70_000))])
    assert os.listdir(tmp_path / "other") == []


def test_at_start_files_no_entry_refers_to_are_removed(payloads, tmp_path):
    kept = payloads.detach(os.urandom(70_000))
    payloads.detach(os.urandom(70_000))  # proposed, never logged
    reopened = Payloads(str(tmp_path / "payloads"))
    assert reopened.open([Entry(1, 1, data=kept), Entry(1, 2, data=b"x")]) == 1
    assert reopened.read(kept)
    assert len(os.listdir(tmp_path / "payloads")) == 1


def test_storage_reports_the_references_that_left_the_log(payloads, tmp_path):
    refs = [payloads.detach(os.urandom(70_000)) for _ in range(4)]
    storage = Storage(str(tmp_path / "raft"))
    storage.append([Entry(1, i + 1, data=refs[i]) for i in range(4)])
    storage.sync()
    assert storage.take_dropped() == []
    storage.append([Entry(2, 4, data=b"a newer leader's entry")])  # replaces entry 4
    storage.sync()
    assert storage.take_dropped() == [(4, refs[3])]
    storage.save_snapshot(Snapshot(SnapshotMeta(3, 1)), SnapshotMeta(1, 1))  # keeps 2 and 3
    assert storage.take_dropped() == [(1, refs[0])]
    storage.save_snapshot(Snapshot(SnapshotMeta(4, 2)))
    assert storage.take_dropped() == [(2, refs[1]), (3, refs[2])]
    assert storage.take_dropped() == []
    storage.close()


def test_a_file_goes_once_its_entry_left_the_log_and_was_applied_past(payloads):
    """A follower that receives a snapshot drops entries the apply thread may still have
    queued before it: their data stays until they are applied."""
    refs = [payloads.detach(os.urandom(70_000)) for _ in range(3)]
    payloads.applied(10)
    payloads.forget([(9, refs[0]), (11, refs[1]), (12, refs[2])])
    assert [payloads.has(ref) for ref in refs] == [False, True, True]
    payloads.applied(11)
    assert [payloads.has(ref) for ref in refs] == [False, False, True]
    payloads.applied(20)
    assert not payloads.has(refs[2])


def test_applying_reads_the_data_a_few_megabytes_at_a_time(payloads, monkeypatch):
    """The committed entries handed over at once may be many chunks of a load: the apply
    thread reads them for one apply() call up to APPLY_BYTES at a time."""
    monkeypatch.setattr(applier, "APPLY_BYTES", 250_000)
    data = [os.urandom(100_000) for _ in range(5)]
    entries = [Entry(1, 1, data=b"")]  # the leader's no-op: no command
    entries += [Entry(1, 2 + i, data=payloads.detach(d)) for i, d in enumerate(data)]
    entries.insert(3, Entry(1, 99, data=b"small"))
    batches = list(applier.command_batches(entries, payloads))
    assert [[index for index, _ in batch] for batch in batches] == [[2, 3, 99], [4, 5], [6]]
    assert [d for batch in batches for _, d in batch if d != b"small"] == data


async def test_proposals_keep_their_order_when_some_data_goes_beside_the_log(payloads):
    """A load proposes a few chunks at once, the last one maybe small: each is handed to the
    core in call order, however long storing the bigger ones takes."""
    proposing = Proposing(payloads)
    order: list[int] = []

    async def propose(i: int, data: bytes) -> None:
        if proposing.waits(data):
            data = await proposing.prepare(data)
        order.append(i)  # (the driver hands it to the core here, without awaiting)

    sizes = [200_000, 10, 100_000, 300_000, 5, 70_000, 1]
    await asyncio.gather(*(propose(i, os.urandom(n)) for i, n in enumerate(sizes)))
    assert order == list(range(len(sizes)))
    assert not proposing.waits(b"small")  # nothing on its way: small data goes straight


def test_an_entry_that_comes_back_keeps_its_file(payloads, tmp_path):
    """A newer leader replaced entry 10 (its removal waits for the apply), then a later one
    sends the original entry 10 again: it is in the log once more, so its file stays."""
    ref = payloads.detach(os.urandom(70_000))
    sent = payloads.attach(Message(MessageType.APPEND, "b", "a", 4, entries=(Entry(2, 10, data=ref),)))
    payloads.forget([(10, ref)])
    payloads.land(sent.entries)
    payloads.applied(10)
    assert payloads.has(ref)


def test_a_sweep_takes_only_old_files_nothing_refers_to(payloads, tmp_path):
    logged, waiting, stray = (payloads.detach(os.urandom(70_000)) for _ in range(3))
    payloads.forget([(50, waiting)])  # out of the log, not yet applied past
    assert payloads.sweep([Entry(1, 1, data=logged)]) == 0  # the stray one is too young
    assert payloads.sweep([Entry(1, 1, data=logged)], min_age=0.0) == 1
    assert [payloads.has(r) for r in (logged, waiting, stray)] == [True, True, False]


async def test_a_failed_proposal_does_not_let_later_ones_overtake_earlier_ones(payloads,
                                                                              monkeypatch):
    """The second of three fails at once (a full disk) while the first is still being
    stored: the third, a small one, still waits for the first."""
    proposing = Proposing(payloads)
    real_detach = payloads.detach

    def detach(data: bytes) -> bytes:
        if len(data) == 300_000:
            raise OSError("disk full")
        if len(data) == 200_000:
            time.sleep(0.3)
        return real_detach(data)

    monkeypatch.setattr(payloads, "detach", detach)
    order: list[int] = []

    async def propose(i: int, data: bytes) -> None:
        try:
            if proposing.waits(data):
                data = await proposing.prepare(data)
        except OSError:
            return
        order.append(i)

    await asyncio.gather(*(propose(i, os.urandom(n))
                           for i, n in ((1, 200_000), (2, 300_000), (3, 10))))
    assert order == [1, 3]
