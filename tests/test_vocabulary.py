"""Each vocabulary has one list: the counters reach the index, the stats, the metrics and the CLI from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.counters import Counter
from repocache.index import COUNTERS
from repocache.models import Stats
from repocache.testing import UpstreamFactory


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


def test_failed_clones_are_counted_in_stats_the_cli_and_the_metrics(
    cache_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from repocache import CloneError
    from repocache.cli import main

    missing = tmp_path / "no-such-upstream"
    with RepoCache(cache_root) as cache:
        for _ in range(3):
            with pytest.raises(CloneError):
                cache.ensure(missing)
        stats = cache.stats()
    assert (stats.clone_errors, stats.clones, stats.misses) == (3, 0, 0)
    assert main(["--root", str(cache_root), "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clone_errors"] == 3


def test_an_unusable_artifact_is_counted_as_a_failed_restore(tmp_path: Path, served: UpstreamFactory) -> None:
    upstream = served.create("restore-error")
    upstream.commits(3)
    store = tmp_path / "store"
    with RepoCache(tmp_path / "publisher", cold_store=store) as publisher:
        manifest = publisher.publish(upstream.url)
    for artifact in store.rglob("*"):
        if artifact.is_file() and artifact.stat().st_size == manifest.size_bytes:
            data = bytearray(artifact.read_bytes())
            data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum refuses it
            artifact.write_bytes(bytes(data))
    with RepoCache(tmp_path / "host", cold_store=store) as cache, pytest.warns(RuntimeWarning, match="unusable"):
        with cache.checkout(upstream.url) as co:
            assert co.source == "clone"
        stats = cache.stats()
    assert (stats.restore_errors, stats.restores, stats.clones) == (1, 0, 1)
