"""DB: a big database, and what operating it costs (issue 10), next to the machine's own disk.

    python tools/bench.py --only DB [--db-mb 100]       # 1000 by hand

Builds a database of about N MB on a 3-node cluster, then times a backup (GET /db/backup,
streamed to a file), a snapshot (POST /snapshot), a clean restart of a follower holding it
(against the same restart of a node of an empty cluster, measured first), a restore of the
backup (POST /db/load through a follower, in chunks through the log), and a brand-new node
joining and catching up, with peak RSS. The baseline
is this machine's disk: a file of N MB written and fsynced, then copied and fsynced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.request

from raftsql.cli.launcher import LocalCluster, http
from raftsql.cli.transfer import restore

ROW_BYTES = 1000
ROWS_PER_ENTRY = 1000  # one entry: a statement that makes 1 MB of rows on every node
BUILD = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < "
         f"{ROWS_PER_ENTRY}) INSERT INTO big(b) SELECT randomblob({ROW_BYTES}) FROM c")


def disk_mb_s(directory: str, mb: int) -> tuple[float, float]:
    """(write MB/s, copy MB/s) of `mb` MB, each fsynced."""
    src, dst = os.path.join(directory, "disk.a"), os.path.join(directory, "disk.b")
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with open(src, "wb") as f:
        for _ in range(mb):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    write = mb / (time.perf_counter() - start)
    start = time.perf_counter()
    with open(src, "rb") as a, open(dst, "wb") as b:
        shutil.copyfileobj(a, b, 1 << 20)
        b.flush()
        os.fsync(b.fileno())
    copy = mb / (time.perf_counter() - start)
    os.remove(src)
    os.remove(dst)
    return write, copy


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak RSS (or with field="VmRSS", its RSS now)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(*pids: int) -> None:
    """Start the processes' peak RSS afresh (Linux: clear_refs 5), so that a step's peak is
    its own, not the build's."""
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def restart_seconds(cluster: LocalCluster, node_id: str) -> float:
    """A clean stop, then the same command line, until the node has caught up again."""
    cluster.stop_node(node_id)
    start = time.perf_counter()
    cluster.start_node(node_id)
    _wait(lambda: http("GET", f"{cluster.url(node_id)}/readyz?sync&timeout=1s",
                       timeout=3)[0] == 200, 300)
    return time.perf_counter() - start


def _wait(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("gave up waiting")


def applied(cluster: LocalCluster, node_id: str) -> int:
    status = cluster.status(node_id)
    return status["store"]["raft"]["applied_index"] if status else -1


def bench_big_database(mb: int) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory() as d:
        write, copy = disk_mb_s(d, mb)
        lines.append(f"disk: write+fsync {write:.0f} MB/s, copy+fsync {copy:.0f} MB/s ({mb} MB)")
        # No snapshot by count (the one timed is asked for); by size as by default, which
        # only a load's chunks reach.
        cluster = LocalCluster(3, os.path.join(d, "c"), extra_args=[
            "--snapshot-threshold", "1000000"])
        cluster.start()
        try:
            leader = cluster.leader(timeout=30)
            url = cluster.url(leader)
            follower = next(i for i in cluster.ids if i != leader)
            empty = restart_seconds(cluster, follower)
            leader = cluster.leader(timeout=30)
            url = cluster.url(leader)
            assert http("POST", f"{url}/db/execute", ["CREATE TABLE big(b BLOB)"])[0] == 200
            start = time.perf_counter()
            for _ in range(mb):
                code, body = http("POST", f"{url}/db/execute", [BUILD], timeout=60)
                assert code == 200 and "error" not in str(body), body
            build = time.perf_counter() - start
            db_mb = os.path.getsize(os.path.join(d, "c", leader, "db.sqlite")) / 2**20
            lines.append(f"build: {db_mb:.0f} MB in {build:.1f} s ({mb / build:.1f} MB/s "
                         "through the log)")

            start = time.perf_counter()
            out = os.path.join(d, "backup.db")
            with urllib.request.urlopen(f"{url}/db/backup", timeout=600) as resp, \
                    open(out, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
            took = time.perf_counter() - start
            size = os.path.getsize(out) / 2**20
            lines.append(f"backup: {size:.0f} MB in {took:.1f} s ({size / took:.0f} MB/s, "
                         f"{size / took / copy:.2f} of the disk's copy)")

            start = time.perf_counter()
            assert http("POST", f"{url}/snapshot", timeout=600)[0] == 200
            took = time.perf_counter() - start
            lines.append(f"snapshot: {took:.1f} s ({db_mb / took:.0f} MB/s, "
                         f"{db_mb / took / copy:.2f} of the disk's copy)")

            follower = next(i for i in cluster.ids if i != leader)
            full = restart_seconds(cluster, follower)
            lines.append(f"restart of a follower: {full:.2f} s holding {db_mb:.0f} MB, "
                         f"{empty:.2f} s holding nothing ({full / empty:.1f}x)")

            leader = cluster.leader(timeout=30)
            via = next(i for i in cluster.ids if i != leader)
            reset_peak_rss(cluster.procs[leader].pid, cluster.procs[via].pid)
            before = peak_rss_mb(cluster.procs[leader].pid, "VmRSS")
            start = time.perf_counter()
            restore(cluster.url(via), out)  # POST /db/load of the backup, through a follower
            took = time.perf_counter() - start
            lines.append(f"restore (load of the backup through the log): {took:.1f} s "
                         f"({size / took:.0f} MB/s); peak RSS during it: leader "
                         f"{peak_rss_mb(cluster.procs[leader].pid):.0f} MB, the follower "
                         f"that took it {peak_rss_mb(cluster.procs[via].pid):.0f} MB (the "
                         f"leader's RSS before it: {before:.0f} MB)")

            target = applied(cluster, leader)
            new = cluster.add()
            reset_peak_rss(cluster.procs[leader].pid)
            start = time.perf_counter()
            cluster.start_node(new, "--join", cluster.raft_addr(leader))
            _wait(lambda: applied(cluster, new) >= target, 900)
            took = time.perf_counter() - start
            lines.append(f"new node catch-up: {took:.1f} s ({db_mb / took:.0f} MB/s); peak RSS "
                         f"new node {peak_rss_mb(cluster.procs[new].pid):.0f} MB, leader "
                         f"{peak_rss_mb(cluster.procs[leader].pid):.0f} MB")
        finally:
            cluster.stop()
    return lines
