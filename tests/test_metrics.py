"""GET /metrics on real in-process nodes: Prometheus' text format (read back with
prometheus_client's own parser), figures that agree with /status, and the follower lag."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .inprocess import serving, wait_for


@pytest.fixture
async def cluster(tmp_path):
    async with serving(tmp_path) as servers, aiohttp.ClientSession() as session:
        nodes = [s.node for s in servers]
        yield nodes, next(n for n in nodes if n.is_leader), session


async def scrape(session, node) -> dict[tuple[str, tuple], float]:
    """Every sample of the node's /metrics: (name, sorted labels) -> value."""
    async with session.get(node.api_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def write(session, node, n: int) -> None:
    statements = ["CREATE TABLE IF NOT EXISTS t(x)"] + [f"INSERT INTO t VALUES({i})"
                                                        for i in range(n)]
    for stmt in statements:
        async with session.post(node.api_url + "/db/execute", json=[stmt]) as resp:
            assert resp.status == 200


async def test_the_leader_counts_what_it_proposes_and_times_what_it_writes(cluster) -> None:
    nodes, leader, session = cluster
    follower = next(n for n in nodes if n is not leader)
    await write(session, follower, 5)  # forwarded: the leader proposes all six
    m = await scrape(session, leader)
    assert m[("raftsql_raft_proposals_total", ())] == 6
    assert m[("raftsql_raft_leader", ())] == 1
    assert m[("raftsql_raft_term", ())] == leader.term
    assert m[("raftsql_raft_commit_index", ())] >= m[("raftsql_raft_applied_index", ())] >= 7
    assert m[("raftsql_raft_leader_changes_total", ())] >= 1
    for name in ("raftsql_fsync_duration_seconds", "raftsql_apply_duration_seconds"):
        count = m[(f"{name}_count", ())]
        assert count >= 6 and m[(f"{name}_bucket", (("le", "+Inf"),))] == count
        assert m[(f"{name}_sum", ())] > 0
    f = await scrape(session, follower)
    assert f[("raftsql_raft_proposals_total", ())] == 0 and f[("raftsql_raft_leader", ())] == 0
    assert f[("raftsql_http_requests_total", (("code", "200"), ("route", "/db/execute")))] == 6


async def test_the_leader_shows_how_far_each_follower_is_behind(cluster) -> None:
    nodes, leader, session = cluster
    await write(session, leader, 3)
    await wait_for(lambda: all(n.applied_index == leader.applied_index for n in nodes))
    m = await scrape(session, leader)
    lags = {labels[0][1]: v for (name, labels), v in m.items()
            if name == "raftsql_raft_follower_lag_entries"}
    assert set(lags) == {n.node_id for n in nodes if n is not leader}
    assert all(v == 0 for v in lags.values())
    follower = next(n for n in nodes if n is not leader)
    assert not [k for k in await scrape(session, follower)
                if k[0] == "raftsql_raft_follower_lag_entries"]


async def test_requests_are_counted_by_route_pattern_and_code(cluster) -> None:
    nodes, leader, session = cluster
    for path in ("/v1/kv/a/b", "/v1/kv/c", "/no/such/route", "/status"):
        async with session.get(leader.api_url + path) as resp:
            await resp.read()
    m = await scrape(session, leader)
    assert m[("raftsql_http_requests_total", (("code", "404"), ("route", "/v1/kv/{key}")))] == 2
    assert m[("raftsql_http_requests_total", (("code", "404"), ("route", "unmatched")))] == 1
    assert m[("raftsql_http_request_duration_seconds_count", (("route", "/status"),))] == 1


async def test_snapshots_are_counted_and_status_carries_the_same_figures(cluster) -> None:
    nodes, leader, session = cluster
    await write(session, leader, 2)
    async with session.post(leader.api_url + "/snapshot") as resp:
        assert resp.status == 200
    m = await scrape(session, leader)
    assert m[("raftsql_snapshot_duration_seconds_count", ())] == 1
    assert m[("raftsql_snapshot_bytes_total", ())] > 0
    assert m[("raftsql_snapshot_index", ())] == leader.status()["raft"]["snapshot_index"] > 0
    async with session.get(leader.api_url + "/status?key=metrics") as resp:
        status = json.loads(await resp.read())
    assert status["proposals"] == m[("raftsql_raft_proposals_total", ())] == 3
    assert status["snapshot"]["count"] == 1
    assert status["snapshot"]["bytes"] == m[("raftsql_snapshot_bytes_total", ())]
    assert status["fsync"]["count"] >= m[("raftsql_fsync_duration_seconds_count", ())]
