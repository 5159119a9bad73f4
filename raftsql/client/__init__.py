"""Python clients for a raftsql cluster, importing nothing of the server (docs/client.md).

`raftsql.client.http.Cluster` is the HTTP core (leader discovery, retries, idempotency keys);
`raftsql.dbapi` the PEP 249 module over it; `raftsql.aio` the asyncio one;
`raftsql.client.config.ConfigStore` (also `raftsql.ConfigStore`) the config store, with its
watches (kvwatch.py) and locks (kvlock.py).
"""
