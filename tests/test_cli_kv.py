"""`raftsql kv` (raftsql/cli/kv.py) against one real node: each verb through the parser with
its own streams, and the installed entry point as a subprocess."""

from __future__ import annotations

import base64
import io
import itertools
import os
import signal
import subprocess
import sys
import threading

import orjson
import pytest

from raftsql.cli import kv as kv_cli
from raftsql.cli.main import build_parser
from raftsql.client.config import ConfigStore

from .client_node import single_node

_names = itertools.count(1)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    yield from single_node(tmp_path_factory)


@pytest.fixture
def ns() -> str:
    return f"cli{next(_names)}/"


class Run:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, *argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
        args = build_parser().parse_args(["kv", *argv, "--url", self.url])
        out, err = io.BytesIO(), io.StringIO()
        code = kv_cli.run(args, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def kv(url) -> Run:
    return Run(url)


def test_put_get(kv, ns) -> None:
    assert kv("put", ns + "a", "hello") == (0, b"", "")
    assert kv("get", ns + "a") == (0, b"hello\n", "")
    assert kv("put", ns + "b", "-", stdin=b"from stdin\n")[0] == 0
    assert kv("put", ns + "c", stdin=b"\x00\xff")[0] == 0  # no value: stdin
    assert kv("get", ns + "b")[1] == b"from stdin\n\n"
    assert kv("get", ns + "c")[1] == b"\x00\xff"  # not text: the bytes as they are


def test_get_missing(kv, ns) -> None:
    assert kv("get", ns + "nope") == (1, b"", f"raftsql kv get: no key '{ns}nope'\n")


def test_put_flags_and_cas(kv, url, ns) -> None:
    assert kv("put", ns + "a", "1", "--flags", "42")[0] == 0
    entry = ConfigStore(url).entry(ns + "a")
    assert entry is not None and entry.flags == 42
    code, _, err = kv("put", ns + "a", "2", "--cas", "0")
    assert code == 1 and "it exists" in err
    code, _, err = kv("put", ns + "a", "2", "--cas", str(entry.modify_index + 99))
    assert code == 1 and "ModifyIndex is not" in err
    assert kv("put", ns + "a", "2", "--cas", str(entry.modify_index))[0] == 0
    assert kv("get", ns + "a")[1] == b"2\n"


def test_list_and_delete(kv, ns) -> None:
    for k in ("x/1", "x/2", "y"):
        kv("put", ns + k, "v")
    assert kv("list", ns)[1].decode().split() == [ns + "x/1", ns + "x/2", ns + "y"]
    assert kv("list", ns, "--separator", "/")[1].decode().split() == [ns + "x/", ns + "y"]
    assert kv("delete", ns + "y")[0] == 0
    assert kv("delete", ns + "x/", "--recurse")[0] == 0
    assert kv("list", ns) == (0, b"", "")


def test_export_and_import_round_trip(kv, ns) -> None:
    kv("put", ns + "db/url", "postgres://db1/app")
    kv("put", ns + "db/pool", "10")
    code, out, _ = kv("export", ns)
    assert code == 0
    tree = orjson.loads(out)
    assert tree == {ns + "db/pool": "10", ns + "db/url": "postgres://db1/app"}
    kv("delete", ns, "--recurse")
    assert kv("import", "-", stdin=out) == (0, b"imported 2 keys\n", "")
    assert orjson.loads(kv("export", ns)[1]) == tree


def test_import_consul_format_and_export_it(kv, url, ns, tmp_path) -> None:
    items = [{"key": ns + "bin", "flags": 3, "value": base64.b64encode(b"\xff\x00").decode()},
             {"key": ns + "empty", "flags": 0, "value": ""},
             {"key": ns + "text", "flags": 0, "value": base64.b64encode(b"hi").decode()}]
    path = tmp_path / "consul.json"
    path.write_bytes(orjson.dumps(items))
    assert kv("import", str(path))[1] == b"imported 3 keys\n"
    store = ConfigStore(url)
    assert store[ns + "bin"] == b"\xff\x00" and store.entry(ns + "bin").flags == 3
    assert store[ns + "empty"] == b""
    code, _, err = kv("export", ns)  # a value that is not text has no place in that format
    assert code == 1 and "--format consul" in err
    code, out, _ = kv("export", ns, "--format", "consul")
    assert code == 0 and orjson.loads(out) == items


def test_import_many_keys_in_chunks(kv, url, ns) -> None:
    tree = {f"{ns}{i:03}": str(i) for i in range(200)}
    assert kv("import", "-", stdin=orjson.dumps(tree))[1] == b"imported 200 keys\n"
    assert len(ConfigStore(url, prefix=ns)) == 200


def test_import_json_values_that_are_not_strings(kv, url, ns) -> None:
    kv("import", "-", stdin=orjson.dumps({ns + "n": 5, ns + "obj": {"a": [1]}}))
    assert ConfigStore(url).get_json(ns + "obj") == {"a": [1]}
    assert kv("get", ns + "n")[1] == b"5\n"


@pytest.mark.parametrize(("stdin", "message"), [
    (b"not json", "not JSON"),
    (b"[1]", "item 0"),
    (b'[{"key": "k", "value": "!!!"}]', "not base64"),
    (b'"text"', "expected"),
])
def test_import_errors(kv, stdin, message) -> None:
    code, _, err = kv("import", "-", stdin=stdin)
    assert code == 1 and message in err and err.count("\n") == 1


def test_import_missing_file(kv, tmp_path) -> None:
    code, _, err = kv("import", str(tmp_path / "none.json"))
    assert code == 1 and "No such file" in err


def test_watch_prints_each_change(url, ns) -> None:
    store = ConfigStore(url)
    start = store.index()
    store[ns + "a"] = "1"
    store[ns + "a"] = "two\nlines"
    del store[ns + "a"]
    store[ns + "b"] = b"\xff"
    args = build_parser().parse_args(["kv", "watch", ns, "--prefix", "--index", str(start),
                                      "--url", url])
    out = _Lines(4)
    assert kv_cli.run(args, stdout=out, stderr=io.StringIO()) == kv_cli.EXIT_INTERRUPTED
    lines = [line.split(" ", 1)[1] for line in out.getvalue().decode().splitlines()]
    assert lines == [f"set {ns}a 1", f"set {ns}a two\\nlines", f"delete {ns}a",
                     f"set {ns}b base64:/w=="]


class _Lines(io.BytesIO):
    """stdout that stands for Ctrl-C once it has `n` lines."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def flush(self) -> None:
        if self.getvalue().count(b"\n") >= self.n:
            raise KeyboardInterrupt


def test_watch_json(url, ns) -> None:
    store = ConfigStore(url)
    start = store.index()
    store[ns + "a"] = "1"
    store[ns + "a"] = "2"
    args = build_parser().parse_args(["kv", "watch", ns + "a", "--index", str(start), "--json",
                                      "--url", url])
    out = _Lines(2)
    kv_cli.run(args, stdout=out, stderr=io.StringIO())
    second = orjson.loads(out.getvalue().splitlines()[1])
    assert (second["op"], second["value"], second["prev"]["value"]) == ("set", "2", "1")


# ---- the real command

def _command(*argv: str, env_url: str | None = None, stdin: bytes = b""
             ) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop("RAFTSQL_URL", None)
    if env_url is not None:
        env["RAFTSQL_URL"] = env_url
    return subprocess.run([sys.executable, "-m", "raftsql", "kv", *argv], input=stdin,
                          capture_output=True, env=env, timeout=60)


def test_command_reads_raftsql_url(url, ns) -> None:
    dead = "http://127.0.0.1:1"
    assert _command("put", ns + "k", "v", env_url=f"{dead},{url}").returncode == 0
    done = _command("get", ns + "k", env_url=f"{dead},{url}")
    assert (done.returncode, done.stdout) == (0, b"v\n")


def test_command_errors_are_one_line(url) -> None:
    done = _command("get", "k", "--url", "http://127.0.0.1:1", "--timeout", "0.5")
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().count("\n") == 1 and b"Traceback" not in done.stderr
    assert b"connection refused" in done.stderr
    done = _command("get", "k", "--url", "ftp://x")
    assert done.returncode == 1 and b"not an HTTP URL" in done.stderr
    done = _command("put", "k", "v", "--url", url, "--flags", "-1")
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1
    assert _command("frobnicate").returncode == 2  # argparse's usage error


def test_command_watch_stops_on_ctrl_c(url, ns) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "raftsql", "kv", "watch", ns + "k",
                             "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))
        reader.start()
        store = ConfigStore(url)
        while reader.is_alive():  # until the watch, started from now, has seen one
            store[ns + "k"] = "v"
            reader.join(0.2)
        assert line[0].split()[1:] == [b"set", f"{ns}k".encode(), b"v"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == kv_cli.EXIT_INTERRUPTED
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
