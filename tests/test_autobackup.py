"""Automatic backups: a whole SQLite file in the directory when the database changed, none
when it did not, the newest N kept; and `raftsql serve --backup-dir` making them."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import os
import sys

import apsw
import pytest

from raftsql.cli.launcher import free_ports, http
from raftsql.sql.autobackup import AutoBackup
from tests.integration.conftest import eventually


def make_db(path: str) -> apsw.Connection:
    db = apsw.Connection(path)
    db.execute("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES(1)").fetchall()
    return db


def at(minute: int) -> dt.datetime:
    return dt.datetime(2026, 12, 3, 12, minute, tzinfo=dt.UTC)


def rows(path: str) -> list[tuple]:
    return apsw.Connection(path).execute("SELECT x FROM t ORDER BY x").fetchall()


def test_a_backup_is_made_only_when_the_database_changed(tmp_path) -> None:
    db = make_db(str(tmp_path / "db.sqlite"))
    auto = AutoBackup(str(tmp_path / "db.sqlite"), str(tmp_path / "backups"), interval=60)
    os.makedirs(auto.directory)
    first = auto.run_once(at(0))
    assert first is not None and first.startswith("raftsql-20261203T120000.000000Z-")
    assert auto.run_once(at(1)) is None  # nothing changed
    db.execute("INSERT INTO t VALUES(2)")
    second = auto.run_once(at(2))
    assert second is not None and auto.backups() == [first, second]
    assert rows(os.path.join(auto.directory, first)) == [(1,)]
    assert rows(os.path.join(auto.directory, second)) == [(1,), (2,)]
    assert [n for n in os.listdir(auto.directory) if n not in (first, second)] == []  # no .part
    assert [n for n in os.listdir(tmp_path) if ".backup-" in n] == []  # no staging left


def test_the_newest_are_kept_and_compressed_ones_are_gzip(tmp_path) -> None:
    db = make_db(str(tmp_path / "db.sqlite"))
    auto = AutoBackup(str(tmp_path / "db.sqlite"), str(tmp_path / "b"), interval=60, keep=2,
                      compress=True)
    os.makedirs(auto.directory)
    made = []
    for i in range(4):
        db.execute("INSERT INTO t VALUES(?)", (10 + i,))
        made.append(auto.run_once(at(i)))
    assert auto.backups() == made[2:]
    path = os.path.join(auto.directory, made[-1])
    assert path.endswith(".sqlite.gz")
    plain = str(tmp_path / "plain.sqlite")
    with gzip.open(path) as src, open(plain, "wb") as out:
        out.write(src.read())
    assert rows(plain) == [(1,), (10,), (11,), (12,), (13,)]
    assert auto.run_once(at(9)) is None  # unchanged: compared by the uncompressed digest


@pytest.mark.slow
async def test_serve_backs_up_on_its_interval_and_a_backup_restores(tmp_path) -> None:
    port, raft = free_ports(2)
    backups = tmp_path / "backups"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftsql", "serve", "--data-dir", str(tmp_path / "data"),
        "--http-addr", f"127.0.0.1:{port}", "--raft-addr", f"127.0.0.1:{raft}",
        "--backup-dir", str(backups), "--backup-interval", "300ms", "--backup-keep", "3",
        stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(eventually, lambda: http("GET", f"{url}/readyz")[0] == 200)
        for i in range(3):
            code, _ = await asyncio.to_thread(http, "POST", f"{url}/db/execute",
                                              ["CREATE TABLE IF NOT EXISTS t(x)",
                                               f"INSERT INTO t VALUES({i})"])
            assert code == 200

            def backed_up(n: int = i) -> bool:
                names = sorted(os.listdir(backups)) if backups.exists() else []
                return bool(names) and rows(str(backups / names[-1]))[-1:] == [(n,)]
            await asyncio.to_thread(eventually, backed_up)
        await asyncio.sleep(1)  # a few intervals with nothing new: no more backups
        names = sorted(os.listdir(backups))
        assert len(names) == 3 and rows(str(backups / names[-1])) == [(0,), (1,), (2,)]
    finally:
        proc.terminate()
        await proc.wait()
