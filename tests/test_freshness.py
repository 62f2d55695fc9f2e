"""Freshness users control: stale marks, refresh, per-call max_age, background refresh and the adaptive schedule."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from repocache import ConfigError, FetchError, Progress, RepoCache
from repocache.refresh import fetch_interval
from repocache.testing import GitDaemon, SmartHTTPServer, UpstreamFactory
from tests.helpers import assert_consistent, mirror_refs

# -- mark_stale and refresh ------------------------------------------------------------------------------------


def test_mark_stale_makes_the_next_hit_fetch_whatever_the_ttl(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = served.create("marked")
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(url)
        upstream.commit({"pushed": "1"})
        with cache.checkout(url) as co:
            assert not co.fetched  # within the TTL: upstream not contacted
        # Marked by another instance (another process or host sharing the root reads the same index).
        with RepoCache(cache_root, fetch_ttl=3600) as other:
            assert other.mark_stale(url) is True
        with cache.checkout(url) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()
        with cache.checkout(url) as co:
            assert not co.fetched  # the mark was consumed by that fetch
        assert cache.stats().fetches == 1
        assert_consistent(cache)


def test_mark_stale_of_a_repository_not_cached_is_false(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("never")
    assert cache.mark_stale(upstream.url) is False
    with cache.checkout(upstream.url) as co:
        assert co.source == "clone"


def test_a_fetch_that_began_before_the_mark_does_not_consume_it(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("race")
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        entry = cache.ensure(upstream.url)
        cache.mark_stale(upstream.url)
        marked = time.time()
        # A fetch that started before the push was announced finishes after it: it may have missed the push.
        cache._context.index.fetched(entry.key, entry.size_bytes, marked + 1, started=marked - 1)
        with cache.checkout(upstream.url) as co:
            assert co.fetched


def test_refresh_fetches_now_whatever_the_ttl(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("refreshed")
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(upstream.url)
        upstream.commit({"new": "1"})
        entry = cache.refresh(upstream.url)
        assert mirror_refs(entry.path) == upstream.refs()
        assert cache.stats().fetches == 1


def test_refresh_raises_when_the_fetch_fails_even_when_hits_would_warn(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("refresh-dies")
    with RepoCache(cache_root, fetch_ttl=3600, on_fetch_error="warn") as cache:
        cache.ensure(upstream.url)
        os.rename(upstream.path, str(upstream.path) + ".gone")
        with pytest.raises(FetchError):
            cache.refresh(upstream.url)
        assert cache.stats().fetch_errors == 1


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repocache", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_stale_and_refresh(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("cli")
    unknown = upstreams.create("cli-unknown")
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(upstream.url)
        upstream.commit({"a": "1"})
        done = _cli(cache_root, "stale", upstream.url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == cache.info(upstream.url).url  # type: ignore[union-attr]
        with cache.checkout(upstream.url) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()
        done = _cli(cache_root, "stale", upstream.url, unknown.url)
        assert done.returncode == 1 and "not in the cache" in done.stderr
        assert _cli(cache_root, "stale", "ftp://host/repo").returncode == 2

        upstream.commit({"b": "1"})
        done = _cli(cache_root, "refresh", upstream.url)
        assert done.returncode == 0, done.stderr
        with cache.checkout(upstream.url) as co:
            assert not co.fetched and mirror_refs(co.path) == upstream.refs()
        os.rename(upstream.path, str(upstream.path) + ".gone")
        done = _cli(cache_root, "refresh", upstream.url)
        assert done.returncode == 3, done.stderr


# -- max_age ---------------------------------------------------------------------------------------------------


def test_max_age_overrides_the_ttl_for_one_call(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("maxage")
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(upstream.url)
        upstream.commit({"x": "1"})
        with cache.checkout(upstream.url) as co:
            assert not co.fetched
        with cache.checkout(upstream.url, max_age=0) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()
        upstream.commit({"y": "1"})
        assert cache.ensure(upstream.url, max_age=0).last_fetched is not None
        assert cache.stats().fetches == 2
    with RepoCache(cache_root, fetch_ttl=0) as cache:
        with cache.checkout(upstream.url, max_age=3600) as co:
            assert not co.fetched
        os.rename(upstream.path, str(upstream.path) + ".gone")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with cache.checkout(upstream.url, max_age=None) as co:  # any age: upstream is not even asked
                assert not co.fetched and not co.stale
            with cache.worktree(upstream.url, max_age=None) as wt:
                assert wt.commit
        assert cache.stats().fetch_errors == 0


@pytest.mark.parametrize("bad", [-1, float("nan"), "soon", True])
def test_bad_max_age_is_a_config_error(cache: RepoCache, upstreams: UpstreamFactory, bad: object) -> None:
    upstream = upstreams.create("badage")
    with pytest.raises(ConfigError, match="max_age"), cache.checkout(upstream.url, max_age=bad):  # type: ignore[arg-type]
        pass


# -- background refresh ----------------------------------------------------------------------------------------


class _Gate:
    """A progress callback that blocks background fetches at their end until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, event: Progress) -> None:
        if event.phase == "done" and threading.current_thread() is not threading.main_thread():
            self.threads.add(threading.current_thread().name)
            self.entered.set()
            assert self.opened.wait(30)


