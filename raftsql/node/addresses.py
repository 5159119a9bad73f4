"""Who is in the cluster and where to reach them: one node's address book.

Node ids and addresses are separate: Raft knows members by id, and the book keeps each
member's Raft address and client API URL, learned from membership entries in the log, from
snapshots, from the join reply, from peers themselves (each peer request carries the
sender's API URL) and from the `info` RPC, and saved in peers.json. Whoever must follow a
member's Raft address (the transport) subscribes to the book.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from raftsql.raft.messages import ConfChange, ConfChangeType, ConfState, Entry, EntryType


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    api_url: str
    raft_addr: str
    voter: bool


def addr_context(raft_addr: str, api_url: str) -> bytes:
    """The context of a membership entry: where the member it adds can be reached."""
    return orjson.dumps({"raft_addr": raft_addr, "api_url": api_url})


class AddressBook:
    def __init__(self, node_id: str, raft_addr: str, api_url: str, path: str | None) -> None:
        self.node_id = node_id
        self.raft_addr = raft_addr  # this node's
        self.api_url = api_url
        self.peers: dict[str, tuple[str, str]] = {}  # id -> (raft_addr, api_url)
        self._path = path
        self._listeners: list[Callable[[str, str], None]] = []

    def subscribe(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(node_id, raft_addr)` for every peer now and when one moves."""
        self._listeners.append(listener)
        for node_id, (raft_addr, _) in self.peers.items():
            listener(node_id, raft_addr)

    # ---- reading ----------------------------------------------------------------------

    def api_url_of(self, node_id: str) -> str | None:
        if node_id == self.node_id:
            return self.api_url
        peer = self.peers.get(node_id)
        return peer[1] if peer and peer[1] else None

    def raft_addr_of(self, node_id: str | None) -> str:
        if node_id == self.node_id:
            return self.raft_addr
        return self.peers.get(node_id or "", ("", ""))[0]

    def members(self, conf: ConfState) -> list[Member]:
        book = self.everyone()
        return [Member(i, book.get(i, ("", ""))[1], book.get(i, ("", ""))[0], i in conf.voters)
                for i in conf.voters + conf.learners]

    def everyone(self) -> dict[str, tuple[str, str]]:
        """Every member's (raft_addr, api_url), this node's included."""
        return {**self.peers, self.node_id: (self.raft_addr, self.api_url)}

    # ---- learning -----------------------------------------------------------------------

    def set_peer(self, node_id: str, raft_addr: str, api_url: str = "") -> None:
        """Learn a member's addresses; an unknown ("") API URL keeps the one known."""
        if node_id == self.node_id:
            return
        known = self.peers.get(node_id)
        api_url = api_url or (known[1] if known else "")
        if known == (raft_addr, api_url):
            return
        self.peers[node_id] = (raft_addr, api_url)
        if known is None or known[0] != raft_addr:
            for listener in self._listeners:
                listener(node_id, raft_addr)
        self._save()

    def keep_only(self, node_ids: Iterable[str]) -> None:
        """Forget every peer but these (a membership forced by disaster recovery)."""
        keep = set(node_ids)
        self.peers = {i: addrs for i, addrs in self.peers.items() if i in keep}
        self._save()

    def note_conf_entries(self, entries: Sequence[Entry]) -> None:
        """Learn members' addresses from membership entries as soon as they are seen."""
        for e in entries:
            if e.type is not EntryType.CONF_CHANGE:
                continue
            cc = ConfChange.decode(e.data)
            if cc.type is ConfChangeType.REMOVE or not cc.context:
                continue  # keep a removed member's address: the removal may be truncated
            addrs = orjson.loads(cc.context)
            self.set_peer(cc.node_id, addrs["raft_addr"], addrs.get("api_url", ""))

    def note_api_url(self, node_id: str, api_url: str) -> None:
        """A peer told us where clients reach it (it dialed us, or answered `info`): this is
        fresher than the log, where a member's API URL is the one it joined with."""
        known = self.peers.get(node_id)
        if known is not None and known[1] != api_url:
            self.set_peer(node_id, known[0], api_url)

    def update(self, book: dict[str, Any]) -> None:
        """Learn from another node's `everyone()` (a join reply, a snapshot's header)."""
        for node_id, (raft_addr, api_url) in book.items():
            self.set_peer(node_id, raft_addr, api_url)

    # ---- peers.json ---------------------------------------------------------------------

    def load(self) -> None:
        if self._path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            with open(self._path, "rb") as f:
                stored = orjson.loads(f.read())
            for node_id, (raft_addr, api_url) in stored.items():
                self.peers.setdefault(node_id, (raft_addr, api_url))

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.peers))
        os.replace(tmp, self._path)
