"""`raftsql shell`: an interactive SQL shell against a raftsql (or rqlite) cluster
(docs/shell.md). It imports only the client core, never the server."""

from raftsql.shell.main import main

__all__ = ["main"]
