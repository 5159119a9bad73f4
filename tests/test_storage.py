"""Crash safety of the durable Raft log (raftsql/raft/storage.py).

The crash tests run against `MemoryFileSystem`, whose `crash(rng)` keeps what was synced
plus a torn prefix of the rest. A `Model` follows the same operations in memory and
knows which states a crash may legally leave: the last durable state followed by any
prefix of the records written since (a torn tail loses whole records from the end,
never anything before them).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
from collections.abc import Callable, Sequence

import pytest

from raftsql.errors import StorageError
from raftsql.raft.messages import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from raftsql.storage.log import FileSystem, OSFileSystem, Storage
from raftsql.storage.memfs import MemoryFileSystem, SimulatedCrash

DIR = "/data/raft"
LOG = f"{DIR}/log"
SNAP = f"{DIR}/snapshot"


def ents(first: int, last: int, term: int = 1, size: int = 8) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 256]) * size) for i in range(first, last + 1)]


@pytest.fixture(params=["memory", "os"])
def fs_dir(request: pytest.FixtureRequest, tmp_path) -> tuple[FileSystem, str]:
    if request.param == "memory":
        return MemoryFileSystem(), DIR
    return OSFileSystem(), str(tmp_path / "raft")


def log_size(fs: FileSystem, path: str) -> int:
    return len(fs.read(f"{path}/log"))


def rewrite_log(fs: FileSystem, path: str, change: Callable[[bytes], bytes]) -> None:
    fs.write_atomic(f"{path}/log", [change(fs.read(f"{path}/log"))])


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1 :]


# -- round trip, restart, hard state ----------------------------------------------------------


def test_fresh_storage_is_empty(fs_dir):
    fs, path = fs_dir
    s = Storage(path, fs)
    assert (s.first_index, s.last_index, s.entries()) == (1, 0, [])
    assert s.hard_state == HardState() and s.snapshot_meta == SnapshotMeta()
    assert s.load_snapshot() is None
    assert s.term(0) == 0 and s.term(1) is None


def test_round_trip(fs_dir):
    fs, path = fs_dir
    s = Storage(path, fs)
    written = [*ents(1, 3), Entry(2, 4, EntryType.CONF_CHANGE, b"\x00conf"), Entry(2, 5)]
    s.append(written)
    s.set_hard_state(HardState(term=2, vote="n2", commit=4))
    s.sync()
    s.close()
    r = Storage(path, fs)
    assert r.entries() == written
    assert r.hard_state == HardState(term=2, vote="n2", commit=4)
    assert (r.first_index, r.last_index, r.term(4), r.term(6)) == (1, 5, 2, None)


def test_restart_recovers_exactly_what_was_synced():
    fs = MemoryFileSystem()
    s = Storage(DIR, fs)
    s.append(ents(1, 4))
    s.set_hard_state(HardState(1, "n1", 2))
    s.sync()
    synced = fs.read(LOG)
    s.append(ents(5, 9))
    s.set_hard_state(HardState(1, "n1", 4))
    assert fs.read(LOG) == synced, "append and set_hard_state must not write before sync"
    assert fs.durable_bytes(LOG) == synced
    for seed in range(30):
        fs2 = MemoryFileSystem()
        s2 = Storage(DIR, fs2)
        s2.append(ents(1, 4))
        s2.set_hard_state(HardState(1, "n1", 2))
        s2.sync()
        s2.append(ents(5, 9))
        s2.set_hard_state(HardState(1, "n1", 4))
        fs2.crash(random.Random(seed))  # nothing after the sync was written: all of it is lost
        r = Storage(DIR, fs2)
        assert r.entries() == ents(1, 4) and r.hard_state == HardState(1, "n1", 2)


def test_one_write_and_one_fsync_per_batch():
    calls: list[str] = []

    class Counting(MemoryFileSystem):
        def open_append(self, path: str):
            file = super().open_append(path)
            for name in ("write", "sync"):
                method = getattr(file, name)
                setattr(file, name, lambda *a, _n=name, _m=method: (calls.append(_n), _m(*a)))
            return file

    s = Storage(DIR, Counting())
    calls.clear()
    s.append(ents(1, 100))
    s.append(ents(101, 150))
    s.set_hard_state(HardState(1, "n1", 150))
    s.sync()
    assert calls == ["write", "sync"]
    s.sync()  # nothing new: no syscall at all
    assert calls == ["write", "sync"]


def test_hard_state_latest_wins_and_vote_none_differs_from_empty(fs_dir):
    fs, path = fs_dir
    s = Storage(path, fs)
    for hs in [HardState(1, "n1", 0), HardState(2, None, 0), HardState(3, "", 0)]:
        s.set_hard_state(hs)
        s.sync()
        s.close()
        s = Storage(path, fs)
        assert s.hard_state == hs
    s.set_hard_state(HardState(4, "ñode-é", 0))
    s.close()  # close syncs
    assert Storage(path, fs).hard_state == HardState(4, "ñode-é", 0)


def test_conflicting_suffix_truncation_survives_restart(fs_dir):
    fs, path = fs_dir
    s = Storage(path, fs)
    s.append(ents(1, 6, term=1))
    s.sync()
    s.append(ents(4, 5, term=2))  # §5.3: replaces 4..6
    assert s.entries() == ents(1, 3) + ents(4, 5, term=2)
    s.sync()
    s.append(ents(6, 7, term=2))
    s.sync()
    s.append(ents(2, 2, term=3))
    s.sync()
    s.close()
    assert Storage(path, fs).entries() == ents(1, 1) + ents(2, 2, term=3)


def test_append_rejects_gaps_and_non_contiguous_batches():
    s = Storage(DIR, MemoryFileSystem())
    s.append(ents(1, 3))
    with pytest.raises(StorageError):
        s.append(ents(5, 6))
    with pytest.raises(StorageError):
        s.append([Entry(1, 4), Entry(1, 6)])
    assert s.entries() == ents(1, 3)


# -- torn tails and corruption ----------------------------------------------------------------


def three_synced_entries(fs: FileSystem, path: str) -> list[int]:
    """Entries 1..3, one sync each; returns the log size after each sync."""
    s = Storage(path, fs)
    sizes = []
    for i in range(1, 4):
        s.append(ents(i, i, size=20))
        s.sync()
        sizes.append(log_size(fs, path))
    s.close()
    return sizes


@pytest.mark.parametrize("cut", [1, 8, 9, 20, -1])
def test_torn_tail_mid_record_is_discarded(fs_dir, cut):
    fs, path = fs_dir
    sizes = three_synced_entries(fs, path)
    at = sizes[1] + cut if cut > 0 else sizes[2] + cut
    rewrite_log(fs, path, lambda d: d[:at])
    s = Storage(path, fs)
    assert s.entries() == ents(1, 2, size=20)
    assert log_size(fs, path) == sizes[1], "the torn tail is truncated away"
    s.append(ents(3, 4, term=2))
    s.close()
    assert Storage(path, fs).entries() == ents(1, 2, size=20) + ents(3, 4, term=2)


@pytest.mark.parametrize("garbage", [b"\x00" * 40, b"\xff" * 3, bytes(range(256))])
def test_garbage_after_the_last_record_is_discarded(fs_dir, garbage):
    fs, path = fs_dir
    sizes = three_synced_entries(fs, path)
    rewrite_log(fs, path, lambda d: d + garbage)
    assert Storage(path, fs).entries() == ents(1, 3, size=20)
    assert log_size(fs, path) == sizes[2]


@pytest.mark.parametrize("where", ["length", "crc", "type", "payload"])
def test_flipped_bit_in_the_last_record_is_a_torn_tail(fs_dir, where):
    fs, path = fs_dir
    sizes = three_synced_entries(fs, path)
    offset = sizes[1] + {"length": 0, "crc": 5, "type": 8, "payload": 30}[where]
    rewrite_log(fs, path, lambda d: flip(d, offset))
    assert Storage(path, fs).entries() == ents(1, 2, size=20)


def test_flipped_bit_in_an_early_record_refuses_to_open(fs_dir):
    """Decision: a bad record followed by valid ones is corruption, not a torn tail.

    Dropping everything from there would silently lose entries that were synced and
    acknowledged, so storage refuses to open (StorageError) and leaves the file as is.
    This holds for a flip anywhere in the record: length, CRC, type or payload.
    """
    fs, path = fs_dir
    sizes = three_synced_entries(fs, path)
    first_entry = sizes[0] - (8 + 18 + 20)
    original = fs.read(f"{path}/log")
    for offset in range(first_entry, sizes[0]):
        for bit in (0, 7):
            rewrite_log(fs, path, lambda _d, o=offset, b=bit: flip(original, o, b))
            with pytest.raises(StorageError, match="corrupt"):
                Storage(path, fs)
            assert fs.read(f"{path}/log") == flip(original, offset, bit), "left untouched"


def test_a_damaged_run_of_records_in_the_middle_refuses_to_open():
    fs = MemoryFileSystem()
    sizes = three_synced_entries(fs, DIR)
    s = Storage(DIR, fs)
    s.append(ents(4, 6))
    s.close()
    rewrite_log(fs, DIR, lambda d: d[:30] + bytes(sizes[1] - 30) + d[sizes[1] :])
    with pytest.raises(StorageError, match="corrupt"):
        Storage(DIR, fs)


def test_torn_large_entry_is_discarded_quickly():
    """The search for valid records after a bad one must not CRC megabytes per candidate."""
    fs = MemoryFileSystem()
    s = Storage(DIR, fs)
    s.append(ents(1, 2))
    s.sync()
    size = log_size(fs, DIR)
    pattern = b"\x00\x00\x01\x00" + b"\x00" * 4 + b"\x02" + bytes(range(1, 60))
    s.append([Entry(1, 3, data=random.Random(0).randbytes(1 << 20) + pattern * 50_000)])
    s.sync()
    rewrite_log(fs, DIR, lambda d: d[: len(d) - 100])
    assert Storage(DIR, fs).entries() == ents(1, 2)
    assert log_size(fs, DIR) == size


def test_corrupt_base_record_refuses_to_open(fs_dir):
    fs, path = fs_dir
    three_synced_entries(fs, path)
    rewrite_log(fs, path, lambda d: flip(d, 12))
    with pytest.raises(StorageError):
        Storage(path, fs)


def test_corrupt_snapshot_refuses_to_open_and_to_load(fs_dir):
    fs, path = fs_dir
    s = Storage(path, fs)
    s.save_snapshot(Snapshot(SnapshotMeta(3, 1), b"state"))
    s.close()
    raw = fs.read(f"{path}/snapshot")
    fs.write_atomic(f"{path}/snapshot", [flip(raw, len(raw) - 1)])  # in the data
    s = Storage(path, fs)  # the meta is fine
    with pytest.raises(StorageError, match="snapshot data"):
        s.load_snapshot()
    s.close()
    fs.write_atomic(f"{path}/snapshot", [flip(raw, 20)])  # in the meta
    with pytest.raises(StorageError, match="snapshot header"):
        Storage(path, fs)


# -- snapshots and compaction -----------------------------------------------------------------


def test_save_snapshot_keeps_later_entries_when_terms_match(fs_dir):
    fs, path = fs_dir
    s = Storage(path, fs)
    s.append(ents(1, 5) + ents(6, 8, term=2))
    s.set_hard_state(HardState(2, "n1", 5))
    s.sync()
    conf = ConfState(voters=("n1", "n2", "n3"), learners=("n4",))
    snap = Snapshot(SnapshotMeta(6, 2, conf), b"db bytes" * 100)
    s.save_snapshot(snap)
    for r in (s, Storage(path, fs)):
        assert r.snapshot_meta == snap.meta
        assert (r.first_index, r.last_index) == (7, 8)
        assert r.entries() == ents(7, 8, term=2)
        assert r.term(6) == 2 and r.term(5) is None
        assert r.hard_state == HardState(2, "n1", 6), "a snapshot's index is committed"
        assert r.load_snapshot() == snap


@pytest.mark.parametrize(("index", "term"), [(6, 3), (9, 2), (20, 4)])
def test_save_snapshot_drops_the_whole_log_without_its_last_entry(fs_dir, index, term):
    fs, path = fs_dir
    s = Storage(path, fs)
    s.append(ents(1, 5) + ents(6, 8, term=2))
    s.sync()
    s.save_snapshot(Snapshot(SnapshotMeta(index, term), b"x"))
    for r in (s, Storage(path, fs)):
        assert (r.entries(), r.first_index, r.last_index) == ([], index + 1, index)
        assert r.term(index) == term
    s.append(ents(index + 1, index + 2, term=term))
    s.close()
    assert Storage(path, fs).entries() == ents(index + 1, index + 2, term=term)


def test_save_snapshot_is_durable_on_return_with_everything_before_it():
    fs = MemoryFileSystem()
    s = Storage(DIR, fs)
    s.append(ents(1, 8))
    s.set_hard_state(HardState(1, "n1", 3))  # never synced explicitly
    s.save_snapshot(Snapshot(SnapshotMeta(3, 1), b"s"))
    fs.crash(random.Random(1))
    r = Storage(DIR, fs)
    assert r.snapshot_meta == SnapshotMeta(3, 1) and r.entries() == ents(4, 8)
    assert r.hard_state == HardState(1, "n1", 3)


def test_older_snapshot_is_ignored():
    s = Storage(DIR, MemoryFileSystem())
    s.append(ents(1, 10))
    s.save_snapshot(Snapshot(SnapshotMeta(5, 1), b"new"))
    s.save_snapshot(Snapshot(SnapshotMeta(4, 1), b"old"))
    assert s.snapshot_meta.index == 5 and s.load_snapshot().data == b"new"
    assert s.first_index == 6 and s.entries() == ents(6, 10)


def test_trailing_entries_are_kept_after_a_base_below_the_snapshot_across_restarts():
    fs = MemoryFileSystem()
    s = Storage(DIR, fs)
    s.append(ents(1, 10))
    conf = ConfState(("n1", "n2"), ("n3",))
    s.save_snapshot(Snapshot(SnapshotMeta(8, 1, ConfState(("n1",))), b"s"),
                    SnapshotMeta(5, 1, conf))
    assert s.snapshot_meta.index == 8 and s.log_base == SnapshotMeta(5, 1, conf)
    assert s.first_index == 6 and s.entries() == ents(6, 10) and s.term(5) == 1
    s.close()
    r = Storage(DIR, fs)
    assert r.log_base == SnapshotMeta(5, 1, conf) and r.snapshot_meta.index == 8
    assert r.entries() == ents(6, 10) and r.hard_state.commit == 8
    # a base below the current one keeps the current one; above the snapshot, the snapshot
    r.save_snapshot(Snapshot(SnapshotMeta(9, 1), b"t"), SnapshotMeta(3, 1))
    assert r.first_index == 6
    r.save_snapshot(Snapshot(SnapshotMeta(10, 1), b"u"), SnapshotMeta(12, 1))
    assert r.first_index == 11 and r.entries() == []


def test_append_skips_entries_covered_by_the_snapshot():
    s = Storage(DIR, MemoryFileSystem())
    s.save_snapshot(Snapshot(SnapshotMeta(5, 2), b""))
    s.append(ents(3, 7, term=2))
    s.append(ents(1, 4, term=2))  # all covered: nothing to do
    s.close()
    assert Storage(DIR, s._fs).entries() == ents(6, 7, term=2)


def test_snapshot_at_index_zero_holds_the_initial_membership():
    s = Storage(DIR, MemoryFileSystem())
    conf = ConfState(voters=("n1", "n2"))
    s.save_snapshot(Snapshot(SnapshotMeta(0, 0, conf)))
    s.append(ents(1, 2))
    s.close()
    r = Storage(DIR, s._fs)
    assert r.snapshot_meta.conf == conf and r.entries() == ents(1, 2)


def test_missing_log_with_a_snapshot_refuses_to_open():
    fs = MemoryFileSystem()
    Storage(DIR, fs).save_snapshot(Snapshot(SnapshotMeta(3, 1)))
    fs.remove(LOG)
    with pytest.raises(StorageError, match="missing"):
        Storage(DIR, fs)


# -- the crash model: random operation sequences ----------------------------------------------


@dataclasses.dataclass
class State:
    """What storage holds, as the model sees it: the log's base, the latest snapshot (at or
    after the base), the entries after the base, the hard state."""

    base: SnapshotMeta = dataclasses.field(default_factory=SnapshotMeta)
    snap: SnapshotMeta = dataclasses.field(default_factory=SnapshotMeta)
    entries: tuple[Entry, ...] = ()
    hard_state: HardState = dataclasses.field(default_factory=HardState)

    @property
    def last(self) -> int:
        return self.base.index + len(self.entries)

    def term(self, index: int) -> int | None:
        if index == self.base.index:
            return self.base.term
        if self.base.index < index <= self.last:
            return self.entries[index - self.base.index - 1].term
        return None

    def apply(self, record: Entry | HardState) -> State:
        if isinstance(record, HardState):
            return dataclasses.replace(self, hard_state=record)
        keep = self.entries[: record.index - self.base.index - 1]
        return dataclasses.replace(self, entries=(*keep, record))

    def with_snapshot(self, meta: SnapshotMeta, base: SnapshotMeta | None = None) -> State:
        """Raft §7, as save_snapshot does it: keep the entries after `base` (default: the
        snapshot) if the log holds the snapshot's last entry, else none."""
        if self.term(meta.index) != meta.term:
            return State(meta, meta, (), self.hard_state).as_recovered()
        if base is None or base.index >= meta.index:
            base = meta
        elif base.index <= self.base.index:
            base = self.base
        keep = self.entries[base.index - self.base.index :]
        return State(base, meta, keep, self.hard_state).as_recovered()

    def with_snapshot_file(self, meta: SnapshotMeta) -> State:
        """What opening makes of this log beside a newer snapshot file (a crash inside
        save_snapshot): kept whole if it holds the snapshot's last entry."""
        if meta.index == self.base.index and meta.term == self.base.term:
            return dataclasses.replace(self, base=meta, snap=meta).as_recovered()
        if self.term(meta.index) == meta.term:
            return dataclasses.replace(self, snap=meta).as_recovered()
        return self.with_snapshot(meta)

    def as_recovered(self) -> State:
        """Storage reports a commit index of at least the snapshot's index."""
        if self.hard_state.commit >= self.snap.index:
            return self
        return dataclasses.replace(
            self, hard_state=dataclasses.replace(self.hard_state, commit=self.snap.index)
        )


