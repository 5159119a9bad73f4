"""Benchmark a 3-node raftsql cluster of real processes against baselines from the same run.

    python tools/bench.py [--seconds 5] [--nodes 3] [--only W1,W2] [--profile DIR]

Workloads (each bounded in time):
  W1 sequential single-row INSERTs from 1 client
  W2 single-row INSERTs from 64 concurrent clients
  W3 1000-row parameterized bulk requests (rows/s)
  W4 linearizable point reads from 64 clients
  W5 W1 with an idempotency key on every write (what raftsql's own client sends)
  W6 W2 with an idempotency key on every write
  K1 config store PUT /v1/kv from 1 client (compared with W1)
  K2 config store PUT /v1/kv from 64 clients (compared with W2)
  K3 config store GET /v1/kv from 64 clients, the default (linearizable) level (with W4)
  DB a database of --db-mb MB (100; 1000 by hand): backup, snapshot, restart, restore and a
     new node's catch-up, in MB/s next to the disk's own, with peak RSS (tools/bigdb.py; the
     issue's "W6", a name W6 above had taken)
  OL 1000 clients flooding the leader with 64 KB inserts, with --max-open-requests 64 and
     without a limit: answers by status, the leader's peak RSS, a probe client's read latency
     (tools/overload.py; by hand: not in the default run)
Baselines, measured in the same run on the same machine:
  apsw:  local apsw INSERTs, each its own transaction, synchronous=FULL (one fsync per commit)
  http:  the same client against a trivial aiohttp endpoint (the client and HTTP overhead alone)
Figures are printed as ops/s, p50/p99 latency, the CPU time (user + system, all threads)
each node used per request (per 1000-row request for W3), and ratios to the baselines.
The machine is shared by the nodes and the load generator: on a busy one, run the whole
benchmark under `chrt -f 10` (see docs/performance.md) to keep other processes out of it.

--profile DIR records the leader and one follower with py-spy (`pip install py-spy`) during
each workload: DIR/<workload>-<role>.txt, collapsed stacks with thread names and idle time
(feed them to flamegraph.pl or speedscope, or grep them). --keep DIR keeps the nodes' data
and logs there instead of in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import apsw
import orjson
from aiohttp import web

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftsql.cli.launcher import LocalCluster  # noqa: E402


class Result:
    def __init__(self, name: str, ops: int, seconds: float, latencies: list[float], unit: str = "ops"):
        self.name, self.ops, self.seconds, self.unit = name, ops, seconds, unit
        self.latencies = sorted(latencies)
        self.cpu: dict[str, float] = {}  # role -> CPU seconds (user + system) the run used

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        return self.latencies[min(len(self.latencies) - 1, int(p * len(self.latencies)))] * 1000

    def line(self) -> str:
        text = (f"{self.name:<34} {self.rate:>10.0f} {self.unit}/s   p50 {self.pct(0.5):7.2f} ms"
                f"   p99 {self.pct(0.99):7.2f} ms")
        if self.cpu and self.ops:
            requests = self.ops / 1000 if self.unit == "rows" else self.ops
            text += "   CPU ms/request: " + " ".join(
                f"{role} {1000 * sec / requests:.2f}" for role, sec in self.cpu.items())
        return text


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (Linux /proc), else 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_clients(clients: int, seconds: float, op: Callable[[int], Awaitable[int]]) -> tuple[int, list[float]]:
    """Run `clients` loops calling `op(seq)` until time is up; op returns the ops it did."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    done = 0
    seq = 0

    async def loop() -> None:
        nonlocal done, seq
        while time.perf_counter() < deadline:
            seq += 1
            t0 = time.perf_counter()
            n = await op(seq)  # not `done += await ...`: that reads `done` before awaiting
            done += n
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return done, latencies


async def post(session: aiohttp.ClientSession, url: str, body: object, key: str | None = None
               ) -> dict:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Raftsql-Idempotency-Key"] = key
    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
        raw = await resp.read()
    try:
        data = orjson.loads(raw) if resp.status == 200 else None
    except orjson.JSONDecodeError:
        data = None
    if type(data) is not dict or data.get("error") or any("error" in r for r in data.get("results", [])):
        raise RuntimeError(f"request to {url} failed: {resp.status} {raw[:300]!r}")
    return data


