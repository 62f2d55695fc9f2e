"""Prometheus metrics of a cache, through the official ``prometheus_client`` (``pip install 'git-repocache[metrics]'``).

Two kinds of figures, kept apart on purpose:

* **The root's counters and gauges** (``repocache_hits_total``, ``repocache_misses_total``, ...,
  ``repocache_bytes_used``, ``repocache_bytes_limit``, ``repocache_entries``) are read from the index at scrape
  time, so any one process's endpoint shows the whole root, every process that shares it included.
* **This process's distributions** (``repocache_checkout_seconds``, ``repocache_fetch_seconds``,
  ``repocache_fetch_bytes_total``, ``repocache_evictions_by_reason_total``, ...) come from the cache's events.

Example:
    ```python
    import repocache
    import repocache.metrics

    cache = repocache.RepoCache(max_bytes="50GB")
    server, thread = repocache.metrics.start_http_server(cache, 9464)  # 127.0.0.1:9464/metrics
    ```

    Or register on an application's own registry with :func:`instrument`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("repocache.metrics needs prometheus_client: pip install 'git-repocache[metrics]'") from exc

from repocache.counters import Counter
from repocache.events import (
    BudgetWaitEvent,
    Event,
    EvictionEvent,
    FetchEvent,
    HitEvent,
    MaintenanceEvent,
    MissEvent,
    PublishEvent,
    ServeEvent,
    StaleEvent,
)

if TYPE_CHECKING:
    from repocache.cache import RepoCache

__all__ = ["CacheCollector", "Metrics", "instrument", "start_http_server"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_COUNTERS = tuple((counter.value, counter.description.rstrip(".")) for counter in Counter)


class CacheCollector(Collector):
    """Reads the root's shared counters and its bytes from the index at every scrape."""

    def __init__(self, cache: RepoCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Any]:
        """The metric families of the root, as of now."""
        stats = self._cache.stats()
        labels = ["root"]
        root = str(self._cache.root)
        for name, documentation in _COUNTERS:
            family = CounterMetricFamily(f"repocache_{name}", f"{documentation} (whole root)", labels=labels)
            family.add_metric([root], getattr(stats, name))
            yield family
        used = GaugeMetricFamily("repocache_bytes_used", "Bytes of the mirrors on disk", labels=labels)
        used.add_metric([root], stats.bytes_used)
        yield used
        if stats.bytes_limit is not None:
            limit = GaugeMetricFamily("repocache_bytes_limit", "The byte budget (max_bytes)", labels=labels)
            limit.add_metric([root], stats.bytes_limit)
            yield limit
        entries = GaugeMetricFamily("repocache_entries", "Repositories on disk", labels=labels)
        entries.add_metric([root], stats.entries)
        yield entries