def state_of(s: Storage) -> State:
    return State(s.log_base, s.snapshot_meta, tuple(s.entries()), s.hard_state)


class Model:
    """The durable state plus the records written since: what a crash may keep."""

    def __init__(self) -> None:
        self.durable = State()
        self.unsynced: list[Entry | HardState] = []
        self.snapshot_data = b""

    @property
    def current(self) -> State:
        return self.candidates()[-1]

    def candidates(self) -> list[State]:
        states = [self.durable]
        for record in self.unsynced:
            states.append(states[-1].apply(record))
        return [state.as_recovered() for state in states]

    def append(self, entries: Sequence[Entry]) -> None:
        self.unsynced.extend(e for e in entries if e.index > self.durable.snap.index)

    def set_hard_state(self, hs: HardState) -> None:
        self.unsynced.append(hs)

    def sync(self) -> None:
        self.durable, self.unsynced = self.current, []

    def save_snapshot(self, snapshot: Snapshot, base: SnapshotMeta | None = None) -> None:
        if snapshot.meta.index >= self.durable.snap.index:
            self.durable, self.unsynced = self.current.with_snapshot(snapshot.meta, base), []
            self.snapshot_data = snapshot.data

    def check_crash_recovery(self, recovered: State) -> None:
        assert recovered in self.candidates(), "recovered a state no prefix of the writes gives"
        self.durable, self.unsynced = recovered, []


