"""`raftsql status`: every member's own view, the leader's lag figures, unreachable members."""

from __future__ import annotations

import asyncio
import sys

import pytest

from raftsql.cli.status import gather, render

from .inprocess import serving


@pytest.fixture
async def cluster(tmp_path):
    async with serving(tmp_path) as servers:
        yield servers


def member(node_id: str, voter: bool = True) -> dict:
    return {"id": node_id, "api_addr": f"http://{node_id}:4001", "addr": f"{node_id}:4002",
            "voter": voter}


def view(leader: str, state: str, applied: int, lag: dict | None = None, **raft) -> dict:
    r = {"state": state, "term": 3, "applied_index": applied, "commit_index": applied,
         "snapshot_index": 0, **raft}
    if lag is not None:
        r["lag"] = lag
    return {"leader": {"node_id": leader}, "raft": r}


def test_render_names_the_leader_each_followers_lag_and_who_is_unreachable() -> None:
    cluster = {
        "members": [member("a"), member("b"), member("c"), member("r", voter=False)],
        "views": {"a": view("a", "Leader", 10, {"b": 0, "c": 7, "r": 2}, snapshot_index=8,
                            snapshot_time=1000.0),
                  "b": view("a", "Follower", 10), "c": None,
                  "r": view("a", "Follower", 8)},
    }
    out = render(cluster, now=1000.0 + 3 * 3600 + 5).splitlines()
    assert out[0] == "4 members (3 voters, quorum 2); leader a, term 3"
    assert out[1].split() == ["id", "role", "api", "raft", "term", "applied", "commit", "lag",
                              "snapshot"]
    assert out[2].split() == ["a", "leader", "http://a:4001", "a:4002", "3", "10", "10", "at",
                              "8,", "3h", "ago"]
    assert out[3].split()[-2:] == ["0", "none"]
    assert out[4].split() == ["c", "unreachable", "http://c:4001", "c:4002"]
    assert out[5].split()[:3] == ["r", "follower", "(non-voter)"]
    assert out[5].split()[-2:] == ["2", "none"]


def test_render_says_when_there_is_no_leader_or_views_disagree() -> None:
    members = [member("a"), member("b")]
    none = {"members": members, "views": {"a": view("", "Candidate", 1), "b": None}}
    assert render(none).splitlines()[0].endswith("; no leader")
    split = {"members": members, "views": {"a": view("a", "Leader", 1, {}),
                                           "b": view("b", "Leader", 1, {})}}
    assert render(split).splitlines()[0].endswith("; leaders disagree: a, b")


async def test_status_asks_every_member_of_a_real_cluster(cluster) -> None:
    nodes = [s.node for s in cluster]
    leader = next(n for n in nodes if n.is_leader)
    follower = next(n for n in nodes if not n.is_leader)
    got = await asyncio.to_thread(gather, f"http://127.0.0.1:1,{follower.api_url}")
    assert [m["id"] for m in got["members"]] == ["n1", "n2", "n3"]
    assert set(got["views"]) == {"n1", "n2", "n3"}
    lead_view = got["views"][leader.node_id]
    assert set(lead_view["raft"]["lag"]) == {n.node_id for n in nodes if n is not leader}
    out = render(got)
    assert f"leader {leader.node_id}, term {leader.term}" in out.splitlines()[0]


async def test_the_status_command_fails_with_one_line_when_no_node_answers() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftsql", "status", "127.0.0.1:1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1 and out == b""
    assert err.decode().startswith("raftsql status: no node answered: http://127.0.0.1:1: ")
    assert err.count(b"\n") == 1
