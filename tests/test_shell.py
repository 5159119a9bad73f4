"""`raftsql shell` with StringIO streams against one real node (started once per module),
and its pure parts (statement splitting, error words) alone."""

from __future__ import annotations

import fcntl
import io
import os
import sqlite3
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import apsw
import apsw.shell
import pytest

from raftsql.cli.launcher import free_ports, http
from raftsql.client.http import Cluster, Unavailable, credentials
from raftsql.shell.shell import RaftShell, page
from raftsql.shell.statements import describe, split_statements, transaction_word, with_position
from tests.client_node import single_node

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from single_node(tmp_path_factory)


def run(url: str, script: str, **kwargs: object) -> tuple[int, str, str]:
    """The shell over `script` as a pipe would give it: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    shell = RaftShell(Cluster(url, timeout=5), stdin=io.StringIO(script), stdout=out,
                      stderr=err, interactive=False, **kwargs)  # type: ignore[arg-type]
    return shell.run(), out.getvalue(), err.getvalue()


def ok(url: str, script: str) -> str:
    code, out, err = run(url, script)
    assert (code, err) == (0, ""), err
    return out


def rows(url: str, sql: str) -> list[list[object]]:
    code, body = http("POST", f"{url}/db/query?level=strong&native", [sql])
    assert code == 200 and "error" not in body["results"][0], body
    return body["results"][0].get("values", [])


def local_output(mode: str, setup: str, query: str) -> str:
    """What apsw's own shell prints for `query` on a local database: the reference."""
    out = io.StringIO()
    shell = apsw.shell.Shell(stdin=io.StringIO(f"{setup}\n.mode {mode}\n.headers on\n{query}\n"),
                             stdout=out, stderr=io.StringIO())
    shell.cmdloop(intro="")
    return out.getvalue()


# ---- the pure parts


def test_statements_end_only_at_a_semicolon_that_closes_them() -> None:
    sql = ("SELECT ';' AS a; -- a comment; still a comment\n"
           "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END; ; SELECT 2")
    assert list(split_statements(sql)) == [
        "SELECT ';' AS a;",
        "-- a comment; still a comment\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;",
        "SELECT 2"]
    assert transaction_word("begin immediate transaction;") == "begin"
    assert transaction_word("END") == "commit"
    assert transaction_word("BEGIN; SELECT 1") is None


def test_error_position_and_unavailable_words() -> None:
    assert with_position('near "FRM": syntax error', "SELECT 1\nFRM t") == (
        'near "FRM": syntax error\n  FRM t\n  ^--- error here')
    assert with_position("no such table: x", "SELECT * FROM x") == "no such table: x"
    e = Unavailable("http://h:1: connection refused (gave up after 3s); the request may have "
                    "been applied", maybe_applied=True)
    assert describe(e, 3) == ("the cluster did not answer in 3s (node http://h:1: connection "
                              "refused); the statement may have been applied")


# ---- output


MODES_SETUP = ("CREATE TABLE modes(i INTEGER, r REAL, t TEXT, n);"
               "INSERT INTO modes VALUES(1, 2.5, 'it''s, \"quoted\"', NULL);"
               "INSERT INTO modes VALUES(-7, 0.1, 'two\nlines', 'x');")
MODES_QUERY = "SELECT * FROM modes ORDER BY i;"


@pytest.mark.parametrize("mode", ["list", "csv", "tabs", "json", "jsonl", "line", "column",
                                  "box", "table", "qbox", "insert", "html", "python", "tcl"])
def test_every_output_mode_prints_what_apsw_prints_locally(url: str, mode: str) -> None:
    ok(url, "DROP TABLE IF EXISTS modes;" + MODES_SETUP)
    expected = local_output(mode, MODES_SETUP, MODES_QUERY)
    assert expected.strip()
    assert ok(url, f".mode {mode}\n.headers on\n{MODES_QUERY}") == expected


def test_list_csv_json_and_markdown_literally(url: str) -> None:
    ok(url, "DROP TABLE IF EXISTS lit; CREATE TABLE lit(a, b); INSERT INTO lit VALUES(1, NULL);"
            "INSERT INTO lit VALUES(2.5, 'x|y');")
    q = "SELECT a, b FROM lit ORDER BY a;"
    assert ok(url, f".headers on\n{q}") == "a|b\n1|\n2.5|x|y\n"
    assert ok(url, f".nullvalue NULL\n{q}") == "1|NULL\n2.5|x|y\n"
    assert ok(url, f".mode csv\n{q}") == "1,\n2.5,x|y\n"
    assert ok(url, f".mode json\n{q}") == '[{ "a": 1, "b": null},\n{ "a": 2.5, "b": "x|y"}]\n'
    assert ok(url, f".mode markdown\n{q}") == "| a | b |\n|---|---|\n| 1 |  |\n| 2.5 | x\\|y |\n"


