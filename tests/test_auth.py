"""Authentication and permissions (raftsql/http/auth.py): rqlite's auth file, basic auth,
hashed passwords, and every node checking what it is given, forwarded requests again."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import aiohttp
import pytest

from raftsql.http import auth as auth_mod
from raftsql.http.auth import Auth, AuthFileError, hash_password, parse_users, verify_password
from raftsql.http.respond import FORWARDED_HEADER

from .inprocess import start_servers, wait_for


def test_a_hash_verifies_its_password_only():
    stored = hash_password("s3cret", ln=4)
    assert stored.startswith("$scrypt$ln=4,r=8,p=1$")
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cret ")
    assert hash_password("s3cret", ln=4) != stored  # salted
    assert verify_password("plain", "plain") and not verify_password("plain", "plai")


@pytest.mark.parametrize("raw, message", [
    ({"username": "a"}, "expected a JSON list"),
    ([{"password": "x"}], 'with a "username"'),
    ([{"username": "a", "perms": ["query"]}], '"password" must be'),
    ([{"username": "a", "password": "x", "perms": ["read"]}], "unknown permission read"),
    ([{"username": "a", "password": "x", "perms": "all"}], '"perms" must be a list'),
    ([{"username": "a", "password": "$scrypt$ln=4$x", "perms": []}], "bad password hash"),
    ([{"username": "a", "password": "$scrypt$ln=24,r=8,p=1$c2FsdA$" + "A" * 43, "perms": []}],
     "out of range"),
    ([{"username": "a", "password": "x"}, {"username": "a", "password": "y"}], "listed twice"),
])
def test_a_wrong_auth_file_says_which_entry_and_why(raw, message):
    with pytest.raises(AuthFileError, match=message):
        parse_users(raw, "users.json")


def test_the_file_must_be_there_and_json(tmp_path):
    with pytest.raises(AuthFileError, match="cannot read"):
        Auth.load(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(AuthFileError, match="not JSON"):
        Auth.load(str(tmp_path / "bad.json"))


def test_hash_password_reads_stdin_and_prints_one_line():
    done = subprocess.run([sys.executable, "-m", "raftsql", "hash-password"], input="pw\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert verify_password(line, "pw") and not verify_password(line, "pw\n")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


USERS = [
    {"username": "*", "perms": ["status", "ready"]},
    {"username": "admin", "password": "admin-pw", "perms": ["all"]},
    {"username": "reader", "password": hash_password("read-pw", ln=4), "perms": ["query"]},
    {"username": "writer", "password": "write-pw", "perms": ["execute", "query"]},
]


@pytest.fixture
async def secured(tmp_path):
    servers = await start_servers(tmp_path, heartbeat_ms=50, election_ms=300,
                                  cluster_secret="peers",
                                  auth=lambda node_id: Auth(parse_users(USERS), "peers"))
    nodes = [s.node for s in servers]
    await wait_for(lambda: any(n.is_leader for n in nodes))
    await wait_for(lambda: all(n.leader_api_url() for n in nodes))
    async with aiohttp.ClientSession() as session:
        yield nodes, session
    for s in servers:
        await s.stop(transfer=False)


async def call(session, node, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    async with session.request(method, node.api_url + path, data=data,
                               headers={"Content-Type": "application/json", **(headers or {})},
                               allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.read()


async def count(session, node) -> int:
    status, _, body = await call(session, node, "GET", "/db/query?level=none&q=SELECT+count(*)+FROM+t",
                                 headers=basic("admin", "admin-pw"))
    assert status == 200, body
    return json.loads(body)["results"][0]["values"][0][0]


async def test_who_may_do_what(secured):
    nodes, session = secured
    leader = next(n for n in nodes if n.is_leader)
    admin = basic("admin", "admin-pw")
    status, headers, _ = await call(session, leader, "POST", "/db/execute",
                                    ["CREATE TABLE t (x)"], admin)
    assert status == 200
    assert headers["WWW-Authenticate"] == 'Basic realm="rqlite"'
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    write = [["INSERT INTO t VALUES (1)"]]
    for creds, want in [(None, 401), (basic("admin", "wrong"), 401), (basic("nobody", "x"), 401),
                        ({"Authorization": "Bearer abc"}, 401),
                        ({"Authorization": "Basic !!!"}, 401),
                        (basic("reader", "read-pw"), 403), (basic("reader", "wrong"), 401)]:
        status, _, body = await call(session, leader, "POST", "/db/execute", write, creds)
        assert status == want, (creds, body)
    status, _, body = await call(session, leader, "POST", "/db/execute", write,
                                 basic("reader", "read-pw"))
    assert body == b"user reader lacks the execute permission\n"
    assert await count(session, leader) == 0  # nothing refused was applied
    assert (await call(session, leader, "POST", "/db/execute", write,
                       basic("writer", "write-pw")))[0] == 200
    assert (await call(session, leader, "GET", "/db/query?q=SELECT+1",
                       headers=basic("reader", "read-pw")))[0] == 200  # the hash holds
    assert (await call(session, leader, "GET", "/db/query?q=SELECT+1"))[0] == 401
    # /db/request needs query, and execute when it writes; anyone may read /status.
    assert (await call(session, leader, "POST", "/db/request", ["SELECT 1"],
                       basic("reader", "read-pw")))[0] == 200
    status, _, body = await call(session, leader, "POST", "/db/request",
                                 ["INSERT INTO t VALUES (5)"], basic("reader", "read-pw"))
    assert (status, body) == (403, b"user reader lacks the execute permission\n")
    assert (await call(session, leader, "GET", "/status"))[0] == 200
    assert (await call(session, leader, "GET", "/readyz"))[0] == 200
    assert (await call(session, leader, "GET", "/nodes?nonvoters"))[0] == 200
    assert (await call(session, leader, "POST", "/snapshot", headers=basic("writer", "write-pw"))
            )[0] == 403
    assert (await call(session, leader, "GET", "/db/backup",
                       headers=basic("writer", "write-pw")))[0] == 403
    assert (await call(session, leader, "GET", "/v1/kv/a", headers=basic("writer", "write-pw"))
            )[0] == 404  # allowed, and there is no such key
    assert (await call(session, leader, "PUT", "/v1/kv/a", headers=basic("reader", "read-pw"))
            )[0] == 403
    assert (await call(session, leader, "GET", "/no/such/path"))[0] == 404
    assert await count(session, leader) == 1


async def test_a_forwarded_request_is_checked_again_by_the_leader(secured, monkeypatch):
    nodes, session = secured
    leader = next(n for n in nodes if n.is_leader)
    follower = next(n for n in nodes if not n.is_leader)
    admin = basic("admin", "admin-pw")
    assert (await call(session, follower, "POST", "/db/execute", ["CREATE TABLE t (x)"],
                       admin))[0] == 200  # forwarded, credentials and all
    # The follower lets the request through, the leader's own check refuses it.
    checks: list[str] = []
    real_check = Auth.check

    async def check(self, request, needed):
        checks.append(request.headers.get(auth_mod.MEMBER_HEADER, "client"))
        if request.headers.get(FORWARDED_HEADER):
            raise auth_mod.AuthFailure(401, "the leader says no")
        await real_check(self, request, needed)

    monkeypatch.setattr(Auth, "check", check)
    status, _, body = await call(session, follower, "POST", "/db/execute",
                                 [["INSERT INTO t VALUES (1)"]], admin)
    assert (status, body) == (401, b"the leader says no\n")
    assert checks == ["client", "client"]
    monkeypatch.setattr(Auth, "check", real_check)
    assert await count(session, leader) == 0
    # Queued writes travel in batches that mix clients: the cluster secret lets them in.
    status, _, body = await call(session, follower, "POST", "/db/execute?queue",
                                 [["INSERT INTO t VALUES (2)"]], basic("writer", "write-pw"))
    assert status == 200, body
    for _ in range(100):
        if await count(session, leader) == 1:
            break
        await asyncio.sleep(0.05)
    assert await count(session, leader) == 1
