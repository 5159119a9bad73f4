"""`raftsql status URL`: the cluster at a glance, from every member's /status.

It asks the node given for the members, then each member for its own view, so a node that is
down, cut off or behind shows as such; the leader's view adds how far each follower is.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raftsql.cli.launcher import http
from raftsql.client.http import auth_headers, split_auth, split_urls

TIMEOUT = 2.0  # seconds a member may take to answer


def gather(urls: str | None, auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """{"members": [...], "views": {id: store status or None}} from the first node of
    `urls` that answers, and then from every member (as `auth`, else the URLs' userinfo)."""
    seeds, creds = split_auth(split_urls(urls), auth)
    fetch = functools.partial(_store_status, headers=auth_headers(creds))
    first, failures = None, []
    for url in seeds:
        try:
            first = fetch(url)
            break
        except (OSError, ValueError) as e:
            failures.append(f"{url}: {e}")
    if first is None:
        raise ConnectionError("no node answered: " + "; ".join(failures))
    members = first["nodes"]

    def view(member: dict[str, Any]) -> Any:
        try:
            return fetch(member["api_addr"])
        except (OSError, ValueError):
            return None

    with ThreadPoolExecutor(max(len(members), 1)) as pool:
        views = dict(zip([m["id"] for m in members], pool.map(view, members), strict=True))
    return {"members": members, "views": views}


def _store_status(url: str, headers: dict[str, str]) -> Any:
    code, body = http("GET", f"{url.rstrip('/')}/status?key=store", timeout=TIMEOUT,
                      headers=headers)
    if code != 200 or not isinstance(body, dict):
        raise ValueError(f"HTTP {code}" + (f": {body.strip()}" if isinstance(body, str) and body
                                           else ""))
    return body


def render(cluster: dict[str, Any], now: float | None = None) -> str:
    members, views = cluster["members"], cluster["views"]
    now = time.time() if now is None else now
    leaders = {v["leader"]["node_id"] for v in views.values() if v and v["leader"]["node_id"]}
    leader_id = next(iter(leaders)) if len(leaders) == 1 else None
    lead = views.get(leader_id) if leader_id else None
    lag = lead["raft"].get("lag", {}) if lead else {}
    voters = sum(1 for m in members if m["voter"])
    head = (f"leader {leader_id}, term {lead['raft']['term']}" if lead
            else "no leader" if not leaders else f"leaders disagree: {', '.join(sorted(leaders))}")
    lines = [f"{len(members)} members ({voters} voters, quorum {voters // 2 + 1}); {head}"]
    rows = [("id", "role", "api", "raft", "term", "applied", "commit", "lag", "snapshot")]
    for m in members:
        v = views.get(m["id"])
        if v is None:
            rows.append((m["id"], "unreachable", m["api_addr"], m["addr"], "", "", "", "", ""))
            continue
        r = v["raft"]
        role = r["state"].lower() + ("" if m["voter"] else " (non-voter)")
        behind = "" if m["id"] == leader_id else str(lag.get(m["id"], "?")) if lead else "?"
        rows.append((m["id"], role, m["api_addr"], m["addr"], str(r["term"]),
                     str(r["applied_index"]), str(r["commit_index"]), behind, _snapshot(r, now)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines) + "\n"


def _snapshot(raft: dict[str, Any], now: float) -> str:
    if not raft.get("snapshot_index"):
        return "none"
    when = raft.get("snapshot_time")
    age = f", {_age(now - when)} ago" if when else ""
    return f"at {raft['snapshot_index']}{age}"


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def main_status(urls: str | None, as_json: bool, auth: tuple[str, str] | None = None) -> int:
    try:
        cluster = gather(urls, auth)
    except (ConnectionError, ValueError) as e:
        print(f"raftsql status: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(cluster, indent=2) + "\n" if as_json else render(cluster))
    return 0
