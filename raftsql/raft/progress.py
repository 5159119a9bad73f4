"""What the leader knows of each follower, quorum arithmetic, and membership history.

Follows etcd's tracker/ and quorum/ packages, reduced to single-server membership changes
(dissertation §4.1), where a quorum is always a plain majority of one voter set.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from raftsql.raft.messages import ConfChange, ConfChangeType, ConfState, Entry, EntryType, NodeId


class ProgressState(enum.Enum):
    PROBE = "probe"  # next_index is a guess: one APPEND at a time until one is accepted
    REPLICATE = "replicate"  # stream entries optimistically, at most max_inflight batches
    SNAPSHOT = "snapshot"  # entries it needs are compacted: an InstallSnapshot is on its way


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower's log (§5.3: next_index and match_index)."""

    match_index: int = 0
    next_index: int = 1
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False  # PROBE: an APPEND is unanswered, wait before sending another
    inflights: deque[int] = field(default_factory=deque)  # last index of each batch in flight
    pending_snapshot: int = 0  # SNAPSHOT: index of the snapshot sent
    snapshot_elapsed: int = 0  # SNAPSHOT: ticks since sent, to retry if it was lost
    recent_active: bool = False  # heard from it since the last CheckQuorum round
    send_empty: bool = False  # REPLICATE: send a (possibly empty) APPEND to find lost batches
    leaving: int = 0  # removed: ticks until the leader forgets it (0: a member)

    def become_probe(self) -> None:
        self._reset(ProgressState.PROBE)
        self.next_index = self.match_index + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next_index = self.match_index + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflights.clear()
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.send_empty = False

    def is_paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflights) >= max_inflight
        return True

    def sent(self, last_index: int, n_entries: int) -> None:
        """An APPEND whose last entry is `last_index` went out."""
        self.send_empty = False
        if self.state is ProgressState.REPLICATE:
            if n_entries:
                self.next_index = last_index + 1
                self.inflights.append(last_index)
        else:
            self.probe_sent = True

    def wants_append(self, last_index: int, max_inflight: int) -> bool:
        if self.is_paused(max_inflight):
            return False
        return self.state is ProgressState.PROBE or self.send_empty or self.next_index <= last_index

    def on_accept(self, index: int, snapshot_index: int) -> bool:
        """An APPEND_RESP accepted entries up to `index`. True if match_index moved."""
        updated = self.maybe_update(index)
        if (self.state is ProgressState.PROBE and self.match_index == index) or (
            self.state is ProgressState.SNAPSHOT and self.match_index >= snapshot_index
        ):
            self.become_replicate()  # found where our logs match / it installed the snapshot
        return updated

    def on_reject(self, rejected: int, hint: int) -> None:
        if self.maybe_decrease_to(rejected, hint) and self.state is ProgressState.REPLICATE:
            self.become_probe()

    def on_heartbeat_resp(self, last_index: int, max_inflight: int) -> None:
        self.recent_active = True
        self.probe_sent = False
        if self.state is ProgressState.REPLICATE and self.match_index < last_index:
            # Batches in flight may be lost: send one more APPEND; if there is a gap the
            # follower rejects it and we fall back to probing from match_index.
            if self.is_paused(max_inflight):
                self.inflights.popleft()
            self.send_empty = True

    def tick(self, election_ticks: int) -> bool:
        """One tick at the leader. False: a removed node's time is up, forget it."""
        if self.state is ProgressState.SNAPSHOT:
            self.snapshot_elapsed += 1
            if self.snapshot_elapsed >= election_ticks:
                self.become_probe()  # no answer: the snapshot may be lost; send it again
        if self.leaving:
            self.leaving -= 1
            return self.leaving > 0
        return True

    def maybe_update(self, index: int) -> bool:
        """The follower accepted entries up to `index`. True if match_index moved (responses
        can arrive duplicated or out of order: old ones change nothing)."""
        updated = index > self.match_index
        if updated:
            self.match_index = index
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """The follower rejected an APPEND whose previous index was `rejected`; `hint` is
        the largest index that may still match. False if the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match_index:
                return False
            self.next_index = self.match_index + 1
            return True
        if self.next_index - 1 != rejected:
            return False
        self.next_index = max(min(rejected, hint + 1), self.match_index + 1)
        self.probe_sent = False
        return True


# ---- quorum ----------------------------------------------------------------------


def quorum(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(
    voters: Iterable[NodeId], self_id: NodeId, self_match: int, prs: dict[NodeId, Progress]
) -> int:
    """The largest index that a majority of `voters` hold."""

    def match_index(v: NodeId) -> int:
        if v == self_id:
            return self_match
        return prs[v].match_index if v in prs else 0

    matches = sorted((match_index(v) for v in voters), reverse=True)
    if not matches:
        return 0
    return matches[quorum(len(matches)) - 1]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def vote_result(voters: tuple[NodeId, ...], votes: dict[NodeId, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    q = quorum(len(voters))
    if granted >= q:
        return VoteResult.WON
    if granted + missing >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


def has_quorum(voters: tuple[NodeId, ...], ok: Callable[[NodeId], bool]) -> bool:
    return sum(1 for v in voters if ok(v)) >= quorum(len(voters))


# ---- membership ------------------------------------------------------------------


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState | None:
    """The configuration after `cc`, or None if `cc` changes nothing or would leave no voter."""
    node = cc.node_id
    voters = tuple(v for v in conf.voters if v != node)
    learners = tuple(v for v in conf.learners if v != node)
    if cc.type is ConfChangeType.ADD_VOTER:
        if node in conf.voters:
            return None
        return ConfState(voters + (node,), learners)
    if cc.type is ConfChangeType.ADD_LEARNER:
        if node in conf.learners or (node in conf.voters and not voters):
            return None
        return ConfState(voters, learners + (node,))
    if node not in conf.members() or not voters:
        return None
    return ConfState(voters, learners)


def readds(conf: ConfState, cc: ConfChange) -> bool:
    """Whether `cc` adds a member in the role it has, with a context (its new addresses):
    no change of membership, yet an entry the driver needs."""
    members = {ConfChangeType.ADD_VOTER: conf.voters, ConfChangeType.ADD_LEARNER: conf.learners}
    return bool(cc.context) and cc.node_id in members.get(cc.type, ())


def bootstrap_entries(conf: ConfState, context: Mapping[str, bytes]) -> list[Entry]:
    """A new cluster's membership as entries 1..n of term 1, ids sorted: identical on every
    initial member, whatever order each was given the list in (as etcd bootstraps).
    `context`: each member's ConfChange context (the same on every member too)."""
    changes = [ConfChange(ConfChangeType.ADD_VOTER, v, context.get(v, b""))
               for v in sorted(conf.voters)]
    changes += [ConfChange(ConfChangeType.ADD_LEARNER, v, context.get(v, b""))
                for v in sorted(conf.learners)]
    return [Entry(1, i, EntryType.CONF_CHANGE, cc.encode()) for i, cc in enumerate(changes, 1)]


