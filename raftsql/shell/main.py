"""Starting the shell from `raftsql shell` arguments: where to connect, as whom, and whether
the input is a person at a terminal, a pipe, or `-c SQL`.
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
from typing import Any

from raftsql.client.http import Cluster, add_user_argument, credentials, split_urls
from raftsql.shell.shell import RaftShell

DEFAULT_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `raftsql shell` (DESIGN.md §4), for the CLI's parser."""
    parser.add_argument("urls", nargs="?", default=None, metavar="URL[,URL...]",
                        help="any nodes of the cluster (default: $RAFTSQL_URL, else "
                        "http://127.0.0.1:4001)")
    parser.add_argument("-c", dest="sql", default=None, metavar="SQL",
                        help="run SQL (statements and dot-commands) and exit (default: read "
                        "the terminal, or a script from a pipe)")
    parser.add_argument("--consistency", choices=("none", "weak", "linearizable", "strong"),
                        default=None, help="the read consistency level (default: the "
                        "cluster's, weak)")
    add_user_argument(parser)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="how long a statement may wait for the cluster")


def main(args: argparse.Namespace | Any) -> int:
    """Run `raftsql shell` with parsed arguments; the exit status."""
    # The CLI's entry point takes SIGINT and SIGTERM to stop a node gracefully; in a shell
    # Ctrl-C interrupts the current statement, as in sqlite3.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sql = getattr(args, "sql", None)
    interactive = sql is None and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        urls = split_urls(args.urls)
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    auth = credentials(getattr(args, "user", None), interactive)
    cluster = Cluster(urls, timeout=getattr(args, "timeout", DEFAULT_TIMEOUT), auth=auth)
    # `-c "SELECT 1"`: the last statement needs no semicolon (an empty statement is skipped).
    shell = RaftShell(cluster, stdin=io.StringIO(sql + "\n;") if sql is not None else sys.stdin,
                      level=getattr(args, "consistency", None), auth=auth,
                      interactive=interactive, line_numbers=sql is None)
    return shell.run()
