"""Commands (what a Raft entry carries) and statement results (what applying one gives).

A command's statements stay in the JSON form the client sent (rqlite's body shapes), so
a follower can forward request bytes and every node decodes parameters identically at
apply time.
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from raftsql.sql.determinism import JULIAN_UNIX_EPOCH_MS

COMMAND_VERSION = 1


class Op(enum.StrEnum):
    EXECUTE = "execute"  # writes: rows only from RETURNING
    REQUEST = "request"  # mixed (/db/request): rows from every statement that has columns
    QUERY = "query"  # a strong read through the log: a statement that writes is refused
    KV = "kv"  # the config store's operations, applied by its extension (sql/extension.py)
    LOAD = "load"  # a chunk of a SQLite file replacing the database (sql/load.py)


@dataclass(frozen=True, slots=True)
class Command:
    op: Op
    statements: list[Any]  # rqlite body elements: "SQL" or ["SQL", params...]
    transaction: bool = False
    time_ms: int = 0  # the leader's wall clock: what datetime('now') sees on every node
    seed: int = 0  # seeds random()/randomblob() for this entry on every node
    fk: bool = False  # foreign_keys=ON while this entry applies (the leader's --fk)
    # db_timeout, as the number of SQLite VM steps a statement may take: a count, not a time,
    # so every node interrupts the same statement at the same point.
    max_steps: int = 0
    qualify: bool = False  # qualify_columns: row results name columns table.column
    # An idempotency key (raftsql/sql/keys.py), with the leader's window: how long (ms of the
    # entries' time) and how many keys are remembered.
    key: str | None = None
    key_window_ms: int = 0
    key_capacity: int = 0
    # Raw bytes after the JSON and a newline (which orjson never writes): a load's chunk, not
    # inflated by base64.
    payload: bytes = b""

    @classmethod
    def new(cls, op: Op, statements: list[Any], transaction: bool = False, **flags: Any) -> Command:
        """A command as the leader proposes it: its clock and a fresh seed fix the entry."""
        return cls(op, statements, transaction, int(time.time() * 1000), random.getrandbits(63),
                   **flags)

    def encode(self) -> bytes:
        d: dict[str, Any] = {"v": COMMAND_VERSION, "op": str(self.op), "stmts": self.statements,
                             "tx": self.transaction, "t": self.time_ms, "r": self.seed}
        if self.fk:
            d["fk"] = True
        if self.max_steps:
            d["st"] = self.max_steps
        if self.qualify:
            d["qc"] = True
        if self.key is not None:
            d["ik"], d["iw"], d["ic"] = self.key, self.key_window_ms, self.key_capacity
        head = orjson.dumps(d)
        return head + b"\n" + self.payload if self.payload else head

    @classmethod
    def decode(cls, data: bytes) -> Command:
        head, _, payload = bytes(data).partition(b"\n")
        d = orjson.loads(head)
        if d.get("v") != COMMAND_VERSION:
            raise ValueError(f"unsupported command version {d.get('v')!r}")
        return cls(Op(d["op"]), d["stmts"], d["tx"], d["t"], d["r"], d.get("fk", False),
                   d.get("st", 0), d.get("qc", False), d.get("ik"), d.get("iw", 0),
                   d.get("ic", 0), payload)


def decode_checked(data: Any) -> Command:
    """A command from an entry, every field checked: what apply may rely on (ValueError)."""
    cmd = Command.decode(data)  # an unknown op is a ValueError too
    if type(cmd.statements) is not list:
        raise ValueError("statements must be a list")
    if type(cmd.time_ms) is not int or not 0 <= cmd.time_ms + JULIAN_UNIX_EPOCH_MS < 1 << 63:
        raise ValueError(f"bad time {cmd.time_ms!r}")
    if type(cmd.seed) is not int:
        raise ValueError(f"bad seed {cmd.seed!r}")
    if type(cmd.max_steps) is not int or cmd.max_steps < 0:
        raise ValueError(f"bad step limit {cmd.max_steps!r}")
    if cmd.key is not None and not (type(cmd.key) is str and type(cmd.key_window_ms) is int
                                    and type(cmd.key_capacity) is int and cmd.key_capacity > 0):
        raise ValueError("bad idempotency key")
    return cmd


def writes_bookkeeping(data: bytes) -> bool:
    """Whether a stored entry writes the bookkeeping file (raftsql/sql/sidecar.py): a command
    with an idempotency key, the config store's (its sessions and history live there), or a
    chunk of a load."""
    if b'"ik"' not in data and b'"op":"kv"' not in data and b'"op":"load"' not in data:
        return False
    try:
        cmd = Command.decode(data)
    except Exception:
        return False
    return cmd.key is not None or cmd.op in (Op.KV, Op.LOAD)


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How a read runs on this node's read connections (rqlite's query flags)."""

    transaction: bool = False  # the reads share one snapshot and stop at the first error
    db_timeout: float = 0.0  # seconds a statement may run before "query timeout" (0: no limit)
    qualify: bool = False  # qualify_columns


class Replayed(list):  # type: ignore[type-arg]
    """An entry's results that are its idempotency key's first entry's: it changed nothing."""


@dataclass(slots=True)
class StatementResult:
    """One statement's outcome, before rqlite JSON encoding (raftsql/http/encode.py).

    A write has columns None; a row result (query, or RETURNING) has columns set.
    """

    columns: list[str] | None = None
    decltypes: list[str | None] | None = None
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    last_insert_id: int = 0
    rows_affected: int = 0
    error: str | None = None
    time: float = 0.0
