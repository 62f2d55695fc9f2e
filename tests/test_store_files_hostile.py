"""Files others can write that never end or never answer: every reader refuses them at once, or falls back.

A table of (which file, what it is) x every reader of such files: cold store manifests, artifacts, leases and
lease locks (a directory store, an fsspec store on a local filesystem, S3), the root's lock files and index, the
pin file. Each planted file is a FIFO (a reader would block forever), a symbolic link to ``/dev/zero`` (a reader
would never reach the end), a directory, a regular file larger than its reader's bound, or a symbolic link to a
regular file elsewhere (a reader would read, lock or create a file outside the place it trusts). Every case has a
timeout, so a hang fails instead of blocking, and asserts the typed error (or the documented fallback) and how
long it took.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from repocache import ConfigError, RepoCache, UnsafeFileError, normalize_url
from repocache.cold import FleetStore, FsspecStore, LocalDirStore, Manifest, pack_mirror
from repocache.cold.generations import GenerationStore
from repocache.errors import ColdStoreError
from repocache.locks import acquire
from repocache.pins import Pins
from repocache.safe_read import read_regular
from repocache.testing import GitDaemon, UpstreamFactory
from tests._s3 import s3_endpoint  # noqa: F401
from tests.helpers import assert_consistent, served_upstream
from tests.test_cold_store import make_mirror

pytestmark = pytest.mark.timeout(30)

SLACK = 5.0
"""Seconds a refusal may take beyond the wait it is allowed (machines are shared and slow)."""

KINDS = ["fifo", "dev-zero", "directory", "oversize", "outside"]
"""What a planted file is; "outside" is a symbolic link to a regular file elsewhere with plausible content."""


def plant(path: Path, kind: str, *, outside: Path, content: bytes = b"", oversize: int = 0) -> None:
    """Put a hostile ``kind`` of file at ``path`` (replacing what is there); ``outside`` is where a link points."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "oversize":
        path.write_bytes(content + b" " * max(0, oversize - len(content)))
    elif kind == "outside":
        outside.parent.mkdir(parents=True, exist_ok=True)
        outside.write_bytes(content)
        path.symlink_to(outside)
    else:  # pragma: no cover - a typo in a table
        raise AssertionError(kind)


def _writer(mirror: Path, key: str) -> Callable[[BinaryIO], Manifest]:
    def write(out: BinaryIO) -> Manifest:
        sha256, size = pack_mirror(mirror, out)
        return Manifest(
            url=f"https://example.invalid/{key}",
            key=key,
            sha256=sha256,
            size_bytes=size,
            mirror_bytes=size,
            ref_count=2,
            head="refs/heads/main",
            created=time.time(),
        )

    return write


@pytest.fixture(params=["local", "fsspec-local"])
def directory_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[GenerationStore, Path]:
    """(a store, its directory): a :class:`LocalDirStore`, or an :class:`FsspecStore` on the local filesystem."""
    where = tmp_path / "cold"
    if request.param == "local":
        return LocalDirStore(where), where
    where.mkdir()
    return FsspecStore(str(where)), where


def _stored(store: GenerationStore, tmp_path: Path, key: str = "repo-1") -> Manifest:
    make_mirror(tmp_path / "mirror")
    assert isinstance(store, FleetStore)
    stored = store.put_stream(key, _writer(tmp_path / "mirror", key))
    assert stored is not None
    return stored


# -- the helper itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_read_regular_refuses_every_kind_of_hostile_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "file"
    plant(path, kind, outside=tmp_path / "elsewhere" / "file", content=b"{}", oversize=1025)
    started = time.monotonic()
    with pytest.raises(UnsafeFileError) as caught:
        read_regular(path, limit=1024)
    assert time.monotonic() - started < SLACK
    assert caught.value.path == str(path)
    expected = {
        "fifo": "a FIFO",
        "dev-zero": "a symbolic link to /dev/zero",
        "directory": "a directory",
        "oversize": "1025 bytes, more than the bound of 1024 bytes",
        "outside": "a symbolic link",
    }[kind]
    assert expected in str(caught.value)


