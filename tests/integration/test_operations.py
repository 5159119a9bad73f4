"""Operating a cluster with real processes (issue 10): InstallSnapshot of a database far
behind, also killed mid-transfer; full restarts with snapshots in between; a bounded log;
new nodes, moved nodes and read replicas."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from raftsql.cli.launcher import LocalCluster, free_ports, http

from .conftest import eventually, execute, query
from .test_cluster import Writer, canonical_dump, committed_values

pytestmark = pytest.mark.slow

FAST = ["--heartbeat-ms", "50", "--election-ms", "500"]


def cluster_of(tmp_path, n: int = 3, *args: str) -> LocalCluster:
    cluster = LocalCluster(n, str(tmp_path), extra_args=[*FAST, *args])
    cluster.start()
    cluster.leader(timeout=30)
    return cluster


def raft_status(cluster: LocalCluster, node_id: str) -> dict:
    status = cluster.status(node_id)
    assert status is not None, f"{node_id} does not answer"
    return status["store"]["raft"]


def metric(cluster: LocalCluster, node_id: str, name: str) -> float:
    code, body = http("GET", cluster.url(node_id) + "/metrics")
    assert code == 200
    text = body if isinstance(body, str) else body.decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def local_count(cluster: LocalCluster, node_id: str, table: str) -> int:
    return query(cluster.url(node_id), f"SELECT count(*) FROM {table}", level="none")[0][0]


def stopped_dumps(cluster: LocalCluster, base: str) -> list:
    cluster.wait_applied(raft_status(cluster, cluster.leader())["commit_index"])
    for node_id in cluster.ids:
        if node_id in cluster.running():
            assert cluster.stop_node(node_id) == 0
    return [canonical_dump(os.path.join(base, i, "db.sqlite")) for i in cluster.ids]


def test_a_follower_far_behind_catches_up_by_install_snapshot_even_killed_mid_transfer(tmp_path):
    cluster = cluster_of(tmp_path, 3, "--snapshot-threshold", "50", "--trailing-logs", "20")
    try:
        leader = cluster.leader()
        lagging = next(i for i in cluster.ids if i != leader)
        url = cluster.url(leader)
        execute(url, ["CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT)"])
        cluster.kill(lagging)
        for _ in range(250):  # 5,000 writes, 20 per request: about 40 MB
            execute(url, ["INSERT INTO big(pad) VALUES(printf('%.*c', 8000, 'x'))"] * 20)
        raft = raft_status(cluster, leader)
        assert raft["snapshot_index"] > 200 and raft["first_log_index"] > 50  # compacted
        parts = os.path.join(str(tmp_path), lagging, "snapshots", "*.part")
        cluster.start_node(lagging)
        deadline = time.monotonic() + 30
        while not glob.glob(parts) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert glob.glob(parts), "the follower never started fetching the snapshot"
        cluster.kill(lagging)  # mid-transfer: the partial download stays
        assert glob.glob(parts)
        cluster.start_node(lagging)
        eventually(lambda: local_count(cluster, lagging, "big") == 5000, timeout=60)
        assert metric(cluster, lagging, "raftsql_snapshot_installs_total") >= 1
        assert not glob.glob(parts)
        execute(url, ["INSERT INTO big(pad) VALUES('after')"])
        eventually(lambda: local_count(cluster, lagging, "big") == 5001)
        dumps = stopped_dumps(cluster, str(tmp_path))
        assert dumps[0] == dumps[1] == dumps[2]
    finally:
        cluster.stop()


def test_five_full_restarts_with_snapshots_lose_nothing_and_never_go_back(tmp_path):
    cluster = cluster_of(tmp_path, 3, "--snapshot-threshold", "30", "--trailing-logs", "5")
    try:
        execute(cluster.url(cluster.leader()), ["CREATE TABLE acked (v INTEGER)"])
        applied = dict.fromkeys(cluster.ids, 0)
        acked: set[int] = set()
        for _ in range(5):
            writer = Writer(cluster)
            writer.start()
            eventually(lambda w=writer: len(w.acked) >= 60, timeout=30)
            for node_id in cluster.ids:
                applied[node_id] = max(applied[node_id],
                                       raft_status(cluster, node_id)["applied_index"])
            for node_id in cluster.ids:
                cluster.kill(node_id)
            acked |= set(writer.finish())
            cluster.start()
            leader = cluster.leader(timeout=30)
            for node_id in cluster.ids:  # a restarted node never goes back in applied index
                assert raft_status(cluster, node_id)["applied_index"] >= applied[node_id]
            assert acked <= committed_values(cluster, leader)
            assert raft_status(cluster, leader)["snapshot_index"] > 0
    finally:
        cluster.stop()


def test_the_log_stays_bounded_over_50000_writes(tmp_path):
    cluster = cluster_of(tmp_path, 3, "--snapshot-threshold", "200", "--trailing-logs", "100")
    try:
        leader = cluster.leader()
        url = cluster.url(leader)
        execute(url, ["CREATE TABLE w (x INTEGER)"])
        longest = 0
        for batch in range(2500):  # 50,000 writes, 20 per entry, 2,500 entries
            execute(url, [f"INSERT INTO w VALUES({batch * 20 + i})" for i in range(20)])
            if batch % 25 == 0:
                for node_id in cluster.ids:
                    raft = raft_status(cluster, node_id)
                    longest = max(longest, raft["last_log_index"] - raft["first_log_index"] + 1)
        assert local_count(cluster, leader, "w") == 50_000
        # threshold + trailing entries, plus what may be applied while a snapshot is taken
        assert longest <= 200 + 100 + 40, longest
        for node_id in cluster.ids:
            states = glob.glob(os.path.join(str(tmp_path), node_id, "snapshots", "*.db"))
            assert len(states) == 1, states  # older snapshots are deleted
            size = os.path.getsize(os.path.join(str(tmp_path), node_id, "raft", "log"))
            assert size < 1 << 20, size
        print(f"longest log: {longest} entries")
    finally:
        cluster.stop()


def test_a_new_node_catches_up_from_a_snapshot_and_join_is_idempotent(tmp_path):
    cluster = cluster_of(tmp_path, 3, "--snapshot-threshold", "20", "--trailing-logs", "5")
    try:
        url = cluster.url(cluster.leader())
        execute(url, ["CREATE TABLE t (x INTEGER)"])
        for i in range(100):
            execute(url, [["INSERT INTO t VALUES(?)", i]])
        assert raft_status(cluster, cluster.leader())["first_log_index"] > 50
        new = cluster.add()
        join = ("--join", cluster.raft_addr("n2"))
        cluster.start_node(new, *join)
        eventually(lambda: local_count(cluster, new, "t") == 100, timeout=30)
        assert metric(cluster, new, "raftsql_snapshot_installs_total") == 1
        last = raft_status(cluster, cluster.leader())["last_log_index"]
        # Restarted with the same command line: already a member, nothing is re-added.
        assert cluster.stop_node(new) == 0
        cluster.start_node(new, *join)
        eventually(lambda: raft_status(cluster, new)["applied_index"] >= last)
        time.sleep(1.0)
        assert raft_status(cluster, cluster.leader())["last_log_index"] == last
        # Restarted at a new Raft address: the join records it, on every node, through the log.
        assert cluster.stop_node(new) == 0
        cluster.raft_ports[cluster.ids.index(new)] = free_ports(1)[0]
        cluster.start_node(new, *join)
        moved = cluster.raft_addr(new)

        def everyone_knows_the_new_address() -> bool:
            for node_id in cluster.ids:
                code, body = http("GET", cluster.url(node_id) + "/nodes?ver=2&nonvoters")
                addrs = {n["id"]: n["addr"] for n in body["nodes"]}
                if code != 200 or addrs.get(new) != moved:
                    return False
            return True

        eventually(everyone_knows_the_new_address)
        execute(url, [["INSERT INTO t VALUES(?)", 100]])
        eventually(lambda: local_count(cluster, new, "t") == 101)
        assert len(http("GET", url + "/nodes?ver=2")[1]["nodes"]) == 4
    finally:
        cluster.stop()


def test_a_read_replica_follows_leader_changes_and_is_promoted(tmp_path):
    cluster = cluster_of(tmp_path, 3)
    try:
        url = cluster.url(cluster.leader())
        execute(url, ["CREATE TABLE t (x INTEGER)", "INSERT INTO t VALUES (1)"])
        replica = cluster.add()
        join = ("--join", cluster.raft_addr("n1"))
        cluster.start_node(replica, *join, "--non-voter")
        eventually(lambda: local_count(cluster, replica, "t") == 1)
        code, body = http("GET", url + "/nodes?ver=2&nonvoters")
        assert {n["id"]: n["voter"] for n in body["nodes"]}[replica] is False
        assert raft_status(cluster, cluster.leader())["voters"] == 3
        # Writes and strong reads through the replica reach the leader.
        execute(cluster.url(replica), ["INSERT INTO t VALUES (2)"])
        assert query(cluster.url(replica), "SELECT count(*) FROM t") == [[2]]
        old = cluster.leader()
        cluster.kill(old)
        new = cluster.leader(among=[i for i in cluster.ids if i not in (old, replica)])
        assert new != replica
        execute(cluster.url(new), ["INSERT INTO t VALUES (3)"])
        eventually(lambda: local_count(cluster, replica, "t") == 3)
        execute(cluster.url(replica), ["INSERT INTO t VALUES (4)"])  # forwarded to the new one
        assert query(cluster.url(new), "SELECT count(*) FROM t") == [[4]]
        cluster.start_node(old)
        # Promoted: restarted without --non-voter, it joins as a voter.
        assert cluster.stop_node(replica) == 0
        cluster.start_node(replica, *join)
        eventually(lambda: raft_status(cluster, cluster.leader())["voters"] == 4)
        eventually(lambda: raft_status(cluster, replica)["voters"] == 4)
    finally:
        cluster.stop()


def recover_cmd(cluster: LocalCluster, node_id: str, *voters: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raftsql", "recover", "--data-dir",
         os.path.join(cluster.base_dir, node_id), "--node-id", node_id, "--voters",
         ",".join(f"{v}={cluster.raft_addr(v)}" for v in voters)],
        capture_output=True, text=True, timeout=60)


def test_disaster_recovery_from_one_survivor(tmp_path):
    cluster = cluster_of(tmp_path, 3, "--snapshot-threshold", "40", "--trailing-logs", "10")
    try:
        execute(cluster.url(cluster.leader()), ["CREATE TABLE acked (v INTEGER)"])
        writer = Writer(cluster)
        writer.start()
        eventually(lambda: len(writer.acked) >= 100, timeout=30)
        survivor = "n1"
        lost = [i for i in cluster.ids if i != survivor]
        for node_id in lost:  # gone for good, with their disks
            cluster.kill(node_id)
            shutil.rmtree(os.path.join(str(tmp_path), node_id))
        acked = set(writer.finish())
        code, body = http("POST", cluster.url(survivor) + "/db/execute?timeout=2s",
                          [["INSERT INTO acked VALUES(?)", -1]], timeout=10)
        assert code != 200  # no quorum: nothing is acknowledged
        refused = recover_cmd(cluster, survivor, survivor)
        assert refused.returncode == 1 and "in use" in refused.stderr  # not while it runs
        cluster.kill(survivor)
        done = recover_cmd(cluster, survivor, survivor)
        assert done.returncode == 0, done.stderr
        assert "with voters n1" in done.stdout
        cluster.start_node(survivor)  # the same command line as before
        assert cluster.leader(among=[survivor], timeout=30) == survivor
        assert acked <= committed_values(cluster, survivor)  # every acknowledged write
        execute(cluster.url(survivor), [["INSERT INTO acked VALUES(?)", -2]])
        raft = raft_status(cluster, survivor)
        assert raft["voters"] == 1
        # The cluster grows again from the survivor: fresh nodes join it.
        for node_id in lost:
            cluster.start_node(node_id, "--join", cluster.raft_addr(survivor))
        eventually(lambda: raft_status(cluster, survivor)["voters"] == 3, timeout=30)
        for node_id in lost:
            eventually(lambda n=node_id: -2 in committed_values(cluster, n))
        dumps = stopped_dumps(cluster, str(tmp_path))
        assert dumps[0] == dumps[1] == dumps[2]
    finally:
        cluster.stop()


def raftsql_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftsql", *args], capture_output=True,
                          text=True, timeout=300)


def test_backup_then_restore_into_a_fresh_cluster_gives_identical_databases(tmp_path):
    source = cluster_of(tmp_path / "a", 3)
    try:
        url = source.url(source.leader())
        execute(url, ["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, pad BLOB)",
                      "CREATE INDEX t_name ON t(name)", "CREATE VIEW v AS SELECT name FROM t"])
        for i in range(40):  # about 3 MB: several chunks
            execute(url, [["INSERT INTO t(name, pad) VALUES(?, randomblob(80000))", f"n{i}"]])
        backup_file, dump_file = str(tmp_path / "b.sqlite"), str(tmp_path / "b.sql")
        follower = next(i for i in source.ids if i != source.leader())
        assert raftsql_cli("backup", source.url(follower), backup_file).returncode == 0
        assert raftsql_cli("backup", url, dump_file, "--sql").returncode == 0
        expected = stopped_dumps(source, str(tmp_path / "a"))[0]
    finally:
        source.stop()
    # A SQLite file, through a follower, with snapshots taken mid-load and a node that was
    # down during it.
    target = cluster_of(tmp_path / "b", 3, "--snapshot-threshold", "2", "--trailing-logs", "0")
    try:
        leader = target.leader()
        down, through = [i for i in target.ids if i != leader]
        target.kill(down)
        done = raftsql_cli("restore", target.url(through), backup_file)
        assert done.returncode == 0, done.stderr
        assert query(target.url(leader), "SELECT count(*) FROM t") == [[40]]
        target.start_node(down)
        eventually(lambda: local_count(target, down, "t") == 40, timeout=30)
        dumps = stopped_dumps(target, str(tmp_path / "b"))
        assert dumps == [expected] * 3
    finally:
        target.stop()
    # An SQL dump.
    fresh = cluster_of(tmp_path / "c", 3)
    try:
        done = raftsql_cli("restore", fresh.url("n2"), dump_file)
        assert done.returncode == 0, done.stderr
        assert stopped_dumps(fresh, str(tmp_path / "c")) == [expected] * 3
    finally:
        fresh.stop()
