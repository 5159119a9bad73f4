"""OL: a node flooded with far more requests than it can serve (issue 11): what it sheds,
what its memory does, and whether a well-behaved client is still served.

    python tools/bench.py --only OL [--seconds 5]

A 3-node cluster; FLOOD clients write to the leader at once, each a 64 KB insert, with
their connections held open, for the duration. Run twice in the same session: with the
default --max-open-requests (1024) lowered to LIMIT, and with no limit (0), the baseline.
Reported: the answers by status, the leader's peak RSS during the flood against its RSS
before (from a reset high-water mark), and the latency of a probe client reading /readyz
and a one-row query meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile
import time

import aiohttp

from raftsql.cli.launcher import LocalCluster, http

FLOOD = 1000  # concurrent clients
LIMIT = 64  # --max-open-requests in the limited run
BODY = 64 * 1024


def _rss_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _flood(url: str, seconds: float) -> tuple[collections.Counter[str], list[float]]:
    statuses: collections.Counter[str] = collections.Counter()
    probe_ms: list[float] = []
    stop = time.monotonic() + seconds
    body = ('[["INSERT INTO big(b) VALUES(?)", "' + "x" * BODY + '"]]').encode()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            while time.monotonic() < stop:
                try:
                    async with session.post(f"{url}/db/execute", data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        statuses[str(r.status)] += 1
                        if r.status == 503:
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                except (TimeoutError, aiohttp.ClientError) as e:
                    statuses[type(e).__name__] += 1

        async def probe() -> None:
            async with aiohttp.ClientSession() as own:
                while time.monotonic() < stop:
                    start = time.perf_counter()
                    try:
                        async with own.get(f"{url}/db/query?level=none&q=SELECT+1") as r:
                            await r.read()
                            if r.status == 200:
                                probe_ms.append((time.perf_counter() - start) * 1000)
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)

        await asyncio.gather(probe(), *(client() for _ in range(FLOOD)))
    return statuses, probe_ms


def _run(limit: int, seconds: float) -> str:
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(3, d, extra_args=["--max-open-requests", str(limit)])
        cluster.start()
        try:
            leader = cluster.leader(timeout=30)
            url = cluster.url(leader)
            assert http("POST", f"{url}/db/execute", ["CREATE TABLE big(b)"])[0] == 200
            pid = cluster.procs[leader].pid
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
            before = _rss_mb(pid, "VmRSS")
            statuses, probe_ms = asyncio.run(_flood(url, seconds))
            peak = _rss_mb(pid, "VmHWM")
            alive = cluster.procs[leader].poll() is None
        finally:
            cluster.stop()
    probe_ms.sort()
    p50 = f"{probe_ms[len(probe_ms) // 2]:.0f} ms" if probe_ms else "none served"
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    return (f"--max-open-requests {limit}: {answers}; leader RSS {before:.0f} MB before, peak "
            f"{peak:.0f} MB; probe read p50 {p50} ({len(probe_ms)} served); "
            f"{'alive' if alive else 'DEAD'}")


def bench_overload(seconds: float) -> list[str]:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return [f"OL: {FLOOD} clients flooding the leader with {BODY // 1024} KB inserts for "
            f"{seconds:g}s", "  " + _run(LIMIT, seconds), "  " + _run(0, seconds)]
