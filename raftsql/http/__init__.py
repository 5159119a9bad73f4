"""The client-facing HTTP API: rqlite-compatible routes over aiohttp (DESIGN.md §5).

Modules: `app` (make_app, middleware), `params` (query-string options), `body` (request
bodies), `encode` (results → rqlite JSON), `routes_db` (/db/execute, /db/query,
/db/request), `routes_cluster` (/status, /nodes, /readyz, /leader, /remove, /snapshot),
`forward` (serving on the leader: forwarding, redirects, riding through leader changes),
`queue` (queued writes), `classify` (read or write).

The node the API drives (duck-typed; raftsql.node.Node is the real one):

    node.node_id, node.api_url, node.is_leader, node.leader_id, node.removed
    node.database (.path, .applied_time_ms)
    node.leader_api_url() -> str | None;  node.members() -> [Member(id, api_url, raft_addr, voter)]
    node.status() -> dict;  node.last_contact() -> float | None
    await node.execute(statements, transaction=, op="execute"|"request"|"query", timeout=,
                       db_timeout=, qualify=) -> (list[StatementResult], raft index)
    await node.read_barrier(level, timeout);  await node.query(statements, ReadOptions)
    await node.remove_member(node_id, timeout=);  await node.transfer_leadership(target, timeout=)
    await node.snapshot() -> bool
"""

from raftsql.http.app import make_app

__all__ = ["make_app"]
