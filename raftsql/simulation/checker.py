"""The safety properties of Raft (Figure 3 of the paper), checked while a cluster runs.

Every check is incremental, so it can run after every input of every node:

- **Election Safety**: at most one leader per term, over all time (`leaders`). A node
  counts as leader of a term once that term is durable in its storage: a leader that
  crashes before (a single voter elects itself at once) did nothing anyone could see
  (its messages wait for the fsync), and may legitimately win that term again.
- **Leader Append-Only**: a leader never overwrites or deletes an entry of its log
  (the last entry it held is checked after every input and every Ready).
- **Log Matching**: every entry a node persists is recorded by (index, term) with its
  content and the term of the entry before it. Two logs holding (index, term) then hold
  the same entry there, and by induction on the predecessor's term, the same log up to
  it. (Entries lost in a crash before they were persisted never left the node.)
- **Leader Completeness**: an entry committed while its observer was in term T is in
  the log of every leader of a term > T: checked when a node becomes leader (against
  everything committed so far) and when a commit is first seen (against the leaders of
  the moment). Leader Append-Only keeps it there afterwards.
- **State Machine Safety**: every node applies indexes contiguously, and no two nodes
  ever apply different entries at one index (so applied sequences are prefixes of one
  another).
- A node's commit index never decreases while it runs; after a crash it restarts no
  lower than what it had fsynced.
- **Linearizable reads**: a ReadIndex answer is at least the highest index known to be
  committed anywhere when the read started (so no acknowledged write is missed).
- **Durable before promised**: a node acknowledges an entry (APPEND_RESP) only once its
  log is fsynced up to it, and grants a vote only once that vote is fsynced: what the
  others count on survives the node's crash.
"""

from __future__ import annotations

from collections.abc import Callable

from raftsql.raft.core import Raft
from raftsql.raft.messages import (
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)

Note = Callable[[str], None]


class SafetyViolation(AssertionError):
    """A safety property failed; the message says which, where and when."""


def fail(prop: str, detail: str) -> SafetyViolation:
    return SafetyViolation(f"{prop} violated: {detail}")