def random_step(rng: random.Random, s: Storage, model: Model) -> str:
    state = model.current
    roll = rng.random()
    if roll < 0.45:
        first = rng.randint(max(1, state.base.index, state.last - 3), state.last + 1)
        top = max((e.term for e in state.entries), default=state.base.term)
        term = top + (rng.random() < 0.3)
        batch = [
            Entry(term, i, EntryType(int(rng.random() < 0.1)), rng.randbytes(rng.randint(0, 40)))
            for i in range(first, first + rng.randint(1, 5))
        ]
        s.append(batch)
        model.append(batch)
        return "append"
    if roll < 0.65:
        vote = rng.choice([None, "n1", "n2", ""])
        hs = HardState(rng.randint(0, 6), vote, rng.randint(state.snap.index, state.last))
        s.set_hard_state(hs)
        model.set_hard_state(hs)
        return "hard_state"
    if roll < 0.9:
        s.sync()
        model.sync()
        return "sync"
    index = rng.randint(max(0, state.snap.index - 1), state.last + 2)
    term = state.term(index)
    if term is None or rng.random() < 0.2:
        term = rng.randint(1, 6)
    snapshot = Snapshot(SnapshotMeta(index, term, ConfState(("n1",))), rng.randbytes(10))
    base = None
    if rng.random() < 0.5:  # keep trailing entries after a base at or below the snapshot
        at = rng.randint(max(0, state.base.index - 1), index)
        base = SnapshotMeta(at, state.term(at) or 0, ConfState(("n2",)))
    s.save_snapshot(snapshot, base)
    model.save_snapshot(snapshot, base)
    return "snapshot"


