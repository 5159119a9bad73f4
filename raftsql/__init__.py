"""raftsql: SQLite replicated with Raft, with an rqlite-compatible HTTP API."""

__version__ = "0.1.0"
