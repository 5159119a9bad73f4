"""One raftsql node as `raftsql serve` runs it: the SQLite database, the Raft driver over the
WebSocket transport, the SQL service, and the rqlite HTTP API, listening.

The Raft routes share the HTTP listener unless the Raft address differs from it, in which
case the transport gets a listener of its own (rqlite's two ports).
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field

from aiohttp import web

from raftsql.errors import ClusterError
from raftsql.http.app import DEFAULT_MAX_BODY_BYTES, make_app
from raftsql.http.auth import Auth, AuthFileError, hash_password
from raftsql.kv.machine import HISTORY, KvMachine
from raftsql.kv.service import KvLimits, KvService
from raftsql.node import Node, NodeConfig
from raftsql.node.clock import Clock
from raftsql.node.recovery import Recovered, force_membership
from raftsql.sql.autobackup import AutoBackup
from raftsql.sql.database import Database
from raftsql.sql.service import KEY_CAPACITY, KEY_WINDOW, SqlService
from raftsql.sql.sidecar import SIDECAR_SUFFIX
from raftsql.storage.lock import lock_data_dir
from raftsql.storage.log import FileSystem
from raftsql.transport.rpc import serve_app
from raftsql.transport.tls import ApiTls, PeerTls, Reloader
from raftsql.transport.websocket import Transport

__all__ = ["ApiTls", "Auth", "AuthFileError", "KvLimits", "NodeConfig", "PeerTls", "Server",
           "ServerConfig", "hash_password"]


@dataclass
class ServerConfig:
    node: NodeConfig
    fk: bool = False  # enforce foreign keys in what this node proposes
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    key_window: float = KEY_WINDOW  # seconds an idempotency key is remembered
    key_capacity: int = KEY_CAPACITY  # and for how many log entries
    kv_limits: KvLimits = field(default_factory=KvLimits)  # the config store's sizes
    kv_history: int = HISTORY  # changes kept for /v1/changes
    backup_dir: str | None = None  # automatic backups of this node's database go there...
    backup_interval: float = 3600.0  # ...this often (seconds), when it changed
    backup_keep: int = 24  # the newest kept (0: all)
    backup_compress: bool = False
    auth: Auth | None = None  # who may do what through the API (raftsql/http/auth.py)
    tls: ApiTls | None = None  # the API over HTTPS only (raftsql/transport/tls.py)
    peer_tls: PeerTls | None = None  # mutual TLS between nodes
    max_statements: int = 0  # in one request (0: no limit)
    max_open_requests: int = 0  # at once, past which a 503 with Retry-After (0: no limit)


def open_state_machine(data_dir: str, fk: bool = False,
                       kv_history: int = HISTORY) -> tuple[Database, KvMachine]:
    """The state machine `raftsql serve` replicates: DATA_DIR/db.sqlite, with the config
    store's extension (also what `raftsql recover` applies the log to)."""
    os.makedirs(data_dir, exist_ok=True)
    machine = KvMachine(history=kv_history)
    return Database(os.path.join(data_dir, "db.sqlite"), fk=fk, extension=machine), machine


def recover(data_dir: str, node_id: str, voters: dict[str, str]) -> Recovered:
    """`raftsql recover`: force `voters` as the membership of the stopped node in `data_dir`
    (raftsql/node/recovery.py)."""
    unlock = lock_data_dir(data_dir)
    try:
        database, _ = open_state_machine(data_dir)
        try:
            return force_membership(data_dir, node_id, database, voters)
        finally:
            database.close()
    finally:
        unlock()


class Server:
    def __init__(self, config: ServerConfig, *, clock: Clock | None = None,
                 rng: random.Random | None = None, log_fs: FileSystem | None = None) -> None:
        """`clock`, `rng` (election timeouts) and `log_fs` (the Raft log's file system):
        the machine's own unless given (the whole-node simulator gives its own)."""
        self.config = config
        nc = config.node
        if config.peer_tls is not None and not (nc.raft_addr and nc.raft_addr != nc.http_addr):
            raise ClusterError("peer TLS needs a --raft-addr of its own (not the HTTP address)")
        self._unlock = lock_data_dir(nc.data_dir)  # before anything opens a file there
        try:
            self.database, self.machine = open_state_machine(nc.data_dir, config.fk,
                                                             config.kv_history)
        except BaseException:
            self._unlock()
            raise
        peer = config.peer_tls
        self._peer_ssl = (peer.client(), peer.server()) if peer else None
        self.transport = Transport(
            nc.node_id, secret=nc.cluster_secret, api_url=nc.api_url,
            ssl_context=self._peer_ssl[0] if self._peer_ssl else None,
            server_ssl=self._peer_ssl[1] if self._peer_ssl else None,
            server_name=peer.server_name if peer else None)
        self.node = Node(nc, self.database, transport=self.transport, clock=clock, rng=rng,
                         log_fs=log_fs)
        self.sql = SqlService(self.node, self.database, fk=config.fk,
                              key_window=config.key_window, key_capacity=config.key_capacity)
        self.kv = KvService(self.node, self.sql, self.machine, self.database.path + SIDECAR_SUFFIX,
                            limits=config.kv_limits)
        self._runners: list[web.AppRunner] = []
        self._reloading: list[asyncio.Task[None]] = []
        self.app: web.Application | None = None  # the API, once started
        self.backups = (AutoBackup(self.database.path, config.backup_dir,
                                   interval=config.backup_interval, keep=config.backup_keep,
                                   compress=config.backup_compress)
                        if config.backup_dir else None)

    async def start(self) -> None:
        nc = self.config.node
        tls = self.config.tls
        api_ssl = (tls.server(), tls.client()) if tls else None
        app = make_app(self.node, self.sql, kv=self.kv, max_body_bytes=self.config.max_body_bytes,
                       auth=self.config.auth, client_ssl=api_ssl[1] if api_ssl else None,
                       max_statements=self.config.max_statements,
                       max_open=self.config.max_open_requests)
        if nc.raft_addr and nc.raft_addr != nc.http_addr:
            await self.transport.listen(nc.raft_addr)
        else:
            self.transport.add_routes(app)
        await self.node.start()
        await self.kv.start()
        if self.backups is not None:
            self.backups.start()
        self.app = app
        self._runners.append(await serve_app(app, nc.http_addr,
                                             api_ssl[0] if api_ssl else None))
        reloaders = [Reloader(tls.cert, tls.key, list(api_ssl))] if tls and api_ssl else []
        if self.config.peer_tls is not None and self._peer_ssl is not None:
            peer = self.config.peer_tls
            reloaders.append(Reloader(peer.cert, peer.key, list(self._peer_ssl)))
        self._reloading = [asyncio.get_running_loop().create_task(r.run()) for r in reloaders]

    async def stop(self, transfer: bool = True) -> None:
        """The node first (a leader hands over; what waits on it fails), then the API."""
        if self.backups is not None:
            await self.backups.stop()
        await self.kv.stop()
        await self.node.stop(transfer=transfer)
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        for task in self._reloading:
            task.cancel()
        self.sql.close()
        self._unlock()

    async def wait_failed(self) -> None:
        await self.node.wait_failed()
