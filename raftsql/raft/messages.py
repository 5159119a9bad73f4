"""Messages, entries and the other value types the Raft core consumes and produces.

Everything here is a frozen, slotted dataclass so values can be shared between the
core, the driver, storage and the simulator without defensive copies.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

NodeId = str


class MessageType(enum.IntEnum):
    # Local inputs (never sent over the wire); `step()` accepts them like any message.
    HUP = 1  # start an election (campaign)
    BEAT = 2  # leader: send heartbeats now
    PROPOSE = 3
    TRANSFER_LEADER = 4  # `frm` is the transferee; `to` is this node
    READ_INDEX = 5  # `context` identifies the read request
    # Peer messages.
    APPEND = 10
    APPEND_RESP = 11
    VOTE = 12
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    HEARTBEAT = 16
    HEARTBEAT_RESP = 17
    SNAPSHOT = 18  # InstallSnapshot; answered with APPEND_RESP
    TIMEOUT_NOW = 19  # leadership transfer: campaign immediately, skipping PreVote
    READ_INDEX_RESP = 20  # leader -> follower that forwarded a READ_INDEX


class EntryType(enum.IntEnum):
    NORMAL = 0  # data is the state machine's command; empty data is the leader's no-op
    CONF_CHANGE = 1  # data is ConfChange.encode()


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # also promotes a learner
    ADD_LEARNER = 1
    REMOVE = 2


class Role(enum.Enum):
    FOLLOWER = "Follower"
    PRE_CANDIDATE = "PreCandidate"
    CANDIDATE = "Candidate"
    LEADER = "Leader"


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def members(self) -> tuple[NodeId, ...]:
        return self.voters + self.learners


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""  # opaque to the core; the driver stores the node's addresses here

    def encode(self) -> bytes:
        return b"%d\x00%s\x00%s" % (self.type, self.node_id.encode(), self.context)

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        kind, node_id, context = data.split(b"\x00", 2)
        return cls(ConfChangeType(int(kind)), node_id.decode(), context)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: NodeId
    frm: NodeId
    term: int = 0
    log_term: int = 0  # APPEND: term of the entry at `index`; VOTE: candidate's last term
    index: int = 0  # APPEND: index preceding `entries`; VOTE: candidate's last index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APPEND_RESP reject: follower's guess of the matching index
    snapshot: Snapshot | None = None
    context: bytes = b""  # READ_INDEX / HEARTBEAT: read request id; VOTE: b"transfer"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once `applied >= index`, the read `context` may be served."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class SoftState:
    leader_id: NodeId | None
    role: Role


@dataclass(slots=True)
class Ready:
    """Everything the driver must do, then call `advance(ready)`: persist `snapshot`,
    `entries` and `hard_state`, send `messages`, apply `snapshot` then `committed_entries`,
    serve `read_states`. In which order: `raftsql.raft.order.ReadyOrder` says."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)


def _data_size(e: Entry) -> int:
    return len(e.data)


@dataclass(frozen=True, slots=True)
class Config:
    election_ticks: int = 10  # randomized election timeout drawn from [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    max_entries_per_msg: int = 1024  # batching: many entries per APPEND
    # ...and at most this many bytes of them (0: no limit; always at least one entry), as
    # `entry_size` counts them (the driver's: a reference to data kept beside the log
    # counts as that data)
    max_bytes_per_msg: int = 0
    entry_size: Callable[[Entry], int] = field(default=_data_size, repr=False)
    max_inflight: int = 2  # APPEND batches in flight per follower in replicate state
    pre_vote: bool = True
    check_quorum: bool = True

    def batch(self, entries: list[Entry]) -> list[Entry]:
        """The first of `entries` that fit in max_bytes_per_msg (at least one)."""
        budget = self.max_bytes_per_msg
        if not budget:
            return entries
        for n, e in enumerate(entries):
            budget -= self.entry_size(e)
            if budget < 0:
                return entries[: max(n, 1)]
        return entries

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_entries_per_msg < 1 or self.max_inflight < 1:
            raise ValueError("max_entries_per_msg and max_inflight must be >= 1")
        if self.max_bytes_per_msg < 0:
            raise ValueError("max_bytes_per_msg must be >= 0")