@pytest.mark.parametrize("seed", range(300))
def test_random_operations_and_crashes_lose_only_unsynced_data(seed):
    rng = random.Random(seed)
    fs = MemoryFileSystem()
    s = Storage(DIR, fs)
    model = Model()
    for _ in range(rng.randint(1, 6)):  # crash-restart cycles
        for _ in range(rng.randint(0, 25)):
            random_step(rng, s, model)
            assert state_of(s) == model.current
        fs.crash(rng)
        s = Storage(DIR, fs)
        model.check_crash_recovery(state_of(s))
        loaded = s.load_snapshot()
        assert (loaded.data if loaded else b"") == model.snapshot_data


@pytest.mark.parametrize("seed", range(40))
def test_crash_at_every_step_of_save_snapshot(seed):
    """Every crash point inside save_snapshot leaves the old state or the new one.

    A crash between the snapshot file and the log rewrite is finished at open, using
    the same rule, on whatever prefix of the unsynced log survived.
    """
    for step in range(100):
        rng = random.Random(seed)
        fs = MemoryFileSystem()
        s, model = Storage(DIR, fs), Model()
        while len(model.unsynced) < 3 or rng.random() < 0.8:
            random_step(rng, s, model)
        before, old_data = model.candidates(), model.snapshot_data
        state = model.current
        index = rng.randint(state.snap.index + 1, state.last + 1)
        meta = SnapshotMeta(index, state.term(index) or 9)
        snapshot = Snapshot(meta, b"new snapshot")
        fs.crash_after(step)
        try:
            s.save_snapshot(snapshot)
        except SimulatedCrash:
            completed = False
        else:
            completed = True
        fs.crash(rng)
        r = Storage(DIR, fs)
        after = [c.with_snapshot_file(meta) for c in before]  # the log not yet rewritten
        after += [c.with_snapshot(meta) for c in before]  # rewritten
        recovered = state_of(r)
        if completed:
            assert recovered == state.with_snapshot(meta)
        else:
            assert recovered in before + after
        data = r.load_snapshot()
        assert (data.data if data else b"") == (
            b"new snapshot" if r.snapshot_meta == meta else old_data
        )
        if completed:
            return
    raise AssertionError("save_snapshot never completed")


