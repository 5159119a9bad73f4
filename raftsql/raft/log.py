"""The in-memory view of the Raft log: the latest snapshot, then the entries after it.

Indexes grow from `snapshot.index + 1` (`first_index`) to `last_index`. Three cursors
say how far the driver has come with them (invariants in `check()`):

    snapshot.index <= applied <= applying <= commit_index <= last_index
    stable <= in_progress <= last_index

- `in_progress`: the last entry handed to the driver in a Ready (being persisted);
- `stable`: the last entry the driver persisted (its Ready was advanced);
- `applying`: the last committed entry handed out in a Ready; `applied`: advanced.

Committed entries are only handed out once stable (persisted on this node), so the state
machine never applies an entry that a crash could lose from the log.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftsql.raft.messages import Entry, Snapshot, SnapshotMeta


class RaftLog:
    def __init__(
        self,
        snapshot: SnapshotMeta,
        entries: Sequence[Entry] = (),
        commit: int = 0,
        applied: int | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.pending_snapshot: Snapshot | None = None  # received, not yet in a Ready
        self.entries: list[Entry] = [e for e in entries if e.index > snapshot.index]
        for offset, e in enumerate(self.entries):
            if e.index != snapshot.index + 1 + offset:
                raise ValueError(f"log entries are not contiguous after {snapshot.index}: {e.index}")
        # Everything handed in by the driver comes from durable storage.
        self.stable = self.in_progress = self.last_index
        applied = snapshot.index if applied is None else max(applied, snapshot.index)
        # The state machine cannot be ahead of the commit index: what it applied was committed.
        self.commit = min(max(commit, applied, snapshot.index), self.last_index)
        self.applied = self.applying = min(applied, self.commit)

    # ---- reading -----------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    @property
    def last_term(self) -> int:
        term = self.term(self.last_index)
        assert term is not None
        return term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or not (yet) there."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index:
            return None
        return self.entries[index - self.snapshot.index - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, lo: int, hi: int) -> list[Entry] | None:
        """Entries [lo, hi); None if some of them are compacted into the snapshot."""
        if lo < self.first_index:
            return None
        hi = min(hi, self.last_index + 1)
        offset = self.snapshot.index + 1
        return self.entries[lo - offset : hi - offset]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log is at least as up-to-date as ours if its last term is higher, or
        equal with an index at least as long."""
        ours = self.last_term
        return last_term > ours or (last_term == ours and last_index >= self.last_index)

    def accept(
        self, prev: int, prev_term: int, entries: Sequence[Entry]
    ) -> tuple[int, Sequence[Entry]] | None:
        """The §5.3 consistency check of an APPEND carrying `entries` after (`prev`,
        `prev_term`). None if our log does not hold that entry; else the index of the
        APPEND's last entry and the part of `entries` to append: from the first one that
        conflicts on (a delayed APPEND must never truncate what we hold)."""
        if prev < self.commit:
            # Delayed or duplicated: committed entries never change, so keep only what
            # lies beyond our commit index.
            if prev + len(entries) <= self.commit:
                return self.commit, ()
            skip = self.commit - prev
            prev, prev_term, entries = self.commit, entries[skip - 1].term, entries[skip:]
        if not self.match_term(prev, prev_term):
            return None
        conflict = self.find_conflict(entries)
        return prev + len(entries), entries[conflict - prev - 1 :] if conflict else ()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first of `entries` that is not in our log (other term, or past
        the end); 0 if we hold all of them already."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, and that term.

        Used on both sides of a rejected APPEND to skip a whole term of divergent entries
        per round-trip instead of one entry (etcd's fast back-up). A compacted index is
        returned with term 0: it may match, we cannot tell.
        """
        index = min(index, self.last_index)
        while index > 0:
            ours = self.term(index)
            if ours is None:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    # ---- writing -----------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append `entries`, first truncating whatever our log holds from their first index
        on. Returns that index if a suffix was truncated, else 0."""
        if not entries:
            return 0
        first = entries[0].index
        if first <= self.commit:
            raise RuntimeError(f"refusing to overwrite committed entry {first} (commit {self.commit})")
        if first > self.last_index + 1:
            raise RuntimeError(f"gap in log: appending {first} after {self.last_index}")
        truncated = 0
        if first <= self.last_index:
            truncated = first
            del self.entries[first - self.first_index :]
            self.stable = min(self.stable, first - 1)
            self.in_progress = min(self.in_progress, first - 1)
        self.entries.extend(entries)
        return truncated

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lowers it). True if it moved."""
        index = min(index, self.last_index)
        if index <= self.commit:
            return False
        self.commit = index
        return True

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader (§7)."""
        meta = snapshot.meta
        self.snapshot = meta
        self.pending_snapshot = snapshot
        self.entries = []
        self.commit = meta.index
        # Entries up to the snapshot are covered by it: nothing before it is applied again.
        self.stable = self.in_progress = self.applying = meta.index

    def maybe_restore(self, snapshot: Snapshot) -> bool:
        """A snapshot from the leader: restore it unless we hold all it contains already.
        True if the log was replaced."""
        meta = snapshot.meta
        if meta.index <= self.commit:
            return False  # stale
        if self.match_term(meta.index, meta.term):
            self.commit = meta.index  # we hold its last entry (and so all before): commit them
            return False
        self.restore(snapshot)  # §7: discard the whole log
        return True

    def compact(self, index: int, term: int, meta: SnapshotMeta) -> None:
        """The driver stored a snapshot at `index`: drop the entries it covers."""
        if index <= self.snapshot.index:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} applied")
        if self.term(index) != term:
            raise ValueError(f"cannot compact to {index}: term {term} != {self.term(index)}")
        del self.entries[: index - self.snapshot.index]
        self.snapshot = meta

    # ---- handing out to the driver, and hearing back -----------------------------

    def has_unstable(self) -> bool:
        return self.pending_snapshot is not None or self.in_progress < self.last_index

    def take_unstable(self) -> tuple[Snapshot | None, list[Entry]]:
        snapshot, self.pending_snapshot = self.pending_snapshot, None
        entries = self.slice(self.in_progress + 1, self.last_index + 1) or []
        self.in_progress = self.last_index
        return snapshot, entries

    def has_committed(self) -> bool:
        return self.applying < min(self.commit, self.stable)

    def take_committed(self) -> list[Entry]:
        hi = min(self.commit, self.stable)
        entries = self.slice(self.applying + 1, hi + 1) or []
        self.applying = max(self.applying, hi)
        return entries

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (`index`, `term`). Ignored if that entry was
        truncated meanwhile: the replacement comes in a later Ready."""
        if self.match_term(index, term) and index > self.stable:
            self.stable = index

    def applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)
        self.applying = max(self.applying, self.applied)

    def check(self) -> None:
        """Assert the cursor invariants (for tests and the simulator)."""
        assert self.snapshot.index <= self.applied <= self.applying <= self.commit, self
        assert self.commit <= self.last_index, self
        assert self.stable <= self.in_progress <= self.last_index, self

    def __repr__(self) -> str:
        return (
            f"RaftLog(snapshot={self.snapshot.index}/{self.snapshot.term}, last={self.last_index},"
            f" stable={self.stable}, in_progress={self.in_progress}, commit={self.commit},"
            f" applying={self.applying}, applied={self.applied})"
        )