def test_read_regular_follows_a_link_only_when_asked_and_still_refuses_a_device(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"pins")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert read_regular(tmp_path / "link", limit=10, follow_symlinks=True) == b"pins"
    with pytest.raises(UnsafeFileError, match="a character device"):
        read_regular(tmp_path / "zero", limit=10, follow_symlinks=True)


# -- cold store manifests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_manifest_is_skipped_with_a_warning(
    directory_store: tuple[GenerationStore, Path], tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, where = directory_store
    stored = _stored(store, tmp_path)
    manifest = where / "repo-1" / f"{stored.generation}.json"
    plant(manifest, kind, outside=tmp_path / "elsewhere.json", content=manifest.read_bytes(), oversize=70_000)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="repocache.cold"):
        assert store.get_manifest("repo-1") is None
        assert list(store.list()) == []
    assert time.monotonic() - started < SLACK
    if kind != "directory":  # a directory is not listed as a manifest at all: an upload that never committed
        assert "ignoring the cold store generation" in caplog.text  # skipped as unusable, pruned by the next upload
        assert f"{stored.generation}.json" in caplog.text


# -- cold store artifacts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "outside"])
def test_a_hostile_artifact_is_refused_before_it_is_read(
    directory_store: tuple[GenerationStore, Path], tmp_path: Path, kind: str
) -> None:
    store, where = directory_store
    stored = _stored(store, tmp_path)
    artifact = where / "repo-1" / stored.artifact_name
    plant(artifact, kind, outside=tmp_path / "elsewhere.tar", content=artifact.read_bytes())
    started = time.monotonic()
    with pytest.raises(ColdStoreError, match=stored.artifact_name) as caught:
        store.open_artifact(stored).close()
    assert time.monotonic() - started < SLACK
    assert {"fifo": "FIFO", "dev-zero": "symbolic link", "directory": "directory", "outside": "symbolic link"}[
        kind
    ] in str(caught.value)


@pytest.mark.parametrize("kind", ["fifo", "outside"])
def test_a_restore_from_a_hostile_artifact_falls_back_to_a_clone_in_time(
    cache_root: Path,
    served: UpstreamFactory,
    daemon: GitDaemon,
    tmp_path: Path,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = served_upstream(served, f"hostile-artifact-{kind}", commits=2, size=10_000)
    url = daemon.url_for(upstream)
    store_dir = tmp_path / "cold"
    with RepoCache(cache_root, cold_store=store_dir, lock_timeout=5) as cache:
        cache.ensure(url)
        assert cache.evict(url)
        (artifact,) = store_dir.rglob("*.tar")
        # "outside": the very bytes of the artifact, but in a file the store does not own.
        plant(artifact, kind, outside=tmp_path / "elsewhere.tar", content=artifact.read_bytes())
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="repocache"):
            warnings.simplefilter("always")
            with cache.checkout(url) as co:
                assert co.source == "clone"
        assert time.monotonic() - started < 5 + SLACK
        # Skipped as unusable when the store is listed (its size is not the declared one), or refused as it is
        # opened: either way said once, and cloned.
        told = caplog.text + " ".join(str(w.message) for w in caught)
        assert "ignoring the cold store generation" in told or "unusable" in told, told
        assert_consistent(cache)


