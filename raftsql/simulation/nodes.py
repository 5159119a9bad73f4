"""Whole nodes under the simulator (FoundationDB-style): `run_seed(seed)`.

Each node is the real `raftsql.server.Server` (driver, SQLite state machine, config store,
HTTP API, WebSocket transport), several in one process on `VirtualLoop` (vloop.py): virtual
time, virtual sockets, executor jobs run on the loop after a seeded disk delay. The Raft log
lives on a `MemoryFileSystem` and SQLite's files go through `CrashVFS`: a power cut loses
what either did not sync, tearing the last write.

A seed draws the cluster (3 or 5 nodes, timeouts, snapshot thresholds) and a schedule:
clients (real HTTP requests to any node, so followers forward) run a register workload
(reads at level linearizable, writes and compare-and-sets on a few keys) and inserts of
unique values, while faults come: power cuts of a node or of all, partitions (random
halves, the leader isolated, one direction of one link), connections reset, latency, slow
disks. Then the faults heal, every node is up, and these must hold:

- the cluster converges: every node applies the leader's last index;
- no acknowledged insert is lost or applied twice;
- the register's history is linearizable (WGL, raftsql/simulation/linearizability.py);
- every node's database dumps to the same canonical text, and passes integrity_check.

Everything is drawn from `random.Random(seed)`, and every clock is virtual (the driver's 2 ms
budgets for work on the loop included): with PYTHONHASHSEED=0 (tools/simulate_nodes.py sees
to it) a rerun of a seed is the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from raftsql.http.respond import MAYBE_APPLIED
from raftsql.node import NodeConfig
from raftsql.server import Server, ServerConfig
from raftsql.simulation.crashvfs import CrashVFS
from raftsql.simulation.dump import canonical
from raftsql.simulation.linearizability import CAS, READ, WRITE, Op, check
from raftsql.simulation.vloop import HOST, LAN, Deadlock, Livelock, VirtualLoop
from raftsql.sql import session
from raftsql.storage.memfs import MemoryFileSystem

KEYS = 3  # registers in use at once; a new set every KEY_SECONDS (Jepsen's independent keys)
KEY_SECONDS = 1.0
CLIENTS = 4
FAULT_SECONDS = 20.0  # virtual seconds of workload under faults (by default)
CONVERGE_SECONDS = 60.0  # after healing: the bound to converge in
QUIET_SECONDS = 4.0  # converged: no new entry for this long (past the requests' 3 s timeout)
OK, FAILED, UNKNOWN = "ok", "failed", "unknown"


class LoopClock:
    """The driver's clock on the loop's (virtual) time."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Host:
    node_id: str
    ip: str
    data_dir: str
    fs: MemoryFileSystem = field(default_factory=MemoryFileSystem)
    server: Server | None = None
    booting: bool = False

    @property
    def up(self) -> bool:
        return self.server is not None


@dataclass
class SeedResult:
    seed: int
    problems: list[str]
    ops: dict[str, int]
    faults: dict[str, int]
    trace: list[str]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


