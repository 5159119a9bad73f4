"""Commands (what a Raft entry carries) and statement results (what applying one gives).

A command's statements stay in the JSON form the client sent (rqlite's body shapes), so
a follower can forward request bytes and every node decodes parameters identically at
apply time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

COMMAND_VERSION = 1


@dataclass(frozen=True, slots=True)
class Command:
    op: str  # "execute" (writes), "query" (a strong read through the log)
    statements: list[Any]  # rqlite body elements: "SQL" or ["SQL", params...]
    transaction: bool = False
    time_ms: int = 0  # the leader's wall clock: what datetime('now') sees on every node
    seed: int = 0  # seeds random()/randomblob() for this entry on every node

    def encode(self) -> bytes:
        return orjson.dumps(
            {"v": COMMAND_VERSION, "op": self.op, "stmts": self.statements,
             "tx": self.transaction, "t": self.time_ms, "r": self.seed}
        )

    @classmethod
    def decode(cls, data: bytes) -> Command:
        d = orjson.loads(data)
        if d.get("v") != COMMAND_VERSION:
            raise ValueError(f"unsupported command version {d.get('v')!r}")
        return cls(d["op"], d["stmts"], d["tx"], d["t"], d["r"])


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