@pytest.mark.parametrize("seed", range(20))
def test_crash_at_every_step_of_recovery(seed):
    """Opening after a crash truncates a torn tail and may finish a snapshot save;
    crashing again at any of those steps must not change what recovery yields."""
    for step in range(50):
        rng = random.Random(seed)
        fs = MemoryFileSystem()
        s = Storage(DIR, fs)
        s.append(ents(1, 10))
        s.sync()
        s.append(ents(11, 20, term=2))
        fs.crash_after(5)  # die inside save_snapshot, once the snapshot file is durable
        with pytest.raises(SimulatedCrash):
            s.save_snapshot(Snapshot(SnapshotMeta(15, 2), b"snap"))
        fs.crash(rng)
        expected = state_of(Storage(DIR, copy.deepcopy(fs)))
        fs.crash_after(step)
        try:
            Storage(DIR, fs)
        except SimulatedCrash:
            fs.crash(rng)
            assert state_of(Storage(DIR, fs)) == expected
        else:
            return
    raise AssertionError("recovery never completed")


# -- the memory file system's crash model -----------------------------------------------------


def test_memfs_unsynced_appends_are_torn_to_a_prefix():
    kept = set()
    for seed in range(200):
        fs = MemoryFileSystem()
        fs.mkdirs("/d")
        fs.write_atomic("/d/f", [b"durable"])
        f = fs.open_append("/d/f")
        f.write(b"0123456789")
        fs.crash(random.Random(seed))
        data = fs.read("/d/f")
        assert data.startswith(b"durable")
        tail = data[7:]
        prefix = next(
            t for t in (b"0123456789"[:n] for n in range(10, -1, -1)) if tail.startswith(t)
        )
        kept.add((len(prefix), len(tail) > len(prefix)))
        with pytest.raises(OSError):
            f.write(b"x")  # handles do not survive a crash
    assert {n for n, _ in kept} >= {0, 10} and any(g for _, g in kept), "prefixes and garbage"


