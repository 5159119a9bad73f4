from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from raftsql.cli.launcher import LocalCluster, http


@contextlib.contextmanager
def running_cluster(base_dir: str, *args: str) -> Iterator[LocalCluster]:
    """Three nodes with fast Raft timings (and `args`), once they agree on a leader; stopped
    after."""
    cluster = LocalCluster(3, base_dir, extra_args=["--heartbeat-ms", "50", "--election-ms", "500",
                                                    *args])
    cluster.start()
    try:
        cluster.leader(timeout=30)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster3(tmp_path) -> Iterator[LocalCluster]:
    with running_cluster(str(tmp_path)) as cluster:
        yield cluster


def execute(url: str, statements: list[Any], params: str = "", timeout: float = 10.0) -> dict:
    code, body = http("POST", f"{url}/db/execute{params}", statements, timeout=timeout)
    assert code == 200, (code, body)
    return body


def query(url: str, sql: str, level: str = "linearizable") -> list[list[Any]]:
    code, body = http("POST", f"{url}/db/query?level={level}", [sql])
    assert code == 200, (code, body)
    result = body["results"][0]
    assert "error" not in result, result
    return result.get("values", [])


def eventually(check, timeout: float = 20.0, interval: float = 0.1):
    """Retry `check` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (AssertionError, OSError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last!r})")