class Metrics:
    """This process's event metrics of one cache, registered on ``registry`` with the root's collector.

    Attributes:
        registry: where the metrics are registered.
    """

    def __init__(self, cache: RepoCache, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._collector = CacheCollector(cache)
        registry.register(self._collector)
        self.checkout_seconds = prometheus_client.Histogram(
            "repocache_checkout_seconds",
            "Time until a checkout was handed out, by source (this process)",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fetch_seconds = prometheus_client.Histogram(
            "repocache_fetch_seconds",
            "Fetch duration (this process)",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fetch_bytes = prometheus_client.Counter(
            "repocache_fetch_bytes", "Bytes added to mirrors by fetches (this process)", registry=registry
        )
        self.stale = prometheus_client.Counter(
            "repocache_stale_served", "Stale copies served after a failed fetch (this process)", registry=registry
        )
        self.evictions = prometheus_client.Counter(
            "repocache_evictions_by_reason", "Evictions by reason (this process)", ["reason"], registry=registry
        )
        self.budget_wait_seconds = prometheus_client.Histogram(
            "repocache_budget_wait_seconds",
            "Time misses waited for held bytes (this process)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.maintenance_seconds = prometheus_client.Histogram(
            "repocache_maintenance_seconds",
            "Maintenance duration (this process)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.publish_seconds = prometheus_client.Histogram(
            "repocache_publish_seconds",
            "Uploads to the cold store by reason (this process)",
            ["reason"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.serve_requests = prometheus_client.Counter(
            "repocache_serve_requests",
            "Requests the git server answered, by service and outcome (this process)",
            ["service", "outcome"],
            registry=registry,
        )
        self.serve_bytes = prometheus_client.Counter(
            "repocache_serve_bytes", "Body bytes the git server sent (this process)", registry=registry
        )
        self.serve_shared = prometheus_client.Counter(
            "repocache_serve_pack_shares",
            "Answers the git server took from a pack generation another request started (this process)",
            registry=registry,
        )
        self.serve_remembered = prometheus_client.Counter(
            "repocache_serve_remembered_answers",
            "Advertisements and ref listings the git server sent from memory, without running upload-pack "
            "(this process)",
            registry=registry,
        )
        self.serve_queue_seconds = prometheus_client.Histogram(
            "repocache_serve_queue_seconds",
            "Time pack generations waited for a slot (this process)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.serve_queue_length = prometheus_client.Gauge(
            "repocache_serve_queue_length",
            "Pack generations waiting for a slot, as of the last answer (this process)",
            registry=registry,
        )
        self.serve_auth_checks = prometheus_client.Counter(
            "repocache_serve_auth_checks",
            "Clients' credentials checked against upstream by the git server, by outcome (allowed, refused, error) "
            "and whether the answer was reused (cached: true, no upstream contact) (this process)",
            ["outcome", "cached"],
            registry=registry,
        )
        self.unsubscribe = cache.subscribe(self.observe)

    def observe(self, event: Event) -> None:
        """Record one event (the cache calls this for every event once subscribed)."""
        if isinstance(event, HitEvent):
            self.checkout_seconds.labels("hit").observe(event.seconds)
        elif isinstance(event, MissEvent):
            self.checkout_seconds.labels(event.source).observe(event.seconds)
        elif isinstance(event, FetchEvent):
            self.fetch_seconds.labels("ok" if event.ok else "error").observe(event.seconds)
            if event.bytes_added > 0:
                self.fetch_bytes.inc(event.bytes_added)
        elif isinstance(event, StaleEvent):
            self.stale.inc()
        elif isinstance(event, EvictionEvent):
            self.evictions.labels(event.reason).inc()
        elif isinstance(event, BudgetWaitEvent):
            self.budget_wait_seconds.observe(event.seconds)
        elif isinstance(event, MaintenanceEvent):
            self.maintenance_seconds.observe(event.seconds)
        elif isinstance(event, PublishEvent):
            self.publish_seconds.labels(event.reason).observe(event.seconds)
        elif isinstance(event, ServeEvent):
            self.serve_requests.labels(event.service, event.outcome).inc()
            self.serve_bytes.inc(event.bytes_sent)
            if event.shared:
                self.serve_shared.inc()
            if event.remembered:
                self.serve_remembered.inc()
            if event.service == "git-upload-pack" and event.outcome in ("served", "stale"):
                self.serve_queue_seconds.observe(event.queued_seconds)
            self.serve_queue_length.set(event.queue_length)
            if event.auth in ("allowed", "refused", "error"):
                self.serve_auth_checks.labels(event.auth, "true" if event.auth_cached else "false").inc()


def instrument(cache: RepoCache, registry: CollectorRegistry | None = None) -> Metrics:
    """Expose ``cache`` on ``registry`` (default: prometheus_client's global ``REGISTRY``)."""
    return Metrics(cache, prometheus_client.REGISTRY if registry is None else registry)


def start_http_server(
    cache: RepoCache, port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, Any]:
    """Serve ``cache``'s metrics at ``http://addr:port/metrics`` from a daemon thread.

    Args:
        cache: the cache to expose.
        port: the TCP port (0 picks a free one: read it from ``server.server_port``).
        addr: the address to listen on; loopback by default (expose it deliberately).
        registry: a registry of its own by default, so two caches in one process do not collide.

    Returns:
        ``(server, thread)`` as ``prometheus_client.start_http_server`` returns them; ``server.shutdown()`` stops
        serving and ``server.server_close()`` closes the listening socket.
    """
    registry = CollectorRegistry() if registry is None else registry
    instrument(cache, registry)
    server, thread = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    return server, thread
