"""raftsql: SQLite replicated with Raft, with an rqlite-compatible HTTP API.

Embedding: `raftsql.Node(raftsql.NodeConfig(...), state_machine=...)` runs a node inside
your program; `await node.start()`, `await node.propose(data)`, `await node.stop()`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Node", "NodeConfig", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `raftsql --version` and the pure core stay light.
    if name in ("Node", "NodeConfig"):
        from raftsql.node import node

        return getattr(node, name)
    raise AttributeError(name)
