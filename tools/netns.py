"""Each node in a network namespace of its own, for the nemeses of tools/jepsen.py.

    namespaces_unavailable()   # None, or why these nemeses cannot run here
    with Network(3) as net:    # rs0-br0 (10.77.0.254) and rs0-n1..rs0-n3 (10.77.0.1..3)
        cluster = NetnsCluster(net, base_dir, extra_args=[...])
        net.partition([["10.77.0.1"], ["10.77.0.2", "10.77.0.3"]])
        net.heal()

The bridge `rs0-br0` in this namespace joins a veth pair per node (`rs0-h<i>` here, `eth0`
in namespace `rs0-n<i>`). This process (the clients, the checker) reaches every node through
the bridge; the nodes reach each other through it too, and that is where faults go:
iptables rules inside a node's namespace drop what it receives from the other side of a
partition (silently, as a lost packet: TCP retransmits until timeouts give up), or a share
of everything (`loss`); `tc netem` adds latency when the kernel has it (CONFIG_NET_SCH_NETEM).
Needs root, `ip` (iproute2) and `iptables`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftsql.cli.launcher import LocalCluster  # noqa: E402

PREFIX = "rs"  # names: rs<slot>-br0, rs<slot>-n<i>, rs<slot>-h<i>; addresses 10.77.<slot>.<i>


def _run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 iptables)"
    probe = f"{PREFIX}-probe"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        rule = _run("iptables", "-A", "INPUT", "-s", "10.0.0.1", "-j", "DROP", ns=probe,
                    check=False)
        if rule.returncode != 0:
            return f"iptables does not work in a namespace: {rule.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def netem_unavailable(net: Network) -> str | None:
    """Why `tc netem` (latency) cannot be used in `net` (None: it can)."""
    ns = net.ns(net.ips[0])
    probe = _run("tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms", ns=ns,
                 check=False)
    if probe.returncode != 0:
        return f"tc netem is unavailable: {probe.stderr.strip()} (a kernel without " \
               "CONFIG_NET_SCH_NETEM?)"
    _run("tc", "qdisc", "del", "dev", "eth0", "root", ns=ns, check=False)
    return None


class Network:
    """The bridge and `n` namespaces, removed on exit (and any left by an earlier run in
    the same `slot`: runs in different slots can go at the same time)."""

    def __init__(self, n: int, slot: int = 0) -> None:
        self.n = n
        self.prefix, subnet = f"{PREFIX}{slot}", f"10.77.{slot}"
        self.bridge = f"{self.prefix}-br0"
        self.gateway = f"{subnet}.254"
        self.ips = [f"{subnet}.{i}" for i in range(1, n + 1)]
        self.delayed = False

    def ns(self, ip: str) -> str:
        return f"{self.prefix}-n{self.ips.index(ip) + 1}"

    def __enter__(self) -> Network:
        self.remove()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, ip in enumerate(self.ips, 1):
            ns, host_end = f"{self.prefix}-n{i}", f"{self.prefix}-h{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
            _run("ip", "link", "set", host_end, "master", self.bridge)
            _run("ip", "link", "set", host_end, "up")
            _run("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
            _run("ip", "link", "set", "eth0", "up", ns=ns)
            _run("ip", "link", "set", "lo", "up", ns=ns)
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for i in range(1, 10):
            _run("ip", "netns", "del", f"{self.prefix}-n{i}", check=False)
            _run("ip", "link", "del", f"{self.prefix}-h{i}", check=False)
        _run("ip", "link", "del", self.bridge, check=False)

    # ---- faults

    def drop_from(self, ip: str, sources: Sequence[str]) -> None:
        """`ip` hears nothing more from `sources` (one way: what it sends still arrives)."""
        for src in sources:
            _run("iptables", "-A", "INPUT", "-s", src, "-j", "DROP", ns=self.ns(ip))

    def partition(self, sides: Sequence[Sequence[str]]) -> None:
        """No node hears any node of another side."""
        for side in sides:
            others = [ip for s in sides if s is not side for ip in s]
            for ip in side:
                self.drop_from(ip, others)

    def loss(self, probability: float) -> None:
        """Every node loses that share of what it receives from the others."""
        for ip in self.ips:
            for src in self.ips:
                if src != ip:
                    _run("iptables", "-A", "INPUT", "-s", src, "-m", "statistic", "--mode",
                         "random", "--probability", f"{probability}", "-j", "DROP",
                         ns=self.ns(ip))

    def delay(self, ms: int, loss_percent: int = 0) -> None:
        """`tc netem` on every node's interface: `ms` of latency (and loss) each way."""
        for ip in self.ips:
            args = ["delay", f"{ms}ms"] + (["loss", f"{loss_percent}%"] if loss_percent else [])
            _run("tc", "qdisc", "add", "dev", "eth0", "root", "netem", *args, ns=self.ns(ip))
        self.delayed = True

    def heal(self) -> None:
        for ip in self.ips:
            _run("iptables", "-F", "INPUT", ns=self.ns(ip))
            if self.delayed:
                _run("tc", "qdisc", "del", "dev", "eth0", "root", ns=self.ns(ip), check=False)
        self.delayed = False


class NetnsCluster(LocalCluster):
    """LocalCluster with node i in namespace rs-n<i> at 10.77.0.<i>, HTTP on 4001 and Raft on
    4002 as rqlite deploys them; restarted with the same command line."""

    def __init__(self, net: Network, base_dir: str, **kwargs: Any) -> None:
        super().__init__(net.n, base_dir, http_ports=[4001] * net.n, raft_ports=[4002] * net.n,
                         **kwargs)
        self.net = net

    def ip(self, node_id: str) -> str:
        return self.net.ips[self.ids.index(node_id)]

    def http_addr(self, node_id: str) -> str:
        return f"{self.ip(node_id)}:4001"

    def raft_addr(self, node_id: str) -> str:
        return f"{self.ip(node_id)}:4002"

    def command(self, node_id: str, *args: str) -> list[str]:
        # `ip netns exec` execs the command: signals reach the node itself.
        return ["ip", "netns", "exec", self.net.ns(self.ip(node_id)),
                *super().command(node_id, *args)]
