"""Prometheus metrics (prometheus-client): one registry per process role or app, its HTTP and
GraphQL families, and collectors that read other parts' counters at scrape time.

Per-request cost is a few dictionary lookups: histograms' labelled children are cached by
prometheus-client, and operation names are bounded (`OperationNames`), so a client sending
random names cannot grow the registry. Values that live elsewhere (ingest counters, bus stats,
pool sizes) are read when scraped, never pushed on the hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Seconds: a cached query answers in ~0.2 ms, a cold report in a second or more.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Distinct GraphQL operation names a process labels; later names count as "other".
MAX_OPERATION_NAMES = 200
MAX_OPERATION_NAME_LENGTH = 64


class OperationNames:
    """Bounded label values: the first `limit` names seen keep their own series."""

    def __init__(self, limit: int = MAX_OPERATION_NAMES) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def label(self, name: Any) -> str:
        if not isinstance(name, str) or not name:
            return "anonymous"
        if name in self._seen:
            return name
        if len(name) > MAX_OPERATION_NAME_LENGTH or not name.replace("_", "a").isalnum():
            return "other"
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(name)
        return name


class _Callback(Collector):
    """A collector whose metrics a function builds at scrape time."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self._build = build

    def collect(self) -> Iterable[Metric]:
        return self._build()


class Metrics:
    """The registry of one process (or one app, in tests) and its own families."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            # CPU, memory, open files, start time; Python version and GC.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.http_seconds = Histogram(
            "sepulki_http_request_duration_seconds",
            "HTTP requests by method, route and status class.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.graphql_seconds = Histogram(
            "sepulki_graphql_operation_duration_seconds",
            "GraphQL operations over HTTP by operation name (bounded; `other` past the limit).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.graphql_errors = Counter(
            "sepulki_graphql_errors",
            "GraphQL errors by extensions.code.",
            ["code"],
            registry=self.registry,
        )
        self.operations = OperationNames()
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(name, documentation, list(labels), registry=self.registry)

    def collect_with(self, build: Callable[[], Iterable[Metric]]) -> None:
        """Registers `build`, called at every scrape for metrics read from elsewhere."""
        self.registry.register(_Callback(build))

    def refresh_with(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Registers an async refresh run before each scrape (values that need a query)."""
        self._refreshers.append(refresh)

    async def render(self) -> bytes:
        for refresh in self._refreshers:
            await refresh()
        return generate_latest(self.registry)


def pool_metrics(pool: Any) -> Iterable[Metric]:
    """asyncpg pool use: open, idle and maximum connections."""
    family = GaugeMetricFamily(
        "sepulki_db_pool_connections", "PostgreSQL pool connections by state.", labels=["state"]
    )
    size = pool.get_size()
    idle = pool.get_idle_size()
    family.add_metric(["open"], size)
    family.add_metric(["idle"], idle)
    family.add_metric(["in_use"], size - idle)
    family.add_metric(["max"], pool.get_max_size())
    return [family]


def bus_lag_metrics(events: Any) -> Iterable[Metric]:
    """How far the event bus lags (app.infra.bus `Events.lag`): what waits for Redis to publish,
    and the deepest local subscriber queue (a subscriber closed at its limit resumes with `after`)."""
    backlog, deepest = events.lag()
    yield GaugeMetricFamily(
        "sepulki_bus_backlog_messages",
        "Committed events whose publish to Redis failed, waiting to be retried in order.",
        value=backlog,
    )
    yield GaugeMetricFamily(
        "sepulki_bus_subscriber_queue_max",
        "Events queued for the most lagging local subscriber (it is closed at its queue limit).",
        value=deepest,
    )
