"""`ConfigStore.lock(key)`: a lock (or leader election) on a key, built on a session as
Consul's `api.Lock` is (docs/config-store.md, "Sessions and locks").

    with store.lock("service/web/leader", ttl=15) as lock:
        while not lock.lost.is_set():
            ...  # the work only the holder may do

A session is created (TTL `ttl`, Behavior "release"), the key acquired with `?acquire`
(waiting on the key with a blocking query while another session holds it, and retrying
while its lock delay runs), and a daemon thread renews the session every ttl/2 and watches
the key. If the session ends or the key leaves its hands (destroyed, expired, deleted), the
`lost` event is set: the holder must stop acting as the lock's owner. So is it when no
renewal has reached the leader for a whole TTL (the session may have expired meanwhile). Leaving the `with`
releases the key and destroys the session.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from raftsql.client.http import ClientError, Cluster, Unavailable
from raftsql.client.kvtypes import ConfigError, LockTimeout, index_of, kv_path, refused

RETRY_PAUSE = 0.5  # seconds between tries while a lock delay runs, or no leader answers
MAX_BLOCK = 60.0  # seconds one blocking query on the held key may wait


class Lock:
    """A lock on `key`; use it with `with`, or call acquire() and release()."""

    def __init__(self, make_cluster: Callable[[float], Cluster], key: str, *, ttl: float = 15,
                 lock_delay: float = 15, value: bytes = b"", wait: float | None = None,
                 name: str = "raftsql lock"):
        self.key = key
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.value = value
        self.wait = wait
        self.name = name
        self.session: str | None = None
        self.lost = threading.Event()  # set when the lock left this holder's hands
        self._make_cluster = make_cluster
        self._cluster = make_cluster(MAX_BLOCK * 17 / 16)
        self._held = False
        self._held_index = 0
        self._stop = threading.Event()  # the keeper thread's end
        self._released = False
        self._keeper: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Acquired, not released, and not known to be lost."""
        return self._held and not self.lost.is_set()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.release()
        except ClientError:
            if exc_type is None:
                raise

    def acquire(self) -> None:
        """Block until the key is this lock's (LockTimeout after `wait` seconds, if given)."""
        if self.session is not None:
            raise ConfigError("this lock is acquired already: make a new one")
        deadline = None if self.wait is None else time.monotonic() + self.wait
        self.session = self._create_session()
        self._keeper = threading.Thread(target=self._keep, name="raftsql-lock", daemon=True)
        self._keeper.start()
        try:
            while not self._try_acquire():
                self._wait_for_release(deadline)
        except BaseException:
            self._released = True
            self._stop.set()
            with contextlib.suppress(ClientError):
                self._destroy()
            self._cluster.close()
            raise

    def release(self) -> None:
        """Let go of the key and end the session (safe to call again, or after a loss)."""
        if self.session is None or self._released:
            return
        self._released = True
        self._stop.set()  # first: the keeper must not take our own release for a loss
        try:
            if self._held and not self.lost.is_set():
                self._cluster.send("PUT", kv_path(self.key), {"release": self.session},
                                   raw_body=self.value, write=True)
        finally:
            self._held = False
            self._destroy()
            self._cluster.close()

    # ---- acquiring

    def _create_session(self) -> str:
        body = {"Name": self.name, "TTL": f"{self.ttl:g}s", "Behavior": "release",
                "LockDelay": f"{self.lock_delay:g}s"}
        r = self._cluster.send("PUT", "/v1/session/create", body=body, write=True)
        if r.status != 200:
            raise refused(r)
        return str(r.json()["ID"])

    def _try_acquire(self) -> bool:
        r = self._cluster.send("PUT", kv_path(self.key), {"acquire": self.session},
                               raw_body=self.value, write=True)
        if r.status != 200:
            raise refused(r)
        if r.json() is True:
            self._held_index = index_of(r)
            self._held = True
            return True
        return False

    def _wait_for_release(self, deadline: float | None) -> None:
        """Until the key looks free (a blocking query while a session holds it), or a pause
        when it is free but refused (its lock delay)."""
        index = 0
        while True:
            remaining = MAX_BLOCK if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(f"lock {self.key!r} not acquired in {self.wait:g}s")
            if self.lost.is_set():
                raise ConfigError(f"the session of lock {self.key!r} ended while waiting")
            params: dict[str, Any] = {}
            if index:
                params = {"index": index, "wait": f"{min(remaining, MAX_BLOCK):.3f}s"}
            r = self._cluster.send("GET", kv_path(self.key), params)
            if r.status not in (200, 404):
                raise refused(r)
            holder = r.json()[0].get("Session") if r.status == 200 else None
            if not holder:
                time.sleep(max(min(RETRY_PAUSE, remaining), 0) if index == 0 else 0)
                return
            index = index_of(r)

    # ---- holding

    def _keep(self) -> None:
        """The daemon thread: renew at ttl/2, and watch the key once it is held."""
        cluster = self._make_cluster(self.ttl)
        renewed = time.monotonic()
        next_renew = renewed + self.ttl / 2
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_renew:
                    if self._renew(cluster):
                        renewed, next_renew = now, now + self.ttl / 2
                    elif now - renewed >= self.ttl:
                        # No renewal reached the leader for a whole TTL: the session may
                        # have expired, and another holder may have the key by now.
                        self._lose()
                    else:
                        next_renew = now + RETRY_PAUSE
                    continue
                if self._held:
                    self._watch_key(cluster, next_renew - now)
                else:
                    self._stop.wait(min(next_renew - now, RETRY_PAUSE))
        except ClientError:
            self._lose()
        finally:
            cluster.close()

    def _renew(self, cluster: Cluster) -> bool:
        try:
            r = cluster.send("PUT", f"/v1/session/renew/{self.session}")
        except Unavailable:
            return False
        if r.status == 404:
            self._lose()
        return True

    def _watch_key(self, cluster: Cluster, wait: float) -> None:
        try:
            r = cluster.send("GET", kv_path(self.key),
                             {"index": self._held_index, "wait": f"{max(wait, 0.1):.3f}s"})
        except Unavailable:
            self._stop.wait(RETRY_PAUSE)
            return
        holder = r.json()[0].get("Session") if r.status == 200 else None
        if r.status in (200, 404) and holder != self.session:
            self._lose()
        elif r.status == 200:
            self._held_index = max(self._held_index, index_of(r))

    def _lose(self) -> None:
        if not self._stop.is_set():
            self.lost.set()
            self._stop.set()

    def _destroy(self) -> None:
        if self.session is not None:
            self._cluster.send("PUT", f"/v1/session/destroy/{self.session}", write=True)