async def workload(name: str, clients: int, seconds: float, op, unit: str = "ops") -> Result:
    t0 = time.perf_counter()
    ops, lat = await run_clients(clients, seconds, op)
    return Result(name, ops, time.perf_counter() - t0, lat, unit)


Profiler = Callable[[str], contextlib.AbstractContextManager[None]]


async def bench_cluster(url: str, seconds: float, only: set[str], profile: Profiler,
                        pids: dict[str, int]) -> dict[str, Result]:
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as s:
        await post(s, url + "/db/execute", ["CREATE TABLE IF NOT EXISTS b (id INTEGER PRIMARY KEY, v TEXT)"])

        async def insert(seq: int) -> int:
            await post(s, url + "/db/execute", [["INSERT INTO b(v) VALUES(?)", f"value {seq}"]])
            return 1

        async def keyed_insert(seq: int) -> int:
            await post(s, url + "/db/execute", [["INSERT INTO b(v) VALUES(?)", f"keyed {seq}"]],
                       key=uuid.uuid4().hex)
            return 1

        async def bulk(seq: int) -> int:
            rows = [["INSERT INTO b(v) VALUES(?)", f"bulk {seq} {i}"] for i in range(1000)]
            await post(s, url + "/db/execute?transaction", rows)
            return 1000

        async def read(seq: int) -> int:
            await post(s, url + "/db/query?level=linearizable", [["SELECT v FROM b WHERE id = ?", seq % 100 + 1]])
            return 1

        async def kv_put(seq: int) -> int:
            async with s.put(f"{url}/v1/kv/bench/{seq % 1000}", data=f"value {seq}") as resp:
                if resp.status != 200 or await resp.read() != b"true":
                    raise RuntimeError(f"PUT /v1/kv failed: {resp.status}")
            return 1

        async def kv_get(seq: int) -> int:
            async with s.get(f"{url}/v1/kv/bench/{seq % 100}") as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET /v1/kv failed: {resp.status}")
                await resp.read()
            return 1

        for i in range(100):  # K3 reads keys 0..99
            await kv_put(i)
        # W4 reads rows 1..100: make sure they exist even when W1-W3 are not run.
        await post(s, url + "/db/execute?transaction",
                   [["INSERT OR IGNORE INTO b(id, v) VALUES(?, ?)", i, "seed"] for i in range(1, 101)])
        plan = [
            ("W1", "W1 insert, 1 client", 1, insert, "ops"),
            ("W2", "W2 insert, 64 clients", 64, insert, "ops"),
            ("W3", "W3 bulk 1000 rows, 1 client", 1, bulk, "rows"),
            ("W4", "W4 linearizable read, 64 clients", 64, read, "ops"),
            ("W5", "W5 keyed insert, 1 client", 1, keyed_insert, "ops"),
            ("W6", "W6 keyed insert, 64 clients", 64, keyed_insert, "ops"),
            ("K1", "K1 kv put, 1 client", 1, kv_put, "ops"),
            ("K2", "K2 kv put, 64 clients", 64, kv_put, "ops"),
            ("K3", "K3 kv get, 64 clients", 64, kv_get, "ops"),
        ]
        results = {}
        for key, name, clients, op, unit in plan:
            if key in only:
                before = {role: cpu_seconds(pid) for role, pid in pids.items()}
                with profile(key):
                    results[key] = r = await workload(name, clients, seconds, op, unit)
                r.cpu = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items()}
        return results


def bench_apsw(seconds: float) -> Result:
    with tempfile.TemporaryDirectory() as d:
        conn = apsw.Connection(os.path.join(d, "b.sqlite"))
        for sql in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                    "CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT)"):
            conn.execute(sql).fetchall()
        lat, n = [], 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            conn.execute("INSERT INTO b(v) VALUES(?)", (f"value {n}",))
            lat.append(time.perf_counter() - t)
            n += 1
        elapsed = time.perf_counter() - t0
        conn.close()
    return Result("baseline: apsw insert, fsync each", n, elapsed, lat)


