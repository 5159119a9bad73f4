"""Disaster recovery: force a new membership on a stopped node whose cluster lost its quorum
for good (rqlite's peers.json, hashicorp/raft's RecoverCluster, etcd's --force-new-cluster).

Raft cannot change its membership without a quorum, so this steps outside it, on purpose and
offline: the node applies every entry its log holds, committed or not (with no quorum left,
nobody can tell which were), takes a snapshot at its last entry whose membership is the one
given, and empties its log behind it. Started again, the survivors elect a leader among
themselves alone; the most up-to-date one wins the election and brings the others to its
snapshot. Writes that were acknowledged are in the log of at least one survivor of the old
quorum; entries that were never committed may now be applied: that is the price of recovery,
and why it must be asked for.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

from raftsql.errors import ClusterError, StorageError
from raftsql.node.addresses import AddressBook
from raftsql.node.applier import StateMachine, command_batches, stored_after
from raftsql.node.snapshots import Header
from raftsql.raft.messages import ConfState, Snapshot, SnapshotMeta
from raftsql.storage import Storage
from raftsql.storage.payloads import Payloads
from raftsql.storage.snapshots import SnapshotFiles, checksum

_BATCH = 512  # entries applied per call


@dataclass(frozen=True)
class Recovered:
    index: int  # the new snapshot's: the node's last log entry
    term: int
    applied: int  # entries applied now (the state machine was behind its log)
    uncommitted: int  # of them, beyond the commit index the node knew
    voters: tuple[str, ...]


def force_membership(data_dir: str, node_id: str, sm: StateMachine,
                     voters: dict[str, str]) -> Recovered:
    """Make `voters` (id -> Raft address; `node_id` among them) the membership of the stopped
    node in `data_dir`, whose state machine is `sm`. See the module docstring."""
    if node_id not in voters:
        raise ClusterError(f"the new membership must include this node ({node_id})")
    storage = Storage(os.path.join(data_dir, "raft"))
    payloads = Payloads(os.path.join(data_dir, "raft", "payloads"))
    files = SnapshotFiles(os.path.join(data_dir, "snapshots"))
    try:
        recover = getattr(sm, "recover", None)
        if recover is not None:
            recover(storage.last_index, functools.partial(stored_after, storage, payloads))
        meta = storage.snapshot_meta
        if sm.applied_index() < meta.index:
            stored = storage.load_snapshot()
            assert stored is not None
            Header.decode(stored.data, meta.index)
            sm.restore(files.path(meta.index, meta.term), meta.index)
        first = sm.applied_index()
        last, commit = storage.last_index, storage.hard_state.commit
        entries = [e for e in storage.entries() if e.index > first]
        for i in range(0, len(entries), _BATCH):
            for batch in command_batches(entries[i : i + _BATCH], payloads):
                sm.apply(batch)
        sm.mark_applied(last)
        term = storage.term(last)
        if term is None:
            raise StorageError(f"the log's last entry {last} has no term")
        book = AddressBook(node_id, voters[node_id], "", os.path.join(data_dir, "peers.json"))
        book.load()
        book.keep_only(voters)
        for peer, raft_addr in voters.items():
            book.set_peer(peer, raft_addr)
        part = files.partial(last, term, own=True)
        if sm.snapshot(part) != last:
            raise StorageError("the state machine's snapshot does not hold the last entry")
        size, crc = checksum(part)
        files.install(last, term, own=True)
        conf = ConfState(voters=tuple(sorted(voters)))
        header = Header(book.everyone(), size, crc).encode()
        storage.save_snapshot(Snapshot(SnapshotMeta(last, term, conf), header))
        storage.set_hard_state(replace(storage.hard_state, commit=last))
        storage.sync()
        files.prune(last, term)
        return Recovered(last, term, last - first, max(0, last - max(commit, first)),
                         conf.voters)
    finally:
        storage.close()
