"""Follower progress (probe / replicate / snapshot), quorum arithmetic, membership."""

from __future__ import annotations

from raftsql.raft.messages import ConfChange, ConfChangeType, ConfState
from raftsql.raft.progress import (
    Membership,
    Progress,
    ProgressState,
    ReadOnly,
    VoteResult,
    apply_change,
    committed_index,
    track,
    vote_result,
)

ADD, LEARNER, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE


def test_probe_sends_one_at_a_time() -> None:
    pr = Progress(next_index=11)
    assert pr.wants_append(10, max_inflight=2)
    pr.sent(10, 0)
    assert pr.is_paused(2) and not pr.wants_append(10, 2)
    pr.on_heartbeat_resp(10, 2)  # a heartbeat answer lets it probe again
    assert not pr.is_paused(2)


def test_probe_backs_up_by_the_hint_and_ignores_stale_rejections() -> None:
    pr = Progress(next_index=11)
    pr.sent(10, 0)
    pr.on_reject(7, 3)  # stale: not the probe in flight
    assert pr.next_index == 11
    pr.on_reject(10, 3)
    assert pr.next_index == 4 and not pr.probe_sent


def test_accept_moves_probe_to_replicate_and_limits_inflight() -> None:
    pr = Progress(next_index=4)
    assert pr.on_accept(3, 0) and pr.state is ProgressState.REPLICATE and pr.next_index == 4
    pr.sent(6, 3)
    pr.sent(9, 3)
    assert pr.is_paused(2) and pr.next_index == 10
    assert not pr.on_accept(2, 0)  # stale
    assert pr.on_accept(6, 0) and list(pr.inflights) == [9]
    assert not pr.is_paused(2)


def test_replicate_rejection_falls_back_to_probe() -> None:
    pr = Progress(match_index=5, next_index=10, state=ProgressState.REPLICATE)
    pr.on_reject(4, 0)  # stale: at or below match
    assert pr.state is ProgressState.REPLICATE
    pr.on_reject(9, 0)
    assert pr.state is ProgressState.PROBE and pr.next_index == 6


def test_snapshot_state_waits_then_retries() -> None:
    pr = Progress(next_index=2)
    pr.become_snapshot(50)
    assert pr.is_paused(2)
    for _ in range(9):
        assert pr.tick(10)
    assert pr.state is ProgressState.SNAPSHOT
    assert pr.tick(10)
    assert pr.state is ProgressState.PROBE and pr.next_index == 1
    pr.become_snapshot(50)
    pr.on_accept(50, 50)
    assert pr.state is ProgressState.REPLICATE and pr.next_index == 51


def test_removed_node_is_kept_for_a_grace_period() -> None:
    prs = {"b": Progress(), "c": Progress()}
    track(prs, ["b", "d"], 5, grace=2)
    assert sorted(prs) == ["b", "c", "d"] and prs["d"].next_index == 5
    assert prs["c"].tick(10) and not prs["c"].tick(10)  # then the leader forgets it
    track(prs, ["b", "c", "d"], 5, grace=2)  # re-added meanwhile: a member again
    assert prs["c"].leaving == 0 and prs["c"].tick(10)


def test_heartbeat_response_reopens_a_full_window() -> None:
    pr = Progress(match_index=3, next_index=4, state=ProgressState.REPLICATE)
    pr.sent(5, 2)
    pr.sent(7, 2)
    pr.on_heartbeat_resp(7, 2)
    assert not pr.is_paused(2) and pr.send_empty and pr.recent_active


def test_committed_index_is_the_majority_match() -> None:
    prs = {n: Progress(match_index=i) for n, i in {"b": 3, "c": 9, "d": 1, "e": 4}.items()}
    assert committed_index(("a", "b", "c"), "a", 5, prs) == 5
    assert committed_index(("a", "b", "c", "d"), "a", 5, prs) == 3
    assert committed_index(("a", "b", "c", "d", "e"), "a", 5, prs) == 4
    assert committed_index(("d",), "a", 5, prs) == 1
    assert committed_index(("b", "c", "x"), "a", 5, prs) == 3  # leader not a voter; x unknown


def test_vote_result() -> None:
    voters = ("a", "b", "c", "d")
    assert vote_result(voters, {"a": True, "b": True}) is VoteResult.PENDING
    assert vote_result(voters, {"a": True, "b": True, "c": True}) is VoteResult.WON
    assert vote_result(voters, {"a": True, "b": False, "c": False}) is VoteResult.LOST


def test_apply_change_refuses_no_ops_and_the_last_voter() -> None:
    conf = ConfState(("a", "b"), ("l",))
    assert apply_change(conf, ConfChange(ADD, "c")) == ConfState(("a", "b", "c"), ("l",))
    assert apply_change(conf, ConfChange(ADD, "l")) == ConfState(("a", "b", "l"), ())
    assert apply_change(conf, ConfChange(LEARNER, "b")) == ConfState(("a",), ("l", "b"))
    assert apply_change(conf, ConfChange(REMOVE, "l")) == ConfState(("a", "b"), ())
    assert apply_change(conf, ConfChange(ADD, "a")) is None
    assert apply_change(conf, ConfChange(LEARNER, "l")) is None
    assert apply_change(conf, ConfChange(REMOVE, "zz")) is None
    assert apply_change(ConfState(("a",)), ConfChange(REMOVE, "a")) is None
    assert apply_change(ConfState(("a",)), ConfChange(LEARNER, "a")) is None


def test_membership_follows_the_log() -> None:
    """Dissertation §4.1: latest configuration in the log, reverted on truncation."""
    m = Membership(0, ConfState(("a",)))
    m.push(5, ConfChange(ADD, "b"))
    m.push(9, ConfChange(ADD, "c"))
    assert m.current.voters == ("a", "b", "c") and m.last_change_index == 9
    assert m.at(4).voters == ("a",) and m.at(5).voters == ("a", "b")
    m.truncate(7)
    assert m.current.voters == ("a", "b")
    m.compact(6)
    assert m.at(0).voters == ("a", "b")


def test_read_only_releases_every_round_up_to_the_confirmed_one() -> None:
    ro = ReadOnly()
    ro.unsent.append((b"r1", "a"))
    ctx1 = ro.start_round(2, 10, "a")
    ro.unsent.append((b"r2", "a"))
    ctx2 = ro.start_round(2, 12, "a")
    assert ctx1 and ctx2 and ctx1 != ctx2 and ro.last_ctx() == ctx2
    voters = ("a", "b", "c")
    assert ro.ack(b"nope", "b", voters) == []
    done = ro.ack(ctx2, "b", voters)
    assert [(r.index, r.requests) for r in done] == [(10, [(b"r1", "a")]), (12, [(b"r2", "a")])]
    assert ro.rounds == [] and ro.start_round(2, 12, "a") is None
