"""rqlite's dot-commands, and the base class's that make no sense against a cluster.

A mixin of RaftShell (shell.py): it uses the shell's `cluster`, `render`, `write` and
`Error`. Each command's docstring is its `.help` entry ("usage: what it does").
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import orjson

from raftsql.client.http import LEVELS, ClientError, Cluster, Response, split_urls
from raftsql.shell.data import DataCommands
from raftsql.shell.statements import answer_text, describe

NODE_COLUMNS = ("id", "api_addr", "addr", "voter", "reachable", "leader")
NOT_SERVED = (404, 405)
# What `.status` shows without arguments: (label, path under /status).
STATUS_SUMMARY = (
    ("node_id", "store.node_id"), ("state", "store.raft.state"), ("term", "store.raft.term"),
    ("leader", "store.leader.node_id"), ("leader_addr", "store.leader.addr"),
    ("commit_index", "store.raft.commit_index"), ("applied_index", "store.raft.applied_index"),
    ("first_log_index", "store.raft.first_log_index"),
    ("last_log_index", "store.raft.last_log_index"), ("version", "build.version"),
)


def _unavailable(name: str, usage: str, why: str) -> Any:
    """A base-class command that would act on the local shadow: it says so instead."""

    def command(self, cmd: list[str]) -> None:
        raise self.Error(f".{name} is not available in raftsql shell: {why}")

    command.__doc__ = f"{usage}: (not available here: {why})"
    command.unavailable = True  # type: ignore[attr-defined]
    return command


_LOCAL_DB = "the database is the cluster's, not a local file (use .connect URL)"
_LOCAL_ONLY = "it acts on a local SQLite connection, and the cluster's is remote"


class ClusterCommands(DataCommands):
    """The commands that speak to the cluster's management routes."""

    def __dir__(self) -> list[str]:
        # apsw builds `.help` and command completion from dir(): the commands that only say
        # "not available" are left out of both (typing them still says why).
        return [name for name in super().__dir__()
                if not getattr(getattr(type(self), name, None), "unavailable", False)]

    # ---- asking the cluster

    def get(self, path: str, params: dict[str, Any] | None = None) -> Response:
        return self.cluster.send("GET", path, params)

    def served(self, response: Response, what: str) -> Response:
        """The answer, if it is a success; otherwise the server's words, raised."""
        if response.status in NOT_SERVED:
            raise self.Error(f"{what} is not served by this node ({response.url})")
        if response.status >= 400:
            raise self.Error(f"{what}: the server refused ({response.status}): "
                             f"{answer_text(response)}")
        return response

    def direct(self, method: str, path: str, body: Any = None) -> Response | None:
        """One request to the current node, never resent: its answer as it is (a 503 with the
        server's reason included), or None when the node could not be reached. For requests
        whose refusal the user must read (a stepdown, a removal), which the client core
        would keep retrying until its timeout."""
        url = self.cluster.current
        headers = {"Content-Type": "application/json"}
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.cluster.timeout) as answer:
                return Response(answer.status, dict(answer.headers), answer.read(), url)
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read(), url)
        except OSError:
            return None

    def nodes(self) -> list[dict[str, Any]]:
        """The members, as GET /nodes?ver=2 lists them."""
        try:
            body = self.served(self.get("/nodes", {"ver": "2"}), "/nodes").json()
        except (ClientError, OSError) as e:
            raise self.Error(describe(e, self.cluster.timeout)) from None
        members = body.get("nodes", body) if isinstance(body, dict) else body
        if isinstance(members, dict):  # rqlite's ver=1 shape: {id: {...}}
            members = [{"id": k, **v} for k, v in members.items()]
        return [m for m in members if isinstance(m, dict)]

    def show_table(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
                   ) -> None:
        """Rows in the current output mode, with headers whatever `.headers` says."""
        self.push_output()
        self.header = True
        try:
            self.render(columns, rows)
        finally:
            self.pop_output()

    def say(self, text: str) -> None:
        self.write(self.stdout, text.rstrip("\n") + "\n")

    # ---- rqlite's commands

    def command_nodes(self, cmd: list[str]) -> None:
        """nodes: List the cluster's members (GET /nodes?ver=2)

        One row per member: its id, HTTP API URL, Raft address, whether it votes, whether
        the node asked could reach it, and whether it leads.
        """
        def cell(v: Any) -> Any:
            return ("yes" if v else "no") if isinstance(v, bool) else v

        rows = [tuple(cell(m.get(c)) for c in NODE_COLUMNS) for m in self.nodes()]
        self.show_table(NODE_COLUMNS, sorted(rows, key=lambda r: str(r[0])))

    def command_leader(self, cmd: list[str]) -> None:
        """leader: Show which node leads the cluster"""
        leader = next((m for m in self.nodes() if m.get("leader")), None)
        if leader is None:
            self.say("no leader known (an election may be under way)")
            return
        self.say(f"{leader.get('id')} {leader.get('api_addr')} (raft {leader.get('addr')})")

    def command_status(self, cmd: list[str]) -> None:
        """status ?all|KEY?: Show the node's status (GET /status)

        With no argument a summary (node, role, term, leader, log indexes); `.status all`
        shows the whole document as JSON, `.status KEY` one part of it, for example
        `.status store.raft`.
        """
        status = self.served(self.get("/status"), "/status").json()
        if not cmd:
            width = max(len(label) for label, _ in STATUS_SUMMARY)
            for label, path in STATUS_SUMMARY:
                self.say(f"{label:<{width}}  {_lookup(status, path)}")
            self.say(f"{'answered by':<{width}}  {self.cluster.current}")
            return
        part = status if cmd[0] in ("all", "json") else _lookup(status, cmd[0], missing=KeyError)
        if part is KeyError:
            raise self.Error(f"no {cmd[0]!r} in /status")
        self.say(json.dumps(part, indent=2, sort_keys=True, default=str))

    def command_ready(self, cmd: list[str]) -> None:
        """ready: Ask the current node whether it can serve (GET /readyz)"""
        # This node, not any node: the client core would move on after a 503 and hide it.
        response = self.direct("GET", "/readyz")
        if response is None:
            self.say(f"not ready: {self.cluster.current} does not answer")
            return
        lines = response.body.decode(errors="replace").splitlines()
        checks = "; ".join(line.strip() for line in lines if line.strip())
        word = "ready" if response.status == 200 else f"not ready ({response.status})"
        self.say(f"{word}: {response.url}: {checks}")

    def command_consistency(self, cmd: list[str]) -> None:
        """consistency ?LEVEL?: Show or set the read consistency level

        none (any node's data, maybe stale), weak (the leader's, without checking it still
        leads), linearizable (checked with a quorum), strong (through the log). With no
        argument shows the current level.
        """
        if not cmd:
            self.say(self.level or "the cluster's default (weak)")
            return
        if len(cmd) != 1 or cmd[0].lower() not in LEVELS:
            raise self.Error(f"consistency takes one of: {', '.join(LEVELS)}")
        self.level = cmd[0].lower()

    def command_connect(self, cmd: list[str]) -> None:
        """connect URL[,URL...]: Connect to another cluster (or other nodes of this one)"""
        if len(cmd) != 1:
            raise self.Error("connect takes URL[,URL...]")
        try:
            fresh = Cluster(split_urls(cmd[0]), timeout=self.cluster.timeout, auth=self.auth)
        except ValueError as e:
            raise self.Error(str(e)) from None
        old, self.cluster = self.cluster, fresh
        try:
            line = self.banner()
            self.refresh_shadow()
        except self.Error:
            self.cluster = old  # keep the session working where it was
            fresh.close()
            raise
        old.close()
        self.dbfilename = fresh.current
        self.update_prompt()
        self.say(line)

    def command_snapshot(self, cmd: list[str]) -> None:
        """snapshot: Snapshot the node's database and compact its log now (POST /snapshot)"""
        response = self.served(self.cluster.send("POST", "/snapshot"), "/snapshot")
        self.say(f"snapshot taken on {response.url}" if response.status != 204 else
                 "no snapshot needed: the latest one already holds everything applied")

    def command_remove(self, cmd: list[str]) -> None:
        """remove ID: Remove the node ID from the cluster (DELETE /remove)"""
        if len(cmd) != 1:
            raise self.Error("remove takes a node id")
        body = {"id": cmd[0]}
        response = self.direct("DELETE", "/remove", body)
        if response is None:  # this node is gone: any other will forward it to the leader
            response = self.cluster.send("DELETE", "/remove", body=body, write=True)
        self.served(response, f"removing {cmd[0]}")
        self.say(f"removed {cmd[0]}")

    def command_stepdown(self, cmd: list[str]) -> None:
        """stepdown ?ID?: Ask the leader to hand leadership over (to ID if given)"""
        if len(cmd) > 1:
            raise self.Error("stepdown takes at most a node id")
        body = {"id": cmd[0]} if cmd else None
        response = self.direct("POST", "/leader", body)
        if response is None:
            response = self.cluster.send("POST", "/leader", body=body, write=True)
        self.served(response, "stepdown")
        leader = next((m.get("id") for m in self.nodes() if m.get("leader")), None)
        self.say(f"the leader stepped down; now leading: {leader or 'not yet known'}")

    def command_sysdump(self, cmd: list[str]) -> None:
        """sysdump FILE: Write the node's /status, /nodes and /readyz answers to FILE

        For a bug report: each answer is written as it came, with its status, even when the
        node could not answer.
        """
        if len(cmd) != 1:
            raise self.Error("sysdump takes a filename")
        with open(cmd[0], "w", encoding="utf-8") as f:
            for path, params in (("/status", None), ("/nodes", {"ver": "2"}), ("/readyz", None)):
                f.write(f"==== GET {path} ====\n{self._section(path, params)}\n\n")
        self.say(f"wrote {cmd[0]}")

    def _section(self, path: str, params: dict[str, Any] | None) -> str:
        try:
            response = self.get(path, params)
        except ClientError as e:
            return f"(no answer: {describe(e, self.cluster.timeout)})"
        return f"status {response.status} from {response.url}\n{_pretty(response)}"

    def command_expvar(self, cmd: list[str]) -> None:
        """expvar: Show the node's Go-style expvar counters (GET /debug/vars)"""
        self.say(_pretty(self.served(self.get("/debug/vars"), "/debug/vars")))

    def command_metrics(self, cmd: list[str]) -> None:
        """metrics: Show the node's Prometheus metrics (GET /metrics)"""
        self.say(_pretty(self.served(self.get("/metrics"), "/metrics")))

    # ---- base-class commands that do not apply to a cluster

    command_open = _unavailable("open", "open ?FILE?", _LOCAL_DB)
    command_close = _unavailable("close", "close", _LOCAL_DB)
    command_connection = _unavailable("connection", "connection ?NUMBER?", _LOCAL_DB)
    command_databases = _unavailable("databases", "databases", _LOCAL_DB)
    command_load = _unavailable("load", "load FILE ?ENTRY?", "extensions load on a local "
                                "connection; the nodes load their own")
    command_vfsname = _unavailable("vfsname", "vfsname", _LOCAL_ONLY)
    command_vfsinfo = _unavailable("vfsinfo", "vfsinfo", _LOCAL_ONLY)
    command_vfslist = _unavailable("vfslist", "vfslist", _LOCAL_ONLY)
    command_dbconfig = _unavailable("dbconfig", "dbconfig ?NAME VALUE?", _LOCAL_ONLY)
    command_dbinfo = _unavailable("dbinfo", "dbinfo", _LOCAL_ONLY + " (try .status)")
    command_pages = _unavailable("pages", "pages ?SCOPE?", _LOCAL_ONLY)
    command_pages_svg = _unavailable("pages_svg", "pages_svg FILE", _LOCAL_ONLY)
    command_timeout = _unavailable("timeout", "timeout MS", "the nodes hold no locks for the "
                                   "shell to wait on (start it with --timeout SECONDS)")
    command_limit = _unavailable("limit", "limit ?NAME VALUE?", _LOCAL_ONLY)
    command_ftsq = _unavailable("ftsq", "ftsq TABLE QUERY", "use SELECT ... MATCH ...")
    command_find = _unavailable("find", "find VALUE ?TABLE?", "it would read every table "
                                "(use SELECT ... WHERE)")
    command_autoimport = _unavailable("autoimport", "autoimport FILE ?TABLE?",
                                      "use .import FILE TABLE")
    command_log = _unavailable("log", "log ON|OFF", _LOCAL_ONLY)


def _lookup(doc: Any, path: str, missing: Any = None) -> Any:
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return missing
        doc = doc[key]
    return doc


def _pretty(response: Response) -> str:
    """A JSON answer indented, any other as its text."""
    try:
        return orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode()
    except ValueError:
        return response.body.decode(errors="replace").rstrip("\n")
