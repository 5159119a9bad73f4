"""The persist thread: storage is written by one thread at a time, in submission order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class PersistThread:
    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._submitted = self._finished = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run `fn(*args)` on the thread, after everything submitted before."""
        self._submitted += 1  # only ever written here, on the loop thread

        def job() -> Any:
            try:
                return fn(*args)
            finally:
                self._finished += 1  # only ever written here, on the persist thread

        return asyncio.get_running_loop().run_in_executor(self._pool, job)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.submit(fn, *args)

    @property
    def busy(self) -> bool:
        """Work is submitted and not finished: what touches storage must queue behind it."""
        return self._submitted != self._finished

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
