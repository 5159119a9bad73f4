"""The `raftsql` command line: `serve` runs one node, `cluster N` runs N local nodes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence

from raftsql import __version__
from raftsql.errors import RaftSQLError


def _addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def _cluster(value: str) -> dict[str, str]:
    members: dict[str, str] = {}
    for item in value.split(","):
        node_id, sep, addr = item.strip().partition("=")
        if not sep or not node_id:
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {item!r}")
        members[node_id] = _addr(addr)
    return members


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftsql", description="Replicated SQLite over Raft.")
    parser.add_argument("--version", action="version", version=f"raftsql {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one node")
    serve.add_argument("--node-id", default="n1")
    serve.add_argument("--data-dir", default="raftsql-data")
    serve.add_argument("--http-addr", type=_addr, default="127.0.0.1:4001")
    serve.add_argument("--raft-addr", type=_addr, default=None,
                       help="where peers reach this node (default: the HTTP address)")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--initial-cluster", type=_cluster, default=None,
                       help="ID=HOST:PORT,... : all voters of a new cluster")
    group.add_argument("--join", type=lambda v: [_addr(a) for a in v.split(",")], default=None,
                       help="HOST:PORT[,HOST:PORT...] of members of a running cluster")
    serve.add_argument("--non-voter", action="store_true", help="join as a read replica")
    serve.add_argument("--heartbeat-ms", type=_positive, default=100)
    serve.add_argument("--election-ms", type=_positive, default=1000)
    serve.add_argument("--snapshot-threshold", type=_positive, default=8192)
    serve.add_argument("--cluster-secret-file", default=None)
    serve.add_argument("--max-body-bytes", type=_positive, default=64 * 2**20)

    cluster = sub.add_parser("cluster", help="run N local nodes for trying things; Ctrl-C stops all")
    cluster.add_argument("n", nargs="?", type=_positive, default=3)
    cluster.add_argument("--base-port", type=_positive, default=4001)
    cluster.add_argument("--data-dir", default="raftsql-cluster")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "serve":
        return _serve(args)
    return _run_cluster(args)


def _serve(args: argparse.Namespace) -> int:
    from raftsql.http.app import make_app
    from raftsql.node import Node, NodeConfig

    secret = None
    if args.cluster_secret_file:
        with open(args.cluster_secret_file) as f:
            secret = f.read().strip()
    config = NodeConfig(
        node_id=args.node_id, data_dir=args.data_dir, http_addr=args.http_addr,
        raft_addr=args.raft_addr, initial_cluster=args.initial_cluster or {},
        join=args.join or [], non_voter=args.non_voter, heartbeat_ms=args.heartbeat_ms,
        election_ms=args.election_ms, snapshot_threshold=args.snapshot_threshold,
        cluster_secret=secret,
    )

    async def run() -> None:
        node = Node(config, api=lambda n: make_app(n, max_body_bytes=args.max_body_bytes))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.start()
        failed = asyncio.ensure_future(node.wait_failed())
        await asyncio.wait([failed, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        await node.stop(transfer=not failed.done())
        return 1 if failed.done() else 0

    try:
        return asyncio.run(run())
    except (OSError, RaftSQLError) as e:
        logging.getLogger("raftsql").error("cannot start: %s", e)
        return 1


def _run_cluster(args: argparse.Namespace) -> int:
    from raftsql.launcher import LocalCluster

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop every node, even when started where SIGINT is ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    ports = [args.base_port + i for i in range(args.n)]
    cluster = LocalCluster(args.n, args.data_dir, ports, log=sys.stderr.fileno())
    cluster.start()
    urls = ", ".join(cluster.url(i) for i in cluster.ids)
    print(f"raftsql: {args.n} nodes at {urls} (data in {args.data_dir}); Ctrl-C stops them",
          file=sys.stderr, flush=True)
    # Nodes may die or be killed (that is what a cluster is for trying): report it and keep
    # the others running until Ctrl-C or until none is left.
    running = set(cluster.ids)
    try:
        while running:
            time.sleep(0.5)
            for node_id in running - set(cluster.running()):
                code = cluster.procs[node_id].returncode
                print(f"raftsql: node {node_id} exited with {code}; the others go on "
                      f"(restart it with: {' '.join(cluster.command(node_id))})",
                      file=sys.stderr, flush=True)
            running = set(cluster.running())
    except KeyboardInterrupt:
        pass
    still_running = cluster.running()
    cluster.stop()
    return 0 if all(cluster.procs[i].returncode == 0 for i in still_running) else 1
