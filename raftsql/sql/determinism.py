"""What SQLite would take from the machine, taken from the entry instead (DESIGN.md §3).

`ClockVFS` makes 'now' (datetime('now'), CURRENT_TIMESTAMP, julianday('now'), ...) the
entry's time; `EntryRandom` makes random() and randomblob() draw from a generator seeded by
the entry. Nothing else in the apply path may read the local clock or local randomness.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from typing import Any

import apsw

# Unix epoch as a Julian day number, in ms: what xCurrentTimeInt64 adds to an entry's time_ms.
JULIAN_UNIX_EPOCH_MS = 210866760000000
_LEADING_INT = re.compile(r"\s*[+-]?\d+")
_names = itertools.count(1)


class ClockVFS(apsw.VFS):
    """The default VFS, except that 'now' is the time of the entry being applied."""

    def __init__(self) -> None:
        self.vfs_name = f"raftsql-clock-{os.getpid()}-{next(_names)}"
        self.now_ms = JULIAN_UNIX_EPOCH_MS  # before the first entry: 1970, never the local clock
        super().__init__(self.vfs_name, "")

    def set_entry_time(self, time_ms: int) -> None:
        self.now_ms = time_ms + JULIAN_UNIX_EPOCH_MS

    def xCurrentTimeInt64(self) -> int:  # noqa: N802 (SQLite's name)
        return self.now_ms

    def xCurrentTime(self) -> float:  # noqa: N802
        return self.now_ms / 86400000.0


class EntryRandom:
    """random() and randomblob(N), drawn from a PRNG seeded by the entry. `max_length()` is
    the connection's SQLITE_LIMIT_LENGTH."""

    def __init__(self, max_length: Any) -> None:
        self._max_length = max_length
        self._seed = 0
        self._rng: random.Random | None = None

    def reseed(self, seed: int) -> None:
        self._seed = seed
        self._rng = None  # most entries draw nothing: seeded lazily

    @property
    def state(self) -> Any:
        """The generator's state (None: nothing drawn yet in this entry)."""
        return self._rng.getstate() if self._rng is not None else None

    def set_state(self, state: Any) -> None:
        self._rng = None
        if state is not None:
            self._rng = random.Random()
            self._rng.setstate(state)

    def _generator(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self._seed & 0xFFFFFFFFFFFFFFFF)
        return self._rng

    def random(self) -> int:
        return self._generator().getrandbits(64) - (1 << 63)

    def randomblob(self, n: Any) -> bytes:
        size = sqlite_int(n)
        if size > self._max_length():
            raise apsw.TooBigError("string or blob too big")
        return self._generator().randbytes(max(size, 1))


def sqlite_int(value: Any) -> int:
    """A function argument read as an integer, as sqlite3_value_int64 would (near enough:
    what matters is that every node reads it the same way)."""
    if type(value) is int:
        return value
    if type(value) is float:
        return int(value) if abs(value) < 1 << 63 else 0
    if type(value) is bytes:
        value = value.decode("latin-1")
    if type(value) is str:
        m = _LEADING_INT.match(value)
        return int(m.group()) if m else 0
    return 0
