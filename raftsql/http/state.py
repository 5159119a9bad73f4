"""What every route of one node's API shares: the node, the forwarding session, the queue."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from raftsql.sql.classify import Classifier

if TYPE_CHECKING:
    from raftsql.http.queue import WriteQueue


@dataclass
class ApiState:
    node: Any  # duck-typed: raftsql.node.Node, or tests.fakes.FakeNode
    max_body_bytes: int
    allow_origin: str | None = None
    session: aiohttp.ClientSession | None = None
    queue: WriteQueue | None = None
    classifier: Classifier = field(default_factory=Classifier)
    started: float = field(default_factory=time.time)

    @property
    def client(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        return self.session

    _served_here: tuple[str, str] = ("", "")  # (api_url, what served_here() answers for it)

    def served_here(self) -> str:
        """X-RQLITE-SERVED-BY for a request this node served: its API host:port."""
        api_url = self.node.api_url
        if self._served_here[0] != api_url:
            self._served_here = (api_url, urlsplit(api_url).netloc or api_url)
        return self._served_here[1]

    def member(self, node_id: str | None) -> Any | None:
        if node_id is None:
            return None
        for m in self.node.members():
            if m.id == node_id:
                return m
        return None

    def is_voter(self) -> bool:
        me = self.member(self.node.node_id)
        return True if me is None else bool(me.voter)


STATE: web.AppKey[ApiState] = web.AppKey("raftsql_api", ApiState)


def state_of(request: web.Request) -> ApiState:
    return request.app[STATE]
