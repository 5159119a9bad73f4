"""The config store's watch across a leader's SIGKILL, on three real `raftsql serve`
processes: a watcher sees every acknowledged write once, in index order."""

from __future__ import annotations

import signal
import threading

import pytest

from raftsql.cli.launcher import LocalCluster
from raftsql.client.config import Change, ConfigStore
from raftsql.client.http import Unavailable

from .conftest import eventually

pytestmark = pytest.mark.slow

N = 300


def test_watch_sees_every_acknowledged_write_once_across_leader_kill(cluster3):
    leader = cluster3.leader()
    follower = next(i for i in cluster3.ids if i != leader)
    urls = [cluster3.url(i) for i in cluster3.ids]
    start = ConfigStore(urls).index()

    acknowledged: list[int] = []
    unknown: list[int] = []
    progress = threading.Event()

    def write() -> None:
        store = ConfigStore(cluster3.url(follower), timeout=30)
        for i in range(1, N + 1):
            try:
                store[f"w/{i:04}"] = str(i)
            except Unavailable:
                unknown.append(i)  # may or may not have been applied
            else:
                acknowledged.append(i)
            if i == N // 3:
                progress.set()

    seen: list[Change] = []
    stop = threading.Event()

    def watch() -> None:
        with ConfigStore(urls).watch("w/", prefix=True, start_index=start, wait=2) as w:
            for change in w:
                seen.append(change)
                if stop.is_set() or change.key == f"w/{N:04}":
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    writer = threading.Thread(target=write)
    watcher.start()
    writer.start()
    assert progress.wait(60)
    cluster3.kill(leader)  # mid-way through the writes, and through the watch
    writer.join(120)
    assert not writer.is_alive()

    eventually(lambda: {int(c.value or 0) for c in seen} >= set(acknowledged), timeout=60)
    stop.set()

    values = [int(c.value or 0) for c in seen]
    assert len(values) == len(set(values)), "a change was repeated"
    assert set(acknowledged) <= set(values) <= set(acknowledged) | set(unknown)
    indexes = [c.index for c in seen]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    assert values == sorted(values)  # one writer, one key after the other
    assert all(c.op == "set" and c.prev is None for c in seen)
    assert cluster3.leader(among=[i for i in cluster3.ids if i != leader]) != leader


def test_lock_is_lost_when_no_renewal_reaches_the_cluster(tmp_path):
    cluster = LocalCluster(1, str(tmp_path))
    cluster.start()
    try:
        cluster.leader(timeout=30)
        store = ConfigStore(cluster.url("n1"), timeout=2)
        with store.lock("locks/partitioned", ttl=10, lock_delay=0) as lock:
            cluster.signal("n1", signal.SIGSTOP)  # nothing answers, nothing expires
            try:
                assert lock.lost.wait(60)
                assert not lock.held
            finally:
                cluster.signal("n1", signal.SIGCONT)
    finally:
        cluster.stop()