def test_blobs_and_reals_come_back_as_sqlite_holds_them(url: str) -> None:
    ok(url, "DROP TABLE IF EXISTS blobs; CREATE TABLE blobs(b BLOB, r REAL);"
            "INSERT INTO blobs VALUES(x'00ff10', 3.0);")
    assert ok(url, ".mode insert blobs\nSELECT * FROM blobs;") == (
        "INSERT INTO blobs VALUES(X'00FF10',3.0);\n")
    setup = "CREATE TABLE blobs(b BLOB, r REAL); INSERT INTO blobs VALUES(x'00ff10', 3.0);"
    for mode in ("qbox", "list", "json"):
        query = "SELECT typeof(b), b, r FROM blobs;"
        assert ok(url, f".mode {mode}\n.headers on\n{query}") == local_output(mode, setup, query)


def test_width_changes_column_mode(url: str) -> None:
    out = ok(url, ".mode column\n.headers on\n.width 3 -6\nSELECT 'abcdef' AS a, 42 AS b;")
    assert out == "a         b\n---  ------\nabc      42\n"


# ---- parameters, echo, bail, output redirection, read


def test_parameters_are_bound_never_spliced(url: str) -> None:
    out = ok(url, "DROP TABLE IF EXISTS p; CREATE TABLE p(v);\n"
                  ".parameter set n 41\n"
                  ".parameter set s 'x''); DROP TABLE p; --'\n"
                  "INSERT INTO p VALUES($s); SELECT :n + 1, (SELECT v FROM p);\n"
                  ".parameter list\n.parameter unset n\n.parameter list\n"
                  ".parameter clear\n.parameter list\n")
    assert out.splitlines() == ["42|x'); DROP TABLE p; --", "n         41",
                                "s         'x''); DROP TABLE p; --'",
                                "s         'x''); DROP TABLE p; --'", "No parameters set"]
    assert rows(url, "SELECT v FROM p") == [["x'); DROP TABLE p; --"]]


def test_echo_writes_each_statement_to_stderr(url: str) -> None:
    code, out, err = run(url, ".echo on\nSELECT 1; SELECT 2;\n")
    assert (code, out) == (0, "1\n2\n")
    assert err == "SELECT 1;\nSELECT 2;\n"  # .echo on itself ran before echo was on


def test_an_error_sets_the_exit_status_and_bail_stops_the_script(url: str) -> None:
    code, out, err = run(url, "SELECT 1;\nSELEC 2;\nSELECT 3;\n")
    assert (code, out) == (1, "1\n3\n")
    assert err == 'Error: near line 2: near "SELEC": syntax error\n  SELEC 2;\n  ^--- error here\n'
    code, out, err = run(url, ".bail on\nSELECT * FROM no_such_table;\nSELECT 3;\n")
    assert (code, out, err) == (1, "", "Error: near line 2: no such table: no_such_table\n")


