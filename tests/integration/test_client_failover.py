"""The DB-API through leader failures: writers keep going while the leader is killed and
restarted, twice, and every write the client reported is in the table exactly once.

A write whose answer was lost is resent with its idempotency key (raftsql.client.http); the
leader applies a key at most once and answers a retry with the first outcome. Without that,
a resent INSERT would either fail on the UNIQUE column (the client would raise) or, in a
table without one, show up twice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from raftsql import dbapi
from raftsql.cli.launcher import LocalCluster

from .conftest import query

pytestmark = pytest.mark.slow


@dataclass
class Writer:
    """Inserts k = 0, 1, 2, ... one statement each, until told to stop; records what the
    client said succeeded and what it raised."""

    conn: dbapi.Connection
    sql: str
    done: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            try:
                self.conn.execute(self.sql, (k,))
            except dbapi.Error as e:
                self.errors.append(e)
                return
            self.done.append(k)
            k += 1

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, daemon=True)
        t.start()
        return t


def writes_for(writers: list[Writer], seconds: float) -> None:
    """Let the writers run for `seconds`, and check that each made progress meanwhile."""
    before = [len(w.done) for w in writers]
    time.sleep(seconds)
    for w, n in zip(writers, before, strict=True):
        assert w.errors == [], w.errors
        assert len(w.done) > n, "a writer made no progress"


def test_writes_ride_through_leader_kills_exactly_once(cluster3: LocalCluster):
    leader = cluster3.leader()
    follower = next(i for i in cluster3.ids if i != leader)
    setup = dbapi.connect(cluster3.url(leader))
    setup.execute("CREATE TABLE uniq(id INTEGER PRIMARY KEY, k INTEGER UNIQUE)")
    setup.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, k INTEGER)")
    setup.close()

    all_urls = ",".join(cluster3.url(i) for i in cluster3.ids)
    writers = [
        # every member as a seed, into a table whose UNIQUE column refuses a second apply
        Writer(dbapi.connect(all_urls, timeout=30), "INSERT INTO uniq(k) VALUES (?)"),
        # one follower as the only seed (the rest learned from /nodes), into a table where
        # a second apply would be a second row
        Writer(dbapi.connect(cluster3.url(follower), timeout=30),
               "INSERT INTO plain(k) VALUES (?)"),
    ]
    threads = [w.start() for w in writers]
    try:
        writes_for(writers, 1.0)
        for _round in range(2):
            old = cluster3.leader()
            cluster3.kill(old)
            cluster3.leader(among=[i for i in cluster3.ids if i != old], timeout=30)
            writes_for(writers, 1.5)
            cluster3.start_node(old)
            cluster3.leader(timeout=30)
            writes_for(writers, 1.5)
    finally:
        for w in writers:
            w.stop.set()
        for t in threads:
            t.join(timeout=40)
    for w in writers:
        assert w.errors == [], w.errors  # the client never raised through the failovers
        w.conn.close()

    for w, table in zip(writers, ("uniq", "plain"), strict=True):
        rows = query(cluster3.url(cluster3.leader()),
                     f"SELECT k, count(*) FROM {table} GROUP BY k")
        counts = dict(rows)
        duplicates = {k: n for k, n in counts.items() if n != 1}
        assert duplicates == {}, f"{table}: applied more than once: {duplicates}"
        missing = set(w.done) - set(counts)
        assert missing == set(), f"{table}: reported written but absent: {sorted(missing)}"
        # What is there beyond the reported writes can only be the one write in flight
        # when the writer stopped, or none.
        assert len(set(counts) - set(w.done)) <= 1
        assert len(w.done) > 50
