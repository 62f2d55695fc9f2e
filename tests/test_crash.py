"""Crash safety: workers SIGKILLed mid-clone and mid-fetch leave nothing that is served, and nothing that blocks."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from repocache import RepoCache
from repocache.testing import GitDaemon, Upstream, UpstreamFactory
from tests.helpers import Worker, assert_consistent, mirror_refs, wait_for_file

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def big(served: UpstreamFactory) -> Upstream:
    """An upstream of about 6 MB in 120 commits, large enough to be caught mid-transfer."""
    upstream = served.create("crashy")
    upstream.commits(120, size=50_000)
    return upstream


def _no_git_left(worker: Worker) -> None:
    """The worker's git children died with it (PR_SET_PDEATHSIG), so nothing writes into the cache after."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        orphans = [
            p
            for p in psutil.process_iter(["ppid", "cmdline"])
            if p.info["ppid"] == 1
            and "crashy" in " ".join(p.info["cmdline"] or [])
            and "daemon" not in " ".join(p.info["cmdline"] or [])
        ]
        if not orphans:
            return
        time.sleep(0.05)
    raise AssertionError(f"git processes outlived their killed worker: {orphans}")


def _kill_mid_transfer(cache_root: Path, url: str, tmp_path: Path, trial: int, operation: str) -> None:
    """SIGKILL a worker checking out ``url`` while its ``operation`` ("clone" or "fetch") is under way, and prove it.

    The first progress report blocks the transfer for longer than the kill can wait, so the kill lands inside it;
    the worker's event log then shows the operation started and never ended, and the worker died of the signal.
    """
    signal_file = tmp_path / f"progress-{trial}"
    events = tmp_path / f"events-{trial}"
    worker = Worker(
        {
            "root": str(cache_root),
            "url": url,
            "action": "checkout",
            "signal_on_progress": str(signal_file),
            "pause_on_progress": random.uniform(0.4, 0.6),
            "events": str(events),
        }
    )
    wait_for_file(signal_file, worker=worker)
    time.sleep(random.uniform(0, 0.3))
    alive = worker.process.poll() is None
    worker.kill()
    logged = [line.split(" ", 1)[1] for line in events.read_text().splitlines()]
    assert alive and worker.process.returncode == -signal.SIGKILL, "the worker had exited before the kill"
    assert f"{operation}:start" in logged and f"{operation}:end" not in logged, f"not killed mid-{operation}: {logged}"
    _no_git_left(worker)


@pytest.mark.parametrize("trial", range(3))
def test_worker_killed_mid_clone_leaves_nothing_served(
    cache_root: Path, big: Upstream, daemon: GitDaemon, tmp_path: Path, trial: int
) -> None:
    url = daemon.url_for(big)
    _kill_mid_transfer(cache_root, url, tmp_path, trial, "clone")
    with RepoCache(cache_root, lock_timeout=5) as cache:
        assert cache.info(url) is None  # a half clone is never taken for a repository
        assert list((cache_root / "repos").iterdir()) == []
        with cache.checkout(url) as co:  # no lock is left blocking the next caller
            assert co.source == "clone"
            assert mirror_refs(co.path) == big.refs()
        assert list((cache_root / "staging").iterdir()) == []  # debris swept under the repository's lock
        assert_consistent(cache)


@pytest.mark.parametrize("trial", range(3))
def test_worker_killed_mid_fetch_leaves_a_usable_mirror(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, tmp_path: Path, trial: int
) -> None:
    upstream = served.create("crashy-fetch")
    url = daemon.url_for(upstream)
    with RepoCache(cache_root) as cache:
        cache.ensure(url)
        refs_before = upstream.refs()
    upstream.commits(100, size=50_000)
    _kill_mid_transfer(cache_root, url, tmp_path, trial, "fetch")
    with RepoCache(cache_root, lock_timeout=5) as cache:
        with cache.checkout(url) as co:
            assert co.source == "hit" and co.fetched
            assert mirror_refs(co.path) == upstream.refs() != refs_before
            leftovers = [
                p.name for p in (co.path / "objects" / "pack").iterdir() if p.name.startswith(("tmp_", "pack_git2_"))
            ]
            assert leftovers == []
        assert_consistent(cache)


def test_stale_git_lock_files_in_a_mirror_are_swept_before_a_fetch(
    cache: RepoCache, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("locked")
    upstream.branch("side")
    entry = cache.ensure(upstream.url)
    for name in ("packed-refs.lock", "HEAD.lock", "config.lock"):
        (entry.path / name).write_text("left by a killed git")
    (entry.path / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (entry.path / "refs" / "heads" / "side.lock").write_text("left by a killed git")
    (entry.path / "objects" / "pack" / "tmp_pack_abc123").write_bytes(b"partial")
    upstream.commit({"x": "1"}, branch="side")
    with cache.checkout(upstream.url) as co:
        assert co.fetched and not co.stale
        assert mirror_refs(co.path) == upstream.refs()
    assert not (entry.path / "packed-refs.lock").exists()
    assert not (entry.path / "objects" / "pack" / "tmp_pack_abc123").exists()


def test_a_mirror_renamed_into_place_but_not_indexed_is_adopted(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("adopted")
    with RepoCache(cache_root) as cache:
        path = cache.ensure(upstream.url).path
    # Simulate a process killed between the rename and the index update: the row is gone, the mirror is there.
    backup = path.with_name("backup")
    shutil.copytree(path, backup)
    with RepoCache(cache_root) as cache:
        cache.evict(upstream.url)
    os.rename(backup, path)
    with RepoCache(cache_root) as cache:
        problems = cache.verify()
        assert [p.kind for p in problems] == ["orphan"]
        with cache.checkout(upstream.url) as co:
            assert co.source == "hit" and co.fetched
        assert cache.info(upstream.url) is not None
        assert_consistent(cache)


def test_verify_repairs_missing_invalid_and_leftover(cache_root: Path, upstreams: UpstreamFactory) -> None:
    missing, broken, fine = upstreams.create("missing"), upstreams.create("broken"), upstreams.create("fine")
    with RepoCache(cache_root) as cache:
        missing_path = cache.ensure(missing.url).path
        broken_path = cache.ensure(broken.url).path
        cache.ensure(fine.url)
    shutil.rmtree(missing_path)
    shutil.rmtree(broken_path / "refs")
    (broken_path / "packed-refs").unlink()
    (cache_root / "staging" / "somekey.0123abcd").mkdir()
    (cache_root / "trash" / "otherkey.0123abcd").mkdir()
    with RepoCache(cache_root) as cache:
        found = cache.verify()
        kinds = sorted(p.kind for p in found)
        assert kinds == ["invalid", "leftover", "missing"]  # the trash was emptied when the cache was opened
        assert not any(p.repaired for p in found)
        repaired = cache.verify(repair=True)
        assert all(p.repaired for p in repaired) and len(repaired) == 3
        assert cache.verify() == []
        assert [e.url for e in cache.entries()] == [f"file://{fine.path}"]
        with cache.checkout(broken.url) as co:
            assert co.source == "clone"
        assert_consistent(cache)
