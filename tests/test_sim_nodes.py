"""The whole-node simulator: its loop, network and crashing VFS, and seeds of whole runs."""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import time

import apsw
import pytest

from raftsql.simulation import crashvfs, nodes
from raftsql.simulation.crashvfs import CrashVFS
from raftsql.simulation.vloop import HOST, VirtualLoop


def run(coro_fn, io_delay=lambda rng: 0.0):
    loop = VirtualLoop(random.Random(1), io_delay)
    try:
        return loop.run_until_complete(coro_fn(loop))
    finally:
        loop.close()


def test_virtual_time_passes_without_waiting():
    async def main(loop):
        started = time.monotonic()
        await asyncio.sleep(3600)
        return loop.time(), time.monotonic() - started
    virtual, real = run(main)
    assert virtual == pytest.approx(3600)
    assert real < 1.0


def test_executor_jobs_run_in_order_after_the_disk_delay():
    async def main(loop):
        order = []
        futs = [loop.run_in_executor(None, order.append, i) for i in range(5)]
        await asyncio.gather(*futs)
        await asyncio.to_thread(order.append, "thread")
        return order, loop.time()
    order, now = run(main, io_delay=lambda rng: 0.5)
    assert order == [0, 1, 2, 3, 4, "thread"]
    assert now == pytest.approx(3.0)  # one after the other, as on a one-thread pool


def test_a_killed_host_never_runs_again_not_even_its_finally_blocks():
    async def main(loop):
        ran = []

        async def process():
            try:
                while True:
                    await asyncio.sleep(1)
                    ran.append(loop.time())
            finally:
                ran.append("finally")
        ctx = contextvars.copy_context()
        ctx.run(HOST.set, "10.0.0.1")
        loop.create_task(process(), context=ctx)
        await asyncio.sleep(2.5)
        loop.kill("10.0.0.1")
        await asyncio.sleep(10)
        return ran
    assert run(main) == [1.0, 2.0]


def test_a_cut_link_holds_the_stream_and_healing_delivers_it_in_order():
    async def main(loop):
        got = []

        async def serve(reader, writer):
            got.append(await reader.readexactly(6))
        server = await asyncio.start_server(serve, "10.0.0.2", 80)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("10.0.0.2", 81)
        ctx = contextvars.copy_context()
        ctx.run(HOST.set, "10.0.0.1")
        reader, writer = await loop.create_task(
            asyncio.open_connection("10.0.0.2", 80), context=ctx)
        loop.net.cut.add(("10.0.0.1", "10.0.0.2"))
        writer.write(b"abc")
        writer.write(b"def")
        await asyncio.sleep(5)
        held = list(got)
        loop.net.heal()
        await asyncio.sleep(0.1)
        server.close()
        return held, got
    held, got = run(main)
    assert held == [] and got == [b"abcdef"]


@pytest.fixture
def vfs():
    vfs = CrashVFS()
    yield vfs
    vfs.close()


def test_a_power_cut_loses_only_what_sqlite_did_not_sync(tmp_path, vfs):
    lost_some = False
    for seed in range(20):
        d = tmp_path / str(seed)
        d.mkdir()
        path = str(d / "db.sqlite")
        conn = apsw.Connection(path, vfs=crashvfs.NAME)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # synced: must survive
        conn.execute("INSERT INTO t VALUES (-1)")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("INSERT INTO t VALUES (0)")  # committed with a sync: must survive
        conn.execute("PRAGMA synchronous=OFF")
        for i in range(1, 200):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        vfs.kill(str(d))
        conn.close()
        lost = vfs.power_cut(str(d), random.Random(seed))
        vfs.revive(str(d))
        conn = apsw.Connection(path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = [r[0] for r in conn.execute("SELECT x FROM t ORDER BY rowid")]
        conn.close()
        assert rows[:2] == [-1, 0] and rows == [-1, *range(len(rows) - 1)]
        lost_some |= lost > 0 and len(rows) < 201
        os.remove(path)
    assert lost_some


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_whole_nodes_keep_their_promises_under_faults(seed):
    result = nodes.run_seed(seed, seconds=6.0)
    assert result.ok, (result.problems, result.trace[-30:])
    assert result.ops.get("ok", 0) > 10 and sum(result.faults.values()) >= 1


def test_the_simulation_catches_a_driver_that_acknowledges_before_fsync(monkeypatch):
    from raftsql.storage.memfs import _MemFile
    monkeypatch.setattr(_MemFile, "sync", lambda self: None)  # the Raft log never syncs
    results = [nodes.run_seed(seed, seconds=8.0) for seed in (100, 101, 102)]
    assert any(not r.ok for r in results), [r.problems for r in results]