def test_output_and_once_send_results_to_files(url: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    out = ok(url, f".output {a}\nSELECT 1;\nSELECT 2;\n.output stdout\nSELECT 3;\n"
                  f".once {b}\nSELECT 4;\nSELECT 5;\n")
    assert out == "3\n5\n"
    assert a.read_text() == "1\n2\n"
    assert b.read_text() == "4\n"


def test_read_runs_a_file_of_sql_and_commands(url: str, tmp_path: Path) -> None:
    script = tmp_path / "s.sql"
    script.write_text("DROP TABLE IF EXISTS r;\nCREATE TABLE r(x);\n.parameter set v 9\n"
                      "INSERT INTO r VALUES($v);\nSELECT * FROM r;\nSELECT nope;\n")
    code, out, err = run(url, f".read {script}\n")
    assert (code, out) == (1, "9\n")
    assert err == f"Error: near line 6 of {script}: no such column: nope\n"


def test_begin_commit_is_sent_as_one_transaction(url: str) -> None:
    ok(url, "DROP TABLE IF EXISTS tx; CREATE TABLE tx(x UNIQUE);")
    assert ok(url, "BEGIN;\nINSERT INTO tx VALUES(1);\nINSERT INTO tx VALUES(2);\n"
                   "SELECT count(*) FROM tx;\nCOMMIT;\n") == "2\n"
    code, _, err = run(url, "BEGIN; INSERT INTO tx VALUES(3); INSERT INTO tx VALUES(1); COMMIT;")
    assert code == 1 and "UNIQUE constraint failed" in err and "rolled back" in err
    ok(url, "BEGIN; INSERT INTO tx VALUES(4); ROLLBACK;")
    assert rows(url, "SELECT x FROM tx ORDER BY x") == [[1], [2]]


# ---- schema from the shadow


def test_tables_schema_indexes_follow_ddl_and_hide_internal_tables(url: str) -> None:
    out = ok(url, "DROP TABLE IF EXISTS s1; DROP TABLE IF EXISTS s2;\n"
                  "CREATE TABLE s1(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);\n"
                  "CREATE INDEX s1_name ON s1(name);\nCREATE TABLE s2(x);\n"
                  "INSERT INTO s1(name) VALUES('a');\n"
                  ".tables s%\n.schema s1\n.indexes s1\nDROP TABLE s2;\n.tables s%\n")
    assert out.splitlines() == [
        "s1", "s2",
        "CREATE TABLE s1(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);",
        "CREATE INDEX s1_name ON s1(name);",
        "s1_name", "s1"]
    assert "sqlite_" not in ok(url, ".tables\n.schema\n")


# ---- data in and out of the cluster


def test_dump_loads_into_sqlite3_with_the_same_data(url: str) -> None:
    ok(url, "DROP VIEW IF EXISTS dv; DROP TABLE IF EXISTS d1; DROP TABLE IF EXISTS d2;"
            "CREATE TABLE d1(id INTEGER PRIMARY KEY, b BLOB, r REAL, t TEXT, n);"
            "CREATE INDEX d1_t ON d1(t); CREATE VIEW dv AS SELECT id FROM d1;"
            "CREATE TABLE d2(k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
            "INSERT INTO d1 VALUES(1, x'00ff', 1.5, 'it''s', NULL), (2, x'', 1e300, 'é', 7);"
            "INSERT INTO d2 VALUES('k', 'v');"
            "WITH RECURSIVE c(i) AS (SELECT 3 UNION ALL SELECT i+1 FROM c WHERE i < 2500) "
            "INSERT INTO d1(id, t) SELECT i, 'row' || i FROM c;")
    script = ok(url, ".dump d%\n")
    local = sqlite3.connect(":memory:")
    local.executescript(script)
    assert local.execute("SELECT * FROM d1 ORDER BY id").fetchall() == [
        tuple(r) if not isinstance(r[1], list) else (r[0], bytes(r[1]), *r[2:])
        for r in rows(url, "SELECT * FROM d1 ORDER BY id")]
    assert local.execute("SELECT count(*), typeof(b) FROM d1 WHERE id = 1").fetchone() == (
        1, "blob")
    assert local.execute("SELECT * FROM d2").fetchall() == [("k", "v")]
    assert local.execute("SELECT count(*) FROM dv").fetchone() == (2500,)
    assert "CREATE INDEX d1_t ON d1(t);" in script and script.endswith("COMMIT;\n")


def test_a_dump_loads_back_through_the_shell(url: str) -> None:
    ok(url, "DROP TABLE IF EXISTS rt; CREATE TABLE rt(b BLOB, r REAL, t TEXT, n);"
            "INSERT INTO rt VALUES(x'00ff', 0.1, 'a''b', NULL), (x'', -2.5e-300, '', 1);")
    before = rows(url, "SELECT quote(b), quote(r), quote(t), quote(n) FROM rt ORDER BY rowid")
    script = ok(url, ".dump rt\n")
    ok(url, "DROP TABLE rt;")
    ok(url, script)  # its BEGIN TRANSACTION..COMMIT is sent as one transaction request
    assert rows(url, "SELECT quote(b), quote(r), quote(t), quote(n) FROM rt "
                     "ORDER BY rowid") == before


def test_import_creates_the_table_from_the_header_and_sends_every_row(
        url: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    lines = ["name,age"] + [f'"person, {i}",{i}' for i in range(1234)]
    csv_file.write_text("\n".join(lines) + "\n")
    ok(url, "DROP TABLE IF EXISTS people;")
    ok(url, f".import {csv_file} people\n")
    assert rows(url, "SELECT count(*), sum(age), min(name) FROM people") == [
        [1234, sum(range(1234)), "person, 0"]]
    assert ok(url, ".schema people\n") == "CREATE TABLE people(name TEXT, age TEXT);\n"
    # An existing table takes every row as data, unless told to skip the header.
    ok(url, f".import --skip 1 {csv_file} people\n")
    assert rows(url, "SELECT count(*) FROM people") == [[2468]]
    # Wide rows: the batches are cut by size too, so no request grows past what nodes take.
    wide = tmp_path / "wide.csv"
    wide.write_text("".join(f"{'w' * 400},{i}\n" for i in range(400)))
    ok(url, f".import {wide} people\n")
    assert rows(url, "SELECT count(*), sum(age) FROM people WHERE length(name) = 400") == [
        [400, sum(range(400))]]


def test_backup_saves_the_clusters_database(url: str, tmp_path: Path) -> None:
    ok(url, "CREATE TABLE saved(x);\nINSERT INTO saved VALUES(42);\n")
    out = ok(url, f".backup {tmp_path / 'b.db'}\n")
    assert out.startswith("wrote ") and out.rstrip().endswith(f"bytes to {tmp_path / 'b.db'}")
    assert sqlite3.connect(tmp_path / "b.db").execute("SELECT x FROM saved").fetchall() == [
        (42,)]


def test_restore_loads_a_dump_or_a_database_file(url: str, tmp_path: Path) -> None:
    dump_file = tmp_path / "d.sql"
    dump_file.write_text("BEGIN TRANSACTION;\nCREATE TABLE restored(x);\n"
                         "INSERT INTO restored VALUES(7);\nCOMMIT;\n")
    ok(url, f".restore {dump_file}\n")
    assert rows(url, "SELECT x FROM restored") == [[7]]
    db_file = tmp_path / "f.db"
    conn = sqlite3.connect(db_file)
    conn.execute("CREATE TABLE f(x)")
    conn.execute("INSERT INTO f VALUES (8)")
    conn.commit()
    ok(url, f".restore {db_file}\n")  # replaces the whole database
    assert rows(url, "SELECT x FROM f") == [[8]]
    code, _, err = run(url, "SELECT x FROM restored;\n")
    assert code == 1 and "no such table: restored" in err
    (tmp_path / "bad.db").write_bytes(b"SQLite format 3\x00" + bytes(300))
    code, _, err = run(url, f".restore {tmp_path / 'bad.db'}\n")
    assert code == 1 and "not a SQLite database" in err


# ---- rqlite's commands, and the base class's that do not apply


def test_cluster_commands_on_one_node(url: str, tmp_path: Path) -> None:
    port = url.rsplit(":", 1)[1]
    out = ok(url, ".nodes\n.leader\n.status\n.status store.raft.state\n.ready\n"
                  ".consistency\n.consistency linearizable\n.consistency\n.snapshot\n"
                  f".sysdump {tmp_path / 'sys.txt'}\n.version\n")
    lines = out.splitlines()
    assert lines[:2] == ["id|api_addr|addr|voter|reachable|leader",
                         f"n1|{url}|127.0.0.1:{http_raft_port(url)}|yes|yes|yes"]
    assert lines[2] == f"n1 {url} (raft 127.0.0.1:{http_raft_port(url)})"
    assert "state            Leader" in lines and '"Leader"' in lines
    assert f"ready: {url}: [+]node ok; [+]leader ok; [+]store ok" in lines
    assert "the cluster's default (weak)" in lines and "linearizable" in lines
    assert any(line.startswith(("snapshot taken", "no snapshot needed")) for line in lines)
    dump = (tmp_path / "sys.txt").read_text()
    assert "==== GET /status ====" in dump and f"status 200 from {url}" in dump
    assert "[+]leader ok" in dump and port in dump


def http_raft_port(url: str) -> str:
    nodes = http("GET", f"{url}/nodes?ver=2")[1]["nodes"]
    return nodes[0]["addr"].rsplit(":", 1)[1]


def test_refusals_are_one_line_messages(url: str) -> None:
    for command, words in ((".stepdown", "stepdown: the server refused (503): leadership transfer refused"),
                           (".remove n9", "removing n9"),
                           (".expvar", "/debug/vars"), (".metrics", "/metrics"),
                           (".open x.db", ".open is not available in raftsql shell"),
                           (".vfslist", ".vfslist is not available"),
                           (".consistency bogus", "consistency takes one of"),
                           (".nosuch", 'Unknown command "nosuch"')):
        code, out, err = run(url, command + "\n")
        if code == 0:  # a route that exists and succeeded (.metrics may be served)
            assert out.strip() and command in (".metrics", ".expvar"), (command, err)
            continue
        assert err.startswith("Error: near line 1: ") and err.count("\n") == 1, (command, err)
        assert words in err, (command, err)


def test_connect_moves_the_session(url: str) -> None:
    out = ok(url, f".connect {url}\nSELECT 1;\n")
    assert out.startswith("raftsql shell ") and f"connected to {url} (leader n1, 1 node)" in out
    code, out, err = run(url, f".connect http://127.0.0.1:{free_ports(1)[0]}\nSELECT 2;\n")
    assert (code, out, err.count("Error:")) == (1, "2\n", 1)  # the old connection goes on


def test_help_lists_sqlite_and_rqlite_commands(url: str) -> None:
    _, _, err = run(url, ".help\n")
    for command in ("nodes", "leader", "status", "ready", "consistency", "connect", "backup",
                    "restore", "snapshot", "remove", "stepdown", "sysdump", "expvar",
                    "metrics", "once", "dump", "import", "indexes", "tables", "schema",
                    "parameter"):
        assert f"\n.{command}" in err, command
    assert ".nodes" in err and "List the cluster's members" in err
    assert "\n.open" not in err and "\n.vfslist" not in err  # they only say "not here"


def test_timer_and_changes(url: str) -> None:
    ok(url, "DROP TABLE IF EXISTS tc; CREATE TABLE tc(x);")
    code, out, err = run(url, ".timer on\n.changes on\nINSERT INTO tc VALUES(1),(2);\n")
    assert (code, out) == (0, "changes: 2\n")
    assert err.startswith("Run Time: real ") and f"(answered by {url})" in err


def test_a_long_result_goes_through_the_pager_only_on_a_tall_enough_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 10, 80, 0, 0))
    paged = tmp_path / "paged.txt"
    monkeypatch.setenv("PAGER", f"cat > {paged}")
    with os.fdopen(slave, "w") as tty:
        page("short\n", tty)
        tty.flush()
        assert os.read(master, 100) == b"short\r\n"
        assert not paged.exists()
        page("".join(f"line {i}\n" for i in range(30)), tty)
    os.close(master)
    assert paged.read_text().splitlines()[-1] == "line 29"


