"""What the config store's client (raftsql/client/config.py) hands out: entries, changes and
its errors, parsed from the server's Consul-shaped JSON (docs/config-store.md)."""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass
from typing import Any

from raftsql.client.http import ClientError, Response, error_text


class ConfigError(ClientError):
    """The config store refused a request (a 4xx): nothing was written. `status` is the HTTP
    status."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class Compacted(ConfigError):
    """A watch asked for changes older than the history keeps (410): read the current state
    and watch from its index. `index` is what was asked; changes are kept after
    `compact_index`."""

    def __init__(self, message: str, index: int, compact_index: int):
        super().__init__(message, 410)
        self.index = index
        self.compact_index = compact_index


class LockTimeout(ConfigError, TimeoutError):
    """`lock(..., wait=...)` did not acquire the lock in time."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's state: its value and Consul's indexes (Raft log indexes)."""

    key: str
    value: bytes
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0
    session: str | None = None  # the session holding the key's lock, if one does


@dataclass(frozen=True, slots=True)
class Change:
    """One change from /v1/changes: `op` is "set" or "delete"; `value` is the new value (None
    for a delete); `prev` the key's state before it (None if it did not exist)."""

    index: int
    key: str
    op: str
    value: bytes | None
    flags: int
    modify_index: int
    lock_index: int
    session: str | None
    prev: Entry | None

    @property
    def prev_value(self) -> bytes | None:
        return None if self.prev is None else self.prev.value


def kv_path(key: str) -> str:
    """/v1/kv/<key> with the key quoted (a '/' stays a '/')."""
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


def decode_value(v: Any) -> bytes:
    return base64.b64decode(v) if v else b""


def entry_of(d: dict[str, Any], key: str | None = None) -> Entry:
    return Entry(key=str(d.get("Key", key or "")), value=decode_value(d.get("Value")),
                 flags=int(d.get("Flags") or 0), create_index=int(d.get("CreateIndex") or 0),
                 modify_index=int(d.get("ModifyIndex") or 0),
                 lock_index=int(d.get("LockIndex") or 0), session=d.get("Session") or None)


def change_of(d: dict[str, Any]) -> Change:
    prev = d.get("Prev")
    key = str(d["Key"])
    op = str(d["Op"])
    return Change(index=int(d["Index"]), key=key, op=op,
                  value=None if op == "delete" else decode_value(d.get("Value")),
                  flags=int(d.get("Flags") or 0), modify_index=int(d.get("ModifyIndex") or 0),
                  lock_index=int(d.get("LockIndex") or 0), session=d.get("Session") or None,
                  prev=entry_of(prev, key) if isinstance(prev, dict) else None)


def refused(response: Response) -> ConfigError:
    """The error for an answer the caller did not expect (a 4xx or 5xx)."""
    text = error_text(response.body, "(no message)")
    return ConfigError(f"{text} (HTTP {response.status} from {response.url})", response.status)


def index_of(response: Response, default: int = 0) -> int:
    try:
        return int(response.headers.get("x-consul-index", default))
    except ValueError:
        return default
