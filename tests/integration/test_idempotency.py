"""Exactly-once writes on real processes: a write resent with its idempotency key is applied
once and answered with the first outcome, also by a node that learnt the key from a
snapshot, after every node restarted, and by a later leader."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from raftsql.cli.launcher import LocalCluster, http

from .conftest import eventually, execute, query

pytestmark = pytest.mark.slow
KEY = "c56a4180-65aa-42ec-a945-5fd21dec0538"


def keyed_write(url: str, statements: list) -> tuple[int, bool, bytes]:
    req = urllib.request.Request(
        f"{url}/db/execute", data=orjson.dumps(statements), method="POST",
        headers={"Content-Type": "application/json", "X-Raftsql-Idempotency-Key": KEY})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            replayed = resp.headers.get("X-Raftsql-Idempotent-Replay") == "true"
            return resp.status, replayed, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, False, e.read()


def test_a_retried_write_applies_once_across_snapshot_restart_and_leader_change(tmp_path):
    cluster = LocalCluster(3, str(tmp_path), extra_args=[
        "--heartbeat-ms", "50", "--election-ms", "500", "--snapshot-threshold", "30",
        "--trailing-logs", "5"])
    cluster.start()
    try:
        leader = cluster.leader(timeout=30)
        follower, lagging = [i for i in cluster.ids if i != leader]
        execute(cluster.url(leader), ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
        write = [["INSERT INTO t(v) VALUES(?)", "once"]]
        status, replayed, first = keyed_write(cluster.url(follower), write)
        assert status == 200 and not replayed
        # A node that was down gets the key with the snapshot (its log is compacted away).
        eventually(lambda: query(cluster.url(lagging), "SELECT count(*) FROM t", "none") == [[1]])
        cluster.kill(lagging)
        for i in range(80):
            execute(cluster.url(leader), [["INSERT INTO t(v) VALUES(?)", f"other {i}"]])
        assert cluster.status(leader)["store"]["raft"]["first_log_index"] > 3
        cluster.start_node(lagging)
        eventually(lambda: query(cluster.url(lagging), "SELECT count(*) FROM t", "none") == [[81]])
        # Every node restarts from its own files, then the one that got the snapshot leads.
        for node_id in cluster.ids:
            cluster.kill(node_id)
        cluster.start()
        cluster.leader(timeout=30)
        eventually(lambda: cluster.leader() == lagging or (
            http("POST", f"{cluster.url(lagging)}/leader", {"id": lagging})[0] == 200
            and cluster.leader() == lagging))
        status, replayed, again = keyed_write(cluster.url(follower), write)
        assert status == 200 and replayed and again == first
        assert query(cluster.url(lagging), "SELECT count(*) FROM t WHERE v = 'once'") == [[1]]
    finally:
        cluster.stop()
