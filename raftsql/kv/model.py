"""The config store's data model: keys, values, sessions, and the operations an entry carries.

An entry of the config store is a command with op `Op.KV` (raftsql/sql/command.py) whose
statements are operations, each a small JSON object: a Consul KV verb (`set`, `cas`, `lock`,
`unlock`, `get`, `get-tree`, `check-index`, `check-session`, `check-not-exists`, `delete`,
`delete-tree`, `delete-cas`) or a session's `session-create` / `session-destroy`. With the
command's `transaction` flag the operations are one Consul transaction (all or nothing);
without it, the entry holds one operation whose failed condition is an answer (`false`), not
an error.

Everything here is checked twice: by the API before proposing (a 4xx, nothing proposed), and
by apply (a bad entry is an error result, the same on every node).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from raftsql.errors import RequestError

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 512 * 1024  # Consul's default; `raftsql serve --kv-max-value-size`
MAX_TXN_OPS = 128  # `--kv-max-txn-ops`: Consul's fixed 64 is a known complaint
MIN_TTL_MS, MAX_TTL_MS = 10_000, 86_400_000  # Consul's range for a session's TTL
DEFAULT_LOCK_DELAY_MS = 15_000
BEHAVIORS = ("release", "delete")

KV_VERBS = frozenset(("set", "cas", "lock", "unlock", "get", "get-tree", "check-index",
                      "check-session", "check-not-exists", "delete", "delete-tree",
                      "delete-cas"))
READ_VERBS = frozenset(("get", "get-tree", "check-index", "check-session", "check-not-exists"))
TREE_VERBS = frozenset(("get-tree", "delete-tree"))  # their key is a prefix (it may be empty)
SESSION_VERBS = frozenset(("session-create", "session-destroy"))


class KvError(RequestError):
    """Bad input: the API answers it 400 (413 for sizes, 410 for a compacted index) with
    this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status, message)


def check_key(key: Any, *, prefix: bool = False) -> str:
    """A key: valid UTF-8 text (a str here), 1 to 512 bytes; a prefix may be empty."""
    if type(key) is not str:
        raise KvError("a key must be a string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise KvError("a key must be valid UTF-8") from None
    if size == 0 and not prefix:
        raise KvError("missing key name")
    if size > MAX_KEY_BYTES:
        raise KvError(f"key too long: {size} bytes (at most {MAX_KEY_BYTES})")
    return key


def check_value(value: bytes, limit: int) -> bytes:
    if len(value) > limit:
        raise KvError(f"value too large: {len(value)} bytes (at most {limit})", 413)
    return value


def check_index(value: Any, what: str = "index") -> int:
    if type(value) is not int or value < 0 or value >= 1 << 63:
        raise KvError(f"{what} must be a non-negative integer")
    return value


def encode_value(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def decode_value(text: Any) -> bytes:
    if text is None or text == "":
        return b""
    if type(text) is not str:
        raise KvError("a value must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise KvError("a value must be valid base64") from None


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of raftsql_kv, with Consul's names when it goes out as JSON."""

    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    lock_index: int
    session: str | None

    def consul(self, with_value: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"Key": self.key, "Flags": self.flags,
                             "Value": encode_value(self.value) if with_value else None,
                             "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
                             "LockIndex": self.lock_index}
        if self.session:
            d["Session"] = self.session
        return d


COLUMNS = "key, value, flags, create_index, modify_index, lock_index, session"


def entry_of(row: tuple[Any, ...]) -> Entry:
    key, value, flags, create, modify, lock, session = row
    return Entry(key, value, flags or 0, create, modify, lock or 0, session or None)


def op(verb: str, key: str = "", *, value: bytes | None = None, flags: int = 0,
       index: int = 0, session: str | None = None) -> dict[str, Any]:
    """One KV operation as an entry carries it."""
    d: dict[str, Any] = {"v": verb, "k": key}
    if value is not None:
        d["d"] = encode_value(value)
    if flags:
        d["f"] = flags
    if index:
        d["i"] = index
    if session:
        d["s"] = session
    return d


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    name: str
    node: str
    ttl_ms: int  # 0: no TTL
    behavior: str
    lock_delay_ms: int
    checks: tuple[str, ...]
    create_index: int

    def consul(self) -> dict[str, Any]:
        return {"ID": self.id, "Name": self.name, "Node": self.node,
                "LockDelay": self.lock_delay_ms * 1_000_000, "Behavior": self.behavior,
                "TTL": f"{self.ttl_ms // 1000}s" if self.ttl_ms else "",
                "NodeChecks": list(self.checks), "ServiceChecks": None,
                "CreateIndex": self.create_index, "ModifyIndex": self.create_index}

    def op(self) -> dict[str, Any]:
        return {"v": "session-create", "s": self.id, "n": self.name, "node": self.node,
                "ttl": self.ttl_ms, "b": self.behavior, "ld": self.lock_delay_ms,
                "checks": list(self.checks)}


SESSION_COLUMNS = "id, name, node, ttl_ms, behavior, lock_delay_ms, checks, entry"


def session_of(row: tuple[Any, ...]) -> Session:
    sid, name, node, ttl_ms, behavior, lock_delay_ms, checks, entry = row
    return Session(sid, name, node, ttl_ms, behavior, lock_delay_ms,
                   tuple(checks.split(",")) if checks else (), entry)


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """Keys starting with `prefix` are those in [low, high) (high None: no bound), in SQLite's
    text order (BINARY, UTF-8 byte order): bounds an index can use, unlike LIKE or GLOB."""
    # UTF-8 byte order is code point order. The smallest string above every string with the prefix: the prefix with its last
    # character stepped up (U+10FFFF has no successor: then the one before it).
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            step = last + 1 if last + 1 not in range(0xD800, 0xE000) else 0xE000
            return prefix, "".join(chars[:-1]) + chr(step)
        chars.pop()
    return prefix, None
