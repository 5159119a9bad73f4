"""What the fault runs compare across nodes: a database's canonical dump."""

from __future__ import annotations

import sqlite3


def canonical(path: str) -> tuple[str, str]:
    """(the database's dump, its integrity check); raftsql's bookkeeping never shows."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dump = "\n".join(line for line in conn.iterdump())
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return dump, integrity
