"""`raftsql.ConfigStore`: the config store (docs/config-store.md) as a Python mapping.

    store = raftsql.ConfigStore("http://h1:4001,http://h2:4001")
    store["app/db/url"] = "postgres://db1:5432/app"    # str is stored as UTF-8
    store["app/db/url"]                                # b'postgres://db1:5432/app'
    for change in store.watch("app/", prefix=True):    # every change, in order
        ...

It speaks /v1/kv, /v1/txn, /v1/session and /v1/changes through the HTTP core
(raftsql/client/http.py), so it finds the leader, follows it through failover and sends an
idempotency key with every write: a write resent after a timeout is applied at most once.
Reads are the cluster's default (linearizable) unless `stale=True`. One ConfigStore may be
shared by threads (its requests take turns); a watch and a lock have connections of their
own.
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import orjson

from raftsql.client.http import Cluster, Response
from raftsql.client.kvlock import Lock
from raftsql.client.kvtypes import (
    Change,
    Compacted,
    ConfigError,
    Entry,
    LockTimeout,
    entry_of,
    index_of,
    kv_path,
    refused,
)
from raftsql.client.kvwatch import AsyncWatch, Watch

__all__ = ["ConfigStore", "Entry", "Change", "ConfigError", "Compacted", "LockTimeout", "Lock",
           "Watch", "AsyncWatch", "TXN_CHUNK"]

TXN_CHUNK = 64  # operations per /v1/txn in put_many (Consul's fixed limit; raftsql's is 128)
_MISSING = object()


def as_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a config value is str or bytes, not {type(value).__name__}")


class ConfigStore(MutableMapping[str, bytes]):
    """The keys of a raftsql cluster (all of them, or those under `prefix`: then keys are
    given and shown without it)."""

    def __init__(self, urls: str | Sequence[str] | None = None, *, timeout: float = 10.0,
                 auth: tuple[str, str] | str | None = None, prefix: str = "",
                 stale: bool = False):
        self._cluster = Cluster(urls, timeout=timeout, auth=auth)
        self._auth = auth
        self._timeout = timeout
        self._mutex = threading.Lock()
        self.prefix = prefix
        self.stale = stale

    def close(self) -> None:
        with self._mutex:
            self._cluster.close()

    def __enter__(self) -> ConfigStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConfigStore({','.join(self._cluster.seeds)!r}, prefix={self.prefix!r})"

    # ---- the mapping

    def __getitem__(self, key: str) -> bytes:
        entry = self.entry(key)
        if entry is None:
            raise KeyError(key)
        return entry.value

    def __setitem__(self, key: str, value: str | bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        # One transaction, so "missing" is decided at the same index as the deletion.
        ops = [{"KV": {"Verb": "get", "Key": self._full(key)}},
               {"KV": {"Verb": "delete", "Key": self._full(key)}}]
        r = self._send("PUT", "/v1/txn", body=ops, write=True)
        if r.status == 409:
            raise KeyError(key)
        if r.status != 200:
            raise refused(r)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_under(""))

    def __len__(self) -> int:
        return len(self.keys_under(""))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.entry(key) is not None

    # ---- more than a mapping

    def entry(self, key: str) -> Entry | None:
        """The key's value with its indexes (ModifyIndex: what compare_and_set takes), or
        None when it does not exist."""
        r = self._send("GET", kv_path(self._full(key)), self._read())
        if r.status == 404:
            return None
        if r.status != 200:
            raise refused(r)
        return self._local(entry_of(r.json()[0]))

    def put(self, key: str, value: str | bytes, *, flags: int = 0) -> None:
        self._put(key, value, {"flags": flags or None})

    def compare_and_set(self, key: str, expected_index: int, value: str | bytes, *,
                        flags: int = 0) -> bool:
        """Write only if the key's ModifyIndex is `expected_index` (0: only if it does not
        exist); False, and nothing written, otherwise."""
        return self._put(key, value, {"cas": expected_index, "flags": flags or None})

    def delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
        """Delete the key (no error if missing), or every key under it with `recurse`; with
        `cas`, only if its ModifyIndex is that (False otherwise)."""
        params = {"recurse": recurse, "cas": cas}
        r = self._send("DELETE", kv_path(self._full(key)), params, write=True)
        if r.status != 200:
            raise refused(r)
        return bool(r.json())

    def get_many(self, prefix: str = "") -> dict[str, bytes]:
        """Every key under `prefix` with its value, in key order."""
        return {e.key: e.value for e in self.entries(prefix)}

    def entries(self, prefix: str = "") -> list[Entry]:
        r = self._send("GET", kv_path(self._full(prefix)), {"recurse": True, **self._read()})
        if r.status == 404:
            return []
        if r.status != 200:
            raise refused(r)
        return [self._local(entry_of(d)) for d in r.json()]

    def keys_under(self, prefix: str = "", *, separator: str | None = None) -> list[str]:
        """The keys under `prefix`, in key order (with a separator: one level of the tree)."""
        params = {"keys": True, "separator": separator, **self._read()}
        r = self._send("GET", kv_path(self._full(prefix)), params)
        if r.status == 404:
            return []
        if r.status != 200:
            raise refused(r)
        return [k[len(self.prefix):] for k in r.json()]

    def put_many(self, items: dict[str, str | bytes] | Sequence[tuple[str, str | bytes, int]],
                 *, chunk: int = TXN_CHUNK) -> int:
        """Write many keys, `chunk` to a transaction (each all or nothing); a dict, or
        (key, value, flags) triples. Returns how many were written."""
        triples = ([(k, v, 0) for k, v in items.items()] if isinstance(items, dict)
                   else list(items))
        for start in range(0, len(triples), chunk):
            ops = [{"KV": {"Verb": "set", "Key": self._full(k), "Flags": flags,
                           "Value": base64.b64encode(as_bytes(v)).decode()}}
                   for k, v, flags in triples[start:start + chunk]]
            r = self._send("PUT", "/v1/txn", body=ops, write=True)
            if r.status != 200:
                raise refused(r)
        return len(triples)

    def index(self) -> int:
        """The store's current index: a watch from here sees every later change."""
        path = "/v1/changes/" + urllib.parse.quote(self.prefix, safe="/")
        r = self._send("GET", path, {"recurse": True, **self._read()})
        if r.status != 200:
            raise refused(r)
        return index_of(r)

    # ---- JSON values

    def get_json(self, key: str, default: Any = _MISSING) -> Any:
        """The key's value parsed as JSON; `default` (else KeyError) when it does not exist."""
        try:
            raw = self[key]
        except KeyError:
            if default is _MISSING:
                raise
            return default
        return orjson.loads(raw)

    def set_json(self, key: str, value: Any) -> None:
        self.put(key, orjson.dumps(value))

    # ---- watches and locks

    def watch(self, key: str = "", *, prefix: bool = False, start_index: int | None = None,
              wait: float = 60.0) -> Watch:
        """Every change of `key` (or, with `prefix`, of any key under it) after `start_index`
        (None: from now), in log order, blocking until there is one. Resumable from any node:
        `Watch.index` is where to start again. Raises Compacted when the history no longer
        reaches back to the index."""
        if self.prefix:
            return _Local(self, self._full(key), prefix=prefix, start_index=start_index,
                          wait=wait)
        return Watch(self._make_cluster, key, prefix=prefix, start_index=start_index,
                     wait=wait)

    def awatch(self, key: str = "", *, prefix: bool = False, start_index: int | None = None,
               wait: float = 60.0) -> AsyncWatch:
        """`watch` as an async iterator: `async for change in store.awatch(...)`."""
        return AsyncWatch(self.watch(key, prefix=prefix, start_index=start_index, wait=wait))

    def lock(self, key: str, *, ttl: float = 15, lock_delay: float = 15,
             value: str | bytes = b"", wait: float | None = None,
             name: str = "raftsql lock") -> Lock:
        """A lock on `key` (see raftsql/client/kvlock.py): `with store.lock(k) as lock:`.
        `wait`: give up (LockTimeout) after that many seconds; `lock.lost` is set if the lock
        is lost while held."""
        return Lock(self._make_cluster, self._full(key), ttl=ttl, lock_delay=lock_delay,
                    value=as_bytes(value), wait=wait, name=name)

    # ---- the wire

    def _make_cluster(self, extra_timeout: float) -> Cluster:
        """A connection of its own, for a thread or a long poll: the same nodes (those learned
        too), and time for the server's wait besides the usual timeout."""
        with self._mutex:
            known = list(self._cluster.known)
        return Cluster(known, timeout=self._timeout + extra_timeout, auth=self._auth)

    def _send(self, method: str, path: str, params: dict[str, Any] | None = None, *,
              body: Any = None, raw_body: bytes | None = None, write: bool = False) -> Response:
        with self._mutex:
            return self._cluster.send(method, path, params, body, write=write,
                                      raw_body=raw_body)

    def _put(self, key: str, value: str | bytes, params: dict[str, Any]) -> bool:
        r = self._send("PUT", kv_path(self._full(key)), params, raw_body=as_bytes(value),
                       write=True)
        if r.status != 200:
            raise refused(r)
        return bool(r.json())

    def _read(self) -> dict[str, Any]:
        return {"stale": True} if self.stale else {}

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _local(self, entry: Entry) -> Entry:
        if not self.prefix:
            return entry
        return Entry(entry.key[len(self.prefix):], entry.value, entry.flags,
                     entry.create_index, entry.modify_index, entry.lock_index, entry.session)


class _Local(Watch):
    """A watch of a store with a prefix: the keys of its changes without the prefix."""

    def __init__(self, store: ConfigStore, key: str, **kw: Any):
        super().__init__(store._make_cluster, key, **kw)
        self._cut = len(store.prefix)

    def __next__(self) -> Change:
        c = super().__next__()
        prev = c.prev
        if prev is not None:
            prev = Entry(prev.key[self._cut:], prev.value, prev.flags, prev.create_index,
                         prev.modify_index, prev.lock_index, prev.session)
        return Change(c.index, c.key[self._cut:], c.op, c.value, c.flags, c.modify_index,
                      c.lock_index, c.session, prev)
