"""py-consul, Consul's Python client, unmodified, against real `raftsql serve` processes.

What docs/config-store.md promises a Consul client, checked the way an application would
see it: writes through any node, stale reads everywhere, check-and-set without lost updates,
blocking queries woken by their key only, transactions all or nothing, locks handed over
between processes (on destroy and on expiry, after the lock delay), one expiry decision
replicated to every node, and writes riding through a leader kill.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import consul
import pytest

from raftsql.cli.launcher import LocalCluster

from .conftest import eventually, query, running_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """One cluster for the tests that kill no node (each on keys of its own): a cluster
    takes seconds to start and stop, the file's run time stays reasonable."""
    with running_cluster(str(tmp_path_factory.mktemp("consul"))) as shared:
        yield shared


def client(cluster: LocalCluster, node_id: str, **kwargs: Any) -> consul.Consul:
    return consul.Consul(host=cluster.host, port=cluster.http_port(node_id), **kwargs)


def followers(cluster: LocalCluster) -> list[str]:
    leader = cluster.leader()
    return [i for i in cluster.ids if i != leader]


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def kv_rows(cluster: LocalCluster, node_id: str, prefix: str = "") -> list[list[Any]]:
    """This node's own copy of raftsql_kv (no forwarding, no leader check)."""
    return query(cluster.url(node_id),
                 "SELECT key, session, modify_index FROM raftsql_kv "
                 f"WHERE key LIKE '{prefix}%' ORDER BY key", level="none")


def test_put_get_recurse_keys_through_a_follower_then_stale_reads_on_every_node(cluster):
    c = client(cluster, followers(cluster)[0])
    assert c.kv.put("app/db/url", "postgres://db1:5432/app") is True
    assert c.kv.put("app/db/timeout", "30s", flags=1) is True
    assert c.kv.put("app/cache/blob", b"\x00\xffbinary") is True
    assert c.kv.put("apples", "not under app/") is True

    index, entry = c.kv.get("app/db/url")  # py-consul gives X-Consul-Index as it came: a str
    assert entry["Key"] == "app/db/url" and entry["Value"] == b"postgres://db1:5432/app"
    assert entry["Flags"] == 0 and entry["LockIndex"] == 0 and "Session" not in entry
    assert 0 < entry["CreateIndex"] == entry["ModifyIndex"] <= int(index)

    index, entries = c.kv.get("app/", recurse=True)
    assert [(e["Key"], e["Value"], e["Flags"]) for e in entries] == [
        ("app/cache/blob", b"\x00\xffbinary", 0),
        ("app/db/timeout", b"30s", 1),
        ("app/db/url", b"postgres://db1:5432/app", 0),
    ]
    assert int(index) == max(e["ModifyIndex"] for e in entries)
    assert c.kv.get("app/", keys=True)[1] == ["app/cache/blob", "app/db/timeout", "app/db/url"]
    assert c.kv.get("app/", keys=True, separator="/")[1] == ["app/cache/", "app/db/"]
    top = c.kv.get("", keys=True, separator="/")[1]  # the whole tree's first level
    assert [k for k in top if k.startswith("app")] == ["app/", "apples"]
    assert c.kv.get("app/nothing")[1] is None

    for node_id in cluster.ids:  # every node's own copy, once it has caught up
        stale = client(cluster, node_id, consistency="stale")
        eventually(lambda stale=stale: stale.kv.get("app/", recurse=True)[1] == entries)
        assert stale.kv.get("app/db/url")[1] == entry
        assert stale.kv.get("app/", keys=True, separator="/")[1] == ["app/cache/", "app/db/"]


