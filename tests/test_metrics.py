"""Prometheus metrics scraped over real HTTP on 127.0.0.1: the root's counters come from the index."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from repocache import RepoCache, metrics
from repocache.testing import UpstreamFactory
from tests.helpers import Worker


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "root")
            samples[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return samples


def test_a_scrape_shows_the_whole_root_and_this_processes_latencies(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    one, two = upstreams.create("one"), upstreams.create("two")
    with RepoCache(cache_root, max_bytes="1GB", fetch_ttl=3600) as cache:
        server, thread = metrics.start_http_server(cache, 0)
        try:
            port = server.server_port
            cache.ensure(one.url)
            with cache.checkout(one.url):
                pass
            # Another process using the same root: its clone must show in this process's scrape.
            other = Worker({"root": str(cache_root), "url": two.url, "action": "ensure"})
            other.result()
            scraped = _scrape(port)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
        stats = cache.stats()
    assert scraped["repocache_clones_total"] == stats.clones == 2
    assert scraped["repocache_hits_total"] == stats.hits >= 1
    assert scraped["repocache_misses_total"] == stats.misses == 2
    assert scraped["repocache_entries"] == 2
    assert scraped["repocache_bytes_used"] == stats.bytes_used > 0
    assert scraped["repocache_bytes_limit"] == 1_000_000_000
    # Latencies are this process's: one clone and one hit here, none of the other process's.
    assert scraped["repocache_checkout_seconds_count{source=clone}"] == 1
    assert scraped["repocache_checkout_seconds_count{source=hit}"] == 1


def test_two_caches_in_one_process_get_endpoints_of_their_own(tmp_path: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("shared")
    with RepoCache(tmp_path / "a") as first, RepoCache(tmp_path / "b") as second:
        servers = [metrics.start_http_server(first, 0), metrics.start_http_server(second, 0)]
        try:
            first.ensure(upstream.url)
            a, b = (_scrape(server.server_port) for server, _thread in servers)
        finally:
            for server, thread in servers:
                server.shutdown()
                server.server_close()
                thread.join(timeout=10)
    assert a["repocache_clones_total"] == 1
    assert b["repocache_clones_total"] == 0
