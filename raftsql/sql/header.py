"""The applied index in the database header's application_id field (docs/design.md §8)."""

from __future__ import annotations

INDEX_MODULUS = 1 << 32  # the header field holding the applied index has 32 bits


def stored_index(index: int) -> int:
    """The applied index as PRAGMA application_id takes it: modulo 2^32, as a signed int32."""
    v = index % INDEX_MODULUS
    return v - INDEX_MODULUS if v >= 1 << 31 else v


def resolve_index(stored: int, log_end: int | None) -> int:
    """The applied index whose value modulo 2^32 is `stored`: the largest one <= log_end (the
    Raft log's last index, which applying never passes). Without a log, `stored` itself.
    Raises ValueError when no such index exists."""
    stored %= INDEX_MODULUS
    if log_end is None:
        return stored
    if log_end < stored:
        raise ValueError(f"the database has applied log index {stored}, the log ends at "
                         f"{log_end}")
    return log_end - (log_end - stored) % INDEX_MODULUS