def test_cas_race_between_two_clients_on_different_nodes_loses_no_update(cluster):
    nodes = followers(cluster) + [cluster.leader()]
    key = "race/counter"
    assert client(cluster, nodes[0]).kv.put(key, "0") is True
    target = 40  # successful increments in all
    successes: list[list[int]] = [[], []]
    failures = [0, 0]
    errors: list[BaseException] = []
    total_lock = threading.Lock()

    def incrementer(slot: int, node_id: str) -> None:
        c = client(cluster, node_id)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                with total_lock:
                    if len(successes[0]) + len(successes[1]) >= target:
                        return
                _, entry = c.kv.get(key)
                value = int(entry["Value"]) + 1
                if c.kv.put(key, str(value), cas=entry["ModifyIndex"]):
                    with total_lock:
                        successes[slot].append(value)
                else:
                    failures[slot] += 1
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=incrementer, args=(slot, node_id), daemon=True)
               for slot, node_id in enumerate(nodes[:2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    won = successes[0] + successes[1]
    assert len(won) >= target
    # Every successful cas wrote a distinct value, one more than the last: none was lost.
    assert sorted(won) == list(range(1, len(won) + 1)), (sorted(won), failures)
    _, entry = client(cluster, nodes[2]).kv.get(key)
    assert int(entry["Value"]) == len(won), (entry, len(won), failures)


class Blocking(threading.Thread):
    """One blocking query, run in the background: its answer and how long it took."""

    def __init__(self, c: consul.Consul, key: str, index: int, wait: str) -> None:
        super().__init__(daemon=True)
        self.c, self.key, self.index, self.wait = c, key, index, wait
        self.result: tuple[Any, Any] | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        start = time.monotonic()
        try:
            self.result = self.c.kv.get(self.key, index=self.index, wait=self.wait)
        except BaseException as e:
            self.error = e
        self.elapsed = time.monotonic() - start

    def answer(self, timeout: float = 20.0) -> tuple[Any, Any]:
        self.join(timeout)
        assert not self.is_alive(), "blocking query did not return"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def write_unrelated(c: consul.Consul, keys: list[str], seconds: float) -> int:
    """Write `keys` over and over for `seconds`: how many writes."""
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key in keys:
            assert c.kv.put(key, f"noise {n}") is True
            n += 1
        time.sleep(0.1)
    return n


@pytest.mark.parametrize("exists", [True, False], ids=["existing-key", "missing-key"])
def test_blocking_query_woken_by_its_key_only(cluster, exists):
    f1, f2 = followers(cluster)
    watcher, writer = client(cluster, f1), client(cluster, f2)
    key = f"watch/{'existing' if exists else 'missing'}/k"
    if exists:
        assert writer.kv.put(key, "v1") is True
    assert writer.kv.put(f"{key}/seed", "x") is True  # the store is not empty either way
    index, entry = watcher.kv.get(key)
    assert (entry is not None) == exists
    assert int(index) > 0

    # Writes to other keys (two of them have the watched key as a prefix, one is a sibling)
    # do not wake it: the wait ends with the same index and answer.
    q = Blocking(watcher, key, index, "2s")
    q.start()
    noise = write_unrelated(writer, [key + "2", key + "/under", "watch/other", "elsewhere/x"],
                            1.0)
    assert noise >= 3
    new_index, new_entry = q.answer()
    assert new_index == index, (index, new_index)
    assert new_entry == entry
    assert q.elapsed >= 1.0  # it waited (a 2 s wait, at least the writes' second)

    # A write of that key by another client wakes it before its wait ends.
    q = Blocking(watcher, key, index, "10s")
    q.start()
    time.sleep(0.5)
    assert writer.kv.put(key, "v2") is True
    new_index, new_entry = q.answer()
    assert q.elapsed < 9.0, q.elapsed
    assert int(new_index) > int(index)
    assert new_entry is not None and new_entry["Value"] == b"v2"
    assert new_entry["ModifyIndex"] == int(new_index)
    if not exists:
        assert new_entry["CreateIndex"] == int(new_index)


def test_txn_with_a_failing_check_writes_nothing(cluster):
    c = client(cluster, followers(cluster)[0])
    assert c.kv.put("txn/a", "1") is True
    _, a = c.kv.get("txn/a")

    ops = [
        {"KV": {"Verb": "set", "Key": "txn/b", "Value": b64("new")}},
        {"KV": {"Verb": "set", "Key": "txn/a", "Value": b64("2")}},
        {"KV": {"Verb": "check-index", "Key": "txn/a", "Index": a["ModifyIndex"] + 1000}},
    ]
    with pytest.raises(consul.ConsulException, match="409"):  # py-consul raises on a 409
        c.txn.put(ops)
    stale_cas = [{"KV": {"Verb": "delete", "Key": "txn/a"}},
                 {"KV": {"Verb": "cas", "Key": "txn/b", "Index": 0, "Value": b64("x")}},
                 {"KV": {"Verb": "cas", "Key": "txn/a", "Index": a["ModifyIndex"] - 1,
                         "Value": b64("3")}}]
    with pytest.raises(consul.ConsulException, match="409"):
        c.txn.put(stale_cas)

    def unchanged(c: consul.Consul) -> bool:
        assert c.kv.get("txn/b")[1] is None
        assert c.kv.get("txn/a")[1] == a
        assert c.kv.get("txn/", keys=True)[1] == ["txn/a"]
        return True

    unchanged(c)
    assert c.kv.put("txn-marker", "after the failed transactions") is True
    for node_id in cluster.ids:  # each node's copy, once it has what came after them
        stale = client(cluster, node_id, consistency="stale")
        eventually(lambda stale=stale: stale.kv.get("txn-marker")[1] is not None)
        unchanged(stale)

    # The same transaction with a check that holds is applied, all of it, in one entry.
    ops[2]["KV"]["Index"] = a["ModifyIndex"]
    ops[1], ops[2] = ops[2], ops[1]  # check first, then write what it checked
    result = c.txn.put(ops)
    assert result["Errors"] is None
    _, entries = c.kv.get("txn/", recurse=True)
    assert [(e["Key"], e["Value"]) for e in entries] == [("txn/a", b"2"), ("txn/b", b"new")]
    assert entries[0]["ModifyIndex"] == entries[1]["ModifyIndex"] > a["ModifyIndex"]


LOCKER = r"""
import sys, threading, time
import consul

host, port, key, name, ttl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
c = consul.Consul(host=host, port=port)
sid = c.session.create(name=name, ttl=ttl, lock_delay=1)
print("session", sid, flush=True)

def renew():
    while True:
        time.sleep(ttl / 4)
        try:
            c.session.renew(sid)
        except Exception as e:
            print("renew failed", e, flush=True)

threading.Thread(target=renew, daemon=True).start()
while True:
    try:
        if c.kv.put(key, name, acquire=sid):
            break
    except Exception as e:
        print("acquire failed", e, flush=True)
    time.sleep(0.1)
print("acquired", sid, flush=True)
if sys.stdin.readline().strip() == "destroy":
    c.session.destroy(sid)
    print("destroyed", sid, flush=True)
"""


class Locker:
    """A separate Python process taking a lock with py-consul; its output, line by line."""

    def __init__(self, script: str, cluster: LocalCluster, node_id: str, key: str, name: str,
                 ttl: int = 10) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, cluster.host, str(cluster.http_port(node_id)), key, name,
             str(ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def said(self, word: str) -> tuple[float, str] | None:
        return next(((t, line) for t, line in self.lines if line.split()[:1] == [word]), None)

    @property
    def session(self) -> str:
        return eventually(lambda: self.said("session"), timeout=15)[1].split()[1]

    def acquired_at(self, timeout: float = 20.0) -> float:
        return eventually(lambda: self.said("acquired"), timeout=timeout)[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def lockers(tmp_path):
    script = os.path.join(tmp_path, "locker.py")
    with open(script, "w") as f:
        f.write(LOCKER)
    started: list[Locker] = []

    def start(*args: Any, **kwargs: Any) -> Locker:
        started.append(Locker(script, *args, **kwargs))
        return started[-1]

    yield start
    for locker in started:
        locker.close()


class Watcher(threading.Thread):
    """Follows a key with blocking queries, as a Consul client would: when each holder
    (Session, or None) was first seen."""

    def __init__(self, c: consul.Consul, key: str) -> None:
        super().__init__(daemon=True)
        self.c, self.key = c, key
        self.seen: list[tuple[float, str | None]] = []
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        index = None
        try:
            while not self.stop_event.is_set():
                index, entry = self.c.kv.get(self.key, index=index, wait="1s")
                session = entry.get("Session") if entry else None
                if not self.seen or self.seen[-1][1] != session:
                    self.seen.append((time.monotonic(), session))
        except BaseException as e:
            self.failure = e

    def finish(self) -> list[tuple[float, str | None]]:
        self.stop_event.set()
        self.join(timeout=10)
        assert self.failure is None, self.failure
        return self.seen


def holder(cluster: LocalCluster, key: str) -> dict[str, Any]:
    _, entry = client(cluster, cluster.ids[0]).kv.get(key)
    return entry


def test_lock_taken_over_by_another_process_when_the_holder_destroys_its_session(
        cluster, lockers):
    key = "service/web/leader"
    f1, f2 = followers(cluster)
    a = lockers(cluster, f1, key, "A")
    a.acquired_at()
    b = lockers(cluster, f2, key, "B")
    sid_a, sid_b = a.session, b.session
    assert sid_a != sid_b
    time.sleep(1.0)  # B keeps trying meanwhile, and fails
    assert b.said("acquired") is None
    entry = holder(cluster, key)
    assert (entry["Session"], entry["Value"], entry["LockIndex"]) == (sid_a, b"A", 1)

    destroyed = time.monotonic()
    assert a.proc.stdin is not None
    a.proc.stdin.write("destroy\n")
    a.proc.stdin.flush()
    assert a.proc.wait(timeout=15) == 0
    assert a.said("destroyed")
    taken = b.acquired_at()
    assert taken - destroyed >= 0.9  # not before A's lock delay (1 s) ran out
    entry = holder(cluster, key)
    assert (entry["Session"], entry["Value"], entry["LockIndex"]) == (sid_b, b"B", 2)
    assert client(cluster, f2).session.info(sid_a)[1] is None


def test_lock_taken_over_when_the_stopped_holders_session_expires(cluster, lockers):
    key = "service/db/leader"
    f1, f2 = followers(cluster)
    a = lockers(cluster, f1, key, "A", ttl=10)
    a.acquired_at()
    b = lockers(cluster, f2, key, "B", ttl=10)
    sid_a, sid_b = a.session, b.session
    watcher = Watcher(client(cluster, cluster.leader()), key)
    watcher.start()
    a.proc.send_signal(signal.SIGSTOP)  # A stops renewing, and still thinks it holds the lock
    stopped = time.monotonic()
    taken = b.acquired_at(timeout=40)
    assert taken - stopped >= 5.0  # not before A's TTL (10 s, less A's last renewal) ran out
    entry = holder(cluster, key)
    assert (entry["Session"], entry["Value"], entry["LockIndex"]) == (sid_b, b"B", 2)
    holders = eventually(lambda: watcher.seen[-1][1] == sid_b and watcher.finish())
    # The leader released the key, then B took it, after the lock delay.
    assert [h for _, h in holders] == [sid_a, None, sid_b], holders
    released = holders[1][0]
    assert taken - released >= 0.5  # lock delay 1 s, less the watcher's latency
    for node_id in cluster.ids:
        stale = client(cluster, node_id, consistency="stale")
        eventually(lambda stale=stale: stale.session.info(sid_a)[1] is None)
        assert stale.session.info(sid_b)[1]["ID"] == sid_b


def test_session_expiry_is_decided_once_and_every_node_agrees(cluster):
    leader = cluster.leader()
    c = client(cluster, followers(cluster)[0])
    release = c.session.create(name="release", ttl=10, lock_delay=1)
    delete = c.session.create(name="delete", ttl=10, lock_delay=1, behavior="delete")
    assert c.kv.put("exp/a", "a", acquire=release) is True
    assert c.kv.put("exp/b", "b", acquire=release) is True
    assert c.kv.put("exp/c", "c", acquire=delete) is True
    assert c.kv.put("exp/free", "free") is True
    assert [r[1] for r in kv_rows(cluster, leader, "exp/")] == [release, release, delete, None]

    # Nobody renews: the leader ends both sessions when their TTL runs out.
    def expired() -> list[list[Any]]:
        rows = kv_rows(cluster, leader, "exp/")
        return rows if [r[0] for r in rows] == ["exp/a", "exp/b", "exp/free"] and \
            all(r[1] is None for r in rows) else []

    rows = eventually(expired, timeout=40)
    assert rows[0][2] == rows[1][2]  # one session's keys released by one entry
    for node_id in cluster.ids:  # the same rows, released at the same index, everywhere
        eventually(lambda node_id=node_id: kv_rows(cluster, node_id, "exp/") == rows)
        stale = client(cluster, node_id, consistency="stale")
        assert stale.session.info(release)[1] is None
        assert stale.session.info(delete)[1] is None
        assert not {release, delete} & {s["ID"] for s in stale.session.list()[1]}
        _, entries = stale.kv.get("exp/", recurse=True)
        assert [(e["Key"], e["ModifyIndex"], e.get("Session")) for e in entries] == [
            (r[0], r[2], None) for r in rows]


class ConsulWriter(threading.Thread):
    """Puts w/00000, w/00001, ... through one node with py-consul, retrying a put that
    fails for up to 10 s, as a user would; remembers what was acknowledged, and the
    ModifyIndex each acknowledged key then had."""

    def __init__(self, c: consul.Consul) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.acked: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None

    def retry(self, call):
        deadline = time.monotonic() + 10
        while True:
            try:
                return call()
            except (OSError, consul.ConsulException) as e:
                self.errors.append(repr(e))
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                key = f"w/{n:05d}"
                assert self.retry(lambda key=key, n=n: self.c.kv.put(key, str(n))) is True
                _, entry = self.retry(lambda key=key: self.c.kv.get(key))
                assert entry["Value"] == str(n).encode()
                self.acked.append((key, entry["ModifyIndex"]))
                n += 1
        except BaseException as e:
            self.failure = e

    def finish(self) -> list[tuple[str, int]]:
        self.stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive()
        assert self.failure is None, (self.failure, self.errors[-5:])
        return self.acked


def test_writes_through_a_follower_ride_through_a_leader_kill(cluster3):
    """Acknowledged puts survive, indexes only grow, and a session held across the kill
    still expires once, the same on every node."""
    cluster = cluster3  # its own cluster: this one kills a node
    old = cluster.leader()
    via = followers(cluster)[0]
    c = client(cluster, via)
    created = time.monotonic()  # a session held across the kill, never renewed
    held = c.session.create(name="held", ttl=10, lock_delay=1)
    assert c.kv.put("held/lock", "old", acquire=held) is True
    writer = ConsulWriter(client(cluster, via))
    writer.start()
    eventually(lambda: len(writer.acked) >= 20)
    cluster.kill(old)
    killed_at = len(writer.acked)
    new = cluster.leader(among=[i for i in cluster.ids if i != old], timeout=30)
    assert new != old
    eventually(lambda: writer.failure or len(writer.acked) >= killed_at + 20, timeout=30)
    acked = writer.finish()
    assert len(acked) >= killed_at + 20

    indexes = [index for _, index in acked]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)  # only grow

    expected = {key: index for key, index in acked}
    def readable(c: consul.Consul) -> bool:
        _, entries = c.kv.get("w/", recurse=True)
        got = {e["Key"]: e["ModifyIndex"] for e in entries}
        assert got.items() >= expected.items(), sorted(set(expected.items()) - set(got.items()))[:5]
        return True

    readable(client(cluster, via))  # linearizable, through the new leader
    readable(client(cluster, new, consistency="stale"))
    cluster.start_node(old)  # the old leader, restarted with the same command line, catches up
    eventually(lambda: readable(client(cluster, old, consistency="stale")), timeout=30)
    assert cluster.leader(timeout=30) in cluster.ids

    # The held session expires once, by the new leader's clock (which gave it a full TTL,
    # never less than its own TTL since it was made), and every node, the restarted old
    # leader too, has the key released at the same index.
    eventually(lambda: c.session.info(held)[1] is None, timeout=40)
    assert time.monotonic() - created >= 9.5
    leader = cluster.leader()
    rows = kv_rows(cluster, leader, "held/")
    assert [r[:2] for r in rows] == [["held/lock", None]]
    for node_id in cluster.ids:
        eventually(lambda node_id=node_id: kv_rows(cluster, node_id, "held/") == rows)
        stale = client(cluster, node_id, consistency="stale")
        assert stale.session.info(held)[1] is None
        assert stale.kv.get("held/lock")[1]["ModifyIndex"] == rows[0][2]
