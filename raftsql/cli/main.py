"""The `raftsql` command line: `serve` runs one node, `cluster N` runs N local nodes, `shell`
and `kv` talk to a cluster.

Only what main() needs before its signal handlers are in place is imported up here: the
rest (asyncio alone takes tens of milliseconds) is imported once they are.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from raftsql import __version__
from raftsql.client.http import add_user_argument

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopRequest:
    """SIGTERM and SIGINT, from the first line of main() until the process exits.

    The handlers are installed before anything slow (imports, opening the data directory)
    and never taken away: a signal at any moment of a node's life asks it to stop, and a
    second one is not a second, fatal, default action. asyncio's own handlers would be
    removed when the loop closes, and the default action would then kill the process."""

    def __init__(self) -> None:
        self.requested = False
        self._wake: Callable[[], None] | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        # A launcher may start us with them blocked (raftsql.cli.launcher does): deliver now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._wake is not None:
            self._wake()

    def on_request(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from the signal handler) when a stop is requested."""
        self._wake = wake
        if self.requested:
            wake()


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


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """"90s", "10m", "1h", "500ms" or plain seconds."""
    text = value.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return seconds


def _count(value: str) -> int:
    """A whole number, 0 or more."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}")
    return int(value)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default; those with no value say it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftsql", description="Replicated SQLite over Raft.")
    parser.add_argument("--version", action="version", version=f"raftsql {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = _Help

    serve = sub.add_parser("serve", help="run one node", formatter_class=defaults,
                           description="Run one raftsql node. With no flags: a ready "
                           "single-node cluster on 127.0.0.1:4001.")
    serve.add_argument("--node-id", default="n1", help="this node's id; it must never change")
    serve.add_argument("--data-dir", default="raftsql-data",
                       help="where the Raft log, snapshots and the database live")
    serve.add_argument("--http-addr", type=_addr, default="127.0.0.1:4001", metavar="HOST:PORT",
                       help="where clients reach the HTTP API")
    serve.add_argument("--raft-addr", type=_addr, default=None, metavar="HOST:PORT",
                       help="where peers reach this node, on a listener of its own (default: "
                       "the HTTP listener, under /raft/)")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--initial-cluster", type=_cluster, default=None, metavar="ID=HOST:PORT,...",
                       help="every voter of a new cluster, by Raft address (the same list on "
                       "each); ignored on restart (default: a cluster of this node alone)")
    group.add_argument("--join", type=lambda v: [_addr(a) for a in v.split(",")], default=None,
                       metavar="HOST:PORT[,...]",
                       help="Raft addresses of members of a running cluster to join through; "
                       "ignored on restart (default: do not join)")
    serve.add_argument("--non-voter", action="store_true",
                       help="join as a non-voting read replica (default: join as a voter)")
    serve.add_argument("--heartbeat-ms", type=_positive, default=100, metavar="MS",
                       help="the leader's heartbeat interval, and the tick of the Raft clock")
    serve.add_argument("--election-ms", type=_positive, default=1000, metavar="MS",
                       help="election timeouts are drawn from [MS, 2*MS)")
    serve.add_argument("--fk", action="store_true",
                       help="enforce foreign key constraints; give every node the same flag "
                       "(default: not enforced, as in SQLite)")
    serve.add_argument("--snapshot-threshold", type=_positive, default=8192, metavar="ENTRIES",
                       help="snapshot the database and compact the log after this many entries")
    serve.add_argument("--snapshot-threshold-bytes", type=_count, default=64 * 2**20,
                       metavar="BYTES", help="... or once the entries applied since the "
                       "latest snapshot hold this many bytes (0: no limit by size)")
    serve.add_argument("--trailing-logs", type=_count, default=10240, metavar="N",
                       help="log entries kept before each snapshot, so that a follower "
                       "slightly behind catches up from the log, not with the whole database "
                       "(at most 8 MiB of them)")
    serve.add_argument("--cluster-secret-file", default=None, metavar="FILE",
                       help="a file holding a secret every peer request must carry, the same on "
                       "every node (default: none; peer traffic is accepted from anyone)")
    serve.add_argument("--auth", default=None, metavar="FILE",
                       help="rqlite's auth file: a JSON list of {\"username\", \"password\", "
                       "\"perms\"}; a password may be a hash from `raftsql hash-password` "
                       "(default: none, every client may do anything)")
    tls = serve.add_argument_group("TLS (certificates are reloaded when their files change)")
    tls.add_argument("--tls-cert", default=None, metavar="FILE",
                     help="serve the HTTP API over HTTPS only, with this certificate (PEM)...")
    tls.add_argument("--tls-key", default=None, metavar="FILE", help="...and its key")
    tls.add_argument("--tls-client-ca", default=None, metavar="FILE",
                     help="require client certificates signed by this CA")
    tls.add_argument("--tls-ca", default=None, metavar="FILE",
                     help="the CA other nodes' API certificates are checked against when this "
                     "node forwards to them (default: the system's)")
    tls.add_argument("--peer-tls-cert", default=None, metavar="FILE",
                     help="mutual TLS between nodes: this node's certificate...")
    tls.add_argument("--peer-tls-key", default=None, metavar="FILE", help="...its key...")
    tls.add_argument("--peer-tls-ca", default=None, metavar="FILE",
                     help="...and the CA every peer's certificate must be signed by")
    tls.add_argument("--peer-tls-server-name", default=None, metavar="NAME",
                     help="the name checked in peers' certificates (default: their address)")
    serve.add_argument("--idempotency-window", type=_duration, default="10m", metavar="DURATION",
                       help="how long the cluster remembers a write's idempotency key, so a "
                       "retry of it is not applied again (e.g. 90s, 10m, 1h; the leader's "
                       "value counts)")
    serve.add_argument("--idempotency-keys", type=_positive, default=100_000, metavar="N",
                       help="idempotency keys are remembered for at most this many log "
                       "entries, so at most this many are kept (the oldest go first)")
    serve.add_argument("--max-body-bytes", type=_positive, default=64 * 2**20, metavar="BYTES",
                       help="the largest request body the HTTP API accepts (413 above)")
    serve.add_argument("--max-statements", type=_count, default=100_000, metavar="N",
                       help="statements one request may hold (0: no limit)")
    serve.add_argument("--max-open-requests", type=_count, default=1024, metavar="N",
                       help="requests served at once; past it a 503 with Retry-After "
                       "(config store watches count; /status, /readyz, /metrics do not; "
                       "0: no limit)")
    serve.add_argument("--kv-max-value-bytes", type=_positive, default=512 * 1024,
                       metavar="BYTES", help="the largest value the config store accepts "
                       "(/v1/kv; 413 above)")
    serve.add_argument("--kv-max-txn-ops", type=_positive, default=128, metavar="N",
                       help="the most operations one /v1/txn transaction may hold")
    serve.add_argument("--kv-history", type=_positive, default=100_000, metavar="CHANGES",
                       help="how many of the config store's latest changes are kept for "
                       "/v1/changes watchers (older ones are compacted)")
    serve.add_argument("--backup-dir", default=None, metavar="DIR",
                       help="back this node's database up into DIR every --backup-interval, "
                       "when it changed (default: no automatic backups)")
    serve.add_argument("--backup-interval", type=_duration, default="1h", metavar="DURATION",
                       help="how often to look for changes to back up (e.g. 30m, 1h, 24h)")
    serve.add_argument("--backup-keep", type=_count, default=24, metavar="N",
                       help="the newest N automatic backups are kept (0: all)")
    serve.add_argument("--backup-compress", action="store_true",
                       help="gzip automatic backups (default: plain SQLite files)")

    cluster = sub.add_parser("cluster", formatter_class=defaults,
                             help="run N local nodes for trying things; Ctrl-C stops all",
                             description="Run N local nodes: HTTP on consecutive ports from "
                             "--base-port, Raft on the same ports + 100.")
    cluster.add_argument("n", nargs="?", type=_positive, default=3, metavar="N",
                         help="how many nodes")
    cluster.add_argument("--base-port", type=_positive, default=4001, metavar="PORT",
                         help="the first node's HTTP port")
    cluster.add_argument("--data-dir", default="raftsql-cluster",
                         help="the nodes' data directories go under it, one per node")

    from raftsql.shell.main import add_arguments as shell_arguments

    shell = sub.add_parser("shell", formatter_class=defaults,
                           help="an interactive SQL shell against a cluster",
                           description="An SQL shell against a raftsql (or rqlite) cluster, "
                           "with sqlite3's dot-commands and rqlite's; .help lists them.")
    shell_arguments(shell)

    from raftsql.cli.kv import add_arguments as kv_arguments

    kv = sub.add_parser("kv", formatter_class=defaults,
                        help="the config store: get, put, delete, list, watch, import, export",
                        description="Read and write the config store's keys (/v1/kv) on a "
                        "cluster; see docs/config-store.md.")
    kv_arguments(kv, defaults)

    backup = sub.add_parser("backup", formatter_class=defaults,
                            help="save the cluster's database to a file",
                            description="Save the cluster's database to FILE (GET /db/backup, "
                            "served by the leader): a SQLite file, or with --sql a dump.")
    backup.add_argument("url", metavar="URL", help="any node (or several, comma-separated)")
    backup.add_argument("file", metavar="FILE")
    backup.add_argument("--sql", action="store_true",
                        help="an SQL dump instead of a SQLite file (the config store's "
                        "table is only in the SQLite file)")
    backup.add_argument("--compress", action="store_true", help="gzip it")
    add_user_argument(backup)

    restore = sub.add_parser("restore", formatter_class=defaults,
                             help="load an SQL dump into the cluster",
                             description="Load FILE, an SQL dump (raftsql backup --sql, or "
                             "sqlite3's .dump), into the cluster as one transaction "
                             "(POST /db/load): all of it or, on an error, nothing.")
    restore.add_argument("url", metavar="URL", help="any node (or several, comma-separated)")
    restore.add_argument("file", metavar="FILE")
    add_user_argument(restore)

    recover = sub.add_parser(
        "recover", formatter_class=defaults,
        help="disaster recovery: force a new membership on a stopped node",
        description="For a cluster that lost its quorum for good: make --voters the "
        "membership of the stopped node in --data-dir. Every entry its log holds is applied, "
        "committed or not, and becomes a snapshot with the new membership. Run it on each "
        "survivor with the same --voters, then start them as before; see "
        "docs/operations.md#disaster-recovery.")
    recover.add_argument("--data-dir", required=True, help="the stopped node's data directory")
    recover.add_argument("--node-id", required=True, help="the node's id")
    recover.add_argument("--voters", type=_cluster, required=True, metavar="ID=HOST:PORT,...",
                         help="the new membership, by Raft address: the survivors")

    sub.add_parser("hash-password", formatter_class=defaults,
                   help="hash a password for the --auth file",
                   description="Reads a password (from stdin, or asked for twice on a "
                   "terminal) and prints a salted scrypt hash of it, to put as a user's "
                   "\"password\" in the --auth file.")

    status = sub.add_parser("status", formatter_class=defaults, help="the cluster at a glance",
                            description="Members, leader, term, indexes, each follower's lag "
                            "and each node's latest snapshot, from every member's /status.")
    status.add_argument("url", metavar="URL", nargs="?", default=None,
                        help="any node, or several comma-separated (default: $RAFTSQL_URL, "
                        "else http://127.0.0.1:4001)")
    status.add_argument("--json", action="store_true", help="every member's view, as JSON")
    add_user_argument(status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    stop = _StopRequest()
    import logging

    args = build_parser().parse_args(argv)
    if args.command == "shell":
        from raftsql.shell import main as shell_main

        return shell_main(args)
    if args.command == "kv":
        from raftsql.cli.kv import run as kv_run

        return kv_run(args)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "backup":
        from raftsql.cli.transfer import main_backup

        return main_backup(args.url, args.file, args.sql, args.compress, _user(args))
    if args.command == "restore":
        from raftsql.cli.transfer import main_restore

        return main_restore(args.url, args.file, _user(args))
    if args.command == "status":
        from raftsql.cli.status import main_status

        return main_status(args.url, args.json, _user(args))
    if args.command == "recover":
        return _recover(args)
    if args.command == "hash-password":
        return _hash_password()
    if args.command == "serve":
        return _serve(args, stop)
    return _run_cluster(args, stop)


def _tls(args: argparse.Namespace) -> tuple[Any, Any]:
    """serve's TLS flags: (ApiTls or None, PeerTls or None), their files loaded once here so
    that a wrong one stops the start with a message."""
    from raftsql.server import ApiTls, PeerTls

    api = peer = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        api = ApiTls(args.tls_cert, args.tls_key, args.tls_client_ca, args.tls_ca)
        api.server(), api.client()
    elif args.tls_client_ca or args.tls_ca:
        raise ValueError("--tls-client-ca and --tls-ca need --tls-cert and --tls-key")
    flags = (args.peer_tls_cert, args.peer_tls_key, args.peer_tls_ca)
    if any(flags):
        if not all(flags):
            raise ValueError("--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together")
        peer = PeerTls(args.peer_tls_cert, args.peer_tls_key, args.peer_tls_ca,
                       args.peer_tls_server_name)
        peer.server(), peer.client()
    return api, peer


def _user(args: argparse.Namespace) -> tuple[str, str] | None:
    from raftsql.client.http import credentials

    return credentials(args.user, sys.stdin.isatty())


def _hash_password() -> int:
    import getpass

    from raftsql.server import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("raftsql hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("raftsql hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _recover(args: argparse.Namespace) -> int:
    from raftsql.errors import RaftSQLError
    from raftsql.server import recover

    try:
        done = recover(args.data_dir, args.node_id, args.voters)
    except RaftSQLError as e:
        print(f"raftsql recover: {e}", file=sys.stderr)
        return 1
    entries = "entry" if done.applied == 1 else "entries"
    print(f"{args.data_dir}: snapshot at index {done.index} (term {done.term}) with voters "
          f"{', '.join(done.voters)}; {done.applied} {entries} applied now, {done.uncommitted} "
          "beyond the commit index this node knew. Start the node as before.")
    return 0


def _serve(args: argparse.Namespace, stop: _StopRequest) -> int:
    import asyncio
    import logging

    from raftsql.errors import RaftSQLError
    from raftsql.server import KvLimits, NodeConfig, Server, ServerConfig

    if stop.requested:
        return 0
    secret = None
    if args.cluster_secret_file:
        try:
            with open(args.cluster_secret_file) as f:
                secret = f.read().strip()
        except OSError as e:
            logging.getLogger("raftsql").error("cannot start: %s", e)
            return 1
    auth = None
    if args.auth:
        from raftsql.server import Auth, AuthFileError

        try:
            auth = Auth.load(args.auth, secret)
        except AuthFileError as e:
            logging.getLogger("raftsql").error("cannot start: %s", e)
            return 1
    try:
        api_tls, peer_tls = _tls(args)
    except (ValueError, OSError) as e:  # (ssl.SSLError is an OSError)
        logging.getLogger("raftsql").error("cannot start: %s", e)
        return 1
    config = NodeConfig(
        node_id=args.node_id, data_dir=args.data_dir, http_addr=args.http_addr,
        raft_addr=args.raft_addr, initial_cluster=args.initial_cluster or {},
        join=args.join or [], non_voter=args.non_voter, heartbeat_ms=args.heartbeat_ms,
        election_ms=args.election_ms, snapshot_threshold=args.snapshot_threshold,
        snapshot_threshold_bytes=args.snapshot_threshold_bytes,
        trailing_logs=args.trailing_logs, cluster_secret=secret, api_tls=api_tls is not None,
    )

    async def run() -> int:
        node = Server(ServerConfig(config, fk=args.fk, max_body_bytes=args.max_body_bytes,
                                   key_window=args.idempotency_window,
                                   key_capacity=args.idempotency_keys,
                                   kv_limits=KvLimits(args.kv_max_value_bytes,
                                                      args.kv_max_txn_ops),
                                   kv_history=args.kv_history, backup_dir=args.backup_dir,
                                   backup_interval=args.backup_interval,
                                   backup_keep=args.backup_keep,
                                   backup_compress=args.backup_compress, auth=auth,
                                   tls=api_tls, peer_tls=peer_tls,
                                   max_statements=args.max_statements,
                                   max_open_requests=args.max_open_requests))
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        stop.on_request(lambda: loop.call_soon_threadsafe(stopping.set))
        asked = asyncio.ensure_future(stopping.wait())
        starting = asyncio.ensure_future(node.start())
        try:
            # Start-up (opening the log, restoring a snapshot, binding) can be stopped too.
            await asyncio.wait([starting, asked], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                await node.stop(transfer=False)
                return 0
            starting.result()  # start-up failed: OSError or RaftSQLError, reported below
            failed = asyncio.ensure_future(node.wait_failed())
            await asyncio.wait([failed, asked], return_when=asyncio.FIRST_COMPLETED)
            await node.stop(transfer=not failed.done())
            return 1 if failed.done() else 0
        except BaseException:
            await node.stop(transfer=False)
            raise
        finally:
            asked.cancel()

    try:
        return asyncio.run(run())
    except (OSError, RaftSQLError) as e:
        logging.getLogger("raftsql").error("cannot start: %s", e)
        return 1


def _run_cluster(args: argparse.Namespace, stop: _StopRequest) -> int:
    import time

    from raftsql.cli.launcher import RAFT_PORT_OFFSET, LocalCluster

    http_ports = [args.base_port + i for i in range(args.n)]
    raft_ports = [p + RAFT_PORT_OFFSET for p in http_ports]
    cluster = LocalCluster(args.n, args.data_dir, http_ports, raft_ports, log=sys.stderr.fileno())
    cluster.start()
    urls = ", ".join(cluster.url(i) for i in cluster.ids)
    print(f"raftsql: {args.n} nodes at {urls} (Raft on ports {raft_ports[0]}-{raft_ports[-1]}, "
          f"data in {args.data_dir}); Ctrl-C stops them", file=sys.stderr, flush=True)
    # Nodes may die or be killed (that is what a cluster is for trying): report it and keep
    # the others running until Ctrl-C or SIGTERM, or until none is left.
    running = set(cluster.ids)
    while running and not stop.requested:
        time.sleep(0.2)
        for node_id in running - set(cluster.running()):
            code = cluster.procs[node_id].returncode
            print(f"raftsql: node {node_id} exited with {code}; the others go on "
                  f"(restart it with: {' '.join(cluster.command(node_id))})",
                  file=sys.stderr, flush=True)
        running = set(cluster.running())
    still_running = cluster.running()
    cluster.stop()
    return 0 if all(cluster.procs[i].returncode == 0 for i in still_running) else 1