def test_an_unreachable_cluster_is_one_line_and_status_1() -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    out, err = io.StringIO(), io.StringIO()
    shell = RaftShell(Cluster(dead, timeout=0.5), stdin=io.StringIO("SELECT 1;\n"),
                      stdout=out, stderr=err, interactive=False, line_numbers=False)
    assert shell.run() == 1
    assert err.getvalue() == (f"Error: the cluster did not answer in 0.5s (node {dead}: "
                              "connection refused); nothing was applied\n")


# ---- the command line


def shell_process(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "raftsql", "shell", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60)


def test_c_runs_sql_and_exits(url: str) -> None:
    done = shell_process([url, "-c", "SELECT 6 * 7;\n.mode csv\nSELECT 'a', 'b'"], "")
    assert (done.returncode, done.stdout, done.stderr) == (0, "42\na,b\n", "")
    done = shell_process([url, "-c", "SELECT * FROM nowhere"], "")
    assert (done.returncode, done.stderr) == (1, "Error: no such table: nowhere\n")


def test_a_piped_script_runs_and_exits_with_its_status(url: str) -> None:
    done = shell_process([url, "--consistency", "strong"],
                         "DROP TABLE IF EXISTS pipe; CREATE TABLE pipe(x);\n"
                         "INSERT INTO pipe VALUES(1),(2);\n.headers on\nSELECT sum(x) AS s FROM pipe;\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "s\n3\n", "")
    done = shell_process([url], "SELECT 1;\nSELECT bad(;\nSELECT 2;\n")
    assert (done.returncode, done.stdout) == (1, "1\n2\n")
    assert done.stderr.startswith('Error: near line 2: near ";": syntax error')


def test_url_from_the_environment(url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAFTSQL_URL": url}
    done = subprocess.run([sys.executable, "-m", "raftsql", "shell", "-c", "SELECT 'env'"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stdout) == (0, "env\n")


def test_credentials_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTSQL_USER", raising=False)
    monkeypatch.delenv("RAFTSQL_PASSWORD", raising=False)
    assert credentials(None, interactive=False) is None
    assert credentials("ann:s3:cret", interactive=False) == ("ann", "s3:cret")
    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or "typed")
    assert credentials("ann", interactive=False) == ("ann", "")  # a script is never asked
    assert credentials("ann", interactive=True) == ("ann", "typed")
    assert asked == ["password for ann: "]
    monkeypatch.setenv("RAFTSQL_USER", "bob")
    monkeypatch.setenv("RAFTSQL_PASSWORD", "pw")
    assert credentials(None, interactive=True) == ("bob", "pw")
