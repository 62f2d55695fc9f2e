"""AsyncRepoCache holds a plain hit on the event loop, without a thread, and falls back to its threads otherwise."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import pytest
import pytest_asyncio

from repocache import AsyncRepoCache, Checkout, RepoCache, normalize_url, uses
from repocache.events import Event, HitEvent
from repocache.index import Index
from repocache.pins import Pins
from repocache.testing import GitDaemon, UpstreamFactory
from tests.helpers import assert_consistent, key_of

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Counting(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that counts the calls handed to it."""

    def __init__(self, workers: int, name: str) -> None:
        super().__init__(workers, thread_name_prefix=name)
        self.submitted = 0

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class _Pools:
    """The worker and release pools of an AsyncRepoCache, replaced by counting ones."""

    def __init__(self, cache: AsyncRepoCache) -> None:
        cache._workers.shutdown()
        cache._releasers.shutdown()
        self.workers = cache._workers = _Counting(cache.max_workers, "repocache")
        self.releasers = cache._releasers = _Counting(2, "repocache-release")

    def used(self) -> tuple[int, int]:
        return self.workers.submitted, self.releasers.submitted


@pytest_asyncio.fixture
async def acache(cache_root: Path) -> AsyncIterator[AsyncRepoCache]:
    """An AsyncRepoCache whose hits need no fetch for an hour; afterwards the index must agree with the disk."""
    async with AsyncRepoCache(cache_root, fetch_ttl=3600) as cache:
        yield cache
        assert_consistent(cache.cache)


def _exclusive_lock_is_free(lock_file: Path) -> bool:
    """Whether another process can take the repository's exclusive lock right now (as eviction does)."""
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(lock_file)], check=False).returncode == 0


