"""Benchmark a 3-node raftsql cluster of real processes against baselines from the same run.

    python tools/bench.py [--seconds 5] [--nodes 3]

Workloads (each bounded in time):
  W1 sequential single-row INSERTs from 1 client
  W2 single-row INSERTs from 64 concurrent clients
  W3 1000-row parameterized bulk requests (rows/s)
  W4 linearizable point reads from 64 clients
Baselines, measured in the same run on the same machine:
  apsw:  local apsw INSERTs, each its own transaction, synchronous=FULL (one fsync per commit)
  http:  the same client against a trivial aiohttp endpoint (the client and HTTP overhead alone)
Figures are printed as ops/s, p50/p99 latency, and ratios to the baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import aiohttp
import apsw
import orjson
from aiohttp import web

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftsql.launcher import LocalCluster  # noqa: E402


class Result:
    def __init__(self, name: str, ops: int, seconds: float, latencies: list[float], unit: str = "ops"):
        self.name, self.ops, self.seconds, self.unit = name, ops, seconds, unit
        self.latencies = sorted(latencies)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        return self.latencies[min(len(self.latencies) - 1, int(p * len(self.latencies)))] * 1000

    def line(self) -> str:
        return (f"{self.name:<34} {self.rate:>10.0f} {self.unit}/s   p50 {self.pct(0.5):7.2f} ms"
                f"   p99 {self.pct(0.99):7.2f} ms")


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


async def post(session: aiohttp.ClientSession, url: str, body: object) -> dict:
    async with session.post(url, data=orjson.dumps(body),
                            headers={"Content-Type": "application/json"}) as resp:
        data = orjson.loads(await resp.read())
    if resp.status != 200 or data.get("error") or any("error" in r for r in data.get("results", [])):
        raise RuntimeError(f"request failed: {resp.status} {data}")
    return data


async def workload(name: str, clients: int, seconds: float, op, unit: str = "ops") -> Result:
    t0 = time.perf_counter()
    ops, lat = await run_clients(clients, seconds, op)
    return Result(name, ops, time.perf_counter() - t0, lat, unit)


async def bench_cluster(url: str, seconds: float) -> dict[str, Result]:
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as s:
        await post(s, url + "/db/execute", ["CREATE TABLE IF NOT EXISTS b (id INTEGER PRIMARY KEY, v TEXT)"])

        async def insert(seq: int) -> int:
            await post(s, url + "/db/execute", [["INSERT INTO b(v) VALUES(?)", f"value {seq}"]])
            return 1

        async def bulk(seq: int) -> int:
            rows = [["INSERT INTO b(v) VALUES(?)", f"bulk {seq} {i}"] for i in range(1000)]
            await post(s, url + "/db/execute?transaction", rows)
            return 1000

        async def read(seq: int) -> int:
            await post(s, url + "/db/query?level=linearizable", [["SELECT v FROM b WHERE id = ?", seq % 100 + 1]])
            return 1

        return {
            "W1": await workload("W1 insert, 1 client", 1, seconds, insert),
            "W2": await workload("W2 insert, 64 clients", 64, seconds, insert),
            "W3": await workload("W3 bulk 1000 rows, 1 client", 1, seconds, bulk, "rows"),
            "W4": await workload("W4 linearizable read, 64 clients", 64, seconds, read),
        }


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each workload")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()

    apsw_base = bench_apsw(args.seconds)
    http_base = asyncio.run(bench_trivial_http(args.seconds))
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(args.nodes, d)
        cluster.start()
        try:
            leader = cluster.leader(timeout=30)
            results = asyncio.run(bench_cluster(cluster.url(leader), args.seconds))
        finally:
            cluster.stop()

    print(f"raftsql benchmark: {args.nodes} nodes on this machine ({os.cpu_count()} cores), "
          f"{args.seconds:g}s per workload")
    for r in [apsw_base, *http_base.values(), *results.values()]:
        print(r.line())
    print("ratios:")
    print(f"  W1 / apsw fsync-per-insert      {results['W1'].rate / apsw_base.rate:6.2f}")
    print(f"  W1 / trivial http, 1 client     {results['W1'].rate / http_base['1'].rate:6.2f}")
    print(f"  W2 / trivial http, 64 clients   {results['W2'].rate / http_base['64'].rate:6.2f}")
    print(f"  W2 / W1 (group commit gain)     {results['W2'].rate / results['W1'].rate:6.2f}")
    print(f"  W4 / trivial http, 64 clients   {results['W4'].rate / http_base['64'].rate:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
