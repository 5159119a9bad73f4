"""rqlite's clients against real processes, HTTP and Raft on ports of their own (as deployed).

What a client sees must be what rqlite would show it, or better: forwarding and redirects go
to the leader's API (never its Raft port) across restarts and leader changes, a write
through a follower rides through a leader kill, and every 200 is a write that is there,
exactly once.
"""

from __future__ import annotations

import threading
import time

import pytest
from pyrqlite import dbapi2

from raftsql.cli.launcher import LocalCluster, http

from .conftest import eventually, execute, query

pytestmark = pytest.mark.slow


def followers(cluster: LocalCluster) -> list[str]:
    leader = cluster.leader()
    return [i for i in cluster.ids if i != leader]


def check_addresses(cluster: LocalCluster) -> None:
    """Every node knows every member's API URL and Raft address exactly."""
    leader = cluster.leader()
    for node_id in cluster.ids:
        def exact(node_id: str = node_id) -> bool:
            code, body = http("GET", cluster.url(node_id) + "/nodes?ver=2")
            return code == 200 and {(n["id"], n.get("api_addr"), n.get("addr")) for n in body["nodes"]} == {
                (i, cluster.url(i), cluster.raft_addr(i)) for i in cluster.ids}
        eventually(exact)
    for node_id in followers(cluster):
        code, headers = _redirect(cluster.url(node_id) + "/db/query?redirect&q=SELECT+1")
        assert (code, headers["Location"]) == (301, cluster.url(leader) + "/db/query?redirect&q=SELECT+1")
        conn = dbapi2.connect(host="127.0.0.1", port=cluster.http_port(node_id))
        cur = conn.cursor()
        cur.execute("INSERT INTO seen(node) VALUES (?)", (node_id,))  # forwarded
        assert cur.lastrowid >= 1
        cur.execute("SELECT count(*) FROM seen WHERE node = ?", (node_id,))
        assert cur.fetchone()[0] >= 1
        conn.close()


def _redirect(url: str) -> tuple[int, dict[str, str]]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", f"{parts.path}?{parts.query}")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, dict(resp.headers)


def test_forwarding_and_redirects_reach_the_leaders_api_across_restarts(cluster3):
    execute(cluster3.url(cluster3.leader()), ["CREATE TABLE seen (node TEXT)"])
    check_addresses(cluster3)
    for node_id in cluster3.ids:  # every node restarted, with the same command line
        cluster3.kill(node_id)
    for node_id in cluster3.ids:
        cluster3.start_node(node_id)
    cluster3.leader(timeout=30)
    check_addresses(cluster3)
    old = cluster3.leader()
    code, _ = http("POST", cluster3.url(old) + "/leader", b"")
    assert code == 200
    eventually(lambda: cluster3.leader() != old)
    check_addresses(cluster3)


class PyrqliteWriter(threading.Thread):
    """Inserts unique values through one node with pyrqlite, as an application would; keeps
    the values whose request succeeded and the errors of those that did not."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acked: list[int] = []
        self.failed: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn = dbapi2.connect(host="127.0.0.1", port=self.port)
        cur = conn.cursor()
        n = 0
        while not self.stop_event.is_set():
            n += 1
            try:
                cur.execute("INSERT INTO acked(v) VALUES (?)", (n,))
            except Exception as e:  # pyrqlite raises on any status but 200
                self.failed.append(str(e))
                time.sleep(0.05)
                continue
            self.acked.append(n)
        conn.close()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()


def test_writes_through_a_follower_ride_through_a_leader_kill_exactly_once(cluster3):
    execute(cluster3.url(cluster3.leader()), ["CREATE TABLE acked (v INTEGER)"])
    via = followers(cluster3)[0]
    writer = PyrqliteWriter(cluster3.http_port(via))
    writer.start()
    eventually(lambda: len(writer.acked) >= 30)
    old = cluster3.leader()
    cluster3.kill(old)
    before = len(writer.acked)
    new = cluster3.leader(among=[i for i in cluster3.ids if i != old])
    eventually(lambda: len(writer.acked) >= before + 30)
    cluster3.start_node(old)
    eventually(lambda: len(writer.acked) >= before + 60)
    writer.finish()
    values = [v for (v,) in query(cluster3.url(new), "SELECT v FROM acked")]
    twice = sorted(v for v in set(values) if values.count(v) > 1)
    assert not twice, f"applied twice: {twice} (failed requests: {writer.failed})"
    missing = set(writer.acked) - set(values)
    assert not missing, f"acknowledged and lost: {sorted(missing)[:10]}"
    # the client noticed at most the write in flight when the leader died: the others waited
    # for the next leader (an unmodified client rode through the failover)
    assert len(writer.failed) <= 1, writer.failed
    assert all("503" in e for e in writer.failed)


def test_sqlalchemy_orm_and_inspector(cluster3):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy import Column, Integer, String, inspect
    from sqlalchemy.orm import Session, declarative_base

    Base = declarative_base()

    class User(Base):
        __tablename__ = "users"
        id = Column(Integer, primary_key=True)
        name = Column(String(50))

    via = followers(cluster3)[0]
    engine = sqlalchemy.create_engine(f"rqlite+pyrqlite://127.0.0.1:{cluster3.http_port(via)}/")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([User(name="ada"), User(name="grace")])
        session.commit()
        ada = session.query(User).filter_by(name="ada").one()
        ada.name = "Ada"
        session.commit()
        assert [u.name for u in session.query(User).order_by(User.id)] == ["Ada", "grace"]
    assert inspect(engine).get_table_names() == ["users"]  # exactly the user's tables
    engine.dispose()