class Checker:
    def __init__(self, rafts: Callable[[str], Raft | None], durable_term: Callable[[str], int],
                 note: Note | None = None) -> None:
        self._rafts = rafts  # a running node's core, by id
        self._durable_term = durable_term  # the term a node's storage holds
        self._note = note or (lambda _: None)
        self.leaders: dict[int, str] = {}  # term -> its leader
        self.entries: dict[tuple[int, int], tuple[EntryType, bytes, int | None]] = {}
        self.committed: dict[int, tuple[int, int]] = {}  # index -> (entry term, seen in term)
        self.max_committed = 0
        self.applied: dict[int, Entry] = {}
        self.read_floor: dict[bytes, int] = {}
        # Per running node (reset by `on_start`):
        self._role: dict[str, tuple[Role, int]] = {}
        self._commit: dict[str, int] = {}
        self._tail: dict[str, tuple[int, int, int | None]] = {}  # leader: (term, index, its term)

    # ---- after every input -------------------------------------------------------

    def observe(self, node_id: str, raft: Raft) -> None:
        role, term = raft.role, raft.term
        if self._role.get(node_id) != (role, term):
            self._role_changed(node_id, raft, role, term)
        if role is Role.LEADER and self.leaders.get(term) != node_id:
            self._check_election(node_id, term)
        tail = self._tail.get(node_id)
        if tail is not None:
            self._check_tail(node_id, raft, tail)
        commit, seen = raft.commit_index, self._commit.get(node_id, 0)
        if commit != seen:
            if commit < seen:
                raise fail("Commit monotonicity", f"{node_id}'s commit index fell from {seen} to {commit}")
            self._commit[node_id] = commit
            self._note(f"{node_id} commit={commit}")
            self._committed(node_id, raft, seen, commit)

    def _role_changed(self, node_id: str, raft: Raft, role: Role, term: int) -> None:
        previous = self._role.get(node_id)
        self._role[node_id] = (role, term)
        if previous is None or previous[0] is not role:
            self._note(f"{node_id} becomes {role.value} in term {term}")
        if role is not Role.LEADER:
            self._tail.pop(node_id, None)
            return
        self._check_new_leader(node_id, raft)
        self._tail[node_id] = (term, raft.last_index, raft.term_at(raft.last_index))

    def _check_election(self, node_id: str, term: int) -> None:
        if self._durable_term(node_id) != term:
            return  # not yet: until its term is durable, its leadership is invisible
        other = self.leaders.setdefault(term, node_id)
        if other != node_id:
            raise fail("Election Safety", f"two leaders in term {term}: {other} and {node_id}")

    def _check_new_leader(self, node_id: str, raft: Raft) -> None:
        for index in range(max(raft.first_index, 1), self.max_committed + 1):
            known = self.committed.get(index)
            if known is not None and known[1] < raft.term and raft.term_at(index) != known[0]:
                raise fail("Leader Completeness", (
                    f"{node_id} became leader of term {raft.term} without entry {index}"
                    f" (term {known[0]}, committed by term {known[1]}); it holds term"
                    f" {raft.term_at(index)} there"))

    def _check_tail(self, node_id: str, raft: Raft, tail: tuple[int, int, int | None]) -> None:
        term, index, index_term = tail
        if raft.term != term or index < raft.first_index:
            return  # another term (then no longer leader), or compacted into a snapshot
        if raft.term_at(index) != index_term:
            raise fail("Leader Append-Only", (
                f"leader {node_id} of term {term} held ({index}, term {index_term}),"
                f" now has term {raft.term_at(index)} there"))

    def _committed(self, node_id: str, raft: Raft, lo: int, hi: int) -> None:
        leaders = [(n, t) for n, (role, t) in self._role.items() if role is Role.LEADER]
        for index in range(lo + 1, hi + 1):
            term = raft.term_at(index)
            if term is None:
                continue  # covered by a snapshot just installed
            known = self.committed.get(index)
            if known is not None:
                if known[0] != term:
                    raise fail("State Machine Safety", (
                        f"{node_id} committed ({index}, term {term}) where ({index}, term"
                        f" {known[0]}) was committed"))
                continue
            self.committed[index] = (term, raft.term)
            self.max_committed = max(self.max_committed, index)
            for leader, leader_term in leaders:
                if leader_term > raft.term and leader != node_id:
                    self._leader_has(leader, leader_term, index, term)

    def _leader_has(self, leader: str, leader_term: int, index: int, term: int) -> None:
        raft = self._rafts(leader)
        if raft is None or index < raft.first_index:
            return
        if raft.term_at(index) != term:
            raise fail("Leader Completeness", (
                f"({index}, term {term}) committed, but {leader}, leader of term"
                f" {leader_term}, holds term {raft.term_at(index)} there"))

    # ---- the driver's steps ------------------------------------------------------

    def on_ready(self, node_id: str, raft: Raft, rd: Ready) -> int | None:
        """Right after `ready()`, while its entries are the end of the node's log. Returns
        the term of the entry before them, for `on_persisted`."""
        tail = self._tail.get(node_id)
        if tail is not None:
            self._check_tail(node_id, raft, tail)
            self._tail[node_id] = (raft.term, raft.last_index, raft.term_at(raft.last_index))
        return raft.term_at(rd.entries[0].index - 1) if rd.entries else None

    def on_persisted(self, node_id: str, entries: list[Entry], prev: int | None) -> None:
        """`entries` (after an entry of term `prev`) are durable in the node's log."""
        for e in entries:
            self._record_entry(node_id, e, prev)
            prev = e.term

    def _record_entry(self, node_id: str, e: Entry, prev: int | None) -> None:
        value = (e.type, e.data, prev)
        seen = self.entries.setdefault((e.index, e.term), value)
        if seen != value:
            raise fail("Log Matching", (
                f"{node_id} holds ({e.index}, term {e.term}) = {value[:2]!r} after term"
                f" {prev}, another log holds {seen[:2]!r} after term {seen[2]}"))

    def on_apply(self, node_id: str, applied: int, entries: list[Entry]) -> None:
        """`applied`: the state machine's last index before these entries."""
        for e in entries:
            if e.index != applied + 1:
                raise fail("State Machine Safety", f"{node_id} applies {e.index} after {applied}")
            applied = e.index
            seen = self.applied.setdefault(e.index, e)
            if seen != e:
                raise fail("State Machine Safety", f"{node_id} applies {e} where another applied {seen}")
            known = self.committed.get(e.index)
            if known is not None and known[0] != e.term:
                raise fail("State Machine Safety", (
                    f"{node_id} applies {e} but ({e.index}, term {known[0]}) was committed"))

    def on_restore(self, node_id: str, meta: SnapshotMeta, entries: list[Entry]) -> None:
        last = entries[-1].index if entries else 0
        if last != meta.index:
            raise fail("State Machine Safety", (
                f"{node_id} restores a snapshot whose data ends at {last}, meta says {meta.index}"))

    def on_send(self, m: Message, synced_last: int, synced_vote: tuple[int, str | None]) -> None:
        """`m` leaves a node whose fsynced log ends at `synced_last`, with that term and vote."""
        if m.type is MessageType.APPEND_RESP and not m.reject and m.index > synced_last:
            raise fail("Durable before promised", (
                f"{m.frm} acknowledged index {m.index} to {m.to} in term {m.term}, but its"
                f" log is durable only up to {synced_last}"))
        # A durable later term is as good: the node can never vote in m.term again.
        if (m.type is MessageType.VOTE_RESP and not m.reject and synced_vote[0] <= m.term
                and synced_vote != (m.term, m.to)):
            raise fail("Durable before promised", (
                f"{m.frm} granted its vote of term {m.term} to {m.to}, but its durable term"
                f" and vote are {synced_vote}"))

    def on_start(self, node_id: str, raft: Raft, synced_commit: int) -> None:
        """A node (re)started from its storage, which had fsynced `synced_commit`."""
        if raft.commit_index < synced_commit:
            raise fail("Commit monotonicity", (
                f"{node_id} restarted with commit index {raft.commit_index}, below the"
                f" {synced_commit} it had fsynced"))
        self._role.pop(node_id, None)
        self._tail.pop(node_id, None)
        self._commit[node_id] = 0
        self.observe(node_id, raft)

    def on_stop(self, node_id: str) -> None:
        self._role.pop(node_id, None)
        self._tail.pop(node_id, None)
        self._commit.pop(node_id, None)

    # ---- reads -------------------------------------------------------------------

    def read_started(self, context: bytes) -> None:
        self.read_floor[context] = self.max_committed

    def read_answered(self, node_id: str, rs: ReadState) -> None:
        floor = self.read_floor.get(rs.context)
        if floor is not None and rs.index < floor:
            raise fail("Linearizable reads", (
                f"{node_id} got read index {rs.index} for {rs.context!r}, but {floor} was"
                f" committed before the read started"))

    # ---- full checks (end of a run, and on demand in tests) ----------------------

    def check_logs(self, rafts: list[Raft]) -> None:
        """Log Matching and Leader Completeness over the logs as they are now, pairwise."""
        for a in rafts:
            for b in rafts:
                if a is not b:
                    self._check_pair(a, b)

    def _check_pair(self, a: Raft, b: Raft) -> None:
        lo, hi = max(a.first_index, b.first_index), min(a.last_index, b.last_index)
        same = [i for i in range(lo, hi + 1) if a.term_at(i) == b.term_at(i)]
        if same and a.entries(lo, same[-1] + 1) != b.entries(lo, same[-1] + 1):
            raise fail("Log Matching", f"{a.id} and {b.id} share ({same[-1]}, term"
                       f" {a.term_at(same[-1])}) but differ before it")
        if b.role is Role.LEADER and b.term >= a.term:
            for i in range(lo, a.commit_index + 1):
                if a.term_at(i) != b.term_at(i):
                    raise fail("Leader Completeness", f"leader {b.id} lacks {i}, committed on {a.id}")
