"""The API's own figures: the middleware counts and times every request; GET /metrics
(raftsql/http/rqlite/cluster.py) shows them after the node's (raftsql/node/metrics.py)."""

from __future__ import annotations

from time import perf_counter

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from raftsql.node.metrics import DURATION_BUCKETS

UNMATCHED = "unmatched"  # requests for no route: one label, whatever the path


class HttpMetrics:
    """Requests by route (the route's pattern, e.g. /v1/kv/{key}, so labels stay few) and
    status code, and their durations by route."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("raftsql_http_requests", "HTTP requests answered",
                                ["route", "code"], registry=self.registry)
        self.duration = Histogram("raftsql_http_request_duration_seconds",
                                  "Time to answer an HTTP request", ["route"],
                                  buckets=DURATION_BUCKETS, registry=self.registry)

    def observe(self, request: web.Request, status: int, start: float) -> None:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else UNMATCHED
        self.requests.labels(name, str(status)).inc()
        self.duration.labels(name).observe(perf_counter() - start)

    def total(self) -> int:
        return int(sum(s.value for family in self.requests.collect() for s in family.samples
                       if s.name.endswith("_total")))
