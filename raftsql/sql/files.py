"""The database's files: removing one with its journals, and the private copy a restore
reads from."""

from __future__ import annotations

import contextlib
import os
import shutil

import apsw


def remove_db_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def restore_copy(path: str, copy: str, page_size: int) -> str:
    """A private copy of `path` at `copy`, with `page_size` (a WAL-mode backup target can't
    change its page size) in rollback-journal mode. ValueError: not a SQLite database."""
    remove_db_files(copy)
    shutil.copyfile(path, copy)
    try:
        conn = apsw.Connection(copy)
        try:
            conn.execute("PRAGMA journal_mode=DELETE").fetchall()
            if conn.execute("PRAGMA page_size").fetchall()[0][0] != page_size:
                conn.execute(f"PRAGMA page_size={int(page_size)}; VACUUM")
        finally:
            conn.close()
    except (apsw.NotADBError, apsw.CorruptError) as e:
        remove_db_files(copy)
        raise ValueError(f"not a SQLite database: {e}") from e
    except apsw.Error as e:  # e.g. an index on a collation this SQLite does not know
        remove_db_files(copy)
        raise ValueError(f"a SQLite database this node cannot copy: {e}") from e
    return copy


def unreadable(path: str) -> str | None:
    """Why SQLite cannot read the database file at `path` (None: it can), without touching
    the file (no journal, no lock: opened immutable)."""
    try:
        conn = apsw.Connection(f"file:{path}?immutable=1",
                               flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        finally:
            conn.close()
    except apsw.Error as e:
        return str(e) or type(e).__name__
    return None