async def bench_trivial_http(seconds: float) -> dict[str, Result]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"results": [{"last_insert_id": 1, "rows_affected": 1}]})

    app = web.Application()
    app.router.add_post("/db/execute", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/db/execute"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as s:
            async def op(seq: int) -> int:
                await post(s, url, [["INSERT INTO b(v) VALUES(?)", seq]])
                return 1
            return {
                "1": await workload("baseline: trivial aiohttp, 1 client", 1, seconds, op),
                "64": await workload("baseline: trivial aiohttp, 64 clients", 64, seconds, op),
            }
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def no_profile(key: str) -> Iterator[None]:
    yield


def py_spy_profiler(cluster: LocalCluster, leader: str, out_dir: str) -> Profiler:
    """Record the leader and one follower with py-spy while a workload runs."""
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    os.makedirs(out_dir, exist_ok=True)
    targets = [("leader", leader)] + [("follower", i) for i in cluster.ids if i != leader][:1]

    @contextlib.contextmanager
    def profile(key: str) -> Iterator[None]:
        spies = [
            subprocess.Popen(["py-spy", "record", "--pid", str(cluster.procs[node_id].pid),
                              "--format", "raw", "--threads", "--idle", "--rate", "500",
                              "--output", os.path.join(out_dir, f"{key}-{role}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for role, node_id in targets
        ]
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            for spy in spies:
                spy.wait(timeout=30)

    return profile


def ratio(a: Result | None, b: Result | None) -> str:
    return f"{a.rate / b.rate:6.2f}" if a and b and b.rate else "     -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each workload")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--only", default="W1,W2,W3,W4,W5,W6,K1,K2,K3,DB",
                        help="workloads to run, e.g. W1,W2")
    parser.add_argument("--no-baselines", action="store_true", help="skip the apsw and http baselines")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the leader and a follower into DIR")
    parser.add_argument("--keep", metavar="DIR", help="keep the nodes' data and logs in DIR")
    parser.add_argument("--db-mb", type=int, default=100, help="DB: the database's size")
    args = parser.parse_args()
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    if "DB" in only:
        from bigdb import bench_big_database

        print("\n".join(bench_big_database(args.db_mb)))
        only.discard("DB")
    if "OL" in only:
        from overload import bench_overload

        print("\n".join(bench_overload(args.seconds)))
        only.discard("OL")
    if not only:
        return 0

    apsw_base = http_base = None
    if not args.no_baselines:
        apsw_base = bench_apsw(args.seconds)
        http_base = asyncio.run(bench_trivial_http(args.seconds))
    with contextlib.ExitStack() as stack:
        d = args.keep or stack.enter_context(tempfile.TemporaryDirectory())
        cluster = LocalCluster(args.nodes, d)
        cluster.start()
        try:
            leader = cluster.leader(timeout=30)
            profile = py_spy_profiler(cluster, leader, args.profile) if args.profile else no_profile
            followers = [i for i in cluster.ids if i != leader]
            pids = {"leader": cluster.procs[leader].pid,
                    **{f"f{n}": cluster.procs[i].pid for n, i in enumerate(followers, 1)}}
            results = asyncio.run(bench_cluster(cluster.url(leader), args.seconds, only, profile, pids))
        finally:
            cluster.stop()

    print(f"raftsql benchmark: {args.nodes} nodes on this machine ({os.cpu_count()} cores), "
          f"{args.seconds:g}s per workload")
    for r in [apsw_base, *(http_base or {}).values(), *results.values()]:
        if r is not None:
            print(r.line())
    if http_base is None:
        return 0
    w1, w2, w4 = results.get("W1"), results.get("W2"), results.get("W4")
    w5, w6 = results.get("W5"), results.get("W6")
    print("ratios:")
    print(f"  W1 / apsw fsync-per-insert      {ratio(w1, apsw_base)}")
    print(f"  W1 / trivial http, 1 client     {ratio(w1, http_base['1'])}")
    print(f"  W2 / trivial http, 64 clients   {ratio(w2, http_base['64'])}")
    print(f"  W2 / W1 (group commit gain)     {ratio(w2, w1)}")
    print(f"  W4 / trivial http, 64 clients   {ratio(w4, http_base['64'])}")
    print(f"  W5 / W1 (idempotency keys)      {ratio(w5, w1)}")
    print(f"  W6 / W2 (idempotency keys)      {ratio(w6, w2)}")
    k1, k2, k3 = results.get("K1"), results.get("K2"), results.get("K3")
    print(f"  K1 / W1 (kv put, 1 client)      {ratio(k1, w1)}")
    print(f"  K2 / W2 (kv put, 64 clients)    {ratio(k2, w2)}")
    print(f"  K3 / W4 (kv get, 64 clients)    {ratio(k3, w4)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