def test_background_refresh_hands_out_the_hit_at_once_and_fetches_behind(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("swr")
    gate = _Gate()
    with RepoCache(cache_root, fetch_ttl=0, refresh="background", max_stale=3600, progress=gate) as cache:
        cache.ensure(upstream.url)
        before = upstream.refs()
        upstream.commit({"pushed": "1"})
        started = time.monotonic()
        with cache.checkout(upstream.url) as co:
            assert not co.fetched and mirror_refs(co.path) == before
        assert time.monotonic() - started < 5
        assert gate.entered.wait(30)
        # The background fetch holds the repository shared: eviction skips it, readers are not blocked.
        assert cache.evict(upstream.url) is False
        with cache.checkout(upstream.url) as co:
            assert co.source == "hit"
        threading.Timer(0.5, gate.opened.set).start()
        cache.close()  # joins the background fetch
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        assert cache.stats().fetches == 1
        with cache.checkout(upstream.url) as co:
            assert mirror_refs(co.path) == upstream.refs()
        assert_consistent(cache)
    assert all(name.startswith("repocache-refresh") for name in gate.threads)


def test_background_refresh_waits_beyond_max_stale(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("toostale")
    with RepoCache(cache_root, fetch_ttl=0, refresh="background", max_stale=0) as cache:
        cache.ensure(upstream.url)
        upstream.commit({"pushed": "1"})
        with cache.checkout(upstream.url) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()


def test_max_stale_counts_from_the_end_of_the_ttl(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("pastttl")
    with RepoCache(cache_root, fetch_ttl=3600, refresh="background", max_stale=3600) as cache:
        entry = cache.ensure(upstream.url)
        index = cache._context.index
        index.fetched(entry.key, entry.size_bytes, time.time() - 5000)  # 1400 s past the TTL: within max_stale
        with cache.checkout(upstream.url) as co:
            assert not co.fetched
        assert cache._background.join(30)
        index.fetched(entry.key, entry.size_bytes, time.time() - 8000)  # 4400 s past it: the hit waits
        with cache.checkout(upstream.url) as co:
            assert co.fetched


def test_background_refresh_does_nothing_while_another_fetch_holds_the_lock(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("inflight")
    with RepoCache(cache_root, fetch_ttl=0, refresh="background") as cache:
        entry = cache.ensure(upstream.url)
        fetching = cache._context.layout.hold_fetch(entry.key, 0)  # another process's fetch in flight
        assert fetching is not None
        with cache.checkout(upstream.url) as co:
            assert not co.fetched
        assert cache._background.join(30)
        assert cache.stats().fetches == 0
        fetching.release()
        upstream.commit({"x": "1"})
        with cache.checkout(upstream.url):
            pass
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        assert cache.stats().fetches == 1


def test_background_fetch_failure_is_counted_and_logged_without_a_warning(
    cache_root: Path, upstreams: UpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = upstreams.create("bgdies")
    with RepoCache(cache_root, fetch_ttl=0, refresh="background") as cache:
        cache.ensure(upstream.url)
        os.rename(upstream.path, str(upstream.path) + ".gone")
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING, "repocache"):
            warnings.simplefilter("error")
            with cache.checkout(upstream.url) as co:
                assert not co.stale
            cache.close()
        assert "background fetch" in caplog.text
    with RepoCache(cache_root) as cache:
        assert cache.stats().fetch_errors == 1


def test_close_cancels_background_fetches_not_started(cache_root: Path, upstreams: UpstreamFactory) -> None:
    gate = _Gate()
    repos = [upstreams.create(f"queued-{i}") for i in range(4)]
    with RepoCache(cache_root, fetch_ttl=0, refresh="background", progress=gate) as cache:
        for upstream in repos:
            cache.ensure(upstream.url)
            upstream.commit({"x": "1"})
        for upstream in repos:
            with cache.checkout(upstream.url):
                pass
        assert gate.entered.wait(30)
        threading.Timer(0.3, gate.opened.set).start()
        cache.close()
        # Queued fetches were cancelled and released their holds: every repository can be evicted now.
    with RepoCache(cache_root) as cache:
        assert cache.stats().fetches < len(repos)
        assert all(cache.evict(upstream.url) for upstream in repos)


def test_close_cancels_a_running_background_fetch_after_its_timeout(
    cache_root: Path, served: UpstreamFactory, served_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = served.create("hangs")
    with SmartHTTPServer(served_dir) as server:
        url = server.url_for(upstream)
        cache = RepoCache(cache_root, fetch_ttl=0, refresh="background")
        cache.ensure(url)
        server.delay = 60.0  # upstream stops answering: the background fetch hangs in git
        with cache.checkout(url) as co:
            assert not co.fetched
        time.sleep(0.3)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, "repocache"):
            cache.close(timeout=0.5)
        assert time.monotonic() - started < 10
        assert "cancelled" in caplog.text
    with RepoCache(cache_root) as cache:
        assert cache.stats().fetch_errors == 0  # a cancelled fetch is not a failed one
        assert cache.evict(url)  # its holds were released
        assert_consistent(cache)


# -- adaptive schedule -----------------------------------------------------------------------------------------


def test_fetch_interval_is_half_the_quiet_time_clamped() -> None:
    hour = 3600.0
    assert fetch_interval(10 * hour, 2 * hour, minimum=60, maximum=12 * hour) == 4 * hour
    assert fetch_interval(10 * hour, 10 * hour - 30, minimum=60, maximum=12 * hour) == 60
    assert fetch_interval(100 * hour, 0, minimum=60, maximum=12 * hour) == 12 * hour
    assert fetch_interval(10 * hour, None, minimum=60, maximum=12 * hour) == 60


def test_adaptive_schedule_follows_upstream_changes_and_survives_a_restart(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("adaptive")  # its commits are dated 2023: dormant for a long time
    options = {"fetch_ttl": "auto", "fetch_ttl_min": 0.0, "fetch_ttl_max": 3600.0}
    with RepoCache(cache_root, **options) as cache:  # type: ignore[arg-type]
        assert cache.fetch_ttl == "auto"
        cache.ensure(upstream.url)
        upstream.commit({"x": "1"})
        with cache.checkout(upstream.url) as co:
            assert not co.fetched  # dormant: the interval is the maximum
    with RepoCache(cache_root, **options) as cache:  # type: ignore[arg-type]
        with cache.checkout(upstream.url) as co:
            assert not co.fetched  # a restart does not fetch everything again
        cache.refresh(upstream.url)  # sees the change: the repository is busy now
        time.sleep(0.5)
        with cache.checkout(upstream.url) as co:
            assert co.fetched
        key = co.key
        changed = cache._context.index.freshness(key)
        assert changed is not None and changed.last_changed is not None
        assert time.time() - changed.last_changed < 60
        with cache.checkout(upstream.url, max_age=0):  # nothing new: the change time stays
            pass
        after = cache._context.index.freshness(key)
        assert after is not None and after.last_changed == changed.last_changed


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"fetch_ttl": "sometimes"}, "fetch_ttl='sometimes'"),
        ({"fetch_ttl": "auto", "fetch_ttl_min": 100, "fetch_ttl_max": 10}, "fetch_ttl_max=10"),
        ({"refresh": "later"}, "refresh='later'"),
        ({"max_stale": -1}, "max_stale=-1"),
    ],
)
def test_bad_freshness_settings_raise_config_errors(cache_root: Path, options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RepoCache(cache_root, **options)  # type: ignore[arg-type]


# -- asyncio -----------------------------------------------------------------------------------------------------


def test_async_cache_offers_max_age_mark_stale_and_refresh(cache_root: Path, upstreams: UpstreamFactory) -> None:
    from repocache import AsyncRepoCache

    upstream = upstreams.create("async-fresh")

    async def scenario() -> None:
        async with AsyncRepoCache(cache_root, fetch_ttl=3600) as acache:
            await acache.ensure(upstream.url)
            upstream.commit({"a": "1"})
            async with acache.checkout(upstream.url) as co:
                assert not co.fetched
            async with acache.checkout(upstream.url, max_age=0) as co:
                assert co.fetched
            upstream.commit({"b": "1"})
            assert await acache.mark_stale(upstream.url) is True
            async with acache.worktree(upstream.url, max_age=None) as wt:
                assert wt.commit != upstream.head()  # any age: the mark waits for the next hit
            entry = await acache.ensure(upstream.url)  # the mark makes it fetch
            assert mirror_refs(entry.path) == upstream.refs()
            upstream.commit({"c": "1"})
            entry = await acache.refresh(upstream.url)
            assert mirror_refs(entry.path) == upstream.refs()
            assert (await acache.ensure(upstream.url, max_age=None)).url == entry.url

    import asyncio

    asyncio.run(scenario())
