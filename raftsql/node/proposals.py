"""Proposals waiting for their entries to be applied, by log index."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from raftsql.errors import LeadershipLostError
from raftsql.raft.messages import Entry


class Proposals:
    """Each proposal's future, completed with (state machine result, index) once its entry is
    applied, or failed when its outcome becomes unknown."""

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[int, asyncio.Future[Any]]] = {}  # index -> (term, fut)

    def add(self, index: int, term: int, fut: asyncio.Future[Any]) -> None:
        self._waiting[index] = (term, fut)

    def complete(self, entries: Sequence[Entry], results: dict[int, Any]) -> None:
        """`entries` were applied, with these results (by index)."""
        for e in entries:
            waiting = self._waiting.pop(e.index, None)
            if waiting is None:
                continue
            term, fut = waiting
            if fut.done():
                continue
            if term != e.term:  # another leader's entry took this index: ours was lost
                fut.set_exception(LeadershipLostError())
            else:
                fut.set_result((results.get(e.index), e.index))

    def fail_uncommitted(self, commit: int, exc: Exception) -> None:
        """Leadership was lost: proposals above the commit index have an unknown outcome.
        Those at or below it (a leader's own removal, say) are committed, and complete as
        usual when this node applies them."""
        for index in [i for i in self._waiting if i > commit]:
            _set_exception(self._waiting.pop(index)[1], exc)

    def fail_all(self, exc: Exception) -> None:
        for _, fut in self._waiting.values():
            _set_exception(fut, exc)
        self._waiting.clear()


def _set_exception(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
