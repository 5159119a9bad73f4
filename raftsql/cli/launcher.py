"""Start and control local `raftsql serve` processes: `raftsql cluster`, tests, benchmarks.

Each node is a real process on 127.0.0.1, so tests can SIGKILL, SIGSTOP and restart it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import IO, Any

import orjson

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
RAFT_PORT_OFFSET = 100  # `raftsql cluster`: a node's Raft port is its HTTP port + 100


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http(method: str, url: str, body: Any = None, timeout: float = 5.0,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A tiny synchronous client: returns (status, parsed JSON or text)."""
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, orjson.loads(raw) if "json" in ctype and raw else raw.decode()


class LocalCluster:
    """N nodes `n1..nN` with data under `base_dir/<id>`, each with its HTTP API on one port
    and its Raft listener on another, at addresses given explicitly (as deployed: rqlite's
    4001 and 4002), so that nothing can mistake one for the other."""

    def __init__(self, n: int, base_dir: str, http_ports: Sequence[int] | None = None,
                 raft_ports: Sequence[int] | None = None, extra_args: Sequence[str] = (),
                 log: IO[bytes] | int | None = None, host: str = "127.0.0.1") -> None:
        self.ids = [f"n{i + 1}" for i in range(n)]
        ports = free_ports(2 * n) if http_ports is None or raft_ports is None else []
        self.http_ports = list(http_ports) if http_ports else ports[:n]
        self.raft_ports = list(raft_ports) if raft_ports else ports[n:]
        self.host = host
        self.base_dir = base_dir
        self.extra_args = list(extra_args)
        self.log = log
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def add(self) -> str:
        """One more node (not started): its id."""
        node_id = f"n{len(self.ids) + 1}"
        http_port, raft_port = free_ports(2)
        self.ids.append(node_id)
        self.http_ports.append(http_port)
        self.raft_ports.append(raft_port)
        return node_id

    def http_port(self, node_id: str) -> int:
        return self.http_ports[self.ids.index(node_id)]

    def url(self, node_id: str) -> str:
        return f"http://{self.http_addr(node_id)}"

    def http_addr(self, node_id: str) -> str:
        return f"{self.host}:{self.http_port(node_id)}"

    def raft_addr(self, node_id: str) -> str:
        return f"{self.host}:{self.raft_ports[self.ids.index(node_id)]}"

    def initial_cluster(self) -> str:
        return ",".join(f"{i}={self.raft_addr(i)}" for i in self.ids)

    def command(self, node_id: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "raftsql", "serve", "--node-id", node_id,
                "--data-dir", os.path.join(self.base_dir, node_id),
                "--http-addr", self.http_addr(node_id), "--raft-addr", self.raft_addr(node_id),
                *args, *self.extra_args]

    def start(self) -> None:
        for node_id in self.ids:
            self.start_node(node_id)

    def start_node(self, node_id: str, *args: str) -> None:
        """Start (or restart) a node; with no `args`, as a member of the initial cluster."""
        if not args:
            args = ("--initial-cluster", self.initial_cluster())
        stream = self.log
        if stream is None:
            os.makedirs(self.base_dir, exist_ok=True)
            stream = open(os.path.join(self.base_dir, f"{node_id}.log"), "ab")  # noqa: SIM115
        # The child starts with SIGTERM and SIGINT blocked, so a signal that arrives while
        # the interpreter is still starting waits (pending) until `raftsql serve` has its
        # handlers in place and unblocks them, instead of killing it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.procs[node_id] = subprocess.Popen(self.command(node_id, *args), stdout=stream,
                                                   stderr=stream)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def signal(self, node_id: str, sig: int) -> None:
        self.procs[node_id].send_signal(sig)

    def kill(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGKILL)
        self.procs[node_id].wait()

    def stop_node(self, node_id: str, timeout: float = 10.0) -> int:
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9

    def stop(self) -> list[int]:
        for _node_id, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        return [self.stop_node(node_id) for node_id in list(self.procs)]

    def running(self) -> list[str]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def status(self, node_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            code, body = http("GET", self.url(node_id) + "/status", timeout=1.0)
            if code == 200 and isinstance(body, dict):
                return body
        return None

    def leader(self, among: Sequence[str] | None = None, timeout: float = 20.0) -> str:
        """Wait until the nodes in `among` agree on one leader among them; return its id."""
        among = list(among or self.running())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = set()
            for node_id in among:
                st = self.status(node_id)
                seen.add(st["store"]["leader"]["node_id"] if st else None)
            if len(seen) == 1 and (leader := seen.pop()) in among:
                return leader
            time.sleep(0.1)
        raise TimeoutError(f"no agreed leader among {among}")

    def wait_applied(self, index: int, among: Sequence[str] | None = None,
                     timeout: float = 20.0) -> None:
        among = list(among or self.running())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [self.status(i) for i in among]
            if all(st and st["store"]["raft"]["applied_index"] >= index for st in statuses):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nodes {among} did not apply index {index}")
