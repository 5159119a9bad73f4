"""rqlite's /boot: a SQLite file replaces a single-node cluster's database directly, then
the node snapshots; refused, changing nothing, anywhere else or for a file that is not one."""

from __future__ import annotations

import sqlite3

import aiohttp

from raftsql.node import NodeConfig
from raftsql.server import Server, ServerConfig
from tests.inprocess import serving, wait_for


def database_file(tmp_path, rows: int = 200) -> bytes:
    path = tmp_path / "boot.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO b(v) VALUES (?)", [(f"v{i}",) for i in range(rows)])
    db.commit()
    db.close()
    return path.read_bytes()


async def test_boot_replaces_a_single_nodes_database_and_snapshots_it(tmp_path) -> None:
    async with serving(tmp_path / "c", n=1) as (server,), aiohttp.ClientSession() as http:
        url = server.node.api_url
        await http.post(f"{url}/db/execute", json=["CREATE TABLE old (x)"])
        async with http.post(f"{url}/boot", data=database_file(tmp_path)) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{url}/db/query", params={"q": "SELECT count(*) FROM b"}) as resp:
            assert (await resp.json())["results"][0]["values"] == [[200]]
        async with http.get(f"{url}/db/query",
                            params={"q": "SELECT name FROM sqlite_master"}) as resp:
            assert (await resp.json())["results"][0]["values"] == [["b"]]
        raft = server.node.status()["raft"]
        assert raft["snapshot_index"] == raft["applied_index"]
        assert raft["first_log_index"] == raft["applied_index"] + 1  # nothing to replay
        async with http.post(f"{url}/db/execute",
                             json=["INSERT INTO b(v) VALUES ('after')"]) as resp:
            assert "error" not in await resp.text()
        async with http.post(f"{url}/boot", data=b"SQLite format 3\x00" + bytes(500)) as resp:
            assert resp.status == 400 and "not a SQLite database" in await resp.text()
        async with http.post(f"{url}/boot", data=b"CREATE TABLE x (y);") as resp:
            assert resp.status == 400 and "takes a SQLite database file" in await resp.text()
        config = server.config.node
    # The same node restarted holds the booted database and what came after.
    again = Server(ServerConfig(NodeConfig(node_id=config.node_id, data_dir=config.data_dir,
                                           http_addr=config.http_addr)))
    await again.start()
    try:
        await wait_for(lambda: again.node.is_leader)
        async with aiohttp.ClientSession() as http, http.get(
                f"{again.node.api_url}/db/query",
                params={"q": "SELECT count(*) FROM b", "level": "none"}) as resp:
            assert (await resp.json())["results"][0]["values"] == [[201]]
    finally:
        await again.stop()


async def test_boot_is_refused_by_a_cluster_of_several(tmp_path) -> None:
    async with serving(tmp_path / "c", n=3) as servers, aiohttp.ClientSession() as http:
        leader = next(s for s in servers if s.node.is_leader)
        async with http.post(f"{leader.node.api_url}/boot", data=database_file(tmp_path)) as resp:
            assert resp.status == 400
            assert "single-node cluster" in await resp.text()
        async with http.get(f"{leader.node.api_url}/db/query",
                            params={"q": "SELECT count(*) FROM sqlite_master"}) as resp:
            assert (await resp.json())["results"][0]["values"] == [[0]]