async def test_a_warm_hit_is_held_and_read_on_the_loop_without_any_thread(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    """Held, recorded as a hit (counter, recency, event, this task's use) and released, with no pool used."""
    url = daemon.url_for(served.create("loop-hit"))
    async with acache.checkout(url) as first:
        assert first.source == "clone"
    pools = _Pools(acache)
    events: list[tuple[Event, int]] = []
    acache.subscribe(lambda event: events.append((event, threading.get_ident())))
    before = await asyncio.to_thread(acache.cache.stats)
    last_used = next(e.last_used for e in await asyncio.to_thread(acache.cache.entries))
    loop_thread = threading.get_ident()
    readers: list[int] = []

    def read(checkout: Checkout) -> str:
        readers.append(threading.get_ident())
        return (checkout.path / "HEAD").read_text().strip()

    lock = acache.cache.root / "locks" / f"{first.key}.lock"
    async with acache.checkout_and_read(url, read, read_on_loop=True) as (co, head):
        assert pools.used() == (0, 0)
        assert co.source == "hit" and not co.fetched and not co.stale and head == "ref: refs/heads/main"
        assert [use.key for use in uses.open_in(acache.cache.root)] == [co.key]
        assert not _exclusive_lock_is_free(lock)
        with RepoCache(acache.cache.root) as other:  # eviction never removes a held mirror
            assert not other.evict(url)
        assert co.path.is_dir()
    assert readers == [loop_thread]
    assert pools.used() == (0, 0)
    assert _exclusive_lock_is_free(lock)
    assert uses.open_in(acache.cache.root) == ()
    async with acache.checkout(url) as plain:
        assert plain.source == "hit" and pools.used() == (0, 0)
    hits = [(event, thread) for event, thread in events if isinstance(event, HitEvent)]
    assert [(event.fetched, thread) for event, thread in hits] == [(False, loop_thread)] * 2
    after = await asyncio.to_thread(acache.cache.stats)
    assert (after.hits - before.hits, after.misses - before.misses, after.fetches - before.fetches) == (2, 0, 0)
    assert next(e.last_used for e in await asyncio.to_thread(acache.cache.entries)) > last_used


async def test_a_read_not_declared_quick_runs_in_a_worker_and_its_failure_releases_the_hit(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(served.create("loop-read-thread"))
    await acache.ensure(url)
    pools = _Pools(acache)
    names: list[str] = []

    def read(checkout: Checkout) -> str:
        names.append(threading.current_thread().name)
        return checkout.key

    async with acache.checkout_and_read(url, read) as (co, key):
        assert co.source == "hit" and key == co.key
    assert names[0].startswith("repocache") and pools.used() == (1, 0)

    def fails(checkout: Checkout) -> None:
        raise ValueError(f"cannot read {checkout.key}")

    for on_loop in (False, True):
        with pytest.raises(ValueError, match="cannot read"):
            async with acache.checkout_and_read(url, fails, read_on_loop=on_loop):
                raise AssertionError("the block must not run")
        assert _exclusive_lock_is_free(acache.cache.root / "locks" / f"{co.key}.lock")
    assert uses.open_in(acache.cache.root) == ()


async def test_cancelling_a_hit_whose_read_runs_in_a_worker_waits_for_the_read_then_releases(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(served.create("loop-cancel-read"))
    await acache.ensure(url)
    reading, finish = threading.Event(), threading.Event()

    def read(checkout: Checkout) -> None:
        reading.set()
        finish.wait(30)

    async def hold() -> None:
        async with acache.checkout_and_read(url, read):
            raise AssertionError("the block must not run")  # pragma: no cover

    task = asyncio.create_task(hold())
    await asyncio.to_thread(reading.wait, 30)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done()  # the read is still running in its thread: nothing is delivered before it ends
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _exclusive_lock_is_free(acache.cache.root / "locks" / f"{key_of(url)}.lock")


async def test_a_miss_and_a_due_fetch_are_held_in_a_worker_thread(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    pools = _Pools(acache)
    url = daemon.url_for(served.create("loop-miss"))
    async with acache.checkout(url) as miss:
        assert miss.source == "clone" and pools.workers.submitted == 1
    async with acache.checkout(url, max_age=0) as due:
        assert due.source == "hit" and due.fetched and pools.workers.submitted == 2
    assert pools.releasers.submitted == 1  # the fetch is settled in a release thread (a clone, by materialize)
    assert await acache.mark_stale(url)
    async with acache.checkout(url) as marked:
        assert marked.fetched and pools.workers.submitted == 4  # mark_stale's call, then the checkout's


async def test_a_hit_whose_lock_is_held_exclusively_waits_in_a_thread_and_the_loop_stays_responsive(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(served.create("loop-contended"))
    async with AsyncRepoCache(cache_root, fetch_ttl=3600, lock_timeout=60) as acache:
        await acache.ensure(url)
        pools = _Pools(acache)
        holder = subprocess.Popen(  # another process evicting or replacing the mirror: the exclusive lock
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\nsys.stdin.readline()\n",
                str(cache_root / "locks" / f"{key_of(url)}.lock"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"

            async def hold() -> str:
                async with acache.checkout(url) as co:
                    return co.source

            task = asyncio.create_task(hold())
            ticks, started = 0, time.monotonic()
            while time.monotonic() - started < 0.5:  # the loop runs while the checkout waits for the lock
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks >= 20 and not task.done() and pools.workers.submitted == 1
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert await asyncio.wait_for(task, 30) == "hit"
        finally:
            holder.kill()
            holder.communicate()
        assert_consistent(acache.cache)


async def test_leaving_a_hit_over_the_budget_enforces_it_in_a_release_thread(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    """The hit is held on the loop; its release finds the budget exceeded and evicts in a release thread, never
    the mirror it has just let go of while it was held."""
    kept, other = (daemon.url_for(served.create(name)) for name in ("loop-budget-kept", "loop-budget-other"))
    with RepoCache(cache_root) as filling:
        filling.ensure(other)
        filling.ensure(kept)
        used = filling.stats().bytes_used
    async with AsyncRepoCache(cache_root, fetch_ttl=3600, max_bytes=used - 1) as acache:
        pools = _Pools(acache)
        async with acache.checkout(kept) as co:
            assert co.source == "hit" and pools.used() == (0, 0)
            assert {entry.url for entry in await asyncio.to_thread(acache.cache.entries)} == {
                co.url,
                normalize_url(other).url,
            }
        assert pools.used() == (0, 1)
        assert [entry.url for entry in await asyncio.to_thread(acache.cache.entries)] == [co.url]
        assert_consistent(acache.cache)


async def test_the_loop_does_not_wait_for_a_reload_of_the_pin_file_in_another_thread(tmp_path: Path) -> None:
    """A reload under way elsewhere (its lock held) is not waited for: the pins as last read answer."""
    path = tmp_path / "pins.yaml"
    path.write_text('never_evict:\n  - {url: "https://example.com/a/b", filter: "blob:none"}\n')
    pins = Pins(path)
    with pins._lock:  # another thread reading the file
        started = time.monotonic()
        assert pins.filter_for("https://example.com/a/b", wait=False) == (True, "blob:none")
        assert time.monotonic() - started < 1
    assert pins.filter_for("https://example.com/a/b") == (True, "blob:none")


async def test_the_index_read_for_the_loop_gives_up_instead_of_waiting(tmp_path: Path) -> None:
    """A busy timeout of 0 and no repair: a write transaction elsewhere does not stop a WAL read, a database file
    replaced by a FIFO (which SQLite would wait on forever) answers None at once, and the waiting read is intact."""
    path = tmp_path / "index.sqlite"
    index = Index(path, timeout=5)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE counters SET value = value")
    assert index.get_with_freshness_at_once("absent") == (None, None)
    writer.execute("ROLLBACK")
    writer.close()
    assert index._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # put back for the waiting calls
    index.close()
    path.unlink()
    os.mkfifo(path)
    answers: list[object] = []
    reader = threading.Thread(target=lambda: answers.append(Index.get_with_freshness_at_once(index, "absent")))
    started = time.monotonic()
    reader.start()
    reader.join(10)
    assert answers == [None] and time.monotonic() - started < 5
