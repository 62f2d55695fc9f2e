"""Typed events handed to hooks (``on_event=`` and ``subscribe``) for every outcome, from real operations."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

from repocache import ConfigError, RepoCache
from repocache.events import (
    CloneEvent,
    Event,
    EvictionEvent,
    FetchEvent,
    HitEvent,
    MissEvent,
    PublishEvent,
    RestoreEvent,
    StaleEvent,
)
from repocache.testing import UpstreamFactory


def test_every_outcome_of_a_checkout_reaches_the_hook_as_a_typed_event(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("evented")
    seen: list[Event] = []
    with RepoCache(cache_root, on_event=seen.append) as cache:
        with cache.checkout(upstream.url):
            pass
        assert [type(e) for e in seen] == [CloneEvent, MissEvent]
        clone, miss = seen
        assert isinstance(clone, CloneEvent)
        assert isinstance(miss, MissEvent) and miss.source == "clone" and miss.seconds >= clone.seconds
        assert clone.url == cache.info(upstream.url).url  # type: ignore[union-attr]
        assert clone.size_bytes == cache.info(upstream.url).size_bytes > 0  # type: ignore[union-attr]
        assert clone.seconds > 0

        seen.clear()
        upstream.commits(3, size=64 * 1024)
        with cache.checkout(upstream.url) as co:
            assert co.fetched
        fetch, hit = seen
        assert isinstance(fetch, FetchEvent) and fetch.ok and fetch.error is None
        assert fetch.bytes_added > 0 and fetch.size_bytes == cache.info(upstream.url).size_bytes  # type: ignore[union-attr]
        assert isinstance(hit, HitEvent) and hit.fetched and hit.seconds >= fetch.seconds

        seen.clear()
        assert cache.evict(upstream.url)
        (eviction,) = seen
        assert isinstance(eviction, EvictionEvent) and eviction.reason == "explicit"
        assert eviction.size_bytes == fetch.size_bytes


def test_a_failed_fetch_is_reported_as_a_failed_fetch_and_a_stale_copy(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("dying")
    seen: list[Event] = []
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
        cache.subscribe(seen.append)
        os.rename(upstream.path, str(upstream.path) + ".gone")
        with pytest.warns(RuntimeWarning, match="serving a stale copy"), cache.checkout(upstream.url) as co:
            assert co.stale
    fetch, stale, hit = seen
    assert isinstance(fetch, FetchEvent) and not fetch.ok and fetch.error
    assert isinstance(stale, StaleEvent) and stale.error == fetch.error
    assert isinstance(hit, HitEvent) and not hit.fetched


def test_budget_evictions_and_cold_restores_are_reported_with_their_reason(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    first, second = upstreams.create("first"), upstreams.create("second")
    for upstream in (first, second):
        upstream.commits(2, size=256 * 1024)
    seen: list[Event] = []
    store = (tmp_path / "cold").as_uri()
    with RepoCache(cache_root, cold_store=store, on_event=seen.append) as cache:
        size = cache.ensure(first.url).size_bytes
        cache.close()
    with RepoCache(cache_root, cold_store=store, max_bytes=int(size * 1.5), on_event=seen.append) as cache:
        seen.clear()
        cache.ensure(second.url)  # no room for both: first is evicted (and offloaded) to make room
        kinds = [type(e) for e in seen]
        assert PublishEvent in kinds and EvictionEvent in kinds
        eviction = next(e for e in seen if isinstance(e, EvictionEvent))
        assert eviction.reason == "budget" and eviction.url.endswith("first.git")
        publish = next(e for e in seen if isinstance(e, PublishEvent))
        assert publish.reason == "evict" and publish.size_bytes > 0
        seen.clear()
        cache.ensure(first.url)
        assert any(isinstance(e, RestoreEvent) for e in seen)


def test_a_hook_that_raises_never_breaks_the_checkout(
    cache: RepoCache, upstreams: UpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = upstreams.create("hooked")

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    cache.subscribe(broken)
    with caplog.at_level(logging.ERROR, "repocache"), cache.checkout(upstream.url) as co:
        assert co.source == "clone"
    assert "event hook" in caplog.text and "hook bug" in caplog.text


def test_unsubscribing_stops_the_events(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("quiet")
    seen: list[Event] = []
    unsubscribe = cache.subscribe(seen.append)
    cache.ensure(upstream.url)
    count = len(seen)
    assert count >= 2
    unsubscribe()
    cache.ensure(upstream.url)
    assert len(seen) == count


def test_a_hook_that_is_not_callable_is_refused_naming_it(cache_root: Path) -> None:
    with pytest.raises(ConfigError, match="on_event=42 is not callable"):
        RepoCache(cache_root, on_event=42)  # type: ignore[arg-type]


def test_the_stale_warning_points_at_the_callers_line(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("blame")
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
        os.rename(upstream.path, str(upstream.path) + ".gone")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with cache.checkout(upstream.url):
                pass
    (warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert warning.filename == __file__, warning.filename
