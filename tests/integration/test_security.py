"""A cluster with auth, as deployed: real processes started with --auth and a cluster
secret, used through pyrqlite, py-consul, `raftsql shell`, `raftsql kv`, `raftsql status`
and `raftsql backup` with credentials, and refused without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import consul
import pytest
from pyrqlite import dbapi2

from tests.integration.conftest import running_cluster

pytestmark = pytest.mark.slow


def raftsql(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftsql", *args], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def secured(tmp_path):
    hashed = raftsql("hash-password", stdin="s3cret\n")
    assert hashed.returncode == 0, hashed.stderr
    users = [{"username": "*", "perms": ["status", "ready"]},
             {"username": "app", "password": hashed.stdout.strip(),
              "perms": ["query", "execute", "backup"]},
             {"username": "viewer", "password": "look", "perms": ["query"]}]
    (tmp_path / "users.json").write_text(json.dumps(users))
    (tmp_path / "secret").write_text("peer-secret\n")
    with running_cluster(str(tmp_path / "c"), "--auth", str(tmp_path / "users.json"),
                         "--cluster-secret-file", str(tmp_path / "secret")) as cluster:
        yield cluster


def test_clients_with_credentials_work_and_without_are_refused(secured, tmp_path):
    cluster = secured
    follower = next(i for i in cluster.ids if i != cluster.leader())
    port = cluster.http_port(follower)
    conn = dbapi2.connect(host="127.0.0.1", port=port, user="app", password="s3cret")
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")  # forwarded to the leader
    cur.executemany("INSERT INTO t(name) VALUES (?)", [("a",), ("b",)])
    cur.execute("SELECT count(*) FROM t")
    assert cur.fetchone()[0] == 2
    conn.close()
    for user, password in ((None, None), ("app", "wrong"), ("viewer", "look")):
        denied = dbapi2.connect(host="127.0.0.1", port=port, user=user, password=password)
        with pytest.raises(Exception):  # noqa: B017 - pyrqlite raises a bare Exception on 401
            denied.cursor().execute("INSERT INTO t(name) VALUES ('no')")
        denied.close()
    url = cluster.url(follower)
    shell = raftsql("shell", url, "-u", "app:s3cret", "-c", "SELECT count(*) FROM t")
    assert shell.returncode == 0 and "2" in shell.stdout, shell.stderr
    shell = raftsql("shell", url, "-c", "SELECT count(*) FROM t")
    assert shell.returncode != 0 and "401" in shell.stderr + shell.stdout
    via_env = raftsql("shell", url, "-c", "SELECT name FROM t ORDER BY id",
                      env={"RAFTSQL_USER": "viewer", "RAFTSQL_PASSWORD": "look"})
    assert via_env.returncode == 0 and "a" in via_env.stdout, via_env.stderr
    put = raftsql("kv", "put", "--url", url, "-u", "app:s3cret", "cfg/x", "1")
    assert put.returncode == 0, put.stderr
    get = raftsql("kv", "get", "--url", f"http://viewer:look@127.0.0.1:{port}", "cfg/x")
    assert get.returncode == 0 and get.stdout.strip() == "1", get.stderr
    assert raftsql("kv", "put", "--url", url, "-u", "viewer:look", "cfg/x", "2").returncode != 0
    c = consul.Consul(host="127.0.0.1", port=port, token="app:s3cret")
    assert c.kv.get("cfg/x")[1]["Value"] == b"1"
    with pytest.raises(consul.ConsulException):
        consul.Consul(host="127.0.0.1", port=port, token="viewer:look").kv.put("cfg/x", "3")
    status = raftsql("status", url)  # anyone may read the status here
    assert status.returncode == 0 and "leader" in status.stdout, status.stderr
    backup = raftsql("backup", url, str(tmp_path / "b.db"), "-u", "app:s3cret")
    assert backup.returncode == 0, backup.stderr
    refused = raftsql("backup", url, str(tmp_path / "c.db"), "-u", "viewer:look")
    assert refused.returncode == 1 and "403" in refused.stderr
    assert not (tmp_path / "c.db").exists()
