"""The SQLite state machine and the SQL service over it."""
