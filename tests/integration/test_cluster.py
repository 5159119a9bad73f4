"""Real `raftsql serve` processes on 127.0.0.1: elections, forwarding, kill -9, restart."""

from __future__ import annotations

import os
import signal
import threading
import time

import apsw
import pytest

from raftsql.cli.launcher import RAFT_PORT_OFFSET, LocalCluster, free_ports, http

from .conftest import eventually, execute, query

pytestmark = pytest.mark.slow


def test_three_nodes_elect_one_leader_and_accept_writes_through_any_node(cluster3):
    leader = cluster3.leader()
    followers = [i for i in cluster3.ids if i != leader]
    execute(cluster3.url(followers[0]), ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    for node_id in cluster3.ids:
        execute(cluster3.url(node_id), [["INSERT INTO t(v) VALUES(?)", node_id]])
    for node_id in cluster3.ids:  # linearizable reads from any node see every write
        assert sorted(r[0] for r in query(cluster3.url(node_id), "SELECT v FROM t")) == cluster3.ids
    statuses = [cluster3.status(i)["store"] for i in cluster3.ids]
    assert sum(s["raft"]["state"] == "Leader" for s in statuses) == 1
    assert {s["leader"]["node_id"] for s in statuses} == {leader}


class Writer(threading.Thread):
    """Inserts unique values through every node in turn; remembers what was acknowledged."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.acked: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            node_id = self.cluster.ids[n % len(self.cluster.ids)]
            try:
                code, body = http("POST", self.cluster.url(node_id) + "/db/execute",
                                  [["INSERT INTO acked(v) VALUES(?)", n]], timeout=3.0)
            except OSError:
                time.sleep(0.05)
                continue
            if code == 200 and "error" not in body and "error" not in body["results"][0]:
                self.acked.append(n)
            else:
                time.sleep(0.05)

    def finish(self) -> list[int]:
        self.stop_event.set()
        self.join()
        return self.acked


def committed_values(cluster: LocalCluster, node_id: str) -> set[int]:
    return {r[0] for r in query(cluster.url(node_id), "SELECT v FROM acked")}


def test_leader_killed_new_leader_takes_over_old_one_catches_up(cluster3):
    execute(cluster3.url(cluster3.ids[0]), ["CREATE TABLE acked (v INTEGER)"])
    writer = Writer(cluster3)
    writer.start()
    eventually(lambda: len(writer.acked) >= 20)
    old = cluster3.leader()
    cluster3.kill(old)
    survivors = [i for i in cluster3.ids if i != old]
    new = cluster3.leader(among=survivors)
    assert new != old
    acked_before = len(writer.acked)
    eventually(lambda: len(writer.acked) >= acked_before + 20)
    cluster3.start_node(old)
    acked = set(writer.finish())
    assert acked <= committed_values(cluster3, new)  # nothing acknowledged was lost
    eventually(lambda: committed_values_local(cluster3, old) >= acked)


def committed_values_local(cluster: LocalCluster, node_id: str) -> set[int]:
    return {r[0] for r in query(cluster.url(node_id), "SELECT v FROM acked", level="none")}


def test_all_nodes_killed_and_restarted_lose_nothing_acknowledged(cluster3):
    execute(cluster3.url(cluster3.ids[0]), ["CREATE TABLE acked (v INTEGER)"])
    writer = Writer(cluster3)
    writer.start()
    eventually(lambda: len(writer.acked) >= 50)
    for node_id in cluster3.ids:
        cluster3.kill(node_id)
    acked = set(writer.finish())
    cluster3.start()
    leader = cluster3.leader(timeout=30)
    assert acked <= committed_values(cluster3, leader)


def test_paused_leader_is_replaced_and_steps_down_when_resumed(cluster3):
    execute(cluster3.url(cluster3.ids[0]), ["CREATE TABLE acked (v INTEGER)"])
    old = cluster3.leader()
    cluster3.signal(old, signal.SIGSTOP)
    survivors = [i for i in cluster3.ids if i != old]
    new = cluster3.leader(among=survivors)
    execute(cluster3.url(new), [["INSERT INTO acked VALUES(?)", 1]])
    cluster3.signal(old, signal.SIGCONT)
    assert cluster3.leader(timeout=20) == new
    eventually(lambda: committed_values_local(cluster3, old) == {1})


def canonical_dump(path: str) -> list[tuple]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'raftsql_%' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    dump = []
    for table in tables:
        dump.append((table, list(conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'))))
    conn.close()
    return dump


def test_nondeterministic_sql_gives_identical_databases_on_every_node(cluster3, tmp_path):
    url = cluster3.url(cluster3.leader())
    execute(url, [
        "CREATE TABLE d (id INTEGER PRIMARY KEY, r INTEGER, b BLOB, now TEXT, "
        "created TEXT DEFAULT CURRENT_TIMESTAMP)",
        "CREATE TABLE src (x INTEGER)",
        "INSERT INTO src VALUES (1),(2),(3),(4),(5),(6),(7),(8)",
        "CREATE TABLE shuffled (x INTEGER)",
    ])
    for _ in range(5):
        execute(url, [
            "INSERT INTO d(r, b, now) VALUES (random(), randomblob(16), datetime('now'))",
            "INSERT INTO shuffled SELECT x FROM src ORDER BY random()",
        ])
    status = cluster3.status(cluster3.leader())
    cluster3.wait_applied(status["store"]["raft"]["commit_index"])
    for node_id in cluster3.ids:
        assert cluster3.stop_node(node_id) == 0  # SIGTERM: clean exit
    dumps = [canonical_dump(os.path.join(str(tmp_path), i, "db.sqlite")) for i in cluster3.ids]
    assert dumps[0] == dumps[1] == dumps[2]
    rows = dict(dumps[0])["d"]
    assert len(rows) == 5 and len({r[1] for r in rows}) == 5  # really random, yet identical
    shuffled = [r[0] for r in dict(dumps[0])["shuffled"]]
    assert sorted(shuffled) == sorted(list(range(1, 9)) * 5)


def test_node_joins_running_cluster_and_is_removed(cluster3, tmp_path):
    url = cluster3.url(cluster3.leader())
    execute(url, ["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"])
    cluster3.start_node(cluster3.add(), "--join", cluster3.raft_addr("n2"))
    eventually(lambda: query(cluster3.url("n4"), "SELECT x FROM t", level="none") == [[1]])
    code, body = http("GET", url + "/nodes?ver=2")
    assert code == 200 and {n["id"] for n in body["nodes"]} == {"n1", "n2", "n3", "n4"}
    code, _ = http("DELETE", cluster3.url("n1") + "/remove", {"id": "n4"})
    assert code == 200
    code, body = http("GET", url + "/nodes?ver=2")
    assert {n["id"] for n in body["nodes"]} == {"n1", "n2", "n3"}
    execute(url, ["INSERT INTO t VALUES (2)"])  # the cluster still works
    assert cluster3.stop_node("n4") == 0  # a removed node still stops cleanly


def test_bare_serve_is_a_ready_single_node(tmp_path):
    """Only --http-addr (4001 may be taken here): node n1, data in ./raftsql-data, Raft on the
    HTTP listener."""
    import subprocess
    import sys

    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "raftsql", "serve", "--http-addr",
                             f"127.0.0.1:{port}"], cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: http("GET", url + "/readyz")[0] == 200)
        assert execute(url, ["CREATE TABLE t(x)"]) == {"results": [{}]}
        execute(url, [["INSERT INTO t VALUES(?)", 42]])
        assert query(url, "SELECT * FROM t") == [[42]]
        assert http("GET", url + "/status?key=store.node_id")[1] == "n1"
        assert (tmp_path / "raftsql-data" / "db.sqlite").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_pyrqlite_against_a_cluster(cluster3):
    from pyrqlite import dbapi2

    conn = dbapi2.connect(host="127.0.0.1", port=cluster3.http_port(cluster3.leader()))
    cur = conn.cursor()
    cur.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, born DATETIME)")
    cur.execute("INSERT INTO people(name, born) VALUES (?, ?)", ("ada", "1815-12-10 00:00:00"))
    assert cur.lastrowid == 1
    cur.execute("UPDATE people SET name = ? WHERE id = ?", ("Ada", 1))
    assert cur.rowcount == 1
    cur.execute("SELECT name, born FROM people")
    assert cur.fetchall()[0][0] == "Ada"
    conn.close()


def _pid_of(*words: str) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().split(b"\0")
            except OSError:
                continue
            args = [a.decode() for a in cmdline]
            if all(w in args for w in words):
                return int(entry)
    raise LookupError(words)


def _consecutive_free_ports(n: int, also_at: int = 0) -> int:
    """A first port of n free ones in a row (and n more at +also_at)."""
    import socket

    for base in range(20000, 60000, 97):
        try:
            socks = []
            for port in [*range(base, base + n), *range(base + also_at, base + also_at + n)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_cluster_command_survives_leader_kill_and_stops_on_sigterm(tmp_path):
    import subprocess
    import sys

    base = _consecutive_free_ports(3, also_at=RAFT_PORT_OFFSET)
    data = str(tmp_path / "c")
    proc = subprocess.Popen([sys.executable, "-m", "raftsql", "cluster", "3", "--base-port", str(base),
                             "--data-dir", data], stderr=subprocess.PIPE)
    try:
        http_ports = [base, base + 1, base + 2]
        view = LocalCluster(3, data, http_ports, [p + RAFT_PORT_OFFSET for p in http_ports])
        urls = {i: view.url(i) for i in view.ids}
        leader = view.leader(among=view.ids, timeout=30)
        execute(urls[leader], ["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"])
        os.kill(_pid_of("--node-id", leader, "--data-dir", os.path.join(data, leader)), signal.SIGKILL)
        survivors = [i for i in view.ids if i != leader]
        new = view.leader(among=survivors)
        execute(urls[new], ["INSERT INTO t VALUES (2)"])
        assert query(urls[survivors[1]], "SELECT x FROM t ORDER BY x") == [[1], [2]]
        assert proc.poll() is None  # one node dying does not stop the others
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0
    assert b"exited with -9" in proc.stderr.read()


def test_every_node_signalled_at_once_exits_zero_quickly(cluster3):
    execute(cluster3.url(cluster3.leader()), ["CREATE TABLE t (x)"])
    started = time.monotonic()
    for node_id in cluster3.ids:
        cluster3.signal(node_id, signal.SIGTERM)
    codes = [cluster3.procs[i].wait(timeout=15) for i in cluster3.ids]
    assert codes == [0, 0, 0]
    assert time.monotonic() - started < 10


def test_cluster_secret_keeps_outsiders_out(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    cluster = LocalCluster(2, str(tmp_path), extra_args=["--election-ms", "500", "--heartbeat-ms", "50"])
    cluster.start_node("n1", "--initial-cluster", f"n1={cluster.raft_addr('n1')}",
                       "--cluster-secret-file", str(secret))
    try:
        eventually(lambda: http("GET", cluster.url("n1") + "/readyz")[0] == 200)
        cluster.start_node("n2", "--join", cluster.raft_addr("n1"), "--cluster-secret-file", str(wrong))
        time.sleep(2)
        code, body = http("GET", cluster.url("n1") + "/nodes?ver=2")
        assert [n["id"] for n in body["nodes"]] == ["n1"]  # the impostor never got in
        assert "401" in (tmp_path / "n2.log").read_text()
        cluster.stop_node("n2")
        cluster.start_node("n2", "--join", cluster.raft_addr("n1"), "--cluster-secret-file", str(secret))
        eventually(lambda: len(http("GET", cluster.url("n1") + "/nodes?ver=2")[1]["nodes"]) == 2)
    finally:
        assert cluster.stop() == [0, 0]


def test_snapshots_compact_the_log_and_catch_up_a_follower_that_was_down(tmp_path):
    cluster = LocalCluster(3, str(tmp_path), extra_args=[
        "--heartbeat-ms", "50", "--election-ms", "500", "--snapshot-threshold", "40",
        "--trailing-logs", "10"])
    cluster.start()
    try:
        leader = cluster.leader(timeout=30)
        url = cluster.url(leader)
        execute(url, ["CREATE TABLE t (x INTEGER)"])
        lagging = next(i for i in cluster.ids if i != leader)
        cluster.kill(lagging)
        for i in range(150):
            execute(url, [["INSERT INTO t VALUES(?)", i]])
        store = cluster.status(leader)["store"]["raft"]
        assert store["snapshot_index"] >= 100 and store["first_log_index"] > 2  # compacted
        cluster.start_node(lagging)  # its next entry is gone: only a snapshot can help
        eventually(lambda: query(cluster.url(lagging), "SELECT count(*) FROM t", level="none") == [[150]])
        execute(url, ["INSERT INTO t VALUES (150)"])
        eventually(lambda: query(cluster.url(lagging), "SELECT count(*) FROM t", level="none") == [[151]])
        cluster.kill(lagging)  # restart from its own snapshot + log
        cluster.start_node(lagging)
        eventually(lambda: query(cluster.url(lagging), "SELECT count(*) FROM t", level="none") == [[151]])
    finally:
        cluster.stop()
    dumps = [canonical_dump(os.path.join(str(tmp_path), i, "db.sqlite")) for i in cluster.ids]
    assert dumps[0] == dumps[1] == dumps[2]
