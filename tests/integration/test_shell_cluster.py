"""`raftsql shell` at a real terminal (a pseudo-terminal driven by pexpect) against a real
3-node cluster: prompt, multi-line input, Tab completion, history, results; then the leader
is stepped down, killed and removed, and the session goes on; with no quorum left a
statement ends in one line, never a traceback."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from raftsql.cli.launcher import LocalCluster

from .conftest import running_cluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(str(tmp_path_factory.mktemp("cluster"))) as c:
        yield c


def spawn(url: str, home: Path, *args: str) -> pexpect.spawn:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "NO_COLOR": "1",
           "TERM": "xterm", "PAGER": "cat"}
    env.pop("RAFTSQL_URL", None)
    return pexpect.spawn(sys.executable, ["-m", "raftsql", "shell", url, *args], env=env,
                         encoding="utf-8", timeout=20, dimensions=(60, 160))


def test_a_session_at_a_terminal_survives_the_leader(cluster: LocalCluster,
                                                     tmp_path: Path) -> None:
    leader = cluster.leader()
    node = cluster.http_addr(leader)
    child = spawn(cluster.url(leader), tmp_path, "--timeout", "4")
    child.expect(r"raftsql shell \S+ — connected to http://\S+ \(leader n\d, 3 nodes\); "
                 r"\.help for help")
    child.expect_exact(f"{node}> ")

    # A statement over two lines: the continuation prompt, then the main one again.
    child.sendline("CREATE TABLE fruit(name TEXT,")
    child.expect_exact("...> ")
    child.sendline("tastiness INTEGER);")
    child.expect_exact(f"{node}> ")
    child.sendline("INSERT INTO fruit VALUES('apple', 7);")
    child.expect_exact(f"{node}> ")

    # Tab completes a column and a table the shadow learned from the CREATE above.
    child.send("SELECT name, tast\t")
    child.expect_exact("tastiness")
    child.send(" FROM fru\t")
    child.expect_exact("fruit")
    child.sendline(";")
    child.expect(r"│\s*apple\s*│\s*7\s*│")
    child.expect_exact(f"{node}> ")

    child.sendline(".nodes")
    for _ in range(3):
        child.expect(r"│ n\d\s+│ http://127\.0\.0\.1:\d+\s+│ 127\.0\.0\.1:\d+\s+│ yes")
    child.expect(r"> $")

    # Leadership handed over, then the new leader killed: the session follows.
    child.sendline(".stepdown")
    child.expect(r"the leader stepped down; now leading: (n\d|not yet known)")
    child.expect(r"> $")
    new_leader = cluster.leader(among=[i for i in cluster.ids])
    assert new_leader != leader
    cluster.kill(new_leader)
    child.sendline("INSERT INTO fruit VALUES('pear', 5);")
    child.expect(r"> $")
    child.sendline("SELECT count(*) AS n FROM fruit;")
    child.expect(r"│\s*2\s*│")
    child.expect(r"(\S+)> $")
    assert child.match.group(1) != cluster.http_addr(new_leader)

    child.sendline(f".remove {new_leader}")
    child.expect_exact(f"removed {new_leader}")
    child.expect(r"> $")
    child.sendline(".leader")
    child.expect(r"n\d http://127\.0\.0\.1:\d+ \(raft 127\.0\.0\.1:\d+\)")

    # One of the two members left: no quorum, so the write cannot finish in time.
    survivors = [i for i in cluster.running()]
    cluster.kill(survivors[0])
    child.sendline("INSERT INTO fruit VALUES('plum', 3);")
    child.expect(r"Error: the cluster did not answer in 4s \(node [^\n]*\); [^\n]*\r\n")
    error_line = child.after
    child.expect(r"> $")
    assert "Traceback" not in child.before + error_line

    child.sendline(".exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1  # a statement failed
    history = (tmp_path / ".raftsql_history").read_text()
    assert "INSERT INTO fruit VALUES('apple', 7);" in history
    assert re.search(r"SELECT name, tastiness FROM fruit\s*;", history)