class Membership:
    """Configurations by the index of the entry that introduced them.

    §4.1 of the dissertation: a server uses the latest configuration in its log, committed
    or not, so a configuration takes effect when appended and reverts if its entry is
    truncated. The oldest element is the configuration as of the snapshot.
    """

    def __init__(self, index: int, conf: ConfState) -> None:
        self._history: list[tuple[int, ConfState]] = [(index, conf)]

    @property
    def current(self) -> ConfState:
        return self._history[-1][1]

    @property
    def last_change_index(self) -> int:
        return self._history[-1][0]

    def push(self, index: int, cc: ConfChange) -> ConfState:
        conf = apply_change(self.current, cc) or self.current
        self._history.append((index, conf))
        return conf

    def truncate(self, index: int) -> None:
        """Forget changes from entries at `index` and after (they were overwritten)."""
        while len(self._history) > 1 and self._history[-1][0] >= index:
            self._history.pop()

    def at(self, index: int) -> ConfState:
        """The configuration in force once the entry at `index` is appended."""
        conf = self._history[0][1]
        for i, c in self._history:
            if i > index:
                break
            conf = c
        return conf

    def compact(self, index: int) -> None:
        """The snapshot moved to `index`: older configurations are no longer needed."""
        while len(self._history) > 1 and self._history[1][0] <= index:
            self._history.pop(0)


