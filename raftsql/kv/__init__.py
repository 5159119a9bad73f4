"""The config store: Consul's KV API over the replicated database (docs/config-store.md).

`machine.py` applies its entries (an extension of the SQL state machine), `model.py` is its
data model, `service.py` serves reads, writes, blocking queries and sessions over the driver,
`watch.py` wakes blocking queries, `sessions.py` holds the leader's session timers, and
`book.py` reads the bookkeeping (sessions, the change history).
"""