# -- leases and their lock files (a directory store) -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_lease_reads_as_no_lease_and_is_replaced(tmp_path: Path, kind: str) -> None:
    store = LocalDirStore(tmp_path / "cold")
    lease = tmp_path / "cold" / ".leases" / "repo-1.json"
    outside = tmp_path / "elsewhere.json"
    live = b'{"expires": 1e12, "holder": "someone-else", "token": "t"}'
    plant(lease, kind, outside=outside, content=live, oversize=70_000)
    started = time.monotonic()
    watched = store.current_lease("repo-1")  # what a host waiting for a holder sees: expired, never live
    assert watched is not None and watched.expires < time.time(), watched
    if kind == "directory":  # then taking it fails, naming it: that host clones independently
        with pytest.raises(ColdStoreError, match=r"repo-1\.json"):
            store.try_lease("repo-1", "host-a", 60)
    else:
        taken = store.try_lease("repo-1", "host-a", 60)
        assert taken is not None and taken.holder == "host-a"
        assert lease.is_file() and not lease.is_symlink()
        store.release_lease(taken)
    assert time.monotonic() - started < SLACK
    if kind == "outside":
        assert outside.read_bytes() == live  # neither read as a live lease nor written through the link


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "outside"])
def test_a_hostile_lease_lock_file_is_refused_naming_it(tmp_path: Path, kind: str) -> None:
    store = LocalDirStore(tmp_path / "cold")
    lock = tmp_path / "cold" / ".leases" / "repo-1.lock"
    outside = tmp_path / "elsewhere.lock"
    plant(lock, kind, outside=outside, content=b"")
    if kind == "outside":
        outside.unlink()  # a dangling link: following it would create the file elsewhere
    started = time.monotonic()
    with pytest.raises(ColdStoreError, match=r"repo-1\.lock"):
        store.try_lease("repo-1", "host-a", 60)
    assert time.monotonic() - started < SLACK
    assert not outside.exists()


# -- leases on S3: bounded reads ---------------------------------------------------------------------------------


def test_an_oversize_s3_lease_is_not_read_whole_and_reads_as_no_lease(
    s3_endpoint: tuple[str, str],  # noqa: F811
) -> None:
    endpoint, bucket = s3_endpoint
    store = FsspecStore(f"s3://{bucket}/hostile/{uuid.uuid4().hex}", endpoint_url=endpoint)
    size = 24 << 20
    store._fs.pipe_file(store._lease_path("repo-1"), b"{" + b" " * size)
    tracemalloc.start()
    try:
        watched = store.current_lease("repo-1")
        taken = store.try_lease("repo-1", "host-a", 60)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert watched is not None and watched.expires < time.time(), watched
    assert taken is not None and taken.holder == "host-a"
    assert peak < 1 << 20, f"reading the lease allocated {peak} bytes at its peak"


def test_an_oversize_s3_manifest_is_skipped_without_reading_it_whole(
    s3_endpoint: tuple[str, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint, bucket = s3_endpoint
    store = FsspecStore(f"s3://{bucket}/hostile/{uuid.uuid4().hex}", endpoint_url=endpoint)
    size = 24 << 20
    generation = f"{time.time_ns():020d}-{'0' * 16}"
    store._fs.pipe_file(store._path("repo-1", f"{generation}.json"), b"{" + b" " * size)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="repocache.cold"):
            assert store.get_manifest("repo-1") is None
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "ignoring the cold store generation" in caplog.text
    assert peak < 1 << 20, f"reading the manifest allocated {peak} bytes at its peak"


# -- the root's lock files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "outside", "dangling"])
@pytest.mark.parametrize("shared", [True, False])
def test_a_hostile_lock_file_is_refused_at_once_and_never_followed(tmp_path: Path, kind: str, shared: bool) -> None:
    path = tmp_path / "locks" / "repo.lock"
    outside = tmp_path / "elsewhere" / "victim"
    plant(path, "outside" if kind == "dangling" else kind, outside=outside, content=b"keep me\n")
    if kind == "dangling":
        outside.unlink()
    started = time.monotonic()
    with pytest.raises(UnsafeFileError, match=str(path)):
        acquire(path, shared=shared, timeout=2.0)
    assert time.monotonic() - started < SLACK
    if kind == "dangling":
        assert not outside.exists()
    elif kind == "outside":
        assert outside.read_bytes() == b"keep me\n"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "dangling"])
