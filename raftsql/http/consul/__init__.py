"""Consul's HTTP API for the config store (DESIGN.md §6): `/v1/kv`, `/v1/txn`, `/v1/session`,
and raftsql's `/v1/changes` (every change, in log order). See docs/config-store.md."""
