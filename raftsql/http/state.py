"""What every route of one node's API shares: the node, its SQL and config store services,
the forwarding session, the queue; and the interfaces the API uses them through."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from raftsql.http.auth import Auth
from raftsql.http.metrics import HttpMetrics
from raftsql.http.queue import WriteQueue
from raftsql.kv.service import KvService
from raftsql.node.addresses import Member
from raftsql.node.metrics import NodeMetrics
from raftsql.sql.service import SqlService


class ClusterNode(Protocol):
    """The node as the API sees it (raftsql.node.Node; tests.fakes.FakeNode in tests)."""

    node_id: str
    api_url: str
    is_leader: bool
    leader_id: str | None
    removed: bool
    metrics: NodeMetrics

    def leader_api_url(self) -> str | None: ...
    def last_contact(self) -> float | None: ...
    def members(self) -> list[Member]: ...
    def status(self) -> dict[str, Any]: ...
    async def remove_member(self, node_id: str, timeout: float = 10.0) -> None: ...
    async def transfer_leadership(self, target: str | None = None,
                                  timeout: float = 5.0) -> None: ...
    async def snapshot(self, trailing: int | None = None) -> bool: ...
    async def boot(self, path: str) -> str | None: ...


@dataclass
class ApiState:
    node: ClusterNode
    sql: SqlService
    max_body_bytes: int
    kv: KvService | None = None  # the config store (raftsql/kv/), when this node serves it
    allow_origin: str | None = None
    auth: Auth | None = None  # who may do what (raftsql/http/auth.py); None: anyone anything
    client_ssl: ssl.SSLContext | None = None  # for other nodes' HTTPS APIs
    max_statements: int = 0  # in one request (0: no limit)
    max_open: int = 0  # requests being served at once, past which a 503 (0: no limit)
    open_requests: int = 0
    queue: WriteQueue | None = None
    session: aiohttp.ClientSession | None = None
    started: float = field(default_factory=time.time)
    metrics: HttpMetrics = field(default_factory=HttpMetrics)
    _served_here: tuple[str, str] = ("", "")  # (api_url, what served_here() answers for it)

    @property
    def client(self) -> aiohttp.ClientSession:
        """One ClientSession per app, for forwarding and peer checks."""
        if self.session is None or self.session.closed:
            connector = (aiohttp.TCPConnector(ssl=self.client_ssl) if self.client_ssl is not None
                         else None)
            self.session = aiohttp.ClientSession(connector=connector)
        return self.session

    def served_here(self) -> str:
        """X-RQLITE-SERVED-BY for a request this node served: its API host:port."""
        api_url = self.node.api_url
        if self._served_here[0] != api_url:
            self._served_here = (api_url, urlsplit(api_url).netloc or api_url)
        return self._served_here[1]

    def member(self, node_id: str | None) -> Member | None:
        if node_id is None:
            return None
        return next((m for m in self.node.members() if m.id == node_id), None)

    def is_voter(self) -> bool:
        me = self.member(self.node.node_id)
        return True if me is None else bool(me.voter)


STATE: web.AppKey[ApiState] = web.AppKey("raftsql_api", ApiState)


def state_of(request: web.Request) -> ApiState:
    return request.app[STATE]
