"""A state machine applied beside the SQL one, in the same batches: the config store
(raftsql/kv/) plugs in here, so that this package never imports it.

Its entries are commands with op `Op.KV`; the database hands each one, in log order and inside
its batch transaction, to the extension's `apply`, with its write connection (internal SQL:
the authorizer's refusals of user SQL do not apply) and its bookkeeping file's connection
(raftsql/sql/sidecar.py), where the extension keeps the tables it declares. What it does must
depend only on the entry and the state, never on the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import apsw

from raftsql.sql.command import Command
from raftsql.sql.sidecar import Table


class Extension(Protocol):
    tables: Sequence[Table]  # its tables in the bookkeeping file

    def apply(self, db: apsw.Cursor, book: apsw.Connection, index: int, cmd: Command) -> Any:
        """Apply one entry; its result goes to the proposer. Raise only for local failures
        (the disk): a bad entry is a result, the same on every node."""

    def inline(self, cmd: Command) -> bool:
        """Whether applying `cmd` is quick enough for an event loop's time budget (it cannot be
        interrupted: the database sends what is not to the apply thread)."""

    def committed(self, applied: int) -> None:
        """Everything up to `applied` is committed: readers see it now (also said at open)."""

    def rolled_back(self) -> None:
        """What was applied since the last commit was undone (it will be applied again)."""

    def restored(self) -> None:
        """The database was replaced (a snapshot): anything may have changed."""
