"""What the Consul API tests share: a client of one running server, and request helpers."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import yarl

from raftsql.cli.launcher import free_ports
from raftsql.server import KvLimits, NodeConfig, Server, ServerConfig
from tests.inprocess import wait_for

MAX_VALUE = 1024


MAX_OPS = 8


class Api:
    """A client of one running server: `call` answers (status, headers, body bytes)."""

    def __init__(self, server: Server, session: aiohttp.ClientSession):
        self.server = server
        self.http = session
        self.url = server.config.node.api_url

    async def call(self, method: str, path: str, body: bytes | str | Any = None,
                   ) -> tuple[int, Any, bytes]:
        headers = {}
        if body is not None and not isinstance(body, (bytes, str)):
            body, headers = json.dumps(body), {"Content-Type": "application/json"}
        url = yarl.URL(self.url + path, encoded=True)  # sent as written: bad bytes too
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, _, data = await self.call(method, path, body)
        assert got == status, data
        return json.loads(data)

    async def put(self, key: str, value: bytes | str = b"v", query: str = "") -> Any:
        return await self.json("PUT", f"/v1/kv/{key}{query}", value)

    async def get(self, key: str, query: str = "") -> Any:
        return await self.json("GET", f"/v1/kv/{key}{query}")

    async def entry(self, key: str) -> dict[str, Any] | None:
        status, _, data = await self.call("GET", f"/v1/kv/{key}")
        if status == 404:
            return None
        assert status == 200, data
        (e,) = json.loads(data)
        return e

    async def sql(self, query: str) -> dict[str, Any]:
        (result,) = (await self.json("GET", "/db/query?q=" + _quote(query)))["results"]
        return result

    async def session(self, **fields: Any) -> str:
        return (await self.json("PUT", "/v1/session/create", fields))["ID"]

    async def index_of(self, method: str, path: str, body: Any = None) -> int:
        """X-Consul-Index of the answer."""
        _, headers, _ = await self.call(method, path, body)
        return int(headers["X-Consul-Index"])

    def last_index(self) -> int:
        """The node's last log index: what was proposed, refused requests included."""
        return self.server.node.status()["raft"]["last_log_index"]

    async def tables(self) -> list[str]:
        rows = (await self.sql("SELECT name FROM sqlite_master WHERE type = 'table' "
                               "ORDER BY name")).get("values")
        return [r[0] for r in rows or []]


def _quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def b64(value: bytes | str) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


async def start(tmp_path, name: str = "n1", **config: Any) -> Server:
    (port,) = free_ports(1)
    server = Server(ServerConfig(
        NodeConfig(node_id="n1", data_dir=str(tmp_path / name), http_addr=f"127.0.0.1:{port}",
                   heartbeat_ms=20, election_ms=200),
        kv_limits=KvLimits(max_value_bytes=MAX_VALUE, max_txn_ops=MAX_OPS), **config))
    await server.start()
    await wait_for(lambda: server.node.is_leader)
    return server


def kv(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


async def txn(api: Api, ops: list[Any], status: int = 200) -> Any:
    return await api.json("PUT", "/v1/txn", ops, status)


ROLLBACKS = [
    (kv("cas", "a", Index=1, Value=b64("x")), "index is stale"),
    (kv("check-index", "a", Index=1), "modify index"),
    (kv("check-not-exists", "a"), "exists"),
    (kv("check-index", "missing", Index=1), "doesn't exist"),
    (kv("delete-cas", "a", Index=1), "index is stale"),
    (kv("get", "missing"), "doesn't exist"),
]


async def info(api: Api, sid: str) -> list[dict[str, Any]]:
    return await api.json("GET", f"/v1/session/info/{sid}")


async def changes(api: Api, query: str) -> tuple[list[dict[str, Any]], int]:
    status, headers, body = await api.call("GET", "/v1/changes/" + query)
    assert status == 200, body
    return json.loads(body), int(headers["X-Consul-Index"])


BAD_PUTS = [
    ("/v1/kv/", "missing key name"),
    ("/v1/kv/" + "k" * 513, "too long"),
    ("/v1/kv/%FF%FEkey", "UTF-8"),
    ("/v1/kv/ok%C3", "UTF-8"),
    ("/v1/kv/ok?flags=abc", "flags"),
    ("/v1/kv/ok?flags=-1", "flags"),
    ("/v1/kv/ok?flags=18446744073709551616", "flags"),
    ("/v1/kv/ok?flags=9223372036854775808", "flags"),  # SQLite's INTEGER: 63 bits, not 64
    ("/v1/kv/ok?cas=9223372036854775808", "cas"),
    ("/v1/kv/ok?cas=x", "cas"),
    ("/v1/kv/ok?cas=-1", "cas"),
    ("/v1/kv/ok?cas=1.5", "cas"),
    ("/v1/kv/ok?acquire=", "session"),
    ("/v1/kv/ok?cas=0&acquire=s", "Conflicting"),
]


WRITES = [
    "INSERT INTO raftsql_kv(key, value) VALUES ('x', 'y')",
    "INSERT OR REPLACE INTO raftsql_kv(key, value) VALUES ('k', 'y')",
    "UPDATE raftsql_kv SET value = 'hacked'",
    "DELETE FROM raftsql_kv",
    "DROP TABLE raftsql_kv",
    "ALTER TABLE raftsql_kv ADD COLUMN extra",
    "ALTER TABLE raftsql_kv RENAME TO mine",
    "CREATE INDEX kv_value ON raftsql_kv(value)",
    "CREATE TRIGGER kv_t AFTER INSERT ON raftsql_kv BEGIN SELECT 1; END",
    "CREATE TEMP TRIGGER kv_tt AFTER UPDATE ON raftsql_kv BEGIN SELECT 1; END",
    "WITH x AS (SELECT 1) DELETE FROM raftsql_kv",
]

