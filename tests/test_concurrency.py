"""Many workers, one repository: one clone, coalesced fetches, readers never blocked by a fetch, bounded waits."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache import Checkout, CloneError, LockTimeoutError, RepoCache, locks
from repocache.testing import SmartHTTPServer, UpstreamFactory
from tests.helpers import Worker, assert_consistent, key_of, mirror_refs, upload_packs, wait_for_file

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def slow_http(served_dir: Path) -> Iterator[SmartHTTPServer]:
    """Smart HTTP that waits 0.6 s before answering each request, so transfers overlap."""
    with SmartHTTPServer(served_dir, delay=0.6) as server:
        yield server


def test_concurrent_misses_in_processes_cause_exactly_one_clone(
    cache_root: Path, served: UpstreamFactory, slow_http: SmartHTTPServer
) -> None:
    reference = served.create("one-clone")
    with RepoCache(cache_root / "reference") as cache:
        cache.ensure(slow_http.url_for(reference))
    one_clone = upload_packs(slow_http)
    upstream = served.create("stampede")
    upstream.commits(5, size=20_000)
    url = slow_http.url_for(upstream)
    start_at = time.time() + 2.0
    workers = [
        Worker({"root": str(cache_root), "url": url, "action": "checkout", "start_at": start_at}) for _ in range(8)
    ]
    results = [w.result(timeout=120) for w in workers]
    assert [r.get("error") for r in results] == [None] * 8
    assert sorted(str(r["source"]) for r in results) == ["clone"] + ["hit"] * 7
    assert all(r["refs"] == upstream.refs() for r in results)
    assert upload_packs(slow_http) == 2 * one_clone  # the reference clone and one more; no waiter fetched
    with RepoCache(cache_root) as cache:
        stats = cache.stats()
        assert (stats.clones, stats.fetches, stats.misses, stats.hits) == (1, 0, 1, 7)  # 7 waited, then hit
        assert_consistent(cache)


def test_concurrent_misses_in_threads_cause_exactly_one_clone(
    cache: RepoCache, served: UpstreamFactory, slow_http: SmartHTTPServer
) -> None:
    reference = served.create("one-clone-threads")
    with RepoCache(cache.root / "reference") as other:
        other.ensure(slow_http.url_for(reference))
    one_clone = upload_packs(slow_http)
    upstream = served.create("threads")
    url = slow_http.url_for(upstream)
    barrier = threading.Barrier(6)
    sources: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            with cache.checkout(url) as co:
                sources.append(co.source)
                assert mirror_refs(co.path) == upstream.refs()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(sources) == ["clone"] + ["hit"] * 5
    assert cache.stats().clones == 1 and upload_packs(slow_http) == 2 * one_clone


@pytest.mark.timeout(120)
def test_a_checkout_that_waited_for_another_workers_clone_counts_one_hit_and_no_miss(
    cache: RepoCache, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("counted-once")
    # A reader of the repository's lock keeps both callers between "found nothing" and "may clone" until released.
    gate = locks.acquire(cache.root / "locks" / f"{key_of(upstream.url)}.lock", shared=True, timeout=0)
    assert gate is not None
    sources: list[str] = []

    def work() -> None:
        with cache.checkout(upstream.url) as co:
            sources.append(co.source)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both have looked and found nothing; both wait for the exclusive lock
    gate.release()
    for thread in threads:
        thread.join(60)
    assert sorted(sources) == ["clone", "hit"]
    stats = cache.stats()
    assert (stats.misses, stats.hits, stats.clones) == (1, 1, 1), stats


def test_each_checkout_counts_once_and_failed_ones_count_neither_hit_nor_miss(
    cache: RepoCache, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = upstreams.create("counted")
    cache.ensure(upstream.url)
    with cache.checkout(upstream.url):
        pass
    assert cache.evict(upstream.url)
    with cache.checkout(upstream.url):
        pass
    with pytest.raises(CloneError):
        cache.ensure(str(tmp_path / "no-such-repo"))
    stats = cache.stats()
    assert (stats.misses, stats.hits, stats.clones) == (2, 1, 2), stats


def test_concurrent_hits_coalesce_into_one_fetch(
    cache_root: Path, served: UpstreamFactory, slow_http: SmartHTTPServer
) -> None:
    upstream = served.create("coalesce")
    url = slow_http.url_for(upstream)
    with RepoCache(cache_root) as cache:
        cache.ensure(url)
    with RepoCache(cache_root) as cache:  # one fetch alone, to count what a fetch costs the server
        upstream.commit({"first": "1"})
        packs_before = upload_packs(slow_http)
        assert cache.ensure(url).last_fetched
        one_fetch = upload_packs(slow_http) - packs_before
    upstream.commits(3, size=5_000)
    packs_before = upload_packs(slow_http)
    start_at = time.time() + 2.0
    workers = [
        Worker({"root": str(cache_root), "url": url, "action": "checkout", "start_at": start_at}) for _ in range(6)
    ]
    results = [w.result(timeout=120) for w in workers]
    assert [r.get("error") for r in results] == [None] * 6
    assert sum(1 for r in results if r["fetched"]) == 1
    assert all(r["source"] == "hit" and not r["stale"] for r in results)
    expected = upstream.refs()
    assert all(r["refs"] == expected for r in results)  # the coalesced callers see the fetched state
    assert upload_packs(slow_http) - packs_before == one_fetch
    with RepoCache(cache_root) as cache:
        assert cache.stats().fetches == 2


def test_readers_are_not_blocked_by_a_fetch(
    cache_root: Path, served: UpstreamFactory, http: SmartHTTPServer, tmp_path: Path
) -> None:
    """Proved by ordering, not by the clock: the fetch stalls mid-transfer until the reader has finished."""
    upstream = served.create("nonblocking")
    url = http.url_for(upstream)
    with RepoCache(cache_root) as cache:
        cache.ensure(url)
    refs_before = upstream.refs()
    upstream.commits(2, size=20_000)
    stalled, resume, events = tmp_path / "stalled", tmp_path / "resume", tmp_path / "events"
    fetcher = Worker(
        {
            "root": str(cache_root),
            "url": url,
            "action": "checkout",
            "signal_on_progress": str(stalled),
            "resume": str(resume),
            "events": str(events),
        }
    )
    try:
        wait_for_file(stalled, worker=fetcher)  # the fetch is under way, and cannot end until resumed
        # lock_timeout only turns a reader stuck behind the fetch into a failure instead of a hang.
        with RepoCache(cache_root, fetch_ttl=3600, lock_timeout=10) as cache:
            with cache.checkout(url) as co:
                assert co.source == "hit" and not co.fetched
                assert mirror_refs(co.path) == refs_before  # the mirror as it was before the fetch
        logged = [line.split(" ", 1)[1] for line in events.read_text().splitlines()]
        assert "fetch:start" in logged and "fetch:end" not in logged, logged  # the reader ended mid-fetch
        assert fetcher.process.poll() is None
    finally:
        resume.write_text("")
    result = fetcher.result(timeout=60)
    assert result["fetched"] is True and result["refs"] == upstream.refs() != refs_before


def test_waiting_for_another_workers_clone_is_bounded_by_lock_timeout(
    cache_root: Path, served: UpstreamFactory, served_dir: Path
) -> None:
    upstream = served.create("bounded")
    with SmartHTTPServer(served_dir, delay=2.0) as very_slow:
        url = very_slow.url_for(upstream)
        cloner = Worker({"root": str(cache_root), "url": url, "action": "checkout"})
        deadline = time.monotonic() + 30
        while not very_slow.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        with RepoCache(cache_root, lock_timeout=0.5) as cache:
            started = time.monotonic()
            with pytest.raises(LockTimeoutError) as caught, cache.checkout(url):
                pass
            assert 0.4 < time.monotonic() - started < 3
        assert "bounded" in str(caught.value) and caught.value.timeout == 0.5
        assert isinstance(caught.value, TimeoutError)
        assert cloner.result(timeout=60)["source"] == "clone"


def test_a_checkout_held_across_threads_keeps_its_mirror(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("held")
    held: list[Checkout] = []
    with cache.checkout(upstream.url) as co:
        held.append(co)
        result: list[bool] = []
        thread = threading.Thread(target=lambda: result.append(cache.evict(upstream.url)))
        thread.start()
        thread.join(30)
        assert result == [False]
        assert co.path.is_dir()
    assert cache.evict(upstream.url) is True


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "temporary-name"])
def test_create_locked_publishes_a_lock_file_that_is_already_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool
) -> None:
    if not unnamed:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    path = tmp_path / "tree.lock"
    held = locks.create_locked(path)
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.lock"]  # no temporary name left behind
        assert locks.acquire(path, shared=False, timeout=0, create=False) is None  # already locked
        assert locks.acquire(path, shared=True, timeout=0, create=False) is None
        assert held.is_current()
        with pytest.raises(FileExistsError):
            locks.create_locked(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tree.lock"]
    finally:
        held.release()
    again = locks.acquire(path, shared=False, timeout=0, create=False)
    assert again is not None
    again.release()


@pytest.mark.timeout(60)
def test_a_branch_deleted_upstream_during_a_fetch_does_not_serve_a_stale_copy(
    cache_root: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    """Smart HTTP is stateless: a branch deleted between the ref advertisement and the ``want`` makes upload-pack
    refuse the request. The upstream is alive, so the fetch is retried rather than a stale copy served."""
    upstream = served.create("deleted-mid-fetch")
    url = http.url_for(upstream)
    with RepoCache(cache_root) as cache:
        cache.ensure(url)
        upstream.branch("side")
        upstream.commits(2, branch="side", size=1_000)
        before = len(http.requests)

        def delete_side_once_the_want_is_in() -> None:
            while len(http.requests) < before + 2:  # the advertisement is out, the upload-pack POST is waiting
                time.sleep(0.005)
            upstream.delete_ref("refs/heads/side")

        deleter = threading.Thread(target=delete_side_once_the_want_is_in)
        http.delay = 0.3
        try:
            deleter.start()
            with cache.checkout(url) as co:
                deleter.join(30)
                assert [method for method, _ in http.requests[before : before + 2]] == ["GET", "POST"]
                assert not co.stale
                assert mirror_refs(co.path) == upstream.refs()  # side is gone here too
        finally:
            http.delay = 0
        assert cache.stats().fetch_errors == 0


def test_readers_waiting_for_another_workers_clone_enter_together_once_it_is_published(
    cache: RepoCache, served: UpstreamFactory, slow_http: SmartHTTPServer
) -> None:
    """A caller that found the mirror missing waits for the exclusive lock; once another worker has published the
    mirror it must go back to the shared path instead of waiting for every reader's block to end (which
    serialized the blocks, and a steady stream of readers could starve it into LockTimeoutError)."""
    upstream = served.create("enter-together")
    url = slow_http.url_for(upstream)
    # A reader of the repository's lock keeps every caller between "found nothing" and "may clone" until released:
    # all four then wait for the exclusive lock, one clones, three find the mirror published.
    gate = locks.acquire(cache.root / "locks" / f"{key_of(url)}.lock", shared=True, timeout=0)
    assert gate is not None
    spans: list[tuple[float, float, str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with cache.checkout(url) as co:
                entered = time.monotonic()
                time.sleep(1.0)
                spans.append((entered, time.monotonic(), co.source))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # all four have looked and found nothing
    gate.release()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(source for _, _, source in spans) == ["clone", "hit", "hit", "hit"]
    last_entry = max(entered for entered, _, _ in spans)
    first_exit = min(left for _, left, _ in spans)
    assert last_entry < first_exit, f"the blocks ran one after another, not together: {sorted(spans)}"
