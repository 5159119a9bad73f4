"""One process per data directory: a second `raftsql serve` on the same directory, or
`raftsql recover` while the node runs, would corrupt the log and the database."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from raftsql.errors import StorageError

LOCK_NAME = "lock"


def lock_data_dir(data_dir: str) -> Callable[[], None]:
    """Hold an advisory lock on `data_dir` until the returned function is called, or the
    process dies; StorageError if another process holds it."""
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(os.path.join(data_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{data_dir} is in use by another process (a running node?)") from None
    return lambda: os.close(fd)
