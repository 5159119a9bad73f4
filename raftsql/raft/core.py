"""The Raft state machine: elections, replication, commitment, reads, transfer, membership.

Pure: no I/O, no clock (time is `tick()`), randomness only from the injected `Random`.
Every input is a message (`step`) or a call that acts like one; every output is collected
in a `Ready` that the driver handles in order, then `advance()`s. Messages to followers
are built lazily in `ready()`, so all that was proposed (or read) since the previous
Ready goes out together: one APPEND per follower, one heartbeat round per batch of reads.

Roles change only in `_become_*`. Sections cited: the Raft paper (§5.x, §6, §7) and
Ongaro's dissertation (§3.10 transfer, §4 membership, §6.4 ReadIndex, §9.6 PreVote).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from raftsql.raft import progress as tracker
from raftsql.raft.log import RaftLog
from raftsql.raft.messages import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from raftsql.raft.progress import Membership, Progress, ProgressState, ReadOnly, Request, VoteResult

MT = MessageType
TRANSFER = b"transfer"  # VOTE context of a campaign started by TIMEOUT_NOW (§3.10)
_LOCAL = frozenset({MT.HUP, MT.BEAT, MT.PROPOSE, MT.TRANSFER_LEADER, MT.READ_INDEX})
_FROM_LEADER = frozenset({MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT})
_NO_HARD_STATE = HardState()
_NO_SNAPSHOT = SnapshotMeta()


class Raft:
    def __init__(
        self,
        node_id: NodeId,
        config: Config,
        rng: random.Random,
        *,
        hard_state: HardState = _NO_HARD_STATE,
        snapshot: SnapshotMeta = _NO_SNAPSHOT,
        entries: Sequence[Entry] = (),
        applied: int | None = None,
        initial: ConfState | None = None,
        initial_context: Mapping[NodeId, bytes] | None = None,
    ) -> None:
        """Recover from durable state (docs/design.md §4). `initial`: the membership of a new
        cluster this node is an initial member of, used only when the stored state is new
        (no term, no snapshot); `initial_context` gives the ConfChange context of each of
        its members' bootstrap entries (the driver puts addresses there)."""
        self._id = node_id
        self._config = config
        self._rng = rng
        self._term = hard_state.term
        self._vote = hard_state.vote
        self._log = RaftLog(snapshot, entries, hard_state.commit, applied)
        self._membership = Membership(snapshot.index, snapshot.conf)
        for e in self._log.entries:
            if e.type is EntryType.CONF_CHANGE:
                self._membership.push(e.index, ConfChange.decode(e.data))
        self._role = Role.FOLLOWER
        self._leader_id: NodeId | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._prs: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._lead_transferee: NodeId | None = None
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads = ReadOnly()
        if initial is not None and hard_state.term == 0 and snapshot.index == 0:
            # A new cluster: write its membership as committed entries 1..n of term 1, the
            # same on every initial member, so later joiners learn it from the log. Entries
            # stored with no hard state can only be a torn copy of these (a crash while the
            # first Ready was persisted): read as a log, a prefix would be a smaller cluster
            # that elects itself, so they are written again.
            self._membership = Membership(0, ConfState())
            self._append(tracker.bootstrap_entries(initial, initial_context or {}))
            self._term = 1
            self._log.commit_to(self._log.last_index)
        self._become_follower(self._term, None)
        self._prev_soft = self._soft_state()
        self._prev_hard = hard_state

    # ---- read-only view ----------------------------------------------------------

    id = property(lambda self: self._id)
    term = property(lambda self: self._term)
    vote = property(lambda self: self._vote)
    role = property(lambda self: self._role)
    leader_id = property(lambda self: self._leader_id)
    commit_index = property(lambda self: self._log.commit)
    applied = property(lambda self: self._log.applied)
    last_index = property(lambda self: self._log.last_index)
    first_index = property(lambda self: self._log.first_index)
    lead_transferee = property(lambda self: self._lead_transferee)
    snapshot_meta = property(lambda self: self._log.snapshot)
    randomized_election_timeout = property(lambda self: self._randomized_timeout)

    @property
    def conf(self) -> ConfState:
        return self._membership.current

    def conf_at(self, index: int) -> ConfState:
        """The membership in force once the entry at `index` (>= snapshot index) is appended."""
        return self._membership.at(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) still in memory (for inspection: the simulator, status pages)."""
        return self._log.slice(max(lo, self._log.first_index), hi) or []

    def term_at(self, index: int) -> int | None:  # None: compacted, or not in the log
        return self._log.term(index)

    def progress(self) -> dict[NodeId, tuple[int, int]]:
        """Leader only: node -> (match_index, next_index), this node included."""
        if self._role is not Role.LEADER:
            return {}
        out = {n: (pr.match_index, pr.next_index) for n, pr in self._prs.items()}
        out[self._id] = (self._log.stable, self._log.last_index + 1)
        return out

    # ---- inputs ------------------------------------------------------------------

    def tick(self) -> None:
        if self._role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        self.step(Message(MT.HUP, self._id, self._id))

    def propose(self, data: bytes) -> int | None:
        return self._propose(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int | None:
        if self._role is not Role.LEADER:
            return None
        if self._membership.last_change_index > self._log.commit:
            return None  # §4.1: one change at a time; the previous one is not committed
        if self._log.term(self._log.commit) != self._term:
            return None  # raft-dev 2015 fix: commit an entry of this term before a change
        if tracker.apply_change(self.conf, cc) is None and not tracker.readds(self.conf, cc):
            return None
        return self._propose(EntryType.CONF_CHANGE, cc.encode())

    def read_index(self, context: bytes) -> bool:
        if self._role is Role.LEADER:
            self._read_index(context, self._id)
        return self._role is Role.LEADER

    def transfer_leadership(self, to: NodeId | None = None) -> bool:
        if self._role is not Role.LEADER:
            return False
        if to is None:
            to = tracker.most_up_to_date(self.conf.voters, self._prs)
        return to is not None and self._transfer(to)

    def compact(self, index: int, term: int) -> None:
        meta = SnapshotMeta(index, term, self._membership.at(index))
        self._log.compact(index, term, meta)
        self._membership.compact(index)

    def step(self, m: Message) -> None:
        if m.type not in _LOCAL and not self._check_term(m):
            return
        if m.type is MT.HUP:
            self._hup(transfer=False)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self._role is Role.LEADER:
            self._step_leader(m)
        elif self._role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ---- output ------------------------------------------------------------------

    def has_ready(self) -> bool:
        if (
            self._soft_state() != self._prev_soft
            or self._hard_state() != self._prev_hard
            or self._log.has_unstable()
            or self._log.has_committed()
            or self._msgs
            or self._read_states
        ):
            return True
        last, window = self._log.last_index, self._config.max_inflight
        return self._role is Role.LEADER and (
            bool(self._reads.unsent) or any(pr.wants_append(last, window) for pr in self._prs.values())
        )

    def ready(self) -> Ready:
        if self._role is Role.LEADER:
            ctx = self._reads.start_round(self._term, self._log.commit, self._id)
            if ctx is not None:  # §6.4: one heartbeat round for all reads since the last Ready
                self._bcast_heartbeat(ctx)
            for node, pr in self._prs.items():
                self._send_appends(node, pr)
        rd = Ready()
        soft, hard = self._soft_state(), self._hard_state()
        if soft != self._prev_soft:
            rd.soft_state = self._prev_soft = soft
        if hard != self._prev_hard:
            rd.hard_state = self._prev_hard = hard
        rd.snapshot, rd.entries = self._log.take_unstable()
        rd.committed_entries = self._log.take_committed()
        rd.messages, self._msgs = self._msgs, []
        rd.read_states, self._read_states = self._read_states, []
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self._log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            self._log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
        if rd.committed_entries:
            self._log.applied_to(rd.committed_entries[-1].index)
        if self._role is Role.LEADER and rd.entries:
            self._maybe_commit()  # the leader counts itself once its entries are durable

    def _soft_state(self) -> SoftState:
        return SoftState(self._leader_id, self._role)

    def _hard_state(self) -> HardState:  # what must be durable before messages go out
        return HardState(self._term, self._vote, self._log.commit)

    def _send(self, kind: MessageType, to: NodeId, term: int | None = None, **fields: Any) -> None:
        term = self._term if term is None else term
        self._msgs.append(Message(kind, to, self._id, term, **fields))

    # ---- terms and roles ---------------------------------------------------------

    def _check_term(self, m: Message) -> bool:
        """§5.1: compare terms once for every peer message. False: drop it."""
        if m.term > self._term:
            in_lease = self._leader_id is not None and self._election_elapsed < self._config.election_ticks
            lease_on = self._config.check_quorum or m.type is MT.PRE_VOTE
            if m.type in (MT.VOTE, MT.PRE_VOTE) and m.context != TRANSFER and in_lease and lease_on:
                # §4.2.3, §9.6: who heard from a leader within the election timeout ignores
                # (pre)vote requests, so a rejoining or removed server cannot depose it.
                return False
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                return True  # §9.6: pre-votes never change anyone's term
            self._become_follower(m.term, m.frm if m.type in _FROM_LEADER else None)
            return True
        if m.term < self._term:
            if m.type in (MT.APPEND, MT.HEARTBEAT):
                # §5.1: a deposed leader, or a node whose election failed: tell it our term.
                # With PreVote/CheckQuorum terms no longer rise in minority partitions, and
                # without them the vote requests of a higher term may never reach it (when
                # the candidate's older membership does not count it as a voter): either
                # way this is how such a node learns it is stale.
                self._send(MT.APPEND_RESP, m.frm)
            elif m.type is MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, m.frm, reject=True)
            return False
        return True

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term, self._vote = term, None
            # Acknowledgements not yet handed out may cover entries a leader of the new term
            # truncates before they are persisted (its APPEND comes in the same batch):
            # drop them, or they would promise what is never durable. Losing them is safe.
            self._msgs = [m for m in self._msgs if m.type is not MT.APPEND_RESP]
        self._leader_id = None
        self._election_elapsed = self._heartbeat_elapsed = 0
        et = self._config.election_ticks
        self._randomized_timeout = self._rng.randrange(et, 2 * et)  # §5.2
        self._votes = {}
        self._prs = {}
        self._lead_transferee = None
        self._reads.clear()

    def _become_follower(self, term: int, leader_id: NodeId | None) -> None:
        self._reset(term)
        self._role, self._leader_id = Role.FOLLOWER, leader_id

    def _become_pre_candidate(self) -> None:
        # §9.6: no new term and no vote yet; only asks whether it could win.
        self._role, self._leader_id, self._votes = Role.PRE_CANDIDATE, None, {}

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._role, self._vote = Role.CANDIDATE, self._id

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role, self._leader_id = Role.LEADER, self._id
        self._sync_progress()
        # §5.4.2 / §8: a no-op of the new term, so that everything before it commits.
        self._append([Entry(self._term, self._log.last_index + 1)])

    def _promotable(self) -> bool:
        # Learners and non-members never campaign. Dissertation §4.1: a voter being removed
        # still campaigns until its removal commits (it may be the only one with the
        # removal entry); it does not count its own vote (conf.voters excludes it).
        committed = self._membership.at(self._log.commit)
        return self._id in self.conf.voters or self._id in committed.voters

    # ---- election (§5.2, §9.6) ---------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self.campaign()

    def _hup(self, transfer: bool) -> None:
        if self._role is not Role.LEADER and self._promotable():
            self._campaign(pre=self._config.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if pre:
            self._become_pre_candidate()
            kind, term = MT.PRE_VOTE, self._term + 1
        else:
            self._become_candidate()
            kind, term = MT.VOTE, self._term
        if self._poll(self._id, True) is not VoteResult.PENDING:
            return
        for v in self.conf.voters:
            if v != self._id:
                self._send(kind, v, term=term, index=self._log.last_index,
                           log_term=self._log.last_term, context=TRANSFER if transfer else b"")

    def _poll(self, frm: NodeId, granted: bool) -> VoteResult:
        self._votes.setdefault(frm, granted)  # a duplicate answer changes nothing
        result = tracker.vote_result(self.conf.voters, self._votes)
        if result is VoteResult.WON:
            if self._role is Role.PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self._term, None)
        return result

    def _handle_vote_request(self, m: Message) -> None:
        # §5.2: at most one vote per term (re-granting to the same candidate is harmless);
        # §5.4.1: only to a candidate whose log is at least as up-to-date as ours.
        can_vote = (
            self._vote == m.frm
            or (self._vote is None and self._leader_id is None)
            or (m.type is MT.PRE_VOTE and m.term > self._term)
        )
        kind = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            self._send(kind, m.frm, term=m.term)
            if m.type is MT.VOTE:
                self._vote = m.frm
                self._election_elapsed = 0
        else:
            self._send(kind, m.frm, reject=True)

    def _step_candidate(self, m: Message) -> None:
        expected = MT.PRE_VOTE_RESP if self._role is Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type in _FROM_LEADER:
            self._become_follower(m.term, m.frm)  # §5.2: a leader of our term exists
            self._step_follower(m)
        elif m.type is expected:
            self._poll(m.frm, not m.reject)

    # ---- follower ----------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if m.type in _FROM_LEADER:
            self._leader_id = m.frm
            self._election_elapsed = 0
            if m.type is MT.APPEND:
                self._handle_append(m)
            elif m.type is MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type is MT.TIMEOUT_NOW:
            self._hup(transfer=True)  # §3.10: skip PreVote, the leader asked for it
        elif m.type is MT.READ_INDEX and m.frm == self._id and self._leader_id is not None:
            self._send(MT.READ_INDEX, self._leader_id, term=0, context=m.context)
        elif m.type is MT.TRANSFER_LEADER and self._leader_id is not None:
            self._msgs.append(replace(m, to=self._leader_id))
        elif m.type is MT.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        accepted = self._log.accept(m.index, m.log_term, m.entries)
        if accepted is None:
            # Hint where our log may match: the last index whose term is <= the leader's
            # term there, so that the leader skips a whole term per round-trip.
            hint, hint_term = self._log.find_conflict_by_term(m.index, m.log_term)
            self._send(MT.APPEND_RESP, m.frm, index=m.index, reject=True,
                       reject_hint=hint, log_term=hint_term)
            return
        last_new, suffix = accepted
        self._append(suffix)  # §5.3: delete the conflicting entry and all that follow it
        self._log.commit_to(min(m.commit, last_new))
        self._send(MT.APPEND_RESP, m.frm, index=last_new)

    def _handle_heartbeat(self, m: Message) -> None:
        self._log.commit_to(m.commit)  # min(match_index, commit): entries we hold
        self._send(MT.HEARTBEAT_RESP, m.frm, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self._log.maybe_restore(m.snapshot):  # §7
            self._membership = Membership(m.snapshot.meta.index, m.snapshot.meta.conf)
        self._send(MT.APPEND_RESP, m.frm, index=self._log.commit)

    def _append(self, entries: Sequence[Entry]) -> None:
        """Append to our log; membership follows the log (§4.1), also when truncated."""
        truncated = self._log.append(entries)
        if truncated:
            self._membership.truncate(truncated)
        changed = False
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                self._membership.push(e.index, ConfChange.decode(e.data))
                changed = True
        if changed and self._role is Role.LEADER:
            self._sync_progress()
            self._maybe_commit()  # a smaller quorum may already hold more

    # ---- leader ------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._config.election_ticks:
            self._election_elapsed = 0
            if self._config.check_quorum and not tracker.quorum_active(self.conf.voters, self._id, self._prs):
                self._become_follower(self._term, None)  # §6.2: we may be partitioned away
                return
            self._lead_transferee = None  # §3.10: abort a transfer that took too long
        for node, pr in list(self._prs.items()):
            if not pr.tick(self._config.election_ticks):
                del self._prs[node]
        if self._heartbeat_elapsed >= self._config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _step_leader(self, m: Message) -> None:
        if m.type is MT.BEAT:
            self._bcast_heartbeat()
        elif m.type is MT.PROPOSE:  # the same as propose() / propose_conf_change()
            for e in m.entries:
                cc = ConfChange.decode(e.data) if e.type is EntryType.CONF_CHANGE else None
                self.propose(e.data) if cc is None else self.propose_conf_change(cc)
        elif m.type is MT.READ_INDEX:
            self._read_index(m.context, m.frm)
        elif m.type is MT.TRANSFER_LEADER:
            self._transfer(m.frm)
        elif m.type in (MT.APPEND_RESP, MT.HEARTBEAT_RESP) and m.frm in self._prs:
            pr = self._prs[m.frm]
            pr.recent_active = True  # CheckQuorum: it still follows us
            if m.type is MT.APPEND_RESP:
                self._handle_append_resp(m, pr)
            else:
                self._handle_heartbeat_resp(m, pr)

    def _propose(self, kind: EntryType, data: bytes) -> int | None:
        if self._role is not Role.LEADER or self._lead_transferee is not None:
            return None  # §3.10: no proposals while handing leadership over
        if self._id not in self.conf.members():
            return None  # §4.2.2: we are being removed; only finish what is pending
        index = self._log.last_index + 1
        self._append([Entry(self._term, index, kind, data)])
        return index

    def _sync_progress(self) -> None:
        """Replicate to the members of the latest configuration and, until a while after
        its removal commits, to a removed one, so that it learns of it (§4.1)."""
        committed = self._membership.at(self._log.commit).members()
        members = [n for n in self.conf.members() + committed if n != self._id]
        tracker.track(self._prs, members, self._log.last_index + 1, self._config.election_ticks)
        if self._lead_transferee not in self.conf.voters:
            self._lead_transferee = None

    def _maybe_commit(self) -> None:
        # The leader counts itself only with what it persisted (advance()).
        index = tracker.committed_index(self.conf.voters, self._id, self._log.stable, self._prs)
        # §5.4.2: only an entry of the current term is committed by counting replicas
        # (Figure 8); earlier entries commit indirectly with it.
        if index <= self._log.commit or self._log.term(index) != self._term:
            return
        committed_before = self._log.commit
        self._log.commit_to(index)
        if committed_before < self._membership.last_change_index <= index:
            self._sync_progress()  # a change committed: stop replicating to a removed node
        for ctx, frm in self._reads.take_waiting():
            self._read_index(ctx, frm)
        if self._id not in self.conf.voters and self._id not in self.conf_at(index).voters:
            self._step_down_removed()

    def _step_down_removed(self) -> None:
        """§4.2.2: our removal committed; hand over at once rather than leave the cluster
        waiting for an election timeout."""
        target = tracker.most_up_to_date(self.conf.voters, self._prs)
        if target is not None and self._prs[target].match_index == self._log.last_index:
            self._send(MT.TIMEOUT_NOW, target)
        self._become_follower(self._term, None)

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint  # the follower's guess; refined if it told its term there
            if m.log_term > 0:
                hint = self._log.find_conflict_by_term(hint, m.log_term)[0]
            pr.on_reject(m.index, hint)
            return
        if pr.on_accept(m.index, self._log.snapshot.index):
            self._maybe_commit()
        if m.frm == self._lead_transferee and pr.match_index == self._log.last_index:
            self._send(MT.TIMEOUT_NOW, m.frm)  # §3.10: caught up, it may campaign now

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.on_heartbeat_resp(self._log.last_index, self._config.max_inflight)
        for r in self._reads.ack(m.context, m.frm, self.conf.voters) if m.context else ():
            self._answer_reads(r.index, r.requests)

    def _send_appends(self, node: NodeId, pr: Progress) -> None:
        """Everything this follower may receive now, max_inflight batches at most."""
        while pr.wants_append(self._log.last_index, self._config.max_inflight):
            if not self._send_append(node, pr):
                return

    def _send_append(self, node: NodeId, pr: Progress) -> bool:
        prev = pr.next_index - 1
        prev_term = self._log.term(prev)
        entries = self._log.slice(pr.next_index, pr.next_index + self._config.max_entries_per_msg)
        if entries:
            entries = self._config.batch(entries)
        if prev_term is None or entries is None:
            # §7: what it needs was compacted away. The driver attaches the snapshot's data.
            self._send(MT.SNAPSHOT, node, snapshot=Snapshot(self._log.snapshot))
            pr.become_snapshot(self._log.snapshot.index)
            return False
        if not entries and pr.state is ProgressState.REPLICATE and not pr.send_empty:
            return False
        self._send(MT.APPEND, node, index=prev, log_term=prev_term,
                   entries=tuple(entries), commit=self._log.commit)
        pr.sent(prev + len(entries), len(entries))
        return pr.state is ProgressState.REPLICATE and bool(entries)

    def _bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        # Without a new round, repeat the newest one's context: its heartbeats may be lost.
        ctx = self._reads.last_ctx() if ctx is None else ctx
        for node, pr in self._prs.items():  # commit: only what the follower is known to hold
            self._send(MT.HEARTBEAT, node, commit=min(pr.match_index, self._log.commit), context=ctx)

    # ---- ReadIndex (dissertation §6.4) -------------------------------------------

    def _read_index(self, ctx: bytes, frm: NodeId) -> None:
        if self._log.term(self._log.commit) != self._term:
            # Step 1: until an entry of its term commits, a new leader does not know
            # the commit index. Queue the read.
            self._reads.waiting.append((ctx, frm))
        elif tracker.has_quorum(self.conf.voters, lambda v: v == self._id):
            self._answer_reads(self._log.commit, [(ctx, frm)])  # nobody to confirm with
        else:
            self._reads.unsent.append((ctx, frm))

    def _answer_reads(self, index: int, requests: list[Request]) -> None:
        for ctx, frm in requests:
            if frm == self._id:
                self._read_states.append(ReadState(index, ctx))
            else:
                self._send(MT.READ_INDEX_RESP, frm, index=index, context=ctx)

    # ---- leadership transfer (dissertation §3.10) --------------------------------

    def _transfer(self, to: NodeId) -> bool:
        if to == self._id or to not in self.conf.voters or to not in self._prs:
            return False
        if self._lead_transferee == to:
            return True
        self._lead_transferee = to
        self._election_elapsed = 0  # the transfer is aborted after an election timeout
        if self._prs[to].match_index == self._log.last_index:
            self._send(MT.TIMEOUT_NOW, to)
        return True
