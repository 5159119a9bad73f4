"""The in-memory log view: term lookups, the §5.3 check, truncation, cursors, compaction."""

from __future__ import annotations

import pytest

from raftsql.raft.log import RaftLog
from raftsql.raft.messages import ConfState, Entry, Snapshot, SnapshotMeta


def entries(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, i) for i, t in enumerate(terms, start)]


def accepted(log: RaftLog, prev: int, prev_term: int, new: list[Entry]) -> object:
    result = log.accept(prev, prev_term, new)
    return None if result is None else (result[0], list(result[1]))


def make(*terms: int, commit: int = 0) -> RaftLog:
    return RaftLog(SnapshotMeta(), entries(*terms), commit)


def test_term_lookup_and_bounds() -> None:
    log = RaftLog(SnapshotMeta(5, 2), entries(2, 3, 3, start=6))
    assert (log.first_index, log.last_index, log.last_term) == (6, 8, 3)
    assert [log.term(i) for i in (4, 5, 6, 8, 9)] == [None, 2, 2, 3, None]
    assert log.slice(6, 8) == entries(2, 3, start=6)
    assert log.slice(5, 8) is None  # compacted


def test_entries_before_the_snapshot_are_ignored_and_gaps_refused() -> None:
    log = RaftLog(SnapshotMeta(2, 1), entries(1, 1, 1, 2))
    assert (log.first_index, log.last_index) == (3, 4)
    with pytest.raises(ValueError):
        RaftLog(SnapshotMeta(), [Entry(1, 1), Entry(1, 3)])


def test_up_to_date_compares_last_term_then_length() -> None:
    """§5.4.1."""
    log = make(1, 2, 2)
    assert log.is_up_to_date(1, 3)  # higher last term wins, even if shorter
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(4, 2)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(9, 1)


def test_accept_checks_previous_entry_and_finds_the_conflict() -> None:
    """§5.3: the entry before must match; only what conflicts is replaced."""
    log = make(1, 1, 2, 2)
    assert accepted(log, 5, 2, entries(2, start=6)) is None  # we lack index 5
    assert accepted(log, 3, 1, entries(2, start=4)) is None  # index 3 has term 2
    assert accepted(log, 2, 1, entries(2, 2, start=3)) == (4, [])  # all present already
    assert accepted(log, 2, 1, entries(2, start=3)) == (3, [])  # shorter: nothing truncated
    assert accepted(log, 2, 1, entries(2, 3, 3, start=3)) == (5, entries(3, 3, start=4))


def test_accept_skips_what_is_committed() -> None:
    log = make(1, 1, 2, 2, commit=3)
    assert accepted(log, 1, 1, entries(1, 2, start=2)) == (3, [])
    assert accepted(log, 1, 1, entries(1, 2, 2, 4, start=2)) == (5, entries(4, start=5))


def test_append_truncates_conflicting_suffix_and_rewinds_cursors() -> None:
    log = make(1, 1, 1)
    log.in_progress = log.stable = 3
    assert log.append(entries(2, start=2)) == 2
    assert [(e.index, e.term) for e in log.entries] == [(1, 1), (2, 2)]
    assert (log.stable, log.in_progress) == (1, 1)
    with pytest.raises(RuntimeError):
        log.commit = 1
        log.append(entries(3, start=1))


def test_find_conflict_by_term() -> None:
    """etcd's fast back-up: largest index <= i with term <= t."""
    log = make(1, 1, 2, 2, 4, 4)
    assert log.find_conflict_by_term(6, 3) == (4, 2)
    assert log.find_conflict_by_term(6, 4) == (6, 4)
    assert log.find_conflict_by_term(10, 1) == (2, 1)
    assert log.find_conflict_by_term(6, 0) == (0, 0)
    compacted = RaftLog(SnapshotMeta(3, 2), entries(4, 4, start=4))
    assert compacted.find_conflict_by_term(5, 2) == (3, 2)
    assert compacted.find_conflict_by_term(5, 1) == (2, 0)  # unknown below the snapshot


def test_unstable_and_committed_hand_out_once_and_only_persisted() -> None:
    log = make()
    log.append(entries(1, 1, 1))
    assert log.has_unstable()
    snap, handed = log.take_unstable()
    assert snap is None and [e.index for e in handed] == [1, 2, 3]
    assert not log.has_unstable() and log.take_unstable() == (None, [])
    log.commit_to(3)
    assert not log.has_committed()  # not persisted yet
    log.stable_to(3, 1)
    assert [e.index for e in log.take_committed()] == [1, 2, 3]
    assert not log.has_committed()
    log.applied_to(3)
    log.check()


def test_stable_to_ignores_a_truncated_entry() -> None:
    log = make()
    log.append(entries(1, 1, 1))
    log.take_unstable()
    log.append(entries(2, start=2))  # truncation while the driver persists 1..3
    log.stable_to(3, 1)
    assert log.stable == 0
    assert [e.index for e in log.take_unstable()[1]] == [2]


def test_commit_to_never_decreases_nor_passes_the_end() -> None:
    log = make(1, 1)
    assert log.commit_to(5) and log.commit == 2
    assert not log.commit_to(1) and log.commit == 2


def test_compact_and_restore() -> None:
    """§7."""
    log = make(1, 1, 2, 2, commit=4)
    log.applied_to(3)
    with pytest.raises(ValueError):
        log.compact(4, 2, SnapshotMeta(4, 2))  # not applied yet
    log.compact(3, 2, SnapshotMeta(3, 2, ConfState(("a",))))
    assert (log.first_index, log.last_index, log.term(3), log.term(2)) == (4, 4, 2, None)
    log.compact(2, 1, SnapshotMeta(2, 1))  # older: ignored
    assert log.first_index == 4
    log.restore(Snapshot(SnapshotMeta(10, 3), b"x"))
    assert (log.first_index, log.last_index, log.commit, log.last_term) == (11, 10, 10, 3)
    snap, handed = log.take_unstable()
    assert snap is not None and snap.data == b"x" and handed == []
    log.applied_to(10)
    log.check()


def test_restart_state_is_consistent() -> None:
    # commit is clamped to the log, and raised to what the state machine applied
    log = RaftLog(SnapshotMeta(2, 1), entries(1, 2, start=3), commit=9, applied=3)
    assert (log.commit, log.applied, log.stable) == (4, 3, 4)
    log = RaftLog(SnapshotMeta(2, 1), entries(1, 2, start=3), commit=0, applied=4)
    assert (log.commit, log.applied) == (4, 4)
    log.check()
