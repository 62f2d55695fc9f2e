"""Lock files can be deleted safely: mutual exclusion holds while holders unlink the file they hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repocache import RepoCache, locks
from repocache.testing import UpstreamFactory
from tests.helpers import key_of, wait_for_file

ROOT = Path(__file__).resolve().parents[1]

# Each process takes the lock exclusively over and over; while it holds it, it owns a marker file (O_EXCL), which
# a second holder could not create. Every other round it unlinks the lock file before releasing it.
_CONTENDER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from repocache import locks

    lock, marker, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    rounds = overlaps = unlinked = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        handle = locks.acquire(lock, shared=False, timeout=-1)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            overlaps += 1
            handle.release()
            continue
        time.sleep(0.0002)
        os.unlink(marker)
        rounds += 1
        if rounds % 2:
            unlinked += locks.discard(handle)
        else:
            handle.release()
    print(json.dumps({"rounds": rounds, "overlaps": overlaps, "unlinked": unlinked}))
    """
)


@pytest.mark.timeout(120)
def test_exclusive_lock_stays_exclusive_while_holders_unlink_its_file(tmp_path: Path) -> None:
    lock, marker = tmp_path / "repo.lock", tmp_path / "held-by"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(lock), str(marker), "3"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    results = [json.loads(p.communicate(timeout=100)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sum(r["unlinked"] for r in results) > 50, results  # the file really was deleted many times
    assert sum(r["overlaps"] for r in results) == 0, results


def test_discard_refuses_a_shared_lock(tmp_path: Path) -> None:
    handle = locks.acquire(tmp_path / "x.lock", shared=True, timeout=0)
    assert handle is not None
    with pytest.raises(ValueError, match="exclusive"):
        locks.discard(handle)
    handle.release()


def _lock_files(cache: RepoCache) -> set[str]:
    return {p.name for p in (cache.root / "locks").iterdir()}


def test_a_failed_miss_leaves_no_lock_file(cache_root: Path, tmp_path: Path) -> None:
    with RepoCache(cache_root) as cache:
        before = _lock_files(cache)
        for typo in ("no-such-repo", "another-typo"):
            with pytest.raises(Exception, match="does not exist"):
                cache.ensure(str(tmp_path / typo))
        assert _lock_files(cache) == before


@pytest.mark.timeout(120)
def test_startup_and_repair_delete_lock_files_of_absent_repositories_only(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    kept, evicted, held = (upstreams.create(name) for name in ("kept", "evicted", "held"))
    with RepoCache(cache_root) as cache:
        for upstream in (kept, evicted, held):
            cache.ensure(upstream.url)
            with cache.checkout(upstream.url):  # a second use: a hit, which creates the fetch lock too
                pass
        assert cache.evict(evicted.url) and cache.evict(held.url)
        keys = {u.url: cache.info(u.url) for u in (kept,)}
        assert keys[kept.url] is not None
    locks_dir = cache_root / "locks"
    # A lock file of an absent repository that another process holds (it is about to clone it) is not touched.
    ready = tmp_path / "ready"
    holder = _hold_lock(locks_dir / f"{key_of(held.url)}.lock", ready, tmp_path / "release")
    try:
        wait_for_file(ready)
        evicted_files = {f"{key_of(evicted.url)}.lock", f"{key_of(evicted.url)}.fetch"}
        assert evicted_files <= {p.name for p in locks_dir.iterdir()}
        with RepoCache(cache_root) as cache:  # the startup sweep
            names = _lock_files(cache)
            assert not evicted_files & names, names
            assert {f"{key_of(kept.url)}.lock", f"{key_of(kept.url)}.fetch", f"{key_of(held.url)}.lock"} <= names
            assert "budget.lock" in names or not (locks_dir / "budget.lock").exists()
    finally:
        (tmp_path / "release").write_text("go")
        holder.wait(30)
    with RepoCache(cache_root) as cache:
        cache.evict(kept.url)
        (locks_dir / f"{key_of(kept.url)}.lock").touch()
        assert cache.verify(repair=True) == []
        assert not {n for n in _lock_files(cache) if n != "budget.lock"}, _lock_files(cache)
        with cache.checkout(kept.url) as co:  # and the cache works on as before
            assert co.source == "clone"


def _hold_lock(path: Path, ready: Path, release: Path) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from repocache import locks
        handle = locks.acquire(Path(sys.argv[1]), shared=False, timeout=10)
        assert handle is not None
        Path(sys.argv[2]).write_text("held")
        while not Path(sys.argv[3]).exists():
            time.sleep(0.01)
        handle.release()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(ready), str(release)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        text=True,
    )
