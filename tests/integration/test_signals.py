"""SIGTERM at any moment of a node's life stops it cleanly: exit 0 within a few seconds.

Nodes are signalled at random moments: while the interpreter starts, while the node opens
its log and database, while it catches up (by log or by snapshot), while it serves, and
all at once at the end.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from raftsql.cli.launcher import LocalCluster

from .conftest import execute

pytestmark = pytest.mark.slow


def stop_and_check(cluster: LocalCluster, node_id: str, what: str) -> None:
    started = time.monotonic()
    cluster.signal(node_id, random.choice([signal.SIGTERM, signal.SIGINT]))
    code = cluster.procs[node_id].wait(timeout=15)
    took = time.monotonic() - started
    assert code == 0, f"{node_id} {what}: exit status {code}"
    assert took < 8, f"{node_id} {what}: took {took:.1f}s to stop"


def test_a_signal_at_any_moment_stops_a_node_cleanly(tmp_path):
    rng = random.Random(1234)
    cluster = LocalCluster(3, str(tmp_path), extra_args=[
        "--heartbeat-ms", "50", "--election-ms", "400", "--snapshot-threshold", "30",
        "--trailing-logs", "10"])
    cluster.start()
    try:
        leader = cluster.leader(timeout=30)
        execute(cluster.url(leader), ["CREATE TABLE t (x)"])
        for round_ in range(16):
            leader = cluster.leader(timeout=30)
            node_id = rng.choice(cluster.ids)
            if node_id != leader and rng.random() < 0.5:
                cluster.kill(node_id)  # it comes back behind: catch-up by log or snapshot
                for i in range(rng.randrange(5, 60)):
                    execute(cluster.url(leader), [["INSERT INTO t VALUES(?)", i]])
            else:
                stop_and_check(cluster, node_id, f"round {round_}, while serving")
            cluster.start_node(node_id)
            delay = rng.choice([0.0, 0.0, 0.01, 0.05, 0.2, rng.uniform(0.2, 1.5)])
            time.sleep(delay)
            stop_and_check(cluster, node_id, f"round {round_}, {delay:.2f}s after start")
            cluster.start_node(node_id)
        cluster.leader(timeout=30)
        for node_id in cluster.ids:  # all at once
            cluster.signal(node_id, signal.SIGTERM)
        assert [cluster.procs[i].wait(timeout=15) for i in cluster.ids] == [0, 0, 0]
    finally:
        cluster.stop()
