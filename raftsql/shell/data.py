"""The dot-commands that move data in and out of the cluster: `.dump`, `.import`, `.backup`,
`.restore`, and the listing commands that differ from apsw's (`.indexes`, `.version`).

A mixin of RaftShell (shell.py). Everything here reads and writes the CLUSTER's data; the
shadow only answers which tables and columns exist.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import apsw

from raftsql import __version__
from raftsql.client.http import ClientError
from raftsql.shell.schema import SCHEMA_SQL, NoRowid, dump, entries, quote_name
from raftsql.shell.statements import describe

IMPORT_BATCH = 500  # rows per /db/execute request: big enough to be fast, small to retry
# ... and at most about this many bytes of SQL and values, so wide rows make small requests
# too (a node refuses bodies over its --max-body-bytes, and a resend costs a whole request).
IMPORT_BYTES = 1_000_000
SQLITE_HEADER = b"SQLite format 3\x00"


class DataCommands:
    """Dump, import, backup and restore against the cluster."""

    def command_dump(self, cmd: list[str]) -> None:
        """dump ?TABLE? [TABLE...]: Write the cluster's schema and rows as SQL text

        The script loads into sqlite3 (or `.read` here). TABLE is a LIKE pattern; with no
        TABLE every table is dumped. BLOBs are written as X'..' literals. Rows are read a
        page at a time, at the current consistency level.
        """
        _, rows = self.read_rows(SCHEMA_SQL)
        schema = entries(rows)
        names = sorted({e.tbl_name for e in schema})
        chosen = [n for n in names if any(self._like(n, p) for p in cmd)] if cmd else []
        if cmd and not chosen:
            return  # as sqlite3: nothing matches, nothing is written
        for line in dump(schema, chosen, self._dump_reader):
            self.write(self.stdout, line + "\n")

    def _dump_reader(self, sql: str, params: dict[str, Any] | None
                     ) -> tuple[list[str], list[list[Any]]]:
        try:
            return self.read_rows(sql, params)
        except self.Error as e:
            if "_rowid_" in str(e):
                raise NoRowid from None
            raise

    def _like(self, name: str, pattern: str) -> bool:
        """SQL LIKE, as sqlite3's `.dump PATTERN` matches (case-insensitive, % and _)."""
        return bool(apsw.Connection(":memory:").execute("SELECT ? LIKE ?",
                                                        (name, pattern)).get)

    def command_import(self, cmd: list[str]) -> None:
        """import ?--skip N? FILE TABLE: Import CSV rows from FILE into TABLE on the cluster

        When TABLE does not exist it is created from the first row (the header), every
        column TEXT, as sqlite3 does; when it exists, every row is data (`--skip 1` skips a
        header). The separator is a tab in `.mode tabs`, else a comma. Rows are sent in
        batches of 500, each batch a transaction: after an error the batches before it stay
        imported. A progress bar shows on a terminal.
        """
        skip, path, table = self._import_args(cmd)
        self.refresh_shadow()
        columns = [row[1] for row in
                   self.db.execute(f"PRAGMA table_info({quote_name(table)})")]
        with open(path, newline="", encoding=self.encoding[0]) as f:
            progress = _Progress(f, table, self.stderr)
            reader = csv.reader(progress.lines(), delimiter="\t" if self.separator == "\t"
                                else ",")
            if not columns:
                columns = self._create_from_header(table, next(reader, None))
            for _ in range(skip):
                next(reader, None)
            done = self._send_rows(table, len(columns), reader, progress)
        progress.finish()
        if self.interactive:
            self.write(self.stderr, f"imported {done} rows into {table}\n")

    def _import_args(self, cmd: list[str]) -> tuple[int, str, str]:
        skip = 0
        args = list(cmd)
        if args[:1] == ["--csv"]:
            args.pop(0)
        if args[:1] == ["--skip"] and len(args) > 1 and args[1].isdigit():
            skip = int(args[1])
            del args[:2]
        if len(args) != 2:
            raise self.Error("import takes ?--skip N? FILE TABLE")
        return skip, args[0], args[1]

    def _create_from_header(self, table: str, header: list[str] | None
                            ) -> list[str]:
        if not header:
            raise self.Error("the file is empty: no header row to create the table from")
        cols = ", ".join(f"{quote_name(name)} TEXT" for name in header)
        sql = f"CREATE TABLE {quote_name(table)}({cols})"
        self.send_statements([sql], [sql])
        return header

    def _send_rows(self, table: str, width: int, reader: Iterator[list[str]],
                   progress: _Progress) -> int:
        insert = f"INSERT INTO {quote_name(table)} VALUES({', '.join('?' * width)})"
        batch: list[list[Any]] = []
        done = size = 0
        for n, row in enumerate(reader, 1):
            if len(row) != width:
                self.write_error(f"Warning: row {n} has {len(row)} values, {table} has "
                                 f"{width} columns: {'filled with NULL' if len(row) < width else 'extra values dropped'}\n")
                row = (row + [None] * width)[:width]
            batch.append([insert, *row])
            size += len(insert) + sum(len(v or "") + 8 for v in row)
            if len(batch) == IMPORT_BATCH or size > IMPORT_BYTES:
                done = self._send_batch(batch, done)
                batch, size = [], 0
                progress.show(done)
        if batch:
            done = self._send_batch(batch, done)
            progress.show(done)
        return done

    def _send_batch(self, batch: list[list[Any]], done: int) -> int:
        try:
            response = self.cluster.execute(batch, transaction=True)
        except (ClientError, OSError) as e:
            raise self.Error(f"{describe(e, self.cluster.timeout)} (rows {done + 1}-"
                             f"{done + len(batch)}; {done} rows imported before)") from None
        for i, result in enumerate(self.results_of(response, [b[0] for b in batch])):
            if "error" in result:
                raise self.Error(f"row {done + i + 1}: {result['error']} ({done} rows "
                                 "imported; that row's batch was rolled back)")
        return done + len(batch)

    def command_backup(self, cmd: list[str]) -> None:
        """backup FILE: Save the cluster's database to FILE (GET /db/backup)

        FILE is an SQLite database file. When the node does not serve backups, `.dump` writes
        the same data as SQL text.
        """
        if len(cmd) != 1:
            raise self.Error("backup takes a filename")
        response = self.cluster.send("GET", "/db/backup")
        if response.status in (404, 405):
            raise self.Error("backup (GET /db/backup) is not served by this node "
                             f"({response.url}); `.once FILE` then `.dump` saves the data")
        self.served(response, "backup")
        with open(cmd[0], "wb") as f:
            f.write(response.body)
        self.say(f"wrote {len(response.body)} bytes to {cmd[0]}")

    def command_restore(self, cmd: list[str]) -> None:
        """restore FILE: Load FILE, a SQLite database or a SQL dump, into the cluster (POST /db/load)

        A database file replaces the whole database on every node; a dump runs as one
        transaction: all of it, or on an error nothing.
        """
        if len(cmd) != 1:
            raise self.Error("restore takes a filename")
        with open(cmd[0], "rb") as f:
            data = f.read()
        kind = ("application/octet-stream" if data.startswith(SQLITE_HEADER)
                else "text/plain")
        response = self.cluster.send("POST", "/db/load", raw_body=data, write=True,
                                     headers={"Content-Type": kind})
        if response.status in (404, 405):
            hint = "; `.read FILE` runs a SQL dump" if kind == "text/plain" else ""
            raise self.Error("restore (POST /db/load) is not served by this node "
                             f"({response.url}){hint}")
        self.served(response, "restore")
        self._stale = True
        self.say(f"restored {cmd[0]} ({len(data)} bytes)")

    def command_indexes(self, cmd: list[str]) -> None:
        """indexes ?TABLE?: List the names of indexes (on tables matching TABLE, a LIKE pattern)"""
        if len(cmd) > 1:
            raise self.Error("indexes takes at most one table name")
        self.push_output()
        self.header = False
        self.output = self.output_list
        try:
            self.process_sql("SELECT name FROM sqlite_schema WHERE type='index' AND "
                             "tbl_name LIKE ?1 AND name NOT LIKE 'sqlite_%' ORDER BY name",
                             (cmd[0] if cmd else "%",), internal=True)
        finally:
            self.pop_output()

    def command_version(self, cmd: list[str]) -> None:
        """version: Show the versions of raftsql shell, the node it talks to, and SQLite"""
        try:
            server = self.get("/status").json().get("build", {}).get("version", "?")
        except (ClientError, OSError, ValueError, AttributeError):
            server = "(no answer)"
        self.say(f"raftsql shell {__version__}\nserver {server} at {self.cluster.current}\n"
                 f"local SQLite {apsw.sqlite_lib_version()} (APSW {apsw.apsw_version()}, "
                 f"Python {sys.version.split()[0]})")


class _Progress:
    """How far an import has read its file: a bar on stderr when it is a terminal."""

    def __init__(self, f: IO[str], table: str, out: IO[str]):
        self.f = f
        self.table = table
        self.out = out
        self.size = max(os.fstat(f.fileno()).st_size, 1)
        self.read = 0
        self.enabled = bool(getattr(out, "isatty", lambda: False)())
        self.shown = False

    def lines(self) -> Iterator[str]:
        for line in self.f:
            self.read += len(line.encode())
            yield line

    def show(self, rows: int) -> None:
        if not self.enabled:
            return
        fraction = min(self.read / self.size, 1.0)
        bar = "#" * int(fraction * 30)
        self.out.write(f"\r{self.table}: [{bar:<30}] {fraction:4.0%} {rows} rows")
        self.out.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.out.write("\n")
