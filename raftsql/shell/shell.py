"""`raftsql shell`: apsw's shell with the cluster in place of a local database.

apsw.shell.Shell gives history, multi-line input, completion, the dot-command framework and a
dozen output modes. This subclass changes where SQL goes: user SQL is split into statements,
each sent to the cluster (POST /db/request, parameters from `.parameter` bound by name), and
the rows come back through the shell's own `output_*` functions. The shell's `db` is a local
in-memory shadow of the cluster's schema (schema.py), which apsw's completion, `.tables`,
`.schema` and `.indexes` read (their SQL is run with internal=True, which stays local).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import subprocess
import sys
import time
import traceback
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import apsw
import apsw.shell

from raftsql import __version__
from raftsql.client.http import ClientError, Cluster, Response
from raftsql.shell.commands import ClusterCommands
from raftsql.shell.schema import SCHEMA_SQL, build_shadow, entries
from raftsql.shell.statements import (
    answer_text,
    describe,
    from_wire,
    is_ddl,
    split_statements,
    statement_body,
    transaction_word,
    with_position,
)

HISTORY_FILE = "~/.raftsql_history"  # expanded with HOME, as apsw does for its own


class RaftShell(ClusterCommands, apsw.shell.Shell):
    """An interactive SQL shell whose database is a raftsql (or rqlite) cluster."""

    def __init__(self, cluster: Cluster, *, stdin: Any = None, stdout: Any = None,
                 stderr: Any = None, level: str | None = None,
                 auth: tuple[str, str] | None = None, interactive: bool | None = None,
                 line_numbers: bool = True):
        self.cluster = cluster
        self.level = level
        self.auth = auth
        self.failed = False  # any statement or command failed: the exit status is 1
        self.line_numbers = line_numbers  # name the input line in errors of a script
        self._stale = True  # the shadow must be fetched before it is next read
        self._once_state: str | None = None  # "new" → "armed" → output restored
        self._txn: list[tuple[Any, str]] | None = None  # statements held since BEGIN
        self._custom_prompt = False
        super().__init__(stdin=stdin, stdout=stdout, stderr=stderr)
        if interactive is not None:
            self.interactive = interactive
        self.history_file = HISTORY_FILE
        if "NO_COLOR" in os.environ:  # no-color.org, as apsw honours it on its command line
            self.colour_scheme = "off"
            self._out_colour()
        self.dbfilename = cluster.current  # not a transient in-memory database
        self.update_prompt()

    # ---- the shadow schema

    def _shadow(self) -> apsw.Connection:
        """The shadow, fetched from the cluster first when a statement may have changed the
        schema since (or it was never fetched)."""
        if self._stale or self._db is None:
            self._stale = False
            try:
                self.refresh_shadow()
            except self.Error as e:
                if self._db is None:
                    self._set_db((build_shadow([]), self.cluster.current))
                self.write_error(f"Warning: the schema could not be fetched: {e}\n")
        return self._db

    db = property(_shadow, apsw.shell.Shell._set_db, None, "The shadow of the cluster's schema")

    def refresh_shadow(self) -> None:
        # Read at least at `weak` (on the leader): the schema must include one's own DDL.
        level = self.level if self.level not in (None, "none") else "weak"
        _, rows = self.read_rows(SCHEMA_SQL, None, level=level)
        self._set_db((build_shadow(entries(rows)), self.cluster.current))
        self._completion_cache = None
        self._stale = False

    def read_rows(self, sql: str, params: dict[str, Any] | None = None, *,
                  level: str | None = None) -> tuple[list[str], list[list[Any]]]:
        """One read on the cluster for the shell's own use: (columns, rows)."""
        try:
            response = self.cluster.query([statement_body(sql, params)],
                                          level=level or self.level)
        except (ClientError, OSError) as e:
            raise self.Error(describe(e, self.cluster.timeout)) from None
        result = self.results_of(response, [sql])[0]
        if "error" in result:
            raise self.Error(result["error"])
        values = [[from_wire(v) for v in row] for row in result.get("values") or []]
        return list(result.get("columns") or []), values

    # ---- user SQL goes to the cluster

    def process_sql(self, sql: str, bindings: Any = None, internal: bool = False,
                    summary: Any = None) -> None:
        if internal:  # the base class's own queries (.tables, .schema, ...): the shadow
            return super().process_sql(sql, bindings, internal=True, summary=summary)
        if bindings is None:
            bindings = self.bindings
        for statement in split_statements(sql):
            if self.echo:
                self.write_error(statement + "\n")
            if transaction_word(statement) or self._txn is not None:
                self._in_transaction(statement, bindings)
            else:
                self.send_statements([statement_body(statement, bindings)], [statement])
        return None

    def send_statements(self, bodies: list[Any], sqls: list[str], *,
                        transaction: bool = False) -> None:
        """Send statements in one request and show their results in order; the first error
        is raised (as sqlite3 does, the statements after it in the input are not run)."""
        started = time.monotonic()
        try:
            response = self.cluster.request(bodies, level=self.level, transaction=transaction)
        except (ClientError, OSError) as e:
            raise self.Error(describe(e, self.cluster.timeout)) from None
        finally:
            self.update_prompt()  # the node that answered, which may have changed
        if any(is_ddl(s) for s in sqls):
            self._stale = True
        results = self.results_of(response, sqls)
        failed = [(r, s) for r, s in zip(results, sqls, strict=False) if "error" in r]
        if failed and transaction:
            result, sql = failed[0]
            raise self.Error(with_position(result["error"], sql)
                             + "\n(the transaction was rolled back: nothing was applied)")
        for result, sql in zip(results, sqls, strict=False):
            if "error" in result:
                raise self.Error(with_position(result["error"], sql))
            self._show(result)
        if self.timer:
            self.write(self.stderr, f"Run Time: real {time.monotonic() - started:.3f} "
                                    f"(answered by {response.url})\n")

    def results_of(self, response: Response, sqls: Sequence[str]) -> list[dict[str, Any]]:
        """The per-statement results of an answer; a refusal of the whole request (4xx)
        raised with the server's words."""
        if response.status >= 400:
            raise self.Error(f"the cluster refused the request ({response.status}): "
                             f"{answer_text(response)}")
        try:
            results = response.results
        except ValueError:
            raise self.Error(f"not a JSON answer from {response.url}") from None
        if "error" in (body := response.json()) and not results:
            raise self.Error(str(body["error"]))
        if len(results) < len(sqls):
            results += [{"error": "no result for this statement"}] * (len(sqls) - len(results))
        return results

    def _show(self, result: dict[str, Any]) -> None:
        columns = result.get("columns")
        if columns is None:
            if self.changes and "rows_affected" in result:
                self.write(self.stdout, f"changes: {result['rows_affected']}\n")
            return
        rows = [tuple(from_wire(v) for v in row) for row in result.get("values") or []]
        self.render(tuple(columns), rows)

    def _in_transaction(self, statement: str, bindings: Any) -> None:
        """BEGIN ... COMMIT typed in the shell: the statements are held and sent at COMMIT as
        one request with the transaction flag (the HTTP API has no transaction spanning
        requests), so they are applied all or none. ROLLBACK drops them, unsent."""
        word = transaction_word(statement)
        if word == "begin":
            if self._txn is not None:
                raise self.Error("cannot start a transaction within a transaction")
            self._txn = []
        elif self._txn is None:
            raise self.Error(f"cannot {word} - no transaction is active")
        elif word == "rollback":
            self._txn = None
        elif word == "commit":
            held, self._txn = self._txn, None
            if held:
                self.send_statements([b for b, _ in held], [s for _, s in held],
                                     transaction=True)
        else:
            self._txn.append((statement_body(statement, bindings), statement))
        self.update_prompt()

    # ---- output

    def render(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Rows through the current output mode, as the base class renders a local query
        (which shows nothing for a result without rows)."""
        if not rows:
            return
        with self._paged():
            out = self.output
            if getattr(out, "all_at_once", False):
                out(columns, [list(r) for r in rows])
                return
            wants_row = _takes_row(out)
            out(True, columns)
            last = len(rows) - 1
            for i, row in enumerate(rows):
                out(False, apsw.shell.Shell.Row(is_first=i == 0, is_last=i == last, row=row,
                                                columns=columns) if wants_row else row)

    def output_markdown(self, header: Any, line: Any) -> None:
        """
        A Markdown (GitHub) table: a header row, a rule, then one row per line.
        """
        def cell(v: Any) -> str:
            return self._fmt_text_col(v).replace("|", "\\|").replace("\n", " ")

        if header:
            self.write(self.stdout, "| " + " | ".join(cell(c) for c in line) + " |\n")
            self.write(self.stdout, "|" + "|".join("---" for _ in line) + "|\n")
            return
        self.write(self.stdout, "| " + " | ".join(cell(v) for v in line) + " |\n")

    @contextlib.contextmanager
    def _paged(self) -> Iterator[None]:
        """On a terminal, a result taller than the screen goes through $PAGER (or
        `less -FRX`); never when the output is a file or a pipe."""
        real = self.stdout
        if not (self.interactive and real is self._original_stdout and _is_tty(real)):
            yield
            return
        buffer = io.StringIO()
        self.stdout = buffer
        try:
            yield
        finally:
            self.stdout = real
            page(buffer.getvalue(), real)

    # ---- input, prompt, errors

    def update_prompt(self) -> None:
        if self._custom_prompt:
            return
        node = urllib.parse.urlsplit(self.cluster.current).netloc
        self.prompt = f"{node}{' (transaction)' if self._txn is not None else ''}> "
        self.moreprompt = " " * max(len(self.prompt) - 5, 0) + "...> "

    def command_prompt(self, cmd: list[str]) -> None:
        self._custom_prompt = True
        super().command_prompt(cmd)

    command_prompt.__doc__ = apsw.shell.Shell.command_prompt.__doc__

    def process_command(self, command: str) -> None:
        try:
            super().process_command(command)
        except (ClientError, OSError) as e:
            raise self.Error(describe(e, self.cluster.timeout)) from None

    def process_complete_line(self, command: str) -> None:
        once = self._once_state
        try:
            super().process_complete_line(command)
        finally:
            if command.strip():
                self._after_line(once)

    def _after_line(self, once_before: str | None) -> None:
        """`.once FILE` covers the one line of input after it."""
        if once_before == "armed" and self._once_state == "armed":
            self._once_state = None
            self.command_output(["stdout"])
        elif self._once_state == "new":
            self._once_state = "armed"

    def command_once(self, cmd: list[str]) -> None:
        """once FILE: Send the output of the next SQL statement or command to FILE only"""
        if len(cmd) != 1:
            raise self.Error("once takes a filename")
        self.command_output(cmd)
        self._once_state = "new"

    def command_exit(self, cmd: list[str], name: str = "exit") -> None:
        if not cmd:  # no code given: the session's own status (1 if anything failed)
            raise SystemExit(None)
        super().command_exit(cmd, name)

    command_exit.__doc__ = "exit ?CODE?: Exit, with CODE or else 1 if anything failed, 0 if not"

    def _append_input_description(self) -> None:
        if not self.interactive and self.line_numbers:
            name = getattr(self.stdin, "name", None)
            source = f" of {name}" if isinstance(name, str) and not name.startswith("<") else ""
            self._input_descriptions.append(f"line {self.input_line_number}{source}")

    def handle_exception(self) -> None:
        """One line on stderr, `Error: <message>` (`Error: near line N: ...` in a script),
        never a traceback unless `.exceptions on`; re-raised under `.bail on`."""
        error = sys.exc_info()[1]
        if isinstance(error, SystemExit):
            raise error
        self.failed = True
        if isinstance(error, KeyboardInterrupt):
            self.handle_interrupt()
            return
        if error is not None and not getattr(error, "_handle_exception_saw_this", False):
            if isinstance(error, ClientError | OSError):
                text = describe(error, self.cluster.timeout)
            else:
                text = str(error).strip() or type(error).__name__
            where = f"near {self._input_descriptions[0]}: " if self._input_descriptions else ""
            self.write_error(f"Error: {where}{text}\n")
            if self.exceptions:
                self.write(self.stderr, "".join(traceback.format_exception(error)))
            with contextlib.suppress(AttributeError):
                error._handle_exception_saw_this = True  # type: ignore[union-attr]
        self._input_descriptions = []
        if self.bail:
            raise error  # type: ignore[misc]

    def handle_interrupt(self) -> None:
        if self._db is not None:  # not `self.db`: that could fetch the schema
            self._db.interrupt()
        if not self.bail and self.interactive:
            self.write(self.stderr, "^C\n")
            return
        raise KeyboardInterrupt

    # ---- running

    def banner(self) -> str:
        """The first line an interactive user sees: where they are connected."""
        where = self.cluster.current
        try:
            members = self.nodes()
        except self.Error as e:
            return (f"raftsql shell {__version__} — {where} does not answer ({e}); "
                    ".help for help\n")
        leader = next((m["id"] for m in members if m.get("leader")), None)
        return (f"raftsql shell {__version__} — connected to {self.cluster.current} "
                f"(leader {leader or 'unknown'}, {len(members)} node"
                f"{'s' if len(members) != 1 else ''}); .help for help\n")

    def run(self) -> int:
        """The input to its end: 0, or 1 when any statement or command failed."""
        intro = self.banner() if self.interactive else ""
        if self.interactive:
            self._stale = True
            _ = self.db  # the schema now, so the first Tab completes names
            self.update_prompt()
        try:
            self.cmdloop(intro=intro)
        except SystemExit as e:
            if e.code is None:
                return 1 if self.failed else 0
            return e.code if isinstance(e.code, int) else 1
        except BaseException:  # .bail on: the message has been written
            return 1
        finally:
            if self._txn:
                self.write_error("Warning: the transaction was never committed: its "
                                 f"{len(self._txn)} statement(s) were not sent\n")
            self.cluster.close()
        return 1 if self.failed else 0


def _takes_row(output: Any) -> bool:
    """Whether an output mode wants Shell.Row (json, jsonl: they mark the first and last)."""
    params = list(inspect.signature(output).parameters.values())
    return len(params) > 1 and params[1].annotation in ("Shell.Row", apsw.shell.Shell.Row)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def page(text: str, out: Any) -> None:
    """Write `text` to the terminal `out`, through a pager when it is taller than the
    screen."""
    try:
        size = os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        out.write(text)
        return
    height = sum(max(1, math.ceil(len(line) / max(size.columns, 1)))
                 for line in text.split("\n"))
    if height < size.lines:
        out.write(text)
        return
    out.flush()
    pager = os.environ.get("PAGER") or "less -FRX"
    try:
        subprocess.run(pager, shell=True, input=text.encode(), check=False)
    except OSError:
        out.write(text)
