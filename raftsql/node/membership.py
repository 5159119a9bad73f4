"""Membership changes, and how a node gets into a cluster: joining through any member, the
`join` and `info` RPCs that serve it, and learning members' API URLs."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from raftsql.errors import ClusterError, RaftSQLError
from raftsql.node.addresses import AddressBook, addr_context
from raftsql.node.clock import Clock
from raftsql.raft.messages import ConfChange, ConfChangeType, ConfState

Log = Callable[..., None]


class PeerCalls(Protocol):
    """What membership needs of the transport: small request/response RPCs to a peer."""

    async def call(self, raft_addr: str, name: str, payload: dict[str, Any],
                   timeout: float = 5.0) -> dict[str, Any]: ...


class Membership:
    """`change(cc, timeout)` proposes a ConfChange through the log and returns once it is
    applied; `conf()` is the current configuration; `leader()` the leader's id if known."""

    def __init__(self, book: AddressBook, peers: PeerCalls, clock: Clock, *,
                 change: Callable[[ConfChange, float], Awaitable[None]],
                 conf: Callable[[], ConfState], leader: Callable[[], str | None],
                 log: Log) -> None:
        self._book = book
        self._peers = peers
        self._clock = clock
        self._change = change
        self._conf = conf
        self._leader = leader
        self._log = log

    # ---- changes (on the leader) --------------------------------------------------------

    async def add(self, node_id: str, raft_addr: str, api_url: str, voter: bool,
                  timeout: float) -> None:
        """Add a member, promote a learner (`voter`), or record a member's new addresses:
        each goes through the log. A member with the same role and addresses is left alone
        (joins are idempotent)."""
        conf = self._conf()
        known = self._book.everyone().get(node_id)
        if node_id in (conf.voters if voter else conf.learners) and known is not None and (
                known[0] == raft_addr and known[1] in (api_url, "")):
            return
        kind = ConfChangeType.ADD_VOTER if voter else ConfChangeType.ADD_LEARNER
        self._book.set_peer(node_id, raft_addr, api_url)
        await self._apply(ConfChange(kind, node_id, addr_context(raft_addr, api_url)), timeout)

    async def remove(self, node_id: str, timeout: float) -> None:
        if node_id not in self._conf().members():
            raise ClusterError(f"node {node_id} is not a member of the cluster")
        await self._apply(ConfChange(ConfChangeType.REMOVE, node_id), timeout)

    async def _apply(self, cc: ConfChange, timeout: float) -> None:
        await self._change(cc, timeout)
        self._log("membership changed", change=cc.type.name, member=cc.node_id)

    # ---- RPCs ------------------------------------------------------------------------

    async def on_join(self, payload: dict[str, Any]) -> dict[str, Any]:
        book = self._book
        if self._leader() != book.node_id:
            return {"ok": False, "leader": book.raft_addr_of(self._leader()), "error": "not leader"}
        try:
            await self.add(str(payload["id"]), str(payload["raft_addr"]),
                           str(payload["api_url"]), bool(payload.get("voter", True)), 10.0)
        except (TimeoutError, RaftSQLError, KeyError) as e:
            return {"ok": False, "error": str(e) or type(e).__name__}
        return {"ok": True, "leader": book.raft_addr, "peers": book.everyone()}

    async def on_info(self, payload: dict[str, Any]) -> dict[str, Any]:
        book = self._book
        return {"id": book.node_id, "api_url": book.api_url, "raft_addr": book.raft_addr}

    # ---- background tasks -----------------------------------------------------------------

    async def join(self, targets: list[str], voter: bool) -> None:
        """Ask members at `targets` (Raft addresses) to add this node, until one leader does;
        a member that does not lead names the leader, which is asked next."""
        book = self._book
        payload = {"id": book.node_id, "raft_addr": book.raft_addr, "api_url": book.api_url,
                   "voter": voter}
        targets = list(targets)
        delay = 0.2
        while True:
            for addr in list(targets):
                try:
                    # Know the member first: the change cannot commit without this node's
                    # answers when it makes the quorum (a single node growing to two), and
                    # answers go to members whose addresses it knows.
                    info = await self._peers.call(addr, "info", {}, timeout=5.0)
                    book.set_peer(str(info["id"]), str(info["raft_addr"]), str(info["api_url"]))
                    reply = await self._peers.call(addr, "join", payload, timeout=15.0)
                except (TimeoutError, RaftSQLError, OSError, KeyError) as e:
                    self._log("join attempt failed", target=addr, error=str(e) or repr(e))
                    continue
                if reply.get("ok"):
                    # Until the log tells it, the new member knows nobody to answer to.
                    book.update(reply.get("peers", {}))
                    self._log("joined cluster", via=addr)
                    return
                if reply.get("leader") and reply["leader"] not in targets:
                    targets.insert(0, reply["leader"])
            await self._clock.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def learn_api_urls(self) -> None:
        """Ask every peer for its API URL once, until it answers: peers named by
        --initial-cluster are known by Raft address only, and a URL saved in peers.json may
        have changed (peers that dial this node tell it sooner: AddressBook.note_api_url)."""
        learned: set[str] = set()
        while True:
            for node_id, (raft_addr, _) in list(self._book.peers.items()):
                if node_id in learned or not raft_addr:
                    continue
                with contextlib.suppress(RaftSQLError, TimeoutError, OSError, KeyError):
                    info = await self._peers.call(raft_addr, "info", {}, timeout=2.0)
                    self._book.note_api_url(node_id, str(info["api_url"]))
                    learned.add(node_id)
            await self._clock.sleep(1.0)
