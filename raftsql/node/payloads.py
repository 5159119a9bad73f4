"""The driver's side of data kept beside the log (storage/payloads.py): proposals whose data
goes there, and entries that arrive with it.

Both take a disk write and an fsync, off the loop, and both keep order. A proposal behind a
big one waits for it, so entries are logged in the order they were proposed (a load's chunks
must be). An arriving message's data must be durable before the core sees the entry (it may
persist and acknowledge it at once); once one message waits, the ones after it wait behind
it, so a heartbeat never overtakes the entries before it. The leader keeps only
`max_inflight` appends unanswered per follower, which bounds what waits.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable

from raftsql.errors import StorageError
from raftsql.raft.messages import Message
from raftsql.storage.payloads import DETACH_BYTES, MARK, Payloads, is_wire

log = logging.getLogger("raftsql.node")

MSG_BYTES = 4 << 20  # of entries per APPEND: what a follower behind is sent at once


def carries_data(m: Message) -> bool:
    return any(is_wire(e.data) for e in m.entries)


class Proposing:
    """Proposals on their way to the core, in call order."""

    def __init__(self, payloads: Payloads) -> None:
        self._payloads = payloads
        self._tail: asyncio.Future[None] | None = None  # the last one still on its way

    def waits(self, data: bytes) -> bool:
        """Whether `data` must go through `prepare` (else it is proposed as it is);
        ValueError for data that would read as a reference."""
        if data[:2] == MARK:
            raise ValueError("a command may not start with the bytes 00 50")
        return len(data) > DETACH_BYTES or self._tail is not None

    async def prepare(self, data: bytes) -> bytes:
        """What to propose for `data`: a reference if it is big (the data stored); returns
        once every proposal before it is ready, so the caller proposes next, in order
        (without awaiting anything before it hands the proposal to the core)."""
        before, done = self._tail, asyncio.get_running_loop().create_future()
        self._tail = done
        try:
            if len(data) > DETACH_BYTES:
                data = await asyncio.to_thread(self._payloads.detach, data)
            if before is not None:
                await asyncio.shield(before)
            return data
        finally:
            if before is None or before.done():
                done.set_result(None)
            else:  # failed or cancelled first: the ones after still wait for those before
                before.add_done_callback(lambda _: done.set_result(None))
            if self._tail is done and done.done():
                self._tail = None


def outgoing(payloads: Payloads, m: Message, compacted_through: int, node_id: str
             ) -> Message | None:
    """An APPEND as it leaves, with its entries' data; None (dropped: Raft sends what is
    needed again, or the snapshot) when a file is gone, as it is for entries compacted
    since the core made the message."""
    try:
        return payloads.attach(m)
    except StorageError as e:
        if m.entries[0].index > compacted_through:
            log.warning("node=%s cannot send entries from %d to %s: %s", node_id,
                        m.entries[0].index, m.to, e)
        return None


class Landing:
    """Messages for one node's core, held while their data is stored; `deliver(m)` hands
    one on, `fail(exc)` is fatal (the disk failed)."""

    def __init__(self, payloads: Payloads, deliver: Callable[[Message], None],
                 fail: Callable[[BaseException], None], node_id: str) -> None:
        self._payloads = payloads
        self._deliver = deliver
        self._fail = fail
        self._node_id = node_id
        self._queue: collections.deque[Message] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def offer(self, m: Message) -> bool:
        """Whether `m` waits here (it carries data, or came after one that does)."""
        if not self._queue and not carries_data(m):
            return False
        self._queue.append(m)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    def close(self) -> None:
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        queue = self._queue
        try:
            while queue:
                m = queue[0]
                if carries_data(m):
                    try:
                        entries = await asyncio.to_thread(self._payloads.land, m.entries)
                    except ValueError as e:  # a peer's message must never kill the node
                        log.warning("node=%s dropping %s from %s: %s", self._node_id,
                                    m.type.name, m.frm, e)
                        if queue:  # (close() empties it)
                            queue.popleft()
                        continue
                    m = dataclasses.replace(m, entries=tuple(entries))
                if queue:  # (close() empties it)
                    queue.popleft()
                    self._deliver(m)
        except OSError as e:
            self._fail(StorageError(f"cannot store an entry's data: {e}"))
        finally:
            self._task = None