def test_memfs_synced_data_survives():
    fs = MemoryFileSystem()
    fs.mkdirs("/d")
    fs.write_atomic("/d/f", [b"a"])
    f = fs.open_append("/d/f")
    f.write(b"bc")
    f.sync()
    fs.crash(random.Random(0))
    assert fs.read("/d/f") == b"abc"


def test_memfs_unsynced_truncate_is_atomic():
    seen = set()
    for seed in range(50):
        fs = MemoryFileSystem()
        fs.mkdirs("/d")
        fs.write_atomic("/d/f", [b"abcdef"])
        fs.open_append("/d/f").truncate(2)
        fs.crash(random.Random(seed))
        seen.add(fs.read("/d/f")[:6])
    assert seen == {b"abcdef", b"ab"}


def test_memfs_namespace_changes_need_a_directory_fsync():
    outcomes = set()
    for seed in range(100):
        fs = MemoryFileSystem()
        fs.mkdirs("/d")
        fs.write_atomic("/d/a", [b"1"])  # durable: write_atomic syncs the directory
        fs.remove("/d/a")
        fs.write_atomic("/d/b", [b"2"])  # commits the journal, the remove included
        fs.remove("/d/b")  # pending: may or may not survive
        fs.crash(random.Random(seed))
        outcomes.add(tuple(fs.listdir("/d")))
    assert outcomes == {(), ("b",)}


