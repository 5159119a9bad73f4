"""rqlite's routes and encodings."""
