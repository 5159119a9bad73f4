"""raftsql.ConfigStore (raftsql/client/config.py) against one real node, started once for the
module; each test works under a prefix of its own."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest

import raftsql
from raftsql.cli.launcher import LocalCluster, http
from raftsql.client.config import Compacted, ConfigStore, LockTimeout, Watch

from .client_node import single_node

_names = itertools.count(1)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    yield from single_node(tmp_path_factory)


@pytest.fixture
def store(url):
    s = ConfigStore(url)
    yield s
    s.close()


@pytest.fixture
def ns() -> str:
    """A prefix no other test uses."""
    return f"t{next(_names)}/"


def test_raftsql_exports_it() -> None:
    assert raftsql.ConfigStore is ConfigStore


def test_mapping(store, ns) -> None:
    store[ns + "a"] = "text é"
    store[ns + "b"] = b"\x00\xff"
    assert store[ns + "a"] == "text é".encode()
    assert store[ns + "b"] == b"\x00\xff"
    assert ns + "a" in store and ns + "zz" not in store
    with pytest.raises(KeyError):
        store[ns + "zz"]
    store.update({ns + "c": "3"})
    scoped = ConfigStore(store._cluster.seeds, prefix=ns)
    assert list(scoped) == ["a", "b", "c"] and len(scoped) == 3
    assert scoped["c"] == b"3"
    del scoped["c"]
    with pytest.raises(KeyError):
        del scoped["c"]
    assert dict(scoped) == {"a": "text é".encode(), "b": b"\x00\xff"}
    with pytest.raises(TypeError):
        store[ns + "n"] = 1  # type: ignore[assignment]


def test_keys_that_need_quoting(store, ns) -> None:
    key = ns + "a b?c=d&e%f#g"
    store[key] = "x"
    assert store[key] == b"x"
    assert store.keys_under(ns) == [key]


def test_get_many_entries_and_flags(store, ns) -> None:
    store.put(ns + "db/url", "pg", flags=7)
    store[ns + "db/pool"] = "10"
    store[ns + "web/port"] = "80"
    store[ns[:-1] + "x"] = "not under the prefix"
    assert store.get_many(ns + "db/") == {ns + "db/pool": b"10", ns + "db/url": b"pg"}
    assert store.get_many(ns + "nothing/") == {}
    entry = store.entry(ns + "db/url")
    assert entry is not None and entry.flags == 7 and entry.value == b"pg"
    assert entry.create_index == entry.modify_index > 0 and entry.session is None
    assert store.entry(ns + "missing") is None
    assert store.keys_under(ns, separator="/") == [ns + "db/", ns + "web/"]


def test_compare_and_set(store, ns) -> None:
    key = ns + "k"
    assert store.compare_and_set(key, 0, "first")
    assert not store.compare_and_set(key, 0, "again: it exists")
    index = store.entry(key).modify_index
    assert not store.compare_and_set(key, index + 1000, "stale")
    assert store.compare_and_set(key, index, "second")
    assert store[key] == b"second"
    assert not store.delete(key, cas=index)
    assert store.delete(key, cas=store.entry(key).modify_index) and key not in store


def test_compare_and_set_race_has_one_winner(url, ns) -> None:
    key = ns + "counter"
    stores = [ConfigStore(url) for _ in range(4)]
    stores[0][key] = "0"
    index = stores[0].entry(key).modify_index
    barrier = threading.Barrier(len(stores))
    won: list[bool] = []

    def contend(s: ConfigStore, n: int) -> None:
        barrier.wait()
        won.append(s.compare_and_set(key, index, str(n + 1)))

    threads = [threading.Thread(target=contend, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, False, True]
    assert stores[0][key] in {b"1", b"2", b"3", b"4"}


def test_json(store, ns) -> None:
    store.set_json(ns + "cfg", {"retries": 3, "hosts": ["a", "b"]})
    assert store.get_json(ns + "cfg") == {"retries": 3, "hosts": ["a", "b"]}
    assert store.get_json(ns + "none", None) is None
    with pytest.raises(KeyError):
        store.get_json(ns + "none")


def test_every_write_carries_an_idempotency_key(store, ns, monkeypatch) -> None:
    writes: list[tuple[str, str, bool]] = []
    send = store._cluster.send

    def recording(method, path, params=None, body=None, *, write=False, **kw):
        writes.append((method, path, write))
        return send(method, path, params, body, write=write, **kw)

    monkeypatch.setattr(store._cluster, "send", recording)
    store[ns + "a"] = "1"
    store.compare_and_set(ns + "a", 0, "2")
    store.put_many({ns + "b": "1"})
    del store[ns + "a"]
    store.delete(ns + "b")
    assert [w for w in writes if w[0] != "GET"] and all(w[2] for w in writes if w[0] != "GET")
    assert store._cluster.idempotent_writes


def test_put_many_in_chunks(store, ns) -> None:
    items = {f"{ns}{i:03}": str(i) for i in range(150)}
    assert store.put_many(items, chunk=64) == 150
    assert store.get_many(ns) == {k: v.encode() for k, v in items.items()}


# ---- watches

def test_watch_yields_every_change_in_order_with_prev(store, ns) -> None:
    start = store.index()
    store[ns + "a"] = "1"
    store[ns + "b"] = "x"
    store[ns + "a"] = "2"
    del store[ns + "a"]
    store.put_many({ns + "c": "c", ns + "d": "d"})  # one transaction: one index
    store["elsewhere"] = "not watched"
    watch = store.watch(ns, prefix=True, start_index=start)
    changes = [next(watch) for _ in range(6)]
    assert [(c.op, c.key, c.value, c.prev_value) for c in changes] == [
        ("set", ns + "a", b"1", None),
        ("set", ns + "b", b"x", None),
        ("set", ns + "a", b"2", b"1"),
        ("delete", ns + "a", None, b"2"),
        ("set", ns + "c", b"c", None),
        ("set", ns + "d", b"d", None),
    ]
    indexes = [c.index for c in changes]
    assert indexes[:5] == sorted(set(indexes[:5])) and indexes[4] == indexes[5] > start
    watch.close()


def test_watch_of_one_key_and_resume(store, ns) -> None:
    key = ns + "k"
    watch = store.watch(key, start_index=store.index())
    for v in ("1", "2", "3"):
        store[key] = v
        store[ns + "other"] = v
    first = next(watch)
    assert (first.key, first.value) == (key, b"1")
    resumed = store.watch(key, start_index=watch.index)  # as after a restart, elsewhere
    assert [next(resumed).value, next(resumed).value] == [b"2", b"3"]
    assert [next(watch).value, next(watch).value] == [b"2", b"3"]
    watch.close()
    resumed.close()


def test_watch_from_now_waits_for_the_next_change(store, ns) -> None:
    store[ns + "old"] = "before the watch"
    watch = store.watch(ns, prefix=True, wait=1)
    got: list[bytes | None] = []
    t = threading.Thread(target=lambda: got.append(next(watch).value))
    t.start()
    while watch.index is None:  # its first answer fixes where it starts
        t.join(0.01)
    store[ns + "new"] = "after"
    t.join(10)
    assert got == [b"after"]


def test_scoped_store_watch_shows_keys_without_prefix(url, ns) -> None:
    scoped = ConfigStore(url, prefix=ns)
    start = scoped.index()
    scoped["a"] = "1"
    scoped["a"] = "2"
    watch = scoped.watch("", prefix=True, start_index=start)
    c1, c2 = next(watch), next(watch)
    assert (c1.key, c2.key, c2.prev.key if c2.prev else None) == ("a", "a", "a")


async def test_awatch(store, ns) -> None:
    start = store.index()
    store[ns + "a"] = "1"
    store[ns + "a"] = "2"
    seen = []
    async with store.awatch(ns, prefix=True, start_index=start) as changes:
        async for change in changes:
            seen.append(change.value)
            if len(seen) == 1:
                await asyncio.get_running_loop().run_in_executor(
                    None, store.__setitem__, ns + "a", "3")
            if len(seen) == 3:
                break
        assert changes.index is not None and changes.index > start
    assert seen == [b"1", b"2", b"3"]


def test_watch_of_compacted_history_raises(tmp_path) -> None:
    cluster = LocalCluster(1, str(tmp_path), extra_args=["--kv-history", "5"])
    cluster.start()
    try:
        cluster.leader(timeout=30)
        store = ConfigStore(cluster.url("n1"))
        start = store.index()
        for i in range(12):
            store[f"k{i}"] = str(i)
        with pytest.raises(Compacted) as info:
            next(store.watch("", prefix=True, start_index=start))
        assert info.value.status == 410 and info.value.index == start
        assert info.value.compact_index > start
        kept = store.watch("", prefix=True, start_index=info.value.compact_index)
        assert next(kept).index > info.value.compact_index
    finally:
        cluster.stop()


# ---- locks

def test_lock_excludes_another_store(url, ns) -> None:
    key = ns + "lock"
    inside = threading.Lock()
    overlaps: list[int] = []
    rounds: list[int] = []

    def worker(n: int) -> None:
        store = ConfigStore(url)
        for _ in range(3):
            with store.lock(key, ttl=10, lock_delay=0, value=f"w{n}") as lock:
                assert lock.held
                if not inside.acquire(blocking=False):
                    overlaps.append(n)
                    continue
                try:
                    assert store[key] == f"w{n}".encode()
                    rounds.append(n)
                finally:
                    inside.release()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps == [] and sorted(rounds) == [0, 0, 0, 1, 1, 1]


def test_lock_held_then_released(url, store, ns) -> None:
    key = ns + "lock"
    other = ConfigStore(url)
    with store.lock(key, ttl=10, lock_delay=0) as lock:
        entry = store.entry(key)
        assert entry is not None and entry.session == lock.session and entry.lock_index == 1
        with pytest.raises(LockTimeout):
            other.lock(key, ttl=10, wait=0.5).acquire()
    assert store.entry(key).session is None
    code, sessions = http("GET", f"{url}/v1/session/info/{lock.session}")
    assert (code, sessions) == (200, [])
    assert not lock.held and not lock.lost.is_set()
    with other.lock(key, ttl=10, wait=10) as again:  # free now
        assert again.held


def test_lost_lock_is_signalled(url, store, ns) -> None:
    key = ns + "lock"
    with store.lock(key, ttl=10, lock_delay=1) as lock:
        code, _ = http("PUT", f"{url}/v1/session/destroy/{lock.session}")
        assert code == 200
        assert lock.lost.wait(15)
        assert not lock.held
    # The session's lock delay is honoured by retrying until it ends.
    with store.lock(key, ttl=10, wait=20) as after:
        assert after.held and store.entry(key).session == after.session


def test_watch_over_answers_cut_by_limit(store, ns) -> None:
    start = store.index()
    store[ns + "a"] = "1"
    store.put_many({ns + "b": "1", ns + "c": "1", ns + "d": "1"})  # one entry of three
    store[ns + "a"] = "2"
    watch = Watch(store._make_cluster, ns, prefix=True, start_index=start, limit=2)
    changes = [next(watch) for _ in range(5)]
    assert [(c.key, c.value) for c in changes] == [
        (ns + "a", b"1"), (ns + "b", b"1"), (ns + "c", b"1"), (ns + "d", b"1"),
        (ns + "a", b"2")]
    assert watch.index == changes[-1].index


def test_watch_index_never_splits_an_entry(store, ns) -> None:
    start = store.index()
    store.put_many({ns + "x": "1", ns + "y": "1"})
    watch = store.watch(ns, prefix=True, start_index=start)
    first = next(watch)
    assert watch.index == start  # half of an entry is out: resuming gives it whole again
    again = store.watch(ns, prefix=True, start_index=watch.index)
    assert [next(again).key, next(again).key] == [first.key, ns + "y"]
    assert next(watch).key == ns + "y" and watch.index >= first.index
