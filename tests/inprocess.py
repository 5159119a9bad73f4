"""In-process clusters of real `raftsql.node.Node`s on 127.0.0.1 (one event loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from raftsql.cli.launcher import free_ports
from raftsql.node import Node, NodeConfig
from raftsql.server import Server, ServerConfig


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def start_nodes(tmp_path, n: int = 3, *, heartbeat_ms: int, election_ms: int,
                      **node_kwargs: Callable[[], Any]) -> list[Node]:
    """Start `n` nodes of a new cluster; each keyword is a factory called once per node."""
    initial = {f"n{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(free_ports(n))}
    nodes = [
        Node(NodeConfig(node_id=node_id, data_dir=str(tmp_path / node_id), http_addr=addr,
                        initial_cluster=initial, heartbeat_ms=heartbeat_ms, election_ms=election_ms),
             **{k: make() for k, make in node_kwargs.items()})
        for node_id, addr in initial.items()
    ]
    for node in nodes:
        await node.start()
    return nodes


async def start_servers(tmp_path, n: int = 3, *, heartbeat_ms: int, election_ms: int,
                        cluster_secret: str | None = None,
                        auth: Callable[[str], Any] | None = None, **server: Any) -> list[Server]:
    """Start `n` SQL servers (node, SQL service, HTTP API) of a new cluster; `auth(node_id)`
    gives each node's Auth; the other keywords go to every ServerConfig."""
    initial = {f"n{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(free_ports(n))}
    servers = [
        Server(ServerConfig(NodeConfig(node_id=node_id, data_dir=str(tmp_path / node_id),
                                       http_addr=addr, initial_cluster=initial,
                                       heartbeat_ms=heartbeat_ms, election_ms=election_ms,
                                       cluster_secret=cluster_secret),
                            auth=auth(node_id) if auth else None, **server))
        for node_id, addr in initial.items()
    ]
    for server in servers:
        await server.start()
    return servers


@contextlib.asynccontextmanager
async def serving(tmp_path, n: int = 3) -> AsyncIterator[list[Server]]:
    """`n` servers of a new cluster, once every node knows the leader's API; stopped after."""
    servers = await start_servers(tmp_path, n, heartbeat_ms=50, election_ms=300)
    nodes = [s.node for s in servers]
    try:
        await wait_for(lambda: any(node.is_leader for node in nodes))
        await wait_for(lambda: all(node.leader_api_url() for node in nodes))
        yield servers
    finally:
        for s in servers:
            await s.stop(transfer=False)
