"""Who is in the cluster and where to reach them: the node's address book.

Node ids and addresses are separate: Raft knows members by id, and this module keeps each
member's (raft_addr, api_url), learned from membership entries in the log, from snapshots,
from the join reply and from the `info` RPC, and saved in peers.json. It also writes the
initial membership of a new cluster (the bootstrap) and asks to join an existing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from raftsql.errors import ClusterError, RaftSQLError
from raftsql.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
)

if TYPE_CHECKING:
    from raftsql.node.node import Node


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    api_url: str
    raft_addr: str
    voter: bool


def addr_context(raft_addr: str, api_url: str) -> bytes:
    """The context of a membership entry: where the member it adds can be reached."""
    return orjson.dumps({"raft_addr": raft_addr, "api_url": api_url})


def member_dict(m: Member) -> dict[str, Any]:
    return {"id": m.id, "api_addr": m.api_url, "addr": m.raft_addr, "voter": m.voter}


class Membership:
    """The address book of one node, and the RPCs and tasks that fill it."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.node_id = node.node_id
        self.peers: dict[str, tuple[str, str]] = {}  # id -> (raft_addr, api_url)
        self._peers_path = os.path.join(node.config.data_dir, "peers.json")

    # ---- the address book -----------------------------------------------------------

    def api_url_of(self, node_id: str) -> str | None:
        peer = self.peers.get(node_id)
        return peer[1] if peer else None

    def raft_addr_of(self, node_id: str | None) -> str:
        if node_id == self.node_id:
            return self._node.config.advertised_raft_addr
        return self.peers.get(node_id or "", ("", ""))[0]

    def members(self, conf: ConfState) -> list[Member]:
        node = self._node
        out = []
        for node_id in conf.voters + conf.learners:
            if node_id == self.node_id:
                raft_addr, api_url = node.config.advertised_raft_addr, node.api_url
            else:
                raft_addr, api_url = self.peers.get(node_id, ("", ""))
            out.append(Member(node_id, api_url, raft_addr, node_id in conf.voters))
        return out

    def address_book(self) -> dict[str, tuple[str, str]]:
        """Every member's (raft_addr, api_url), this node's included."""
        node = self._node
        return {**self.peers, self.node_id: (node.config.advertised_raft_addr, node.api_url)}

    def set_peer(self, node_id: str, raft_addr: str, api_url: str = "") -> None:
        """Learn a member's addresses; an unknown ("") API URL keeps the one known."""
        if node_id == self.node_id:
            return
        known = self.peers.get(node_id)
        api_url = api_url or (known[1] if known else "")
        if known == (raft_addr, api_url):
            return
        self.peers[node_id] = (raft_addr, api_url)
        transport = self._node._transport
        if transport is not None:
            transport.set_peer(node_id, raft_addr)
        self._save()

    def note_conf_entries(self, entries: Sequence[Entry]) -> None:
        """Learn members' addresses from membership entries as soon as they are seen."""
        for e in entries:
            if e.type is not EntryType.CONF_CHANGE:
                continue
            cc = ConfChange.decode(e.data)
            if cc.node_id == self.node_id:
                continue
            if cc.type is ConfChangeType.REMOVE:
                continue  # keep the address: the removal may still be truncated
            addrs = orjson.loads(cc.context) if cc.context else {}
            if addrs:
                self.set_peer(cc.node_id, addrs["raft_addr"], addrs.get("api_url", ""))

    def note_api_url(self, node_id: str, api_url: str) -> None:
        """A peer told us where clients reach it (it dialed us, or answered `info`): this is
        fresher than the log, where a member's API URL is the one it joined with."""
        known = self.peers.get(node_id)
        if known is not None and known[1] != api_url:
            self.set_peer(node_id, known[0], api_url)

    def load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            with open(self._peers_path, "rb") as f:
                stored = orjson.loads(f.read())
            for node_id, (raft_addr, api_url) in stored.items():
                self.peers.setdefault(node_id, (raft_addr, api_url))

    def _save(self) -> None:
        tmp = self._peers_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.peers))
        os.replace(tmp, self._peers_path)

    # ---- membership changes ---------------------------------------------------------

    async def add(self, node_id: str, raft_addr: str, api_url: str, voter: bool, timeout: float) -> None:
        current = self._node.conf
        if self.peers.get(node_id) == (raft_addr, api_url) and (
            node_id in current.voters if voter else node_id in current.learners
        ):
            return  # joins are idempotent
        kind = ConfChangeType.ADD_VOTER if voter else ConfChangeType.ADD_LEARNER
        self.set_peer(node_id, raft_addr, api_url)
        await self._change_conf(ConfChange(kind, node_id, addr_context(raft_addr, api_url)), timeout)

    async def remove(self, node_id: str, timeout: float) -> None:
        if node_id not in self._node.conf.members():
            raise ClusterError(f"node {node_id} is not a member of the cluster")
        await self._change_conf(ConfChange(ConfChangeType.REMOVE, node_id), timeout)

    async def _change_conf(self, cc: ConfChange, timeout: float) -> None:
        node = self._node
        if not node.is_leader:
            raise node._not_leader()
        fut: asyncio.Future[tuple[Any, int]] = asyncio.get_running_loop().create_future()

        def run() -> None:
            assert node._raft is not None
            if not node.is_leader:
                node._set_exception(fut, node._not_leader())
                return
            index = node._raft.propose_conf_change(cc)
            if index is None:
                node._set_exception(fut, ClusterError(
                    "membership change refused: another change is in progress, or the "
                    "leader has not yet committed an entry of its term", status=503))
            else:
                node._proposals[index] = (node._raft.term, fut)

        node._call(run)
        await node._deadlines.add(fut, timeout)
        node._log("membership changed", change=cc.type.name, member=cc.node_id)

    # ---- RPCs and background tasks ------------------------------------------------------

    async def on_join(self, payload: dict[str, Any]) -> dict[str, Any]:
        node = self._node
        if not node.is_leader:
            leader = self.peers.get(node.leader_id or "", ("", ""))[0]
            return {"ok": False, "leader": leader, "error": "not leader"}
        try:
            await node.add_member(
                str(payload["id"]), str(payload["raft_addr"]), str(payload["api_url"]),
                voter=bool(payload.get("voter", True)),
            )
        except (TimeoutError, RaftSQLError, KeyError) as e:
            return {"ok": False, "error": str(e) or type(e).__name__}
        return {"ok": True, "leader": node.config.advertised_raft_addr, "peers": self.address_book()}

    async def on_info(self, payload: dict[str, Any]) -> dict[str, Any]:
        node = self._node
        return {"id": self.node_id, "api_url": node.api_url, "raft_addr": node.config.advertised_raft_addr}

    async def join_cluster(self) -> None:
        node = self._node
        transport = node._transport
        assert transport is not None
        payload = {"id": self.node_id, "raft_addr": node.config.advertised_raft_addr,
                   "api_url": node.api_url, "voter": not node.config.non_voter}
        targets = list(node.config.join)
        delay = 0.2
        while True:
            for addr in list(targets):
                try:
                    reply = await transport.call(addr, "join", payload, timeout=15.0)
                except (TimeoutError, RaftSQLError, OSError) as e:
                    node._log("join attempt failed", target=addr, error=str(e))
                    continue
                if reply.get("ok"):
                    # Until the log tells it, the new member knows nobody to answer to.
                    for node_id, (raft_addr, api_url) in reply.get("peers", {}).items():
                        self.set_peer(node_id, raft_addr, api_url)
                    node._log("joined cluster", via=addr)
                    return
                if reply.get("leader") and reply["leader"] not in targets:
                    targets.insert(0, reply["leader"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def learn_api_urls(self) -> None:
        """Ask every peer for its API URL once, until it answers: peers named by
        --initial-cluster are known by Raft address only, and a URL saved in peers.json may
        have changed (peers that dial this node tell it sooner: note_api_url)."""
        transport = self._node._transport
        assert transport is not None
        learned: set[str] = set()
        while True:
            for node_id, (raft_addr, _) in list(self.peers.items()):
                if node_id in learned or not raft_addr:
                    continue
                with contextlib.suppress(RaftSQLError, asyncio.TimeoutError, OSError, KeyError):
                    info = await transport.call(raft_addr, "info", {}, timeout=2.0)
                    self.note_api_url(node_id, str(info["api_url"]))
                    learned.add(node_id)
            await asyncio.sleep(1.0)
