"""The client's HTTP core (raftsql/client/http.py): which node it asks and when it sends a
request again, against scripted stand-in nodes (what each answers is the test's choice)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator

import orjson
import pytest

from raftsql.cli.launcher import free_ports
from raftsql.client.http import (
    IDEMPOTENCY_HEADER,
    Cluster,
    Unavailable,
    split_auth,
    split_urls,
)

Script = Callable[["Handler"], None]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.dispatch(self)  # type: ignore[attr-defined]

    do_POST = do_GET

    def reply(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class Node(http.server.ThreadingHTTPServer):
    """A stand-in node: records every request, answers with `script`."""

    def __init__(self, port: int, script: Script):
        super().__init__(("127.0.0.1", port), Handler)
        self.script = script
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def dispatch(self, h: Handler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.seen.append((h.command, h.path, dict(h.headers), body))
        if h.path.startswith("/nodes"):
            h.reply(404, {})
            return
        self.script(h)


@pytest.fixture
def nodes() -> Iterator[Callable[[Script], Node]]:
    started: list[Node] = []

    def start(script: Script) -> Node:
        node = Node(free_ports(1)[0], script)
        started.append(node)
        return node

    yield start
    for node in started:
        node.shutdown()
        node.server_close()


def ok(h: Handler) -> None:
    h.reply(200, {"results": [{"last_insert_id": 1, "rows_affected": 1}]})


def maybe_applied(h: Handler) -> None:
    h.reply(503, {"results": [], "error": "leadership lost; the request may have been applied"},
            {"Retry-After": "1"})


def not_leader(h: Handler) -> None:
    h.reply(503, {"results": [], "error": "leader not found"}, {"Retry-After": "1"})


def dead_url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there


def test_urls_and_credentials() -> None:
    assert split_urls("h1:4001, http://h2:4002/") == ["http://h1:4001", "http://h2:4002"]
    assert split_urls(["https://h:1"]) == ["https://h:1"]
    with pytest.raises(ValueError):
        split_urls("ftp://h")
    urls, auth = split_auth(["http://bob:s%40cret@h1:4001", "http://h2:4001"], None)
    assert urls == ["http://h1:4001", "http://h2:4001"] and auth == ("bob", "s@cret")
    assert split_auth(["http://h"], "amy:pw") == (["http://h"], ("amy", "pw"))


def test_env_gives_the_default_url(monkeypatch) -> None:
    monkeypatch.setenv("RAFTSQL_URL", "http://10.0.0.1:5001")
    assert split_urls(None) == ["http://10.0.0.1:5001"]
    monkeypatch.delenv("RAFTSQL_URL")
    assert split_urls("") == ["http://127.0.0.1:4001"]


def test_a_dead_seed_is_skipped(nodes) -> None:
    live = nodes(ok)
    with Cluster([dead_url(), live.url], timeout=5) as c:
        assert c.execute(["INSERT"]).results == [{"last_insert_id": 1, "rows_affected": 1}]
    assert len(live.seen) == 2  # /nodes, then the write


def test_every_write_carries_a_key_kept_across_resends(nodes) -> None:
    answers = iter([maybe_applied, ok])
    node = nodes(lambda h: next(answers)(h))
    with Cluster(node.url, timeout=5) as c:
        response = c.execute([["INSERT INTO t VALUES(?)", b"\x00".hex()]])
    assert response.status == 200
    keys = [headers[IDEMPOTENCY_HEADER] for method, path, headers, _ in node.seen
            if path.startswith("/db/execute")]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32


def test_without_a_key_a_write_that_may_have_applied_is_not_resent(nodes) -> None:
    node = nodes(maybe_applied)
    with Cluster(node.url, timeout=5, idempotent_writes=False) as c, \
            pytest.raises(Unavailable) as e:
        c.execute(["INSERT"])
    assert e.value.maybe_applied and "may have been applied" in str(e.value)
    assert [p for _, p, _, _ in node.seen if p.startswith("/db/")] and \
        len([p for _, p, _, _ in node.seen if p.startswith("/db/")]) == 1
    assert IDEMPOTENCY_HEADER not in node.seen[-1][2]


def test_certainly_not_applied_is_resent_even_without_a_key(nodes) -> None:
    answers = iter([not_leader, ok])
    node = nodes(lambda h: next(answers)(h))
    with Cluster(node.url, timeout=5, idempotent_writes=False) as c:
        assert c.execute(["INSERT"]).status == 200


def test_reads_are_resent_and_give_up_at_the_timeout(nodes) -> None:
    node = nodes(maybe_applied)
    with Cluster(node.url, timeout=0.6) as c, pytest.raises(Unavailable) as e:
        c.query(["SELECT 1"])
    assert not e.value.maybe_applied and "gave up after 0.6s" in str(e.value)
    assert len([p for _, p, _, _ in node.seen if p.startswith("/db/query")]) >= 2


def test_a_write_whose_answer_never_comes_may_have_applied(nodes) -> None:
    def hang_up(h: Handler) -> None:
        h.connection.shutdown(socket.SHUT_RDWR)

    node = nodes(hang_up)
    with Cluster(node.url, timeout=2, idempotent_writes=False) as c, \
            pytest.raises(Unavailable) as e:
        c.execute(["INSERT"])
    assert e.value.maybe_applied


def test_members_and_leader_are_learnt_from_nodes(nodes) -> None:
    leader = nodes(ok)

    def seed(h: Handler) -> None:
        if h.path.startswith("/nodes"):
            return
        ok(h)

    first = nodes(seed)
    first.dispatch = lambda h: _nodes_or(h, first, leader)  # type: ignore[method-assign]
    with Cluster(first.url, timeout=5) as c:
        c.query(["SELECT 1"])
        assert c.known == [first.url, leader.url] and c.current == leader.url
        c.execute(["INSERT"])
    assert any(p.startswith("/db/execute") for _, p, _, _ in leader.seen)


def _nodes_or(h: Handler, me: Node, leader: Node) -> None:
    h.rfile.read(int(h.headers.get("Content-Length") or 0))
    me.seen.append((h.command, h.path, dict(h.headers), b""))
    if h.path.startswith("/nodes"):
        h.reply(200, {"nodes": [{"id": "n1", "api_addr": me.url, "leader": False},
                                {"id": "n2", "api_addr": leader.url, "leader": True}]})
    else:
        ok(h)


def test_basic_auth_is_sent(nodes) -> None:
    node = nodes(ok)
    port = node.url.rsplit(":", 1)[1]
    with Cluster(f"http://bob:pw@127.0.0.1:{port}", timeout=5) as c:
        c.execute(["INSERT"])
    assert node.seen[-1][2]["Authorization"] == "Basic Ym9iOnB3"
