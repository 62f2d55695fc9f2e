"""Each vocabulary has one list: the counters reach the index, the stats, the metrics and the CLI from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from repocache import RepoCache
from repocache.counters import Counter
from repocache.index import COUNTERS
from repocache.models import Stats


def test_every_counter_is_a_stats_field_and_an_index_counter() -> None:
    fields = [f.name for f in dataclasses.fields(Stats)]
    assert [c.value for c in Counter] == fields[: len(Counter)]
    assert tuple(c.value for c in Counter) == COUNTERS
    assert all(c.description.endswith(".") and len(c.description) > 10 for c in Counter)


def test_stats_read_every_counter_back(cache_root: Path) -> None:
    with RepoCache(cache_root) as cache:
        for counter in Counter:
            cache._context.index.count(counter)
        stats = cache.stats()
    assert all(getattr(stats, counter.value) == 1 for counter in Counter)


def test_metrics_export_every_counter(cache_root: Path) -> None:
    prometheus_client = __import__("prometheus_client")
    from repocache.metrics import CacheCollector

    registry = prometheus_client.CollectorRegistry()
    with RepoCache(cache_root) as cache:
        registry.register(CacheCollector(cache))
        names = {metric.name for metric in registry.collect()}
    assert {f"repocache_{c.value}" for c in Counter} <= names
