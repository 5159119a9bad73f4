"""The one ordering of a Ready's effects: what must be durable before which message goes out,
when committed entries are applied, when reads are served (docs/design.md §2).

Sans-IO, like the core: `ReadyOrder.effects(rd, leader)` yields the effects of a Ready in
the order they must happen, and whoever runs the node carries each one out before asking for
the next (a Persist may go on in the background until its Synced); when the generator is
exhausted, the Ready may be `advance()`d. The asyncio driver
(`raftsql.node`) and the simulator (`raftsql.simulation`) both run this, so the order the
simulator's crashes and faults check is the order production uses.

The rules, from the Raft paper and Ongaro's dissertation:

- A message may promise what the Ready persists (a vote, an acknowledged entry): it goes out
  only after the Persist effect is done. A leader may send its APPENDs while it persists its
  own copy (§10.2.1), but only when the Ready changes neither term nor vote, since those must
  be durable before the leader acts on them; it counts its own copy only once the Ready is
  advanced.
- A leader applies committed entries while it persists new ones: committed entries were
  made durable by earlier Readies. Any other node applies after persisting and answering,
  since its leader is waiting for the answer, not for the apply.
- A received snapshot is restored (Apply) only once persisted.
- A hard state in which only the commit index moved is not synced on its own: after a crash
  the commit index is learned again, and never taken below what was applied. It is written
  with the next Persist (`unsynced` holds it meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from raftsql.raft.messages import Entry, HardState, Message, ReadState, Ready, Snapshot, SoftState


@dataclass(frozen=True, slots=True)
class Leadership:
    """Role or leader changed: a node that stopped leading fails what waits on its lead."""

    soft_state: SoftState


@dataclass(frozen=True, slots=True)
class Persist:
    """Start making durable, with one fsync: the snapshot (it replaces the stored log), then
    the entries (stored entries from the first one's index on are dropped first), then the
    hard state. It may go on in the background until `Synced`."""

    snapshot: Snapshot | None
    entries: list[Entry]
    hard_state: HardState | None


@dataclass(frozen=True, slots=True)
class Synced:
    """Wait until the Persist before it is durable (fsynced)."""

    persist: Persist


@dataclass(frozen=True, slots=True)
class Send:
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class Apply:
    """Restore the snapshot (if any), then apply the committed entries, in log order."""

    snapshot: Snapshot | None
    entries: list[Entry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Serve:
    """Answer these reads once the state machine has applied up to their index."""

    read_states: list[ReadState]


Effect = Leadership | Persist | Synced | Send | Apply | Serve


class ReadyOrder:
    """Orders the effects of one node's Readies; knows what of the hard state is durable."""

    def __init__(self, durable: HardState) -> None:
        self._durable_vote = (durable.term, durable.vote)
        self.unsynced: HardState | None = None  # commit moved; written with the next Persist

    def effects(self, rd: Ready, leader: bool) -> Iterator[Effect]:
        """The effects of `rd` in order; `leader`: the node leads as of this Ready. Each is
        done when the next is asked for (a Persist: synced)."""
        if rd.soft_state is not None:
            yield Leadership(rd.soft_state)
        hs = rd.hard_state
        vote_changed = hs is not None and (hs.term, hs.vote) != self._durable_vote
        must_persist = rd.snapshot is not None or bool(rd.entries) or vote_changed
        if must_persist:
            hs, self.unsynced = hs or self.unsynced, None
        elif hs is not None:
            hs, self.unsynced = None, hs
        persist = Persist(rd.snapshot, rd.entries, hs) if must_persist else None
        if persist is not None:
            yield persist
        early = leader and not vote_changed
        if early and rd.messages:
            yield Send(rd.messages)
        applied_early = leader and bool(rd.committed_entries) and rd.snapshot is None
        if applied_early:
            yield Apply(None, rd.committed_entries)
        if persist is not None:
            yield Synced(persist)
            if hs is not None:
                self._durable_vote = (hs.term, hs.vote)
        if not early and rd.messages:
            yield Send(rd.messages)
        if rd.snapshot is not None or (rd.committed_entries and not applied_early):
            yield Apply(rd.snapshot, [] if applied_early else rd.committed_entries)
        if rd.read_states:
            yield Serve(rd.read_states)
