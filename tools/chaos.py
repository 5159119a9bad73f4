"""Fault injection against a cluster of real `raftsql serve` processes on 127.0.0.1.

    python tools/chaos.py [--seconds 30] [--nodes 3] [--seed 1]

Writers insert unique values through every node while a seeded scheduler SIGKILLs,
SIGSTOPs/SIGCONTs and restarts nodes (never more than a minority down at once). At the end
all nodes are brought back and it checks that every acknowledged write is present, that no
value appears twice, and that every node's database is identical. Exit status 0 = all held.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time

import apsw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftsql.cli.launcher import LocalCluster, http  # noqa: E402


class Writers:
    """Threads inserting unique integers through rotating nodes; remembers acknowledgements."""

    def __init__(self, cluster: LocalCluster, threads: int = 4) -> None:
        self.cluster = cluster
        self.acked: set[int] = set()
        self.attempts = 0
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            self.attempts += 1
            return self._next

    def _run(self, k: int) -> None:
        while not self._stop.is_set():
            value = self._take()
            node_id = self.cluster.ids[(value + k) % len(self.cluster.ids)]
            try:
                code, body = http("POST", self.cluster.url(node_id) + "/db/execute",
                                  [["INSERT INTO chaos(v) VALUES(?)", value]], timeout=2.0)
            except OSError:
                time.sleep(0.02)
                continue
            if code == 200 and "error" not in body and "error" not in body["results"][0]:
                with self._lock:
                    self.acked.add(value)
            else:
                time.sleep(0.02)

    def stop(self) -> set[int]:
        self._stop.set()
        for t in self._threads:
            t.join()
        return self.acked


def inject(cluster: LocalCluster, rng: random.Random, seconds: float, log) -> dict[str, int]:
    """Random faults for `seconds`; at most a minority of nodes is down or paused at a time."""
    counts = {"kill": 0, "pause": 0, "restart": 0, "resume": 0}
    down: set[str] = set()
    paused: set[str] = set()
    minority = (len(cluster.ids) - 1) // 2
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.5))
        up = [i for i in cluster.ids if i not in down and i not in paused]
        action = rng.choice(["kill", "pause", "heal"])
        if action != "heal" and len(down) + len(paused) < minority:
            victim = rng.choice(up)
            if action == "kill":
                cluster.kill(victim)
                down.add(victim)
            else:
                cluster.signal(victim, signal.SIGSTOP)
                paused.add(victim)
            counts[action] += 1
            log(f"{action} {victim}")
        else:
            for node_id in list(down):
                cluster.start_node(node_id)
                down.discard(node_id)
                counts["restart"] += 1
                log(f"restart {node_id}")
            for node_id in list(paused):
                cluster.signal(node_id, signal.SIGCONT)
                paused.discard(node_id)
                counts["resume"] += 1
                log(f"resume {node_id}")
    for node_id in down:
        cluster.start_node(node_id)
    for node_id in paused:
        cluster.signal(node_id, signal.SIGCONT)
    return counts


def user_rows(path: str) -> list[tuple]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    rows = list(conn.execute("SELECT rowid, v FROM chaos ORDER BY rowid"))
    conn.close()
    return rows


def run(seconds: float, nodes: int, seed: int, base_dir: str, verbose: bool = False) -> list[str]:
    """Returns the list of violations found (empty when every property held)."""
    rng = random.Random(seed)
    cluster = LocalCluster(nodes, base_dir, extra_args=["--heartbeat-ms", "50", "--election-ms", "400"])
    cluster.start()
    problems: list[str] = []
    try:
        leader = cluster.leader(timeout=30)
        code, _ = http("POST", cluster.url(leader) + "/db/execute", ["CREATE TABLE chaos (v INTEGER)"])
        assert code == 200
        writers = Writers(cluster)
        writers.start()
        counts = inject(cluster, rng, seconds, (lambda m: print(m, flush=True)) if verbose else (lambda m: None))
        acked = writers.stop()
        leader = cluster.leader(timeout=30)
        commit = cluster.status(leader)["store"]["raft"]["commit_index"]
        cluster.wait_applied(commit, timeout=30)
        code, body = http("POST", cluster.url(leader) + "/db/query", ["SELECT v FROM chaos"], timeout=10)
        values = [r[0] for r in body["results"][0].get("values", [])]
        if missing := acked - set(values):
            problems.append(f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}")
        if len(values) != len(set(values)):
            problems.append("a write was applied twice")
        print(f"chaos: seed {seed}, {nodes} nodes, {seconds:g}s, faults {counts}, "
              f"{writers.attempts} writes tried, {len(acked)} acknowledged, {len(values)} stored",
              flush=True)
    finally:
        cluster.stop()
    dumps = [user_rows(os.path.join(base_dir, i, "db.sqlite")) for i in cluster.ids]
    if any(d != dumps[0] for d in dumps):
        problems.append("node databases differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        problems = run(args.seconds, args.nodes, args.seed, d, args.verbose)
    for p in problems:
        print("VIOLATION:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
