"""The client-facing HTTP API: rqlite-compatible routes over aiohttp (DESIGN.md §5).

`app` (make_app, the middleware that turns errors into responses), `params` (query-string
options), `body` (request bodies), `respond` (response shapes, headers, the error table),
`forward` (serving on the leader: forwarding, redirects, riding through leader changes),
`queue` (queued writes), `state` (what the routes share, and the two interfaces they use:
`ClusterNode`, the node's cluster operations, and `raftsql.sql.SqlService`). rqlite's routes
and encodings are in `rqlite/`: `db` (/db/execute, /db/query, /db/request), `cluster`
(/status, /nodes, /readyz, /leader, /remove, /snapshot), `encode` (results → rqlite JSON).
"""

from raftsql.http.app import make_app

__all__ = ["make_app"]
