"""TLS as deployed: three processes serving their API over HTTPS only and speaking mutual TLS
to each other on their own Raft ports, with certificates from a test CA (openssl)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raftsql.cli.launcher import free_ports
from raftsql.client.http import Cluster, Unavailable
from tests.integration.conftest import eventually
from tests.integration.tls_certs import make_ca, make_cert

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]


def https(url: str, ctx: ssl.SSLContext, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class TlsCluster:
    def __init__(self, tmp: Path, extra: dict[str, list[str]] | None = None) -> None:
        self.tmp = tmp
        self.ca = make_ca(tmp)
        ports = free_ports(6)
        self.http = {f"n{i + 1}": ports[i] for i in range(3)}
        self.raft = {f"n{i + 1}": ports[3 + i] for i in range(3)}
        self.certs = {n: make_cert(tmp, n, self.ca) for n in self.http}
        (tmp / "secret").write_text("s")
        self.extra = extra or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.ctx = ssl.create_default_context(cafile=self.ca[0])

    def args(self, n: str) -> list[str]:
        cert, key = self.certs[n]
        initial = ",".join(f"{m}=127.0.0.1:{p}" for m, p in self.raft.items())
        return [sys.executable, "-m", "raftsql", "serve", "--node-id", n, "--data-dir",
                str(self.tmp / n), "--http-addr", f"127.0.0.1:{self.http[n]}", "--raft-addr",
                f"127.0.0.1:{self.raft[n]}", "--initial-cluster", initial,
                "--heartbeat-ms", "50", "--election-ms", "500",
                "--cluster-secret-file", str(self.tmp / "secret"),
                "--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca[0],
                "--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", self.ca[0],
                *self.extra.get(n, [])]

    def start(self) -> None:
        for n in self.http:
            log = open(self.tmp / f"{n}.log", "wb")  # noqa: SIM115 - the process keeps it
            self.procs[n] = subprocess.Popen(self.args(n), stdout=log, stderr=log)

    def url(self, n: str) -> str:
        return f"https://127.0.0.1:{self.http[n]}"

    def leader(self) -> str:
        def find() -> str | None:
            for n in self.http:
                status, body = https(f"{self.url(n)}/status", self.ctx)
                if status == 200 and body["store"]["raft"]["state"] == "Leader":
                    return n
            return None

        return eventually(find, timeout=30)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            p.wait(timeout=15)


@pytest.fixture
def tls_cluster(tmp_path):
    cluster = TlsCluster(tmp_path)
    cluster.start()
    try:
        cluster.leader()
        yield cluster
    finally:
        cluster.stop()


def answered(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether the peer port answers an HTTP request over TLS made with `ctx`. (With TLS
    1.3 the server checks the client's certificate after the handshake: a refused one then
    sees an alert or the connection closed.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /raft/rpc/info HTTP/1.0\r\n\r\n")
            return tls.recv(5) == b"HTTP/"
    except (ssl.SSLError, ConnectionError):
        return False


def test_https_everywhere_and_mutual_tls_between_nodes(tls_cluster, tmp_path):
    c = tls_cluster
    leader = c.leader()
    follower = next(n for n in c.http if n != leader)
    # Written through a follower: forwarded to the leader's HTTPS API.
    assert https(f"{c.url(follower)}/db/execute", c.ctx, ["CREATE TABLE t (x)",
                                                          "INSERT INTO t VALUES (7)"])[0] == 200
    status, body = https(f"{c.url(follower)}/db/query?q=SELECT+x+FROM+t", c.ctx)
    assert (status, body["results"][0]["values"]) == (200, [[7]])
    # Plain HTTP on the API port gets no answer.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{c.http[leader]}/status", timeout=5)
    # A peer without a certificate, or with one another CA signed, cannot connect.
    port = c.raft[leader]
    assert not answered(port, ssl.create_default_context(cafile=c.ca[0]))
    other = make_ca(tmp_path, "other-ca")
    intruder = ssl.create_default_context(cafile=c.ca[0])
    intruder.load_cert_chain(*make_cert(tmp_path, "intruder", other))
    assert not answered(port, intruder)
    insider = ssl.create_default_context(cafile=c.ca[0])
    insider.load_cert_chain(*c.certs[follower])
    assert answered(port, insider)  # a member's certificate is let in (then the secret asked)


def served_cert(port: int, ca: str) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), ca_certs=ca)


def test_a_renewed_certificate_is_served_without_a_restart(tls_cluster, tmp_path):
    c = tls_cluster
    node = "n1"
    before = served_cert(c.http[node], c.ca[0])
    assert before.strip() == Path(c.certs[node][0]).read_text().strip()
    renewed = make_cert(tmp_path, "n1-renewed", c.ca, cn="n1.renewed")
    shutil.copy(renewed[1], c.certs[node][1])  # the key first, then the certificate
    shutil.copy(renewed[0], c.certs[node][0])
    eventually(lambda: served_cert(c.http[node], c.ca[0]).strip()
               == Path(renewed[0]).read_text().strip(), timeout=15)
    assert https(f"{c.url(node)}/status", c.ctx)[0] == 200


def test_client_certificates_are_required_with_a_client_ca(tmp_path, monkeypatch):
    c = TlsCluster(tmp_path)
    c.extra = {n: ["--tls-client-ca", c.ca[0]] for n in c.http}
    c.start()
    try:
        client = ssl.create_default_context(cafile=c.ca[0])
        client.load_cert_chain(*make_cert(tmp_path, "client", c.ca, cn="app"))
        c.ctx = client
        leader = c.leader()
        follower = next(n for n in c.http if n != leader)
        assert https(f"{c.url(follower)}/db/execute", client, ["CREATE TABLE t (x)"])[0] == 200
        anonymous = ssl.create_default_context(cafile=c.ca[0])
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https(f"{c.url(leader)}/status", anonymous)
        # raftsql's own clients: the certificate from the environment, else refused.
        monkeypatch.setenv("RAFTSQL_CA_FILE", c.ca[0])
        with Cluster(c.url(follower), timeout=3) as anonymous_client, pytest.raises(Unavailable):
            anonymous_client.execute(["INSERT INTO t VALUES (0)"])
        cert, key = make_cert(tmp_path, "app", c.ca, cn="app")
        monkeypatch.setenv("RAFTSQL_CLIENT_CERT", cert)
        monkeypatch.setenv("RAFTSQL_CLIENT_KEY", key)
        with Cluster(c.url(follower)) as client:
            assert client.execute(["INSERT INTO t VALUES (1)"]).status == 200
        shell = subprocess.run([sys.executable, "-m", "raftsql", "shell", c.url(leader)],
                               input="SELECT count(*) FROM t;\n", capture_output=True,
                               text=True, timeout=60)
        assert shell.returncode == 0 and "1" in shell.stdout, shell.stderr
    finally:
        c.stop()


def test_a_wrong_certificate_file_stops_the_start_with_a_message(tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate")
    done = subprocess.run([sys.executable, "-m", "raftsql", "serve", "--data-dir",
                           str(tmp_path / "d"), "--tls-cert", str(tmp_path / "bad.pem"),
                           "--tls-key", str(tmp_path / "bad.pem")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot start" in done.stderr
    done = subprocess.run([sys.executable, "-m", "raftsql", "serve", "--data-dir",
                           str(tmp_path / "d"), "--tls-cert", str(tmp_path / "bad.pem")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "go together" in done.stderr