class Sim:
    def __init__(self, seed: int, root: str, vfs: CrashVFS,
                 seconds: float = FAULT_SECONDS) -> None:
        self.rng = random.Random(seed)
        self.vfs = vfs
        self.seconds = seconds
        self.root = root
        n = self.rng.choice((3, 3, 5))
        self.hosts = [Host(f"n{i}", f"10.0.0.{i}", os.path.join(root, f"n{i}"))
                      for i in range(1, n + 1)]
        self.election_ms = self.rng.choice((300, 500, 1000))
        self.snapshot_threshold = self.rng.choice((32, 128, 8192))
        self.ops: list[dict[str, Any]] = []
        self.acked: list[int] = []  # inserted values a client was told were stored
        self.faults: dict[str, int] = {}
        self.trace: list[str] = []
        self.disk_slow = False
        self._next_value = 0
        self._pending: list[asyncio.Task[None]] = []  # faults' repairs, awaited at the end

    def log(self, event: str) -> None:
        self.trace.append(f"{asyncio.get_running_loop().time():9.3f} {event}")

    # ---- nodes

    def _config(self, host: Host) -> ServerConfig:
        peers = {h.node_id: f"{h.ip}:4002" for h in self.hosts}
        return ServerConfig(NodeConfig(
            node_id=host.node_id, data_dir=host.data_dir, http_addr=f"{host.ip}:4001",
            raft_addr=f"{host.ip}:4002", initial_cluster=peers,
            heartbeat_ms=max(self.election_ms // 10, 20), election_ms=self.election_ms,
            snapshot_threshold=self.snapshot_threshold, trailing_logs=16))

    async def start(self, host: Host) -> None:
        if host.up or host.booting:
            return
        host.booting = True
        self.vfs.revive(host.data_dir)
        ctx = contextvars.copy_context()
        ctx.run(HOST.set, host.ip)
        rng = random.Random(self.rng.random())

        async def boot() -> Server:
            server = Server(self._config(host), clock=LoopClock(), rng=rng, log_fs=host.fs)
            await server.start()
            return server
        task = asyncio.get_running_loop().create_task(boot(), context=ctx)
        try:
            host.server = await task
        finally:
            host.booting = False
        self.log(f"start {host.node_id}")

    def power_cut(self, host: Host) -> None:
        """The machine loses power: nothing of its process runs again, its connections are
        gone, its disks keep what was synced (and a torn part of the rest)."""
        assert host.server is not None
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop)
        server, host.server = host.server, None
        loop.kill(host.ip)
        self.vfs.kill(host.data_dir)
        for close in (server.kv.book.close, server.database.close):
            with contextlib.suppress(Exception):
                close()  # the connections go (writing nothing); the files stay
        lost = self.vfs.power_cut(host.data_dir, self.rng)
        host.fs.crash(self.rng)
        server._unlock()
        server.node._unlock()
        self.log(f"power cut {host.node_id} (SQLite lost {lost} unsynced writes)")

    def leader(self) -> Host | None:
        leaders = [h for h in self.hosts if h.server is not None and h.server.node.is_leader]
        return max(leaders, key=lambda h: h.server.node.term) if leaders else None  # type: ignore[union-attr]

    # ---- clients

    async def request(self, session: aiohttp.ClientSession, path: str, body: Any
                      ) -> tuple[str, list[dict[str, Any]]]:
        """One request to a random node: its outcome, and the results when ok."""
        host = self.rng.choice(self.hosts)
        # The node gives up before the client does, so that it can say what it did.
        url = f"http://{host.ip}:4001{path}{'&' if '?' in path else '?'}timeout=3s"
        try:
            async with session.post(url, data=orjson.dumps(body),
                                    headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=5.0)) as resp:
                text = await resp.read()
                status, not_leader = resp.status, resp.headers.get("X-Raftsql-Not-Leader")
        except (TimeoutError, aiohttp.ClientError, OSError):
            return UNKNOWN, []
        if status == 200:
            results = orjson.loads(text).get("results", [])
            return (FAILED if any("error" in r for r in results) else OK), results
        if status == 503 and (not_leader or MAYBE_APPLIED.encode() not in text):
            return FAILED, []  # the node says it did nothing (the API's promise, checked)
        return (FAILED if 400 <= status < 500 else UNKNOWN), []

    async def client(self, process: int, until: float) -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while loop.time() < until:
                await self.one_op(session, process)
                await asyncio.sleep(self.rng.expovariate(20.0))

    async def one_op(self, session: aiohttp.ClientSession, process: int) -> None:
        loop = asyncio.get_running_loop()
        # Keys move on with time, so that each key's history stays small enough to check.
        key = int(loop.time() // KEY_SECONDS) * KEYS + self.rng.randrange(KEYS)
        roll, start = self.rng.random(), loop.time()
        if roll < 0.35:
            outcome, results = await self.request(
                session, "/db/query?level=linearizable", [["SELECT v FROM reg WHERE k = ?", key]])
            if outcome == OK:
                values = results[0].get("values") or []
                self.ops.append(dict(f=READ, key=key, value=values[0][0] if values else None,
                                     invoke=start, complete=loop.time(), outcome=OK,
                                     process=process))
            return
        if roll < 0.5:
            self._next_value += 1
            value = self._next_value
            outcome, _ = await self.request(session, "/db/execute",
                                            [["INSERT INTO acks(v) VALUES(?)", value]])
            if outcome == OK:
                self.acked.append(value)
            return
        self._next_value += 1
        value = self._next_value  # unique: a read says which write it saw
        if roll < 0.75:
            outcome, _ = await self.request(session, "/db/execute", [[
                "INSERT INTO reg(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                key, value]])
            self.ops.append(dict(f=WRITE, key=key, value=value, invoke=start,
                                 complete=loop.time(), outcome=outcome, process=process))
            return
        written = [o["value"] for o in self.ops if o["key"] == key and o["f"] != READ]
        expected = self.rng.choice(written[-3:]) if written else 0  # 0: never written
        outcome, results = await self.request(session, "/db/execute", [[
            "UPDATE reg SET v = ? WHERE k = ? AND v = ?", value, key, expected]])
        applied = None if outcome == UNKNOWN else bool(results and results[0].get("rows_affected"))
        self.ops.append(dict(f=CAS, key=key, value=value, expected=expected, applied=applied,
                             invoke=start, complete=loop.time(), outcome=outcome,
                             process=process))

    # ---- faults

    async def nemesis(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop)
        net = loop.net
        while loop.time() < until:
            await asyncio.sleep(self.rng.expovariate(1.0))
            up = [h for h in self.hosts if h.up]
            roll = self.rng.random()
            if roll < 0.2 and up:
                victim = self.leader() if self.rng.random() < 0.5 else None
                victim = victim or self.rng.choice(up)
                self._fault("power cut")
                self.power_cut(victim)
                self._later(self.rng.uniform(0.2, 4.0), self.start(victim))
            elif roll < 0.25:
                self._fault("power cut all")
                for h in up:
                    self.power_cut(h)
                self._later(self.rng.uniform(0.2, 3.0), self._start_all())
            elif roll < 0.45:
                kind, links = self._partition()
                self._fault(f"partition ({kind})")
                net.cut |= links
                self.log(f"cut {sorted(links)}")
                self._later(self.rng.uniform(0.5, 6.0), self._heal(links))
            elif roll < 0.6:
                self._fault("connections reset")
                for t in list(net.connections):
                    if self.rng.random() < 0.3:
                        net.reset(t)
            elif roll < 0.75:
                delay = self.rng.choice((0.005, 0.05, 0.2))
                self._fault("latency")
                net.latency = lambda src, dst, d=delay: LAN + d * (0.5 + self.rng.random())
                self.log(f"latency ~{delay}s")
                self._later(self.rng.uniform(1.0, 5.0), self._calm())
            elif roll < 0.85:
                self._fault("slow disk")
                self.disk_slow = True
                self._later(self.rng.uniform(1.0, 4.0), self._calm())

    def _partition(self) -> tuple[str, set[tuple[str, str]]]:
        """What to cut: random halves, the leader alone, or one direction of one link."""
        ips = [h.ip for h in self.hosts]
        self.rng.shuffle(ips)
        kind = self.rng.choice(("halves", "isolate leader", "one way"))
        if kind == "one way":
            return kind, {(ips[0], ips[1])}
        leader = self.leader() if kind == "isolate leader" else None
        if leader is not None:
            side = [leader.ip]
        else:
            kind, side = "halves", ips[:self.rng.randint(1, len(ips) // 2)]
        other = [ip for ip in ips if ip not in side]
        return kind, {link for a in side for b in other for link in ((a, b), (b, a))}

    def _fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def _later(self, seconds: float, coro: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(seconds)
            await coro
        self._pending.append(asyncio.get_running_loop().create_task(run()))

    async def _start_all(self) -> None:
        for h in self.hosts:
            if not h.up:
                await self.start(h)

    async def _heal(self, links: set[tuple[str, str]]) -> None:
        asyncio.get_running_loop().net.heal(links)  # type: ignore[attr-defined]
        self.log(f"heal {sorted(links)}")

    async def _calm(self) -> None:
        loop = asyncio.get_running_loop()
        loop.net.latency = lambda src, dst: LAN  # type: ignore[attr-defined]
        self.disk_slow = False

    def io_delay(self, rng: random.Random) -> float:
        if self.disk_slow:
            return rng.uniform(0.005, 0.1)
        return rng.uniform(0.0, 0.002)

    # ---- a run

    async def run(self) -> list[str]:
        for h in self.hosts:
            await self.start(h)
        async with aiohttp.ClientSession() as session:
            if not await self._setup(session):
                return ["the schema could not be created within 30 s of a fault-free start"]
        loop = asyncio.get_running_loop()
        until = loop.time() + self.seconds
        await asyncio.gather(self.nemesis(until),
                             *(self.client(p, until) for p in range(CLIENTS)))
        for task in self._pending:
            await task
        loop.net.heal()  # type: ignore[attr-defined]
        await self._calm()
        await self._start_all()
        self.log("healed, every node up")
        problems = await self._converge()
        if problems:
            return problems
        problems += await self._final_reads()
        problems += await self._converge()  # the final reads' own entries, if any
        ops = [Op(o["key"], o["f"], o["value"], o["invoke"],
                  None if o["outcome"] == UNKNOWN else o["complete"], o.get("expected"),
                  o.get("applied", True), o["process"])
               for o in self.ops if o["outcome"] != FAILED]
        verdict = check(ops, budget=20.0)
        if not verdict.ok:
            problems.append(f"register history not linearizable: {verdict.reason}")
        problems += await self._stop_and_compare()
        return problems

    async def _setup(self, session: aiohttp.ClientSession) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while loop.time() < deadline:
            outcome, _ = await self.request(session, "/db/execute", [
                "CREATE TABLE IF NOT EXISTS reg (k INTEGER PRIMARY KEY, v INTEGER)",
                "CREATE TABLE IF NOT EXISTS acks (v INTEGER)"])
            if outcome == OK:
                return True
            await asyncio.sleep(0.2)
        return False

    async def _converge(self) -> list[str]:
        """Every node has applied the leader's last index, and nothing new came for
        QUIET_SECONDS (requests the nodes still held when the clients gave up land late)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONVERGE_SECONDS
        since, at = loop.time(), -1
        while loop.time() < deadline:
            leader = self.leader()
            last = leader.server.node.commit_index if leader and leader.server else -1
            if last != at or not all(h.server is not None and h.server.node.applied_index >= last
                                     and h.server.node.commit_index == last
                                     for h in self.hosts):
                since, at = loop.time(), last
            elif loop.time() - since >= QUIET_SECONDS:
                self.log(f"converged at index {last}")
                return []
            await asyncio.sleep(0.1)
        state = {h.node_id: (h.server.node.term, h.server.node.commit_index,
                             h.server.node.applied_index, h.server.node.is_leader)
                 for h in self.hosts if h.server is not None}
        return [f"no convergence within {CONVERGE_SECONDS:g} s of healing: "
                f"(term, commit, applied, leads) {state}"]

    async def _final_reads(self) -> list[str]:
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                outcome, results = await self.request(
                    session, "/db/query?level=linearizable", [["SELECT v FROM acks"]])
                if outcome == OK:
                    break
                await asyncio.sleep(0.2)
            else:
                return ["the final read never succeeded"]
        stored = [row[0] for row in results[0].get("values") or []]
        counts: dict[int, int] = {}
        for v in stored:
            counts[v] = counts.get(v, 0) + 1
        problems = []
        lost = [v for v in self.acked if v not in counts]
        twice = sorted(v for v, c in counts.items() if c > 1)
        if lost:
            problems.append(f"acknowledged inserts lost: {lost[:10]} ({len(lost)} in all)")
        if twice:
            problems.append(f"inserts applied more than once: {twice[:10]}")
        return problems

    async def _stop_and_compare(self) -> list[str]:
        for h in self.hosts:
            if h.server is not None:
                ctx = contextvars.copy_context()
                ctx.run(HOST.set, h.ip)
                server = h.server
                await asyncio.get_running_loop().create_task(server.stop(transfer=False),
                                                             context=ctx)
                h.server = None
        dumps = {h.node_id: canonical(os.path.join(h.data_dir, "db.sqlite")) for h in self.hosts}
        problems = [f"{n}: integrity_check says {integrity}"
                    for n, (_, integrity) in dumps.items() if integrity != "ok"]
        texts = {dump for dump, _ in dumps.values()}
        if len(texts) != 1:
            problems.append("the nodes' canonical dumps differ: " + ", ".join(
                f"{n}: {len(d)} chars" for n, (d, _) in dumps.items()))
        return problems


def run_seed(seed: int, seconds: float = FAULT_SECONDS) -> SeedResult:
    """One seed, on a loop of its own, in a temporary directory removed afterwards."""
    logging.getLogger("raftsql").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    started = time.perf_counter()
    # The coroutines of power-cut nodes are dropped unfinished; their complaints are noise.
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    root = tempfile.mkdtemp(prefix=f"raftsql-sim-{seed}-")
    vfs = CrashVFS()  # the process's default VFS, until the seed ends
    sim = Sim(seed, root, vfs, seconds)
    loop = VirtualLoop(random.Random(seed ^ 0x5EED), sim.io_delay, real_seconds=120.0)
    loop.set_exception_handler(lambda loop, context: None)  # dead hosts' leftovers
    # The budgets for work on the loop (2 ms, sql/session.py) read virtual time, in which
    # work takes none: every run of a seed decides them alike.
    real_clock, session.perf_counter = session.perf_counter, loop.time
    try:
        problems = loop.run_until_complete(sim.run())
    except (Deadlock, Livelock) as e:
        problems = [f"{type(e).__name__.lower()}: {e}"]
    except Exception as e:  # a crash of the simulated system is a failure of the seed
        problems = [f"{type(e).__name__}: {e}"]
    finally:
        with contextlib.suppress(Exception):
            loop.close()
        shutil.rmtree(root, ignore_errors=True)
        session.perf_counter = real_clock
        loop.graveyard.clear()
        gc.collect()
        vfs.close()
        sys.unraisablehook = hook
    counts: dict[str, int] = {}
    for o in sim.ops:
        counts[o["outcome"]] = counts.get(o["outcome"], 0) + 1
    counts["acked inserts"] = len(sim.acked)
    return SeedResult(seed, problems, counts, sim.faults, sim.trace[-200:],
                      time.perf_counter() - started)
