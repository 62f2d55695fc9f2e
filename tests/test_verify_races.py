"""verify() beside live operations: the races and debris the crash and load tests found, reproduced
deterministically.

Each test puts ``verify()`` (or ``verify(repair=True)``) inside the window a live eviction, worktree, fetch, clone or
killed upload leaves open, and proves it neither reports what a live owner is doing nor leaves anything behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from repocache import Problem, RepoCache
from repocache.locks import acquire
from repocache.testing import UpstreamFactory
from tests.helpers import (
    PROJECT,
    listing,
)


@pytest.mark.timeout(60)
def test_verify_does_not_report_the_trash_of_a_live_eviction(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("evicting")
    with RepoCache(cache_root) as cache:
        entry = cache.ensure(upstream.url)
        # The state _evict_locked is in right after its rename: the key's exclusive lock held, the mirror moved
        # into trash/ to be deleted (the load test caught real evictions in this state).
        lock = acquire(cache_root / "locks" / f"{entry.key}.lock", shared=False, timeout=0)
        assert lock is not None
        with lock:
            os.rename(entry.path, cache_root / "trash" / f"{entry.key}.0123456789ab")
            assert cache.verify() == []  # the row is skipped (its lock is held); so must its trash be


@pytest.mark.timeout(60)
def test_verify_removes_the_lock_file_of_a_worktree_that_was_never_created(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = upstreams.create("stray-lock")
    with RepoCache(cache_root) as cache:
        key = cache.ensure(upstream.url).key
    # A real process takes the lock the way _worktree_dir does and dies before the directory exists.
    lock_file = cache_root / "worktrees" / f"{key}.0123456789ab.lock"
    code = f"from pathlib import Path; from repocache.locks import acquire; acquire(Path({str(lock_file)!r}), " + (
        "shared=False, timeout=0); import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    died = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=False)
    assert died.returncode == -signal.SIGKILL and lock_file.exists()
    with RepoCache(cache_root) as cache:
        repaired = cache.verify(repair=True)
        assert [p.kind for p in repaired] == ["leftover"]
        assert listing(cache_root / "worktrees") == []


@pytest.mark.timeout(60)
def test_verify_repair_removes_the_file_of_a_killed_cold_upload(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("killed-upload")
    upstream.commits(3, size=20_000)
    cold = cache_root.parent / "cold"
    with RepoCache(cache_root, cold_store=f"file://{cold}") as cache:
        key = cache.ensure(upstream.url).key
        # What ColdTier.offload has written when its process is killed in pack_mirror or the store's put.
        leftover = cache_root / "staging" / f"{key}.0123456789ab.upload"
        leftover.write_bytes(b"\0" * 100_000)
        assert [(p.kind, p.path) for p in cache.verify()] == [("leftover", leftover)]
        assert [p.repaired for p in cache.verify(repair=True)] == [True]
        assert cache.verify() == []
        assert not leftover.exists()
        leftover.write_bytes(b"\0" * 100_000)
        assert cache.evict(upstream.url)
        with cache.checkout(upstream.url) as co:  # a miss of the key sweeps its staging debris first
            assert co.source == "restore"
        assert not leftover.exists()


def _worktree_user(cache: RepoCache, url: str) -> tuple[threading.Thread, threading.Event]:
    """A live owner: a thread inside ``cache.worktree(url)`` until the returned event is set."""
    inside, leave = threading.Event(), threading.Event()

    def use_a_worktree() -> None:
        with cache.worktree(url):
            inside.set()
            leave.wait(30)

    user = threading.Thread(target=use_a_worktree)
    user.start()
    assert inside.wait(30)
    return user, leave


@pytest.mark.timeout(60)
def test_verify_does_not_report_a_worktree_removed_while_it_looked(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = upstreams.create("worktree-race")
    worktrees = cache_root / "worktrees"
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
        user, leave = _worktree_user(cache, upstream.url)
        real_scandir = os.scandir

        def scandir_then_let_the_user_leave(path: Any = ".") -> Any:
            """verify lists worktrees/ while the worktree exists; its user leaves right after (the race's timing)."""
            if path != worktrees or leave.is_set():
                return real_scandir(path)
            with real_scandir(path) as listing:
                entries = list(listing)
            leave.set()
            user.join(30)  # the worktree is removed and its lock released, as the live owner does
            return contextlib.nullcontext(iter(entries))

        monkeypatch.setattr(os, "scandir", scandir_then_let_the_user_leave)
        problems = cache.verify()
        monkeypatch.undo()
        assert leave.is_set() and not user.is_alive()
        assert problems == []  # nobody died: there is nothing to report
        assert listing(worktrees) == []  # and nothing left behind by verify itself


@pytest.mark.timeout(60)
def test_verify_does_not_report_a_worktree_removed_while_it_locked(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race one step later: the owner unlinks and releases between verify's open() and its flock()."""
    import fcntl

    upstream = upstreams.create("worktree-race-2")
    worktrees = cache_root / "worktrees"
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
        user, leave = _worktree_user(cache, upstream.url)
        real_flock = fcntl.flock

        def let_the_user_leave_then_flock(fd: int, operation: int) -> None:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not leave.is_set() and target.startswith(str(worktrees)) and target.endswith(".lock"):
                leave.set()
                user.join(30)  # the owner removes its tree, unlinks its lock file and releases it
            real_flock(fd, operation)

        monkeypatch.setattr(fcntl, "flock", let_the_user_leave_then_flock)
        problems = cache.verify()
        monkeypatch.undo()
        assert leave.is_set() and not user.is_alive()
        assert problems == []  # nobody died: there is nothing to report
        assert listing(worktrees) == []


@pytest.mark.timeout(60)
def test_verify_between_the_creation_and_the_locking_of_a_worktree_lock_file(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worktree's lock file must never be visible unlocked: verify(repair=True) running right before its creator
    locks it would take it for a dead worktree's, unlink it, and leave the live worktree unprotected."""
    import fcntl

    upstream = upstreams.create("worktree-race-3")
    worktrees = cache_root / "worktrees"
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
        real_flock = fcntl.flock
        found: list[list[Problem]] = []

        def verify_then_flock(fd: int, operation: int) -> None:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not found and target.startswith(str(worktrees)) and operation & fcntl.LOCK_EX:
                found.append([])  # once, and not for verify's own flock() calls
                found[0] = cache.verify(repair=True)
            real_flock(fd, operation)

        monkeypatch.setattr(fcntl, "flock", verify_then_flock)
        with cache.worktree(upstream.url) as tree:
            monkeypatch.undo()
            assert found == [[]]  # verify ran inside the window and found nothing to repair
            assert tree.path.is_dir() and tree.path.with_name(tree.path.name + ".lock").exists()
            assert cache.verify() == []
        assert listing(worktrees) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("meanwhile", ["fetch", "clone", "evict"])
def test_verify_judges_each_repository_as_it_is_once_locked(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """verify lists the index and the disk, then locks each repository in turn: a fetch, clone or eviction that
    finishes in between must not be reported as a wrong size, an orphan or a missing mirror."""
    from repocache import locks
    from repocache.index import Index

    growing, fresh = upstreams.create("verify-grows"), upstreams.create("verify-fresh")
    with RepoCache(cache_root) as cache:
        cache.ensure(growing.url)
        if meanwhile == "fetch":
            growing.commits(5, size=60_000)
        done: list[str] = []
        if meanwhile == "clone":  # published and indexed between verify's listing of the index and of the disk
            real_rows = Index.rows

            def rows_then_clone(index: Any) -> Any:
                rows = real_rows(index)
                if not done:
                    done.append(meanwhile)
                    cache.ensure(fresh.url)
                return rows

            monkeypatch.setattr(Index, "rows", rows_then_clone)
        else:  # a fetch or an eviction that finishes between the listings and the locking
            real_acquire = locks.acquire

            def act_then_acquire(path: Path, **kwargs: Any) -> Any:
                if not done and path.parent == cache_root / "locks" and not path.name.startswith("budget"):
                    done.append(meanwhile)
                    if meanwhile == "fetch":
                        cache.ensure(growing.url)  # new objects: a bigger mirror, its size recorded by the fetch
                    else:
                        assert cache.evict(growing.url)
                return real_acquire(path, **kwargs)

            monkeypatch.setattr(locks, "acquire", act_then_acquire)
        problems = cache.verify()
        monkeypatch.undo()
        assert done == [meanwhile]
        assert problems == []
        assert cache.verify() == []
