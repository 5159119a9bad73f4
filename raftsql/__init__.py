"""raftsql: SQLite replicated with Raft, with an rqlite-compatible HTTP API.

Clients: `raftsql.connect(url)` (the same function as `raftsql.dbapi.connect`, PEP 249) and
`raftsql.aio` (asyncio); see docs/client.md.

Config store: `raftsql.ConfigStore(url)`, a mapping of the cluster's keys with watches and
locks; see docs/config-store.md.

Embedding: `raftsql.Node(raftsql.NodeConfig(...), state_machine=...)` runs a node inside
your program; `await node.start()`, `await node.propose(data)`, `await node.stop()`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["ConfigStore", "Node", "NodeConfig", "__version__", "connect"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `raftsql --version` and the pure core stay light.
    if name in ("Node", "NodeConfig"):
        from raftsql import node

        return getattr(node, name)
    if name == "connect":
        from raftsql.client.dbapi import connect

        return connect
    if name == "ConfigStore":
        from raftsql.client.config import ConfigStore

        return ConfigStore
    if name in ("dbapi", "aio"):
        import importlib

        return importlib.import_module(f"raftsql.{name}")
    raise AttributeError(name)