def test_memfs_atomic_write_crash_leaves_old_or_new_content():
    for step in range(6):
        for seed in range(20):
            fs = MemoryFileSystem()
            fs.mkdirs("/d")
            fs.write_atomic("/d/f", [b"old"])
            fs.crash_after(step)
            with contextlib.suppress(SimulatedCrash):
                fs.write_atomic("/d/f", [b"new", b"er"])
            fs.crash(random.Random(seed))
            assert fs.read("/d/f") in (b"old", b"newer")


# -- real files and failures ------------------------------------------------------------------


def test_os_filesystem_files_and_leftovers(tmp_path):
    path = str(tmp_path / "data" / "raft")
    s = Storage(path)
    s.append(ents(1, 3))
    s.sync()
    s.save_snapshot(Snapshot(SnapshotMeta(2, 1), b"sqlite bytes"))
    s.close()
    assert sorted(os.listdir(path)) == ["log", "snapshot"]
    (tmp_path / "data" / "raft" / "log.tmp").write_bytes(b"half-written")
    with open(os.path.join(path, "log"), "ab") as f:
        f.write(b"\x07\x00")  # a torn header
    r = Storage(path)
    assert sorted(os.listdir(path)) == ["log", "snapshot"]
    assert r.entries() == ents(3, 3) and r.load_snapshot().data == b"sqlite bytes"


def test_storage_fails_for_good_after_an_io_error():
    class FailingSync(MemoryFileSystem):
        fail = False

        def open_append(self, path: str):
            file = super().open_append(path)
            sync = file.sync

            def failing_sync() -> None:
                if self.fail:
                    raise OSError(5, "Input/output error")
                sync()

            file.sync = failing_sync
            return file

    fs = FailingSync()
    s = Storage(DIR, fs)
    s.append(ents(1, 2))
    fs.fail = True
    with pytest.raises(StorageError, match="Input/output"):
        s.sync()
    fs.fail = False
    with pytest.raises(StorageError, match="unusable"):
        s.sync()  # never retried: the kernel may have dropped the dirty pages
    with pytest.raises(StorageError):
        s.append(ents(3, 3))



def test_a_data_directory_is_held_by_one_process(tmp_path):
    import subprocess
    import sys

    from raftsql.storage.lock import lock_data_dir

    release = lock_data_dir(str(tmp_path))
    again = lock_data_dir(str(tmp_path))  # nested within the process
    probe = ("import sys; from raftsql.storage.lock import lock_data_dir\n"
             "try:\n    lock_data_dir(sys.argv[1])\nexcept Exception as e:\n    print(e)\n")
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                           text=True)
    assert "in use by another process" in other.stdout
    again()
    release()
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                           text=True)
    assert other.stdout == ""
