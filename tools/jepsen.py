"""Jepsen-style runs against real processes: a workload with a recorded history under a
nemesis, then heal, converge and check (issue 11).

    python tools/jepsen.py --workload register --nemesis kill --seconds 60
    python tools/jepsen.py --all --seconds 10          # every workload x nemesis, short

Workloads (clients are threads, each with raftsql's own HTTP client: every node known,
idempotency keys on writes, so a write resent after a failover is applied at most once):
  register  reads (linearizable), writes and compare-and-sets on 5 keys; the history is
            checked with a Wing-Gong-Lowe search (raftsql/simulation/linearizability.py),
            and running out of its time budget is a failure
  bank      transfers between 5 accounts, each one transaction; every read of the total
            (linearizable) sums to the same amount
  set       inserts of unique values; at the end, every acknowledged insert is present
            exactly once, and none is present twice
  kv        the config store (Consul's KV API through raftsql.ConfigStore): reads, writes and
            compare-and-sets by ModifyIndex on 5 keys, checked for linearizability like the
            register; and a watch on one key that must see every change, in log order,
            exactly once (each change's previous value the one before it)
Each operation is ok, failed (certainly not applied: a 4xx, an SQL error, a node that said it
did nothing) or unknown (a timeout, "may have been applied").

Nemeses (every few seconds, on a 3-node cluster with fast timeouts):
  none        nothing
  kill        SIGKILL of one node (a minority), restarted with the same command line
  kill-all    SIGKILL of every node at once, all restarted
  stop-leader SIGSTOP of the leader for 1.5 election timeouts or more, then SIGCONT
  membership  a member (now and then the leader) removed with DELETE /remove, killed, and
              started again with --join: it joins again and catches up
With each node in a network namespace of its own (tools/netns.py; root, iproute2, iptables):
  partition-halves   the nodes split in two random sides that cannot hear each other
  partition-leader   the leader cut off from every other node
  partition-one-way  one node (often the leader) stops hearing one other, which still
                     hears it
  latency            200 ms each way and 20% loss (tc netem); where the kernel has no
                     netem, 20% loss alone (iptables), and the log says so
Each holds for 1.5-4 election timeouts (latency 2-4 s), then heals. Clients reach every
node through the bridge; only traffic between nodes is cut.

After the run: every node restarted or resumed, the cluster converges (every node applies
the leader's commit index), the workload's final check runs, then the nodes stop and their
databases must hold byte-identical canonical dumps and pass PRAGMA integrity_check.
Exit status 0 when everything held; one JSON line per run with --json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from netns import (  # noqa: E402 (tools/netns.py)
    NetnsCluster,
    Network,
    namespaces_unavailable,
    netem_unavailable,
)

from raftsql.cli.launcher import LocalCluster, http  # noqa: E402
from raftsql.client.config import ConfigStore  # noqa: E402
from raftsql.client.http import ClientError, Cluster, Unavailable  # noqa: E402
from raftsql.simulation.dump import canonical  # noqa: E402
from raftsql.simulation.linearizability import CAS, READ, WRITE, Op, check  # noqa: E402

ELECTION_MS = 500
KEYS = 5
ACCOUNTS, OPENING = 5, 100
OK, FAILED, UNKNOWN = "ok", "failed", "unknown"


@dataclass
class History:
    ops: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_read: dict[int, dict[str, tuple[Any, int]]] = field(default_factory=dict)  # kv CAS

    def add(self, **op: Any) -> None:
        with self.lock:
            self.ops.append(op)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[op["outcome"]] = out.get(op["outcome"], 0) + 1
        return out


def _write(client: Cluster, statements: list[Any], transaction: bool = False
           ) -> tuple[str, list[dict[str, Any]]]:
    """The outcome of a write, and its results when ok."""
    try:
        response = client.execute(statements, transaction=transaction)
    except Unavailable as e:
        return (UNKNOWN if e.maybe_applied else FAILED), []
    except (ClientError, OSError):
        return UNKNOWN, []
    if response.status != 200:
        return FAILED, []
    results = response.results
    if any("error" in r for r in results):
        return FAILED, results
    return OK, results


def _read(client: Cluster, sql: str, *params: Any) -> list[list[Any]] | None:
    """Rows of a linearizable read; None when it failed (a read that failed says nothing)."""
    try:
        response = client.query([[sql, *params]], level="linearizable")
    except (ClientError, OSError):
        return None
    if response.status != 200:
        return None
    [result] = response.results
    return None if "error" in result else result.get("values", [])


# ---- workloads: setup(client), op(client, rng, history), final(client, history) -> problems


def register_setup(client: Cluster) -> None:
    assert _write(client, ["CREATE TABLE reg (k INTEGER PRIMARY KEY, v INTEGER)"])[0] == OK


def register_op(client: Cluster, rng: random.Random, history: History, process: int) -> None:
    key, roll, start = rng.randrange(KEYS), rng.random(), time.monotonic()
    if roll < 0.4:
        rows = _read(client, "SELECT v FROM reg WHERE k = ?", key)
        if rows is not None:
            history.add(f=READ, key=key, value=rows[0][0] if rows else None, invoke=start,
                        complete=time.monotonic(), outcome=OK, process=process)
        return
    value = rng.randrange(1000)
    if roll < 0.7:
        outcome, _ = _write(client, [["INSERT INTO reg(k, v) VALUES(?, ?) ON CONFLICT(k) DO "
                                      "UPDATE SET v = excluded.v", key, value]])
        history.add(f=WRITE, key=key, value=value, invoke=start, complete=time.monotonic(),
                    outcome=outcome, process=process)
        return
    expected = rng.randrange(1000) if rng.random() < 0.5 else _last_written(history, key)
    outcome, results = _write(client, [["UPDATE reg SET v = ? WHERE k = ? AND v = ?", value,
                                        key, expected]])
    applied = None if outcome == UNKNOWN else bool(results and results[0].get("rows_affected"))
    history.add(f=CAS, key=key, value=value, expected=expected, applied=applied, invoke=start,
                complete=time.monotonic(), outcome=outcome, process=process)


def _last_written(history: History, key: int) -> int:
    with history.lock:
        for op in reversed(history.ops):
            if op["key"] == key and op["f"] in (WRITE, CAS):
                return int(op["value"])
    return 0


def register_final(client: Cluster, history: History, budget: float) -> list[str]:
    ops = [Op(o["key"], o["f"], o["value"], o["invoke"],
              None if o["outcome"] == UNKNOWN else o["complete"], o.get("expected"),
              o.get("applied", True), o["process"])
           for o in history.ops if o["outcome"] != FAILED]
    verdict = check(ops, budget=budget)
    return [] if verdict.ok else [f"not linearizable: {verdict.reason}"]


def bank_setup(client: Cluster) -> None:
    statements = ["CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)"]
    statements += [["INSERT INTO acct VALUES(?, ?)", i, OPENING] for i in range(ACCOUNTS)]
    assert _write(client, statements, transaction=True)[0] == OK


def bank_op(client: Cluster, rng: random.Random, history: History, process: int) -> None:
    start = time.monotonic()
    if rng.random() < 0.5:
        rows = _read(client, "SELECT sum(bal), count(*) FROM acct")
        if rows is not None:
            history.add(f="total", value=rows[0], invoke=start, complete=time.monotonic(),
                        outcome=OK, process=process)
        return
    a, b = rng.sample(range(ACCOUNTS), 2)
    amount = rng.randrange(1, 20)
    outcome, _ = _write(client, [["UPDATE acct SET bal = bal - ? WHERE id = ?", amount, a],
                                 ["UPDATE acct SET bal = bal + ? WHERE id = ?", amount, b]],
                        transaction=True)
    history.add(f="transfer", value=[a, b, amount], invoke=start, complete=time.monotonic(),
                outcome=outcome, process=process)


def bank_final(client: Cluster, history: History, budget: float) -> list[str]:
    want = [ACCOUNTS * OPENING, ACCOUNTS]
    totals = [o["value"] for o in history.ops if o["f"] == "total"]
    final = _read(client, "SELECT sum(bal), count(*) FROM acct")
    problems = [f"a read saw the total {t}, not {want}" for t in totals if t != want][:5]
    if final is None or final[0] != want:
        problems.append(f"the final total is {final}, not {want}")
    if not totals:
        problems.append("no read of the total succeeded")
    return problems


def set_setup(client: Cluster) -> None:
    assert _write(client, ["CREATE TABLE s (v INTEGER NOT NULL)"])[0] == OK


_counter = iter(range(1, 1 << 62))
_counter_lock = threading.Lock()


def set_op(client: Cluster, rng: random.Random, history: History, process: int) -> None:
    with _counter_lock:
        value = next(_counter)
    start = time.monotonic()
    outcome, _ = _write(client, [["INSERT INTO s(v) VALUES(?)", value]])
    history.add(f="add", value=value, invoke=start, complete=time.monotonic(), outcome=outcome,
                process=process)


def set_final(client: Cluster, history: History, budget: float) -> list[str]:
    rows = _read(client, "SELECT v, count(*) FROM s GROUP BY v")
    if rows is None:
        return ["the final read failed"]
    present = dict((v, n) for v, n in rows)
    acked = [o["value"] for o in history.ops if o["outcome"] == OK]
    failed = {o["value"] for o in history.ops if o["outcome"] == FAILED}
    problems = [f"acknowledged {v} is missing" for v in acked if v not in present][:5]
    problems += [f"{v} is present {n} times" for v, n in present.items() if n != 1][:5]
    problems += [f"{v} failed but is present" for v in failed if v in present][:5]
    return problems


# ---- the config store: a register per key through Consul's KV API (compare-and-set by
# ModifyIndex), and a watch that must see every change of one key, in order, exactly once.

_watched: dict[str, Any] = {}


def kv_setup(store: ConfigStore) -> None:
    watch = store.watch("reg/0", start_index=store.index())
    changes: list[Any] = []

    def follow() -> None:
        with contextlib.suppress(Exception):  # (closed at the end)
            for change in watch:
                changes.append(change)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    _watched.update(watch=watch, changes=changes, thread=thread)


_values = iter(range(1, 1 << 62))  # every value written is unique: CAS by index = by value


def kv_op(store: ConfigStore, rng: random.Random, history: History, process: int) -> None:
    key, roll, start = f"reg/{rng.randrange(KEYS)}", rng.random(), time.monotonic()
    seen = history.last_read.setdefault(process, {})
    try:
        if roll < 0.35:
            entry = store.entry(key)
            value = int(entry.value) if entry else None
            seen[key] = (value, entry.modify_index if entry else 0)
            history.add(f=READ, key=key, value=value, invoke=start, complete=time.monotonic(),
                        outcome=OK, process=process)
            return
        with _counter_lock:
            value = next(_values)
        if roll < 0.7:
            store.put(key, str(value))
            history.add(f=WRITE, key=key, value=value, invoke=start,
                        complete=time.monotonic(), outcome=OK, process=process)
            return
        expected, index = seen.get(key, (None, 0))
        applied = store.compare_and_set(key, index, str(value))
        history.add(f=CAS, key=key, value=value, expected=expected, applied=applied,
                    invoke=start, complete=time.monotonic(), outcome=OK, process=process)
    except Unavailable as e:
        if roll >= 0.35:
            outcome = UNKNOWN if e.maybe_applied else FAILED
            history.add(f=WRITE if roll < 0.7 else CAS, key=key, value=value,
                        expected=seen.get(key, (None, 0))[0], applied=None, invoke=start,
                        complete=time.monotonic(), outcome=outcome, process=process)
    except (ClientError, OSError, ValueError):
        if roll >= 0.35:
            history.add(f=WRITE if roll < 0.7 else CAS, key=key, value=value,
                        expected=seen.get(key, (None, 0))[0], applied=None, invoke=start,
                        complete=time.monotonic(), outcome=UNKNOWN, process=process)


def kv_final(store: ConfigStore, history: History, budget: float) -> list[str]:
    problems = register_final(store, history, budget)
    watch, changes = _watched["watch"], _watched["changes"]
    final = store.entry("reg/0")
    deadline = time.monotonic() + 30
    while final and (not changes or changes[-1].modify_index < final.modify_index):
        if time.monotonic() > deadline:
            problems.append("the watch never reached the key's last change")
            break
        time.sleep(0.1)
    watch.close()
    indexes = [c.index for c in changes]
    if indexes != sorted(set(indexes)):
        problems.append("the watch saw changes out of order, or twice")
    for before, after in zip(changes, changes[1:], strict=False):
        if after.prev is None or after.prev.value != before.value:
            problems.append(f"the watch missed a change before index {after.index}")
            break
    written = {o["value"] for o in history.ops if o["key"] == "reg/0" and o["f"] != READ
               and o["outcome"] != FAILED}
    stray = [c.value for c in changes if c.value is None or int(c.value) not in written]
    if stray:
        problems.append(f"the watch saw values never written: {stray[:3]}")
    applied = {o["value"] for o in history.ops if o["key"] == "reg/0" and o["outcome"] == OK
               and (o["f"] == WRITE or o["f"] == CAS and o["applied"])}
    missing = applied - {int(c.value) for c in changes if c.value is not None}
    if missing:
        problems.append(f"the watch missed acknowledged writes: {sorted(missing)[:3]}")
    return problems


@dataclass(frozen=True)
class Workload:
    setup: Callable[..., Any]
    op: Callable[..., Any]
    final: Callable[..., list[str]]
    client: Callable[..., Any] = Cluster  # (urls, timeout=...)


WORKLOADS: dict[str, Workload] = {
    "register": Workload(register_setup, register_op, register_final),
    "bank": Workload(bank_setup, bank_op, bank_final),
    "set": Workload(set_setup, set_op, set_final),
    "kv": Workload(kv_setup, kv_op, kv_final, ConfigStore),
}


# ---- nemeses: one round of trouble, then repair


def _pick_leader(cluster: LocalCluster) -> str | None:
    try:
        return cluster.leader(timeout=5)
    except TimeoutError:
        return None


def nemesis_kill(cluster: LocalCluster, rng: random.Random, log: list[str]) -> None:
    victim = rng.choice(cluster.ids)
    cluster.kill(victim)
    log.append(f"kill {victim}")
    time.sleep(rng.uniform(0.5, 2.0))
    cluster.start_node(victim)


def nemesis_kill_all(cluster: LocalCluster, rng: random.Random, log: list[str]) -> None:
    for node_id in cluster.ids:
        cluster.kill(node_id)
    log.append("kill all")
    time.sleep(rng.uniform(0.2, 1.0))
    for node_id in cluster.ids:
        cluster.start_node(node_id)


def nemesis_stop_leader(cluster: LocalCluster, rng: random.Random, log: list[str]) -> None:
    leader = _pick_leader(cluster)
    if leader is None:
        return
    cluster.signal(leader, signal.SIGSTOP)
    log.append(f"stop {leader}")
    time.sleep(rng.uniform(1.5, 3.0) * ELECTION_MS / 1000)
    cluster.signal(leader, signal.SIGCONT)


def nemesis_membership(cluster: LocalCluster, rng: random.Random, log: list[str]) -> None:
    """A member (the leader, now and then) removed from the cluster under load, then
    started again with --join: it joins again, and catches up."""
    leader = _pick_leader(cluster)
    if leader is None:
        return
    victim = rng.choice(cluster.ids)
    try:
        code, _ = http("DELETE", cluster.url(leader) + "/remove", {"id": victim}, timeout=5)
    except OSError as e:
        log.append(f"remove {victim} via {leader}: {e}")
        return
    log.append(f"remove {victim} via {leader}: {code}")
    if code != 200:
        return
    time.sleep(rng.uniform(0.3, 1.0))
    cluster.kill(victim)
    others = ",".join(cluster.raft_addr(i) for i in cluster.ids if i != victim)
    cluster.start_node(victim, "--join", others)
    log.append(f"rejoin {victim}")


# ---- nemeses in network namespaces (tools/netns.py): cluster is a NetnsCluster


def _hold(rng: random.Random) -> None:
    time.sleep(rng.uniform(1.5, 4.0) * ELECTION_MS / 1000)


def nemesis_partition_halves(cluster: Any, rng: random.Random, log: list[str]) -> None:
    ips = [cluster.ip(i) for i in cluster.ids]
    rng.shuffle(ips)
    cut = rng.randint(1, len(ips) // 2)
    sides = [ips[:cut], ips[cut:]]
    cluster.net.partition(sides)
    log.append(f"partition {sides}")
    _hold(rng)
    cluster.net.heal()


def nemesis_partition_leader(cluster: Any, rng: random.Random, log: list[str]) -> None:
    leader = _pick_leader(cluster)
    if leader is None:
        return
    others = [cluster.ip(i) for i in cluster.ids if i != leader]
    cluster.net.partition([[cluster.ip(leader)], others])
    log.append(f"isolate leader {leader}")
    _hold(rng)
    cluster.net.heal()


def nemesis_partition_one_way(cluster: Any, rng: random.Random, log: list[str]) -> None:
    leader = _pick_leader(cluster) or rng.choice(cluster.ids)
    other = rng.choice([i for i in cluster.ids if i != leader])
    deaf, heard = (leader, other) if rng.random() < 0.5 else (other, leader)
    cluster.net.drop_from(cluster.ip(deaf), [cluster.ip(heard)])
    log.append(f"{deaf} no longer hears {heard}")
    _hold(rng)
    cluster.net.heal()


def nemesis_latency(cluster: Any, rng: random.Random, log: list[str]) -> None:
    """200 ms each way and 20% loss (tc netem); where the kernel has no netem, the loss
    alone (iptables), said so in the log."""
    if netem_unavailable(cluster.net) is None:
        cluster.net.delay(200, loss_percent=20)
        log.append("200 ms latency, 20% loss")
    else:
        cluster.net.loss(0.2)
        log.append("20% loss (no netem here: no added latency)")
    time.sleep(rng.uniform(2.0, 4.0))
    cluster.net.heal()


NEMESES: dict[str, Callable[[Any, random.Random, list[str]], None] | None] = {
    "none": None, "kill": nemesis_kill, "kill-all": nemesis_kill_all,
    "stop-leader": nemesis_stop_leader, "membership": nemesis_membership,
    "partition-halves": nemesis_partition_halves, "partition-leader": nemesis_partition_leader,
    "partition-one-way": nemesis_partition_one_way, "latency": nemesis_latency,
}
NETNS_NEMESES = {"partition-halves", "partition-leader", "partition-one-way", "latency"}


# ---- a run


def run(workload: str, nemesis: str, seconds: float, clients: int = 5, seed: int = 0,
        budget: float = 30.0, slot: int = 0) -> dict[str, Any]:
    kind = WORKLOADS[workload]
    setup, op, final, make = kind.setup, kind.op, kind.final, kind.client
    act = NEMESES[nemesis]
    rng = random.Random(seed)
    timeouts = ["--heartbeat-ms", "50", "--election-ms", str(ELECTION_MS)]
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        if nemesis in NETNS_NEMESES:
            net = stack.enter_context(Network(3, slot))
            cluster: LocalCluster = NetnsCluster(net, d, extra_args=timeouts)
        else:
            cluster = LocalCluster(3, d, extra_args=timeouts)
        cluster.start()
        urls = [cluster.url(i) for i in cluster.ids]
        history, log, problems = History(), [], []
        try:
            cluster.leader(timeout=30)
            setup(make(urls, timeout=10))
            stop = time.monotonic() + seconds

            def worker(process: int) -> None:
                client, own = make(urls, timeout=5), random.Random(seed * 1000 + process)
                while time.monotonic() < stop:
                    op(client, own, history, process)

            threads = [threading.Thread(target=worker, args=(p,)) for p in range(clients)]
            for t in threads:
                t.start()
            while act is not None and time.monotonic() < stop - 1:
                time.sleep(rng.uniform(1.0, 3.0))
                if time.monotonic() < stop - 1:
                    act(cluster, rng, log)
            for t in threads:
                t.join()
            # Heal: the network whole, every node up and running, then converge.
            if isinstance(cluster, NetnsCluster):
                cluster.net.heal()
            for node_id in cluster.ids:
                if node_id not in cluster.running():
                    cluster.start_node(node_id)
                else:
                    cluster.signal(node_id, signal.SIGCONT)
            leader = cluster.leader(timeout=30)
            commit = cluster.status(leader)["store"]["raft"]["commit_index"]
            cluster.wait_applied(commit, timeout=60)
            problems += final(make(urls, timeout=10), history, budget)
        except Exception as e:  # the run itself failed: that is a finding too
            problems.append(f"run failed: {type(e).__name__}: {e}")
        finally:
            codes = cluster.stop()
        dumps = [canonical(os.path.join(d, i, "db.sqlite")) for i in cluster.ids]
    if any(code not in (0, -15) for code in codes):
        problems.append(f"exit codes at stop: {codes}")
    if len({dump for dump, _ in dumps}) != 1:
        problems.append("the nodes' canonical dumps differ")
    problems += [f"integrity_check: {i}" for _, i in dumps if i != "ok"]
    return {"workload": workload, "nemesis": nemesis, "seconds": seconds, "seed": seed,
            "ops": history.counts(), "faults": len(log), "ok": not problems,
            "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="register")
    parser.add_argument("--nemesis", choices=sorted(NEMESES), default="kill")
    parser.add_argument("--all", action="store_true", help="every workload under every nemesis")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    parser.add_argument("--slot", type=int, default=0, help="the namespaces' slot (0-250): "
                        "runs in different slots can go at the same time")
    args = parser.parse_args()
    pairs = ([(w, n) for w in sorted(WORKLOADS) for n in NEMESES] if args.all
             else [(args.workload, args.nemesis)])
    why = namespaces_unavailable() if any(n in NETNS_NEMESES for _, n in pairs) else None
    if why is not None:
        print(f"skipping the nemeses that need network namespaces: {why}", file=sys.stderr)
        if not args.all:
            return 2
        pairs = [(w, n) for w, n in pairs if n not in NETNS_NEMESES]
    failed = 0
    for workload, nemesis in pairs:
        result = run(workload, nemesis, args.seconds, args.clients, args.seed, slot=args.slot)
        failed += not result["ok"]
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            verdict = "ok" if result["ok"] else "FAILED: " + "; ".join(result["problems"])
            print(f"{workload:8} {nemesis:17} {args.seconds:g}s ops {result['ops']} "
                  f"faults {result['faults']}: {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
