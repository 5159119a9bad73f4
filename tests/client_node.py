"""One real `raftsql serve` process for the client tests (tests/test_dbapi.py, test_aio.py),
started once per module: the clients are tested against the server they will meet."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from raftsql.cli.launcher import LocalCluster

_names = itertools.count(1)


def single_node(tmp_path_factory) -> Iterator[str]:
    """The URL of a one-node cluster that can take writes; stopped after the module."""
    cluster = LocalCluster(1, str(tmp_path_factory.mktemp("client-node")))
    cluster.start()
    try:
        cluster.leader(timeout=30)
        yield cluster.url("n1")
    finally:
        cluster.stop()


def table_name() -> str:
    """A table no other test of the module uses (they share one database)."""
    return f"t{next(_names)}"
