"""The hit within fetch_ttl: what it costs the index, and every guarantee it keeps."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from repocache import RepoCache
from repocache import refresh as refresh_module
from repocache.index import RECENCY_GRANULARITY, WAL_CHECKPOINT_BYTES
from repocache.testing import GitDaemon, Upstream, UpstreamFactory


@pytest.fixture
def upstream(served: UpstreamFactory) -> Upstream:
    repo = served.create("hot")
    repo.commits(3)
    return repo


def _statements(cache: RepoCache) -> list[str]:
    """Every SQL statement this thread's index connection runs from now on."""
    seen: list[str] = []
    cache._context.index._conn().set_trace_callback(seen.append)
    return seen


def test_a_hit_within_the_ttl_writes_nothing_to_the_index(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(url)
        seen = _statements(cache)
        for _ in range(20):
            with cache.checkout(url) as co:
                assert co.source == "hit" and not co.fetched
        writes = [s for s in seen if s.split()[0].upper() in {"BEGIN", "UPDATE", "INSERT", "COMMIT", "PRAGMA"}]
        assert writes == [], "a hit reads its row; its recency and count are the flusher's to write"
        assert len(seen) == 20


def test_the_hitting_process_reads_its_own_hits_at_once(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(url)
        before = cache.stats().hits
        for _ in range(5):
            with cache.checkout(url):
                pass
        assert cache.stats().hits == before + 5
        assert cache.entries()[0].url == cache.info(url).url  # type: ignore[union-attr]


def test_another_process_sees_the_hits_within_the_granularity(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(url)
        entry = cache.info(url)
        assert entry is not None
        used_before = entry.last_used
        with cache.checkout(url):
            pass
        hit_at = time.time()
        deadline = time.monotonic() + RECENCY_GRANULARITY * 5
        while True:  # read the root as another process would, with a connection of its own
            with sqlite3.connect(cache_root / "index.sqlite") as db:
                (hits,) = db.execute("SELECT value FROM counters WHERE name = 'hits'").fetchone() or (0,)
                (used,) = db.execute("SELECT last_used FROM entries WHERE key = ?", (entry.key,)).fetchone()
            if hits >= 1 and used > used_before:
                break
            assert time.monotonic() < deadline, "the hit never reached the index"
            time.sleep(0.05)
        assert time.time() - hit_at <= RECENCY_GRANULARITY * 3


_HITTER = textwrap.dedent(
    """
    import sys, time
    from repocache import RepoCache
    cache = RepoCache(sys.argv[1], fetch_ttl=3600)
    url = sys.argv[2]
    cache.ensure(url)
    done = 0
    while True:
        with cache.checkout(url):
            pass
        done += 1
        if done % 50 == 0:
            print(done, time.time(), flush=True)
    """
)


@pytest.mark.timeout(120)
def test_a_process_killed_while_hitting_loses_at_most_its_last_second_of_hits(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(url)
        base = cache.stats().hits
    child = subprocess.Popen([sys.executable, "-c", _HITTER, str(cache_root), url], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    progress: list[tuple[int, float]] = []
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        line = child.stdout.readline()
        if not line:
            break
        done, at = line.split()
        progress.append((int(done), float(at)))
    killed_at = time.time()
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)  # waits and closes the pipe
    assert progress, "the child made no hits"
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        counted = cache.stats().hits - base
    # Everything done more than two granularities before the kill is in the index; nothing more than was done.
    settled = max((done for done, at in progress if at < killed_at - 2 * RECENCY_GRANULARITY), default=0)
    assert settled <= counted <= progress[-1][0] + 50
    assert settled > 0


def test_sqlite_never_checkpoints_on_a_commit_and_the_flusher_bounds_the_wal(cache_root: Path) -> None:
    with RepoCache(cache_root) as cache:
        index = cache._context.index
        # The flusher thread checkpoints every RECENCY_GRANULARITY too; stopped, it cannot truncate the log
        # between the test's writes and its own checkpoint (the assertions below would race it).
        index._recency.stop()
        assert index._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for round_ in range(3):
            blob = os.urandom(64 * 1024)
            for i in range(100):  # about 6.4 MiB of WAL, more than WAL_CHECKPOINT_BYTES
                with index._transaction() as db:
                    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (f"pad{i}", blob.hex()))
            wal = Path(f"{index.path}-wal")
            assert wal.stat().st_size > WAL_CHECKPOINT_BYTES
            assert index.checkpoint_if_large()
            assert wal.stat().st_size <= WAL_CHECKPOINT_BYTES, round_
            with index._transaction() as db:
                db.execute("DELETE FROM meta WHERE name LIKE 'pad%'")
        index.checkpoint_if_large()
        assert not index.checkpoint_if_large()  # under the bound: nothing to do


@pytest.mark.timeout(120)
def test_a_due_hit_with_its_fetch_in_flight_takes_no_second_hold(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = daemon.url_for(upstream)
    gate = threading.Event()
    original_fetch = refresh_module.fetch_locked

    def stalled_fetch(*args: Any, **kwargs: Any) -> Any:
        gate.wait(30)
        return original_fetch(*args, **kwargs)

    monkeypatch.setattr(refresh_module, "fetch_locked", stalled_fetch)
    with RepoCache(cache_root, fetch_ttl=0, refresh="background") as cache:
        cache.ensure(url)
        upstream.commits(1)
        with cache.checkout(url):  # due: its fetch goes to the pool, which stalls on the gate
            pass
        layout = cache._context.layout
        taken: list[str] = []
        original = layout.hold_shared

        def counting(repo: object, timeout: float) -> object:
            taken.append(str(repo))
            return original(repo, timeout)  # type: ignore[arg-type]

        layout.hold_shared = counting  # type: ignore[assignment, method-assign]
        try:
            for _ in range(10):
                with cache.checkout(url) as co:
                    assert not co.fetched
        finally:
            layout.hold_shared = original  # type: ignore[method-assign]
            gate.set()
        assert len(taken) == 10, "one shared hold per hit: none for the fetch already in flight"
        assert cache._background.join(30)
