"""The `raftsql` command line."""

from raftsql.cli.main import main

__all__ = ["main"]