def quorum_active(voters: tuple[NodeId, ...], self_id: NodeId, prs: dict[NodeId, Progress]) -> bool:
    """CheckQuorum (§6.2): did a majority talk to us since the last check? Resets the marks."""

    def active(v: NodeId) -> bool:
        pr = prs.get(v)
        return v == self_id or (pr is not None and pr.recent_active)

    ok = has_quorum(voters, active)
    for pr in prs.values():
        pr.recent_active = False
    return ok


def most_up_to_date(voters: tuple[NodeId, ...], prs: dict[NodeId, Progress]) -> NodeId | None:
    """The voter (other than the leader) with the highest match_index; ties by id."""
    candidates = sorted(v for v in voters if v in prs)
    if not candidates:
        return None
    return max(candidates, key=lambda v: prs[v].match_index)


def track(prs: dict[NodeId, Progress], members: list[NodeId], next_index: int, grace: int) -> None:
    """Progress for `members`; a new one starts probing at `next_index`. One that is no
    member any more is kept `grace` ticks: the heartbeats it gets meanwhile tell it that
    its removal committed (so it stops campaigning), then `tick()` drops it."""
    for node, pr in prs.items():
        pr.leaving = 0 if node in members else (pr.leaving or grace)
    for node in members:
        if node not in prs:
            prs[node] = Progress(next_index=next_index, recent_active=True)


# ---- ReadIndex -------------------------------------------------------------------

Request = tuple[bytes, NodeId]  # (the read's context, the node that asked)


@dataclass(slots=True)
class ReadRound:
    """One heartbeat round confirming leadership for a batch of reads (§6.4)."""

    ctx: bytes  # carried by the heartbeats and echoed by their responses
    index: int  # commit index when the round started: the reads' read index
    requests: list[Request]
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    """The leader's pending ReadIndex requests (dissertation §6.4), in three stages:
    `waiting` for an entry of the leader's term to commit, `unsent` until the next
    Ready starts a heartbeat round for all of them, then in a `rounds` until a quorum
    of voters answered that round's heartbeat."""

    def __init__(self) -> None:
        self.waiting: list[Request] = []
        self.unsent: list[Request] = []
        self.rounds: list[ReadRound] = []
        self._seq = 0

    def clear(self) -> None:
        self.waiting, self.unsent, self.rounds = [], [], []

    def take_waiting(self) -> list[Request]:
        waiting, self.waiting = self.waiting, []
        return waiting

    def last_ctx(self) -> bytes:
        return self.rounds[-1].ctx if self.rounds else b""

    def start_round(self, term: int, commit: int, self_id: NodeId) -> bytes | None:
        """Gather the unsent reads into a round; its heartbeat context, or None."""
        if not self.unsent:
            return None
        self._seq += 1
        ctx = b"%d.%d" % (term, self._seq)
        self.rounds.append(ReadRound(ctx, commit, self.unsent, {self_id}))
        self.unsent = []
        return ctx

    def ack(self, ctx: bytes, frm: NodeId, voters: tuple[NodeId, ...]) -> list[ReadRound]:
        """`frm` answered the heartbeat of round `ctx`: the rounds now confirmed."""
        for i, r in enumerate(self.rounds):
            if r.ctx != ctx:
                continue
            r.acks.add(frm)
            if not has_quorum(voters, r.acks.__contains__):
                return []
            # A quorum still followed us after round i started, hence after every earlier
            # round started too: all of them are confirmed.
            done, self.rounds = self.rounds[: i + 1], self.rounds[i + 1 :]
            return done
        return []
