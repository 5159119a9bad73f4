"""What a node counts and times, in Prometheus' terms (prometheus_client), for GET /metrics
and /status.

Each node has a registry of its own, so several nodes in one process (tests, an embedding
application) never mix their figures. Counters and histograms are updated where things
happen (the loop, the persist and apply threads); the Raft figures (term, indexes, the lag
of each follower) are read from the node when the registry is scraped, so they cost nothing
in between. An observation costs about a microsecond (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# No `_created` series beside every counter and histogram: noise on a dashboard. (This is
# prometheus_client's process-wide setting.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds, from a fast local fsync to a slow disk under load.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.leader_changes = Counter(
            "raftsql_raft_leader_changes", "Times this node saw a new leader", registry=r)
        self.proposals = Counter(
            "raftsql_raft_proposals", "Commands proposed on this node as leader", registry=r)
        self.fsync = Histogram(
            "raftsql_fsync_duration_seconds", "Writing a batch of the Raft log durably "
            "(write and fsync)", buckets=DURATION_BUCKETS, registry=r)
        self.apply = Histogram(
            "raftsql_apply_duration_seconds", "Applying a batch of committed entries to the "
            "state machine", buckets=DURATION_BUCKETS, registry=r)
        self.snapshot = Histogram(
            "raftsql_snapshot_duration_seconds", "Taking and storing a snapshot",
            buckets=DURATION_BUCKETS, registry=r)
        self.snapshot_bytes = Counter(
            "raftsql_snapshot_bytes", "Bytes of the snapshots taken", registry=r)
        self.snapshots_installed = Counter(
            "raftsql_snapshot_installs", "Snapshots received from a leader and restored",
            registry=r)

    def watch(self, raft_figures: Callable[[], dict[str, Any]]) -> None:
        """Read the Raft figures from `raft_figures()` (Node.status()['raft'], whose `lag`,
        on the leader, maps each follower to the entries it is behind) whenever the registry
        is scraped."""
        self.registry.register(_RaftCollector(raft_figures))

    def summary(self) -> dict[str, Any]:
        """The counters and histograms as /status shows them: counts, and sums in seconds.
        (Read from each metric itself: the registry would also collect the Raft figures.)"""
        def value(metric: Counter | Histogram, suffix: str) -> float:
            return sum(s.value for family in metric.collect() for s in family.samples
                       if s.name.endswith(suffix))

        def timing(h: Histogram) -> dict[str, float]:
            return {"count": int(value(h, "_count")), "seconds": round(value(h, "_sum"), 6)}

        return {
            "leader_changes": int(value(self.leader_changes, "_total")),
            "proposals": int(value(self.proposals, "_total")),
            "fsync": timing(self.fsync),
            "apply": timing(self.apply),
            "snapshot": {**timing(self.snapshot),
                         "bytes": int(value(self.snapshot_bytes, "_total")),
                         "installed": int(value(self.snapshots_installed, "_total"))},
        }


_GAUGES = (
    ("term", "raftsql_raft_term", "The node's current term"),
    ("commit_index", "raftsql_raft_commit_index", "The highest log index known committed"),
    ("applied_index", "raftsql_raft_applied_index", "The highest log index applied"),
    ("first_log_index", "raftsql_raft_first_log_index", "The first index in the log"),
    ("last_log_index", "raftsql_raft_last_log_index", "The last index in the log"),
    ("snapshot_index", "raftsql_snapshot_index", "The last index the latest snapshot holds"),
    ("voters", "raftsql_raft_voters", "Voters in the cluster's configuration"),
)


class _RaftCollector(Collector):
    def __init__(self, figures: Callable[[], dict[str, Any]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        raft = self._figures()
        for key, name, text in _GAUGES:
            yield GaugeMetricFamily(name, text, value=raft.get(key, 0))
        yield GaugeMetricFamily("raftsql_raft_leader", "1 while this node leads",
                                value=1 if raft.get("state") == "Leader" else 0)
        lag = GaugeMetricFamily("raftsql_raft_follower_lag_entries", "On the leader: how "
                                "many entries each follower's log is behind", labels=["node"])
        for node, behind in sorted(raft.get("lag", {}).items()):
            lag.add_metric([node], behind)
        yield lag
