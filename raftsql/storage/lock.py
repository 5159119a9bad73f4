"""One process per data directory: a second `raftsql serve` on the same directory, or
`raftsql recover` while the node runs, would corrupt the log and the database."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable

from raftsql.errors import StorageError

LOCK_NAME = "lock"
_held: dict[str, list[int]] = {}  # path -> [fd, holders]: one process may lock it twice
_guard = threading.Lock()


def lock_data_dir(data_dir: str) -> Callable[[], None]:
    """Hold an advisory lock on `data_dir` until the returned function is called (by every
    holder in this process), or the process dies; StorageError if another process holds it.
    Within one process it nests: the server locks before it opens the database, the node it
    runs locks again."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(data_dir, LOCK_NAME))
    with _guard:
        if path in _held:
            _held[path][1] += 1
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StorageError(f"{data_dir} is in use by another process (a running "
                                   "node?)") from None
            _held[path] = [fd, 1]
    released = False

    def release() -> None:
        nonlocal released
        with _guard:
            if released:
                return
            released = True
            entry = _held[path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                os.close(entry[0])

    return release
