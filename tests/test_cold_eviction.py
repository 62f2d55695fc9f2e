"""Evictions that upload to the cold store do it outside the budget lock, and a kill at any step loses nothing.

Under the budget lock an eviction that must upload only hands its victim over: the mirror is renamed into
``trash/`` beside a lock file its owner holds, and its bytes stay reserved. The upload and the deletion run once
the lock is released, so a miss of another repository never waits for them. A process killed at any step leaves a
copy nobody resolves as a mirror (deleted by the next cache opened on the root, or by ``verify``) and a store that
holds either nothing of the upload a reader can see or the whole committed artifact.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from repocache import RepoCache, normalize_url
from repocache.cold import LocalDirStore
from repocache.testing import Upstream, UpstreamFactory
from tests._fleet import GatedStore
from tests.helpers import assert_consistent, key_of, learn_sizes, listing, mirror_refs, spawn_worker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def three(upstreams: UpstreamFactory) -> list[Upstream]:
    """Three upstreams of roughly 200 KB each."""
    made = []
    for name in ("evicted", "evicting", "bystander"):
        upstream = upstreams.create(name)
        upstream.commits(2, size=100_000)
        made.append(upstream)
    return made


def test_a_miss_of_another_repository_does_not_wait_for_an_eviction_upload(
    cache_root: Path, three: list[Upstream], tmp_path: Path
) -> None:
    evicted, evicting, bystander = three
    sizes = learn_sizes(cache_root, three)
    budget = max(sizes[:2]) * 3 // 2  # one of the first two fits, not both
    store = GatedStore(tmp_path / "store")
    outcome: dict[str, Any] = {}
    with RepoCache(cache_root, max_bytes=budget, cold_store=store, lock_timeout=60) as cache:
        cache.ensure(evicted.url)

        def miss_that_evicts() -> None:
            started = time.monotonic()
            with cache.checkout(evicting.url) as co:
                outcome["source"] = co.source
            outcome["seconds"] = time.monotonic() - started

        evicting_thread = threading.Thread(target=miss_that_evicts)
        evicting_thread.start()
        try:
            assert store.uploading.wait(30)  # the evicted mirror is being uploaded, slowly
            with RepoCache(cache_root, max_bytes="1GB", lock_timeout=5) as other:
                started = time.monotonic()
                with other.checkout(bystander.url) as co:  # makes room under the budget lock
                    assert co.source == "clone"
                bystander_seconds = time.monotonic() - started
                other_verified = other.verify(repair=True)
            assert not store.gate.is_set() and evicting_thread.is_alive()  # the upload is still going on
            print(f"a miss of another repository took {bystander_seconds:.2f} s while an eviction's upload was gated")
            assert bystander_seconds < 4.0, bystander_seconds  # it never waited for the upload (gated for good)
            trash = listing(cache_root / "trash")
            key = key_of(evicted.url)
            assert len(trash) == 2 and all(name.startswith(key + ".") for name in trash)  # the copy and its lock
            assert not (cache_root / "repos" / key).exists()  # nobody resolves the copy as a mirror
            # Its bytes are still on disk and counted: reserved, with the evicting miss's own reservation
            # standing for as much of them as it needs (it downloads nothing until the copy is deleted).
            assert cache._context.index.reserved_bytes() == max(sizes[0], sizes[1])
            assert other_verified == []  # the live upload's copy is nobody's debris
            assert len(listing(cache_root / "trash")) == 2
        finally:
            store.gate.set()
            evicting_thread.join(60)
        assert outcome["source"] == "clone"
        assert listing(cache_root / "trash") == []
        assert normalize_url(evicted.url).url in {m.url for m in store.list()}
        assert cache._context.index.reserved_bytes() == 0
        assert {e.key for e in cache.entries()} >= {key_of(evicting.url)}
        assert_consistent(cache)
        with cache.checkout(evicted.url) as co:
            assert co.source == "restore" and mirror_refs(co.path) == evicted.refs()


@pytest.mark.parametrize("step", ["handed", "mid", "uploaded"])
def test_a_process_killed_during_an_eviction_upload_loses_nothing(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path, step: str
) -> None:
    upstream = upstreams.create("killed-while-uploading")
    upstream.commits(3, size=200_000)
    store_path = tmp_path / "store"
    store_path.mkdir()
    with RepoCache(cache_root) as cache:
        key = cache.ensure(upstream.url).key
    ready = tmp_path / "ready"
    spec = {"root": str(cache_root), "store": str(store_path), "step": step, "ready": str(ready)}
    worker = spawn_worker("_offload_worker", json.dumps(spec))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not (cache_root / "repos" / key).exists()
        assert sorted(listing(cache_root / "trash"))[0].startswith(key + ".")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    store = LocalDirStore(store_path)
    if step == "mid":
        assert any(p.is_file() for p in store_path.rglob("*"))  # part of the artifact was written
    with RepoCache(cache_root, cold_store=store) as cache:
        assert listing(cache_root / "trash") == []  # the copy of the dead process is deleted on opening
        assert cache.entries() == []
        manifests = list(store.list())
        if step == "uploaded":  # committed whole: a reader restores it
            assert [m.key for m in manifests] == [key]
        else:  # nothing committed: no manifest names the partial upload
            assert manifests == [] and store.get_manifest(key) is None
        with cache.checkout(upstream.url) as co:
            assert co.source == ("restore" if step == "uploaded" else "clone")
            assert mirror_refs(co.path) == upstream.refs()
        assert_consistent(cache)


def test_verify_reports_the_copy_of_a_killed_eviction_upload(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("left-in-trash")
    upstream.commits(2, size=10_000)
    with RepoCache(cache_root) as cache:
        key = cache.ensure(upstream.url).key
        copy = cache_root / "trash" / f"{key}.0123456789ab"
        copy.mkdir()
        (copy / "HEAD").write_text("ref: refs/heads/main\n")
        (cache_root / "trash" / f"{key}.0123456789ab.lock").write_text("")  # its owner died: the lock is free
        stray = cache_root / "trash" / f"{key}.ba9876543210.lock"  # died between deleting the copy and the lock
        stray.write_text("")
        found = {(p.kind, p.path) for p in cache.verify()}
        assert found == {("leftover", copy), ("leftover", stray)}
        assert all(p.repaired for p in cache.verify(repair=True))
        assert listing(cache_root / "trash") == [] and cache.verify() == []
