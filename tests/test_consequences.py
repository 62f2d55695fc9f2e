"""What follows a fetch, a clone or a restore happens on every path that does one, foreground or background."""

from __future__ import annotations

from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.events import Event, FetchEvent, MaintenanceEvent, PublishEvent
from repocache.gitops import disk_usage, mirror_shape
from repocache.testing import GitDaemon, Upstream, UpstreamFactory
from tests.helpers import assert_consistent, mirror_refs


@pytest.fixture
def upstream(served: UpstreamFactory) -> Upstream:
    repo = served.create("consequences")
    repo.commits(10, size=1_000)
    return repo


def _push(upstream: Upstream) -> None:
    """A push of 120 objects: over git's ``fetch.unpackLimit``, so a fetch of it by either git adds a pack."""
    upstream.commits(30, size=200)


def _background_fetches(cache: RepoCache, upstream: Upstream, url: str, times: int) -> None:
    """Hits whose fetch runs in the background pool, each waited for before the next."""
    for _ in range(times):
        _push(upstream)
        with cache.checkout(url) as co:
            assert not co.fetched  # handed out at once: the fetch is the pool's
        assert cache._background.join(60)


def _fetch(cache: RepoCache, url: str, path: str) -> None:
    """One fetch of ``url`` by the public verb ``path``."""
    if path == "checkout":
        with cache.checkout(url) as co:
            assert co.fetched
    elif path == "ensure":
        cache.ensure(url)
    else:
        cache.refresh(url)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", ["checkout", "ensure", "refresh", "background"])
def test_fetches_are_maintained_whichever_path_fetched(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon, path: str
) -> None:
    url = daemon.url_for(upstream)
    events: list[Event] = []
    refresh = "background" if path == "background" else "foreground"
    with RepoCache(cache_root, fetch_ttl=0, refresh=refresh, maintenance_max_packs=1, on_event=events.append) as cache:
        cache.ensure(url)
        if path == "background":
            _background_fetches(cache, upstream, url, 5)
        else:
            for _ in range(5):
                _push(upstream)
                _fetch(cache, url, path)
        fetches = [e for e in events if isinstance(e, FetchEvent) and e.error is None]
        maintained = [e for e in events if isinstance(e, MaintenanceEvent)]
        assert len(fetches) == 5
        assert len(maintained) == 5, "every fetch over the pack threshold is followed by maintenance"
        entry = cache.info(url)
        assert entry is not None
        assert mirror_shape(entry.path, exact=True).packs == 1
        assert entry.size_bytes == disk_usage(entry.path), "the index has the size maintenance left"
        assert_consistent(cache)


@pytest.mark.timeout(180)
def test_the_fetch_after_a_restore_is_maintained(tmp_path: Path, upstream: Upstream, daemon: GitDaemon) -> None:
    url = daemon.url_for(upstream)
    store = tmp_path / "store"
    with RepoCache(tmp_path / "publisher", cold_store=store) as publisher:
        publisher.publish(url)
    for _ in range(2):
        _push(upstream)  # the artifact is now behind upstream by two packs' worth
    events: list[Event] = []
    with RepoCache(
        tmp_path / "host", cold_store=store, fetch_ttl=0, maintenance_max_packs=1, on_event=events.append
    ) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched
        assert [e.kind for e in events if isinstance(e, MaintenanceEvent)] == ["maintenance"]
        entry = cache.info(url)
        assert entry is not None
        assert mirror_shape(entry.path, exact=True).packs == 1
        assert mirror_refs(entry.path) == upstream.refs()


@pytest.mark.timeout(180)
def test_background_fetches_are_republished_like_foreground_ones(
    tmp_path: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    store = tmp_path / "store"
    events: list[Event] = []
    with RepoCache(
        tmp_path / "host",
        cold_store=store,
        fetch_ttl=0,
        refresh="background",
        cold_publish="always",
        cold_publish_after=0,
        on_event=events.append,
    ) as cache:
        cache.ensure(url)
        cache._cold.wait()  # type: ignore[union-attr]
        (first,) = cache.cold_entries()
        _background_fetches(cache, upstream, url, 2)
        cache._cold.wait()  # type: ignore[union-attr]
        published = [e for e in events if isinstance(e, PublishEvent)]
        assert [e.reason for e in published][-2:] == ["fetch", "fetch"]
        (latest,) = cache.cold_entries()
        assert latest.generation != first.generation
    with RepoCache(tmp_path / "other-host", cold_store=store, fetch_ttl=3600) as other:
        with other.checkout(url) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()