def test_a_checkout_behind_a_hostile_lock_file_fails_naming_it_within_lock_timeout(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, tmp_path: Path, kind: str
) -> None:
    upstream = served_upstream(served, "hostile-lock", commits=1, size=1_000)
    url = daemon.url_for(upstream)
    outside = tmp_path / "elsewhere" / "victim"
    with RepoCache(cache_root, lock_timeout=2) as cache:
        lock = cache_root / "locks" / f"{normalize_url(url).key}.lock"
        plant(lock, "outside" if kind == "dangling" else kind, outside=outside)
        if kind == "dangling":
            outside.unlink()
        started = time.monotonic()
        with pytest.raises(UnsafeFileError, match=str(lock)), cache.checkout(url):
            pass
        assert time.monotonic() - started < 2 + SLACK
        assert not outside.exists() or kind != "dangling"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "outside"])
def test_verify_reports_a_hostile_worktree_lock_file_and_leaves_it_alone(
    cache_root: Path, tmp_path: Path, kind: str
) -> None:
    outside = tmp_path / "elsewhere" / "victim"
    with RepoCache(cache_root) as cache:
        tree = cache_root / "worktrees" / "abc.0123"
        (tree / "src").mkdir(parents=True)
        lock = tree.with_name(tree.name + ".lock")
        plant(lock, kind, outside=outside, content=b"keep me\n")
        started = time.monotonic()
        problems = cache.verify(repair=True)
        assert time.monotonic() - started < SLACK
    (problem,) = [p for p in problems if p.path == lock]
    assert problem.kind == "leftover" and not problem.repaired and "refused" in problem.detail
    assert (tree / "src").is_dir() and (lock.is_symlink() or lock.exists())  # nothing removed on a guess
    if kind == "outside":
        assert outside.read_bytes() == b"keep me\n"


# -- the index -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("index.sqlite", "fifo"),
        ("index.sqlite", "dev-zero"),
        ("index.sqlite", "directory"),
        ("index.sqlite", "outside"),
        ("index.sqlite-wal", "fifo"),
        ("index.sqlite-shm", "dev-zero"),
    ],
)
@pytest.mark.timeout(30, method="thread")  # SQLite blocked on a FIFO retries on EINTR: a signal cannot stop it
def test_a_hostile_index_file_is_refused_with_a_clear_error(tmp_path: Path, name: str, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    with RepoCache(elsewhere):
        pass  # a sound index somewhere else, for the link to point at
    root = tmp_path / "cache"
    root.mkdir()
    planted = root / name
    content = (elsewhere / "index.sqlite").read_bytes()
    plant(planted, kind, outside=tmp_path / "outside.sqlite", content=content)
    started = time.monotonic()
    with pytest.raises(UnsafeFileError, match=str(planted)):
        RepoCache(root).close()
    assert time.monotonic() - started < SLACK


# -- the pin file ----------------------------------------------------------------------------------------------

PINS = b"never_evict:\n  - https://example.com/a/b\n"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "oversize"])
def test_a_hostile_pin_file_is_refused_naming_what_it_is(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "pins.yaml"
    plant(path, kind, outside=tmp_path / "unused", content=PINS + b"#", oversize=(1 << 20) + 1)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=str(path)) as caught:
        Pins(path)
    assert time.monotonic() - started < SLACK
    expected = {
        "fifo": "a FIFO",
        "dev-zero": "a character device",
        "directory": "a directory",
        "oversize": "more than the bound of 1048576 bytes",
    }[kind]
    assert expected in str(caught.value)


def test_a_pin_file_may_be_a_link_to_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_bytes(PINS)
    (tmp_path / "pins.yaml").symlink_to(tmp_path / "real.yaml")
    assert Pins(tmp_path / "pins.yaml").matches("https://example.com/a/b")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "oversize"])
def test_a_pin_file_replaced_by_a_hostile_one_keeps_the_last_good_pins(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pins.yaml"
    path.write_bytes(PINS)
    pins = Pins(path)
    hostile = tmp_path / "hostile"
    plant(hostile, kind, outside=tmp_path / "unused", content=PINS + b"#", oversize=(1 << 20) + 1)
    if kind == "directory":
        path.unlink()
    os.rename(hostile, path)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="repocache"):
        assert pins.matches("https://example.com/a/b")
    assert time.monotonic() - started < SLACK
    assert "keeping the previous pins" in caplog.text
