"""Untrusted input: a shared cold store others can write to, a damaged index, odd URLs and paths.

Nothing in them runs, escapes the root or misleads the cache; an unusable piece is reported once and replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from repocache import RepoCache
from repocache.cold import LocalDirStore, Manifest
from repocache.gitops import describe_mirror, disk_usage
from repocache.keys import normalize_url
from repocache.testing import GitDaemon, Upstream, UpstreamFactory
from tests.helpers import assert_consistent, git, key_of, mirror_refs

pytestmark = pytest.mark.timeout(120)


def _store_artifact(store_dir: Path, url: str, mirror: Path, **overrides: object) -> Manifest:
    """Pack ``mirror`` as the cold store's artifact of ``url``, with a valid manifest (fields may be overridden)."""
    parsed = normalize_url(url)
    artifact = store_dir.parent / f"{parsed.key}.artifact"
    with tarfile.open(artifact, "w") as tar:  # by hand: every file of the mirror, as a peer could upload it
        for path in sorted(mirror.rglob("*")):
            tar.add(path, arcname=path.relative_to(mirror).as_posix(), recursive=False)
    data = artifact.read_bytes()
    sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    ref_count, head = describe_mirror(mirror)
    values: dict[str, object] = dict(
        url=parsed.url,
        key=parsed.key,
        sha256=sha256,
        size_bytes=size,
        mirror_bytes=disk_usage(mirror),
        ref_count=ref_count,
        head=head,
        created=time.time(),
    )
    manifest = Manifest(**{**values, **overrides})  # type: ignore[arg-type]
    assert LocalDirStore(store_dir).put(parsed.key, manifest, artifact)
    artifact.unlink()
    return manifest


def _hostile_mirror(tmp_path: Path, upstream_url: str, other: Path, marker: Path) -> Path:
    """A real mirror of the upstream whose config, hooks, alternates and commondir act on whoever uses it."""
    mirror = tmp_path / "hostile.git"
    git("clone", "-q", "--mirror", upstream_url, str(mirror))
    evil_hooks = mirror / "evil-hooks"
    for hooks in (mirror / "hooks", evil_hooks):
        hooks.mkdir(exist_ok=True)
        for name in ("reference-transaction", "post-fetch", "pre-auto-gc", "post-checkout", "fsmonitor-watchman"):
            hook = hooks / name
            hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
            hook.chmod(0o755)
    fetch_url = normalize_url(upstream_url).fetch_url
    with open(mirror / "config", "a", encoding="utf-8") as config:
        config.write(
            f"[core]\n\tsshCommand = touch {marker}; ssh\n\tfsmonitor = {evil_hooks}/fsmonitor-watchman\n"
            f"\thooksPath = {evil_hooks}\n"
            f'[url "{other}"]\n\tinsteadOf = {fetch_url}\n\tpushInsteadOf = {fetch_url}\n'
            f"[protocol]\n\tallow = always\n"
        )
    (mirror / "objects" / "info").mkdir(exist_ok=True)
    (mirror / "objects" / "info" / "alternates").write_text(f"{other}/objects\n")
    (mirror / "info").mkdir(exist_ok=True)
    (mirror / "info" / "attributes").write_text("* filter=evil\n")
    return mirror


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """Another repository, the target of every redirection in a hostile artifact."""
    upstream = UpstreamFactory(tmp_path / "others").create("other")
    upstream.commit({"evil": "1"}, branch="evil")
    return upstream.path


def _upstream_url(
    kind: str, served: UpstreamFactory, upstreams: UpstreamFactory, daemon: GitDaemon
) -> tuple[Upstream, str]:
    if kind == "local":
        upstream = upstreams.create("victim")
        upstream.commits(3)
        return upstream, str(upstream.path)
    upstream = served.create("victim")
    upstream.commits(3)
    return upstream, daemon.url_for(upstream)


@pytest.mark.parametrize("kind", ["local", "git-daemon"])  # fetched by the git CLI / by libgit2
def test_restored_artifact_is_data_never_configuration(
    tmp_path: Path,
    cache_root: Path,
    kind: str,
    served: UpstreamFactory,
    upstreams: UpstreamFactory,
    daemon: GitDaemon,
    other: Path,
) -> None:
    upstream, url = _upstream_url(kind, served, upstreams, daemon)
    marker = tmp_path / "ran"
    store = tmp_path / "cold"
    _store_artifact(store, url, _hostile_mirror(tmp_path, url, other, marker))
    upstream.commit({"after-packing": "1"})  # so the restore must fetch from the right upstream
    with RepoCache(cache_root, cold_store=str(store)) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched and not co.stale
            assert mirror_refs(co.path) == upstream.refs()
            names = sorted(p.name for p in co.path.iterdir() if p.name != "FETCH_HEAD")  # libgit2 writes it
            assert names == ["HEAD", "config", "objects", "packed-refs", "refs"]
            assert list((co.path / "objects" / "info").iterdir()) == []
            config = (co.path / "config").read_text()
            for word in ("sshCommand", "fsmonitor", "hooksPath", "insteadOf", "protocol", str(other)):
                assert word not in config
        with cache.worktree(url, "main") as tree:
            assert (tree.path / "after-packing").exists()
        upstream.commit({"second": "1"})
        with cache.checkout(url) as co:
            assert mirror_refs(co.path) == upstream.refs()
        assert not marker.exists()
        assert_consistent(cache)


@pytest.mark.parametrize("kind", ["local", "git-daemon"])
def test_fetch_ignores_url_rewriting_written_into_a_mirror_config(
    tmp_path: Path,
    cache_root: Path,
    kind: str,
    served: UpstreamFactory,
    upstreams: UpstreamFactory,
    daemon: GitDaemon,
    other: Path,
) -> None:
    upstream, url = _upstream_url(kind, served, upstreams, daemon)
    marker = tmp_path / "ran"
    with RepoCache(cache_root) as cache:
        with cache.checkout(url) as co:
            fetch_url = normalize_url(url).fetch_url
            with open(co.path / "config", "a", encoding="utf-8") as config:
                config.write(f'[url "{other}"]\n\tinsteadOf = {fetch_url}\n[core]\n\thooksPath = {tmp_path}/hooks\n')
            (tmp_path / "hooks").mkdir()
            hook = tmp_path / "hooks" / "reference-transaction"
            hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
            hook.chmod(0o755)
        upstream.commit({"new": "1"})
        with cache.checkout(url) as co:
            assert co.fetched
            assert mirror_refs(co.path) == upstream.refs()
            assert "insteadOf" not in (co.path / "config").read_text()
        assert not marker.exists()


def test_git_config_value_of_a_path_with_comment_characters_round_trips(tmp_path: Path) -> None:
    from repocache.gitops import mirror_config

    path = tmp_path / "we;ird#name"
    (tmp_path / "config").write_text(mirror_config(normalize_url(str(path))))
    found = subprocess.run(
        ["git", "config", "--file", str(tmp_path / "config"), "remote.origin.url"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == str(path)


# -- manifests are hints ---------------------------------------------------------------------------------------


def _mirror_of(tmp_path: Path, url: str) -> Path:
    mirror = tmp_path / "packed.git"
    git("clone", "-q", "--mirror", url, str(mirror))
    return mirror


def _rewrite_manifest(store: Path, url: str, text: str | None = None, **changes: object) -> None:
    """Change the stored manifest of ``url`` behind the store's back (as a peer with write access could)."""
    [path] = (store / key_of(url)).glob("*.json")
    if text is None:
        values = json.loads(path.read_text())
        values.update(changes)
        text = json.dumps(values)
    path.write_text(text)


def _cold_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "cold store" in str(w.message)]


@pytest.mark.parametrize("declared", [10**15, 4_000_000])  # beyond the budget / room for nothing else
def test_declared_mirror_size_is_a_hint_capped_by_the_artifact(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, declared: int
) -> None:
    bystander = upstreams.create("bystander")
    bystander.commits(2, size=20_000)
    upstream = upstreams.create("restored")
    upstream.commits(3, size=20_000)
    store = tmp_path / "cold"
    _store_artifact(store, str(upstream.path), _mirror_of(tmp_path, str(upstream.path)), mirror_bytes=declared)
    with RepoCache(cache_root, cold_store=str(store), max_bytes=4_000_000) as cache:
        cache.ensure(str(bystander.path))
        with cache.checkout(str(upstream.path)) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()
        assert cache.info(str(bystander.path)) is not None  # not evicted to make room for a lie
        assert cache.stats().evictions == 0
        assert_consistent(cache)


@pytest.mark.parametrize("lie", ["longer", "shorter"])
def test_artifact_whose_size_differs_from_its_manifest_is_reported_once_and_cloned(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, lie: str, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = upstreams.create("lied-about")
    upstream.commits(3, size=20_000)
    store = tmp_path / "cold"
    manifest = _store_artifact(store, str(upstream.path), _mirror_of(tmp_path, str(upstream.path)))
    _rewrite_manifest(store, str(upstream.path), size_bytes=manifest.size_bytes + (-512 if lie == "shorter" else 512))
    caplog.set_level(logging.WARNING, "repocache.cold")
    with RepoCache(cache_root, cold_store=str(store), cold_min_bytes=0) as cache:
        with cache.checkout(str(upstream.path)) as co:
            assert co.source == "clone"
            assert mirror_refs(co.path) == upstream.refs()
        assert cache.cold_entries() == []  # looked up again: skipped, not reported again
        assert cache.evict(str(upstream.path))  # uploads an honest artifact, which replaces the lying one
        (honest,) = cache.cold_entries()
        kept = sorted(p.name for p in (store / key_of(str(upstream.path))).iterdir())
        assert kept == [honest.generation + ".json", honest.generation + ".tar"]  # the lying pair is deleted
        with cache.checkout(str(upstream.path)) as co:
            assert co.source == "restore"
        ignored = [r.getMessage() for r in caplog.records if "ignoring the cold store generation" in r.getMessage()]
        assert len(ignored) == 1 and "declares" in ignored[0], ignored
        assert_consistent(cache)


def test_longer_stream_than_declared_is_refused_as_it_streams(tmp_path: Path) -> None:
    from repocache.cold import unpack_artifact
    from repocache.errors import ColdStoreError

    class Endless(io.RawIOBase):
        read_bytes = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            view = memoryview(buffer).cast("B")
            view[:] = b"\0" * len(view)
            self.read_bytes += len(view)
            return len(view)

    source = Endless()
    with pytest.raises(ColdStoreError, match="longer than the 10240 bytes"):
        unpack_artifact(
            cast(BinaryIO, source),
            tmp_path / "dest",
            expected_sha256="0" * 64,
            expected_size=10240,
        )
    assert source.read_bytes < 10 * 1024 * 1024
    assert not (tmp_path / "dest").exists()


def test_deeply_nested_manifest_is_skipped_everywhere(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = upstreams.create("nested")
    upstream.commits(2)
    store = tmp_path / "cold"
    _store_artifact(store, str(upstream.path), _mirror_of(tmp_path, str(upstream.path)))
    _rewrite_manifest(store, str(upstream.path), text="[" * 30_000 + "]" * 30_000)
    with RepoCache(cache_root, cold_store=str(store)) as cache:
        with cache.checkout(str(upstream.path)) as co:
            assert co.source == "clone"
        assert cache.cold_entries() == []
        assert cache.prune_cold(older_than=0) == []
        assert_consistent(cache)
    assert any("nested too deeply" in r.getMessage() for r in caplog.records)


def test_artifact_in_a_codec_this_host_lacks_is_reported_once_and_cloned(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # this host has no zstandard
    upstream = upstreams.create("foreign-codec")
    upstream.commits(2)
    store = tmp_path / "cold"
    _store_artifact(store, str(upstream.path), _mirror_of(tmp_path, str(upstream.path)), compression="zstd")
    with RepoCache(cache_root, cold_store=str(store)) as cache, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cache.checkout(str(upstream.path)) as co:
            assert co.source == "clone"
            assert mirror_refs(co.path) == upstream.refs()
        messages = _cold_warnings(caught)
        assert len(messages) == 1 and "zstd" in messages[0], messages
        assert_consistent(cache)


# -- restored mirrors must hold their refs' objects ------------------------------------------------------------


def _loose_path(mirror: Path, oid: str) -> Path:
    return mirror / "objects" / oid[:2] / oid[2:]


def _upstream_with_side_refs(upstreams: UpstreamFactory, name: str) -> tuple[Upstream, dict[str, str]]:
    """An upstream with a side branch (its own tree) and an annotated tag on a commit only the tag reaches.

    Returns the upstream and the ids a damaged copy loses: the side tip, its tree and the tagged commit.
    """
    upstream = upstreams.create(name)
    upstream.commits(2)
    side = upstream.commit({"side.txt": "side\n"}, branch="side")
    tagged = upstream.commit({"tagged.txt": "tagged\n"}, branch="tagged")
    upstream.tag("v1", at="tagged", annotated=True)
    git("update-ref", "-d", "refs/heads/tagged", cwd=upstream.path)
    upstream.commit({"main.txt": "later\n"})  # so the side tree is not main's
    tree = git("rev-parse", f"{side}^{{tree}}", cwd=upstream.path).strip()
    return upstream, {"side-tip": side, "side-tree": tree, "tag-target": tagged}


def _damaged_mirror(tmp_path: Path, upstream: Upstream, lost: dict[str, str], damage: str) -> Path:
    """A copy of the upstream as a peer could upload it: objects behind alternates, or one ref's objects lost."""
    mirror = tmp_path / f"damaged-{damage}.git"
    if damage == "alternates":  # no object of its own: all borrowed, HEAD naming a branch that does not exist
        git("clone", "-q", "--mirror", "--shared", str(upstream.path), str(mirror))
        git("symbolic-ref", "HEAD", "refs/heads/nope", cwd=mirror)
        assert (mirror / "objects" / "info" / "alternates").exists()
        assert [p for p in (mirror / "objects").rglob("*") if p.is_file() and "info" not in p.parts] == []
        return mirror
    git("clone", "-q", "--mirror", "--no-hardlinks", str(upstream.path), str(mirror))  # loose objects copied
    _loose_path(mirror, lost[damage]).unlink()
    return mirror


@pytest.mark.parametrize("damage", ["alternates", "side-tip", "side-tree", "tag-target"])
def test_restored_mirror_missing_a_refs_objects_is_refused_and_cloned(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, damage: str
) -> None:
    upstream, lost = _upstream_with_side_refs(upstreams, f"hollow-{damage}")
    url = str(upstream.path)
    store = tmp_path / "cold"
    _store_artifact(store, url, _damaged_mirror(tmp_path, upstream, lost, damage))
    with RepoCache(cache_root, cold_store=str(store)) as cache, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cache.checkout(url) as co:
            assert co.source == "clone" and not co.stale
            assert mirror_refs(co.path) == upstream.refs()
        messages = _cold_warnings(caught)
        assert len(messages) == 1 and "is corrupt" in messages[0] and " is missing" in messages[0], messages
        stats = cache.stats()
        assert (stats.restore_errors, stats.restores, stats.clones) == (1, 0, 1)
        assert cache.verify() == []
        assert_consistent(cache)


@pytest.mark.parametrize("damage", ["alternates", "side-tip", "side-tree", "tag-target"])
def test_verify_finds_a_mirror_missing_a_refs_objects_and_repair_evicts_it(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, damage: str
) -> None:
    upstream, lost = _upstream_with_side_refs(upstreams, f"verify-hollow-{damage}")
    url = str(upstream.path)
    with RepoCache(cache_root) as cache:
        cache.ensure(url)
        mirror = cache_root / "repos" / key_of(url)
        damaged = _damaged_mirror(tmp_path, upstream, lost, damage)  # what an earlier version restored as whole
        for name in ("HEAD", "packed-refs", "refs", "objects"):
            target = mirror / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if (damaged / name).exists():
                os.rename(damaged / name, target)
        if damage == "alternates":
            (mirror / "objects" / "info" / "alternates").unlink()  # the restore dropped them
        (problem,) = cache.verify()
        assert (problem.kind, problem.key) == ("invalid", key_of(url))
        assert " is missing" in problem.detail and not problem.repaired
        (repaired,) = cache.verify(repair=True)
        assert (repaired.kind, repaired.repaired) == ("invalid", True)
        assert cache.info(url) is None and not mirror.exists()
        with cache.checkout(url) as co:
            assert co.source == "clone"
            assert mirror_refs(co.path) == upstream.refs()
        assert cache.verify() == []
        assert_consistent(cache)


def test_repairing_a_mirror_missing_a_refs_objects_never_uploads_it(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory
) -> None:
    upstream, lost = _upstream_with_side_refs(upstreams, "repair-no-upload")
    url = str(upstream.path)
    with RepoCache(cache_root, cold_store=tmp_path / "cold", cold_min_bytes=0) as cache:
        cache.ensure(url)
        mirror = cache_root / "repos" / key_of(url)
        _loose_path(mirror, lost["side-tip"]).unlink()
        (repaired,) = cache.verify(repair=True)
        assert (repaired.kind, repaired.repaired) == ("invalid", True)
        # A damaged mirror is not offloaded (it would shadow a good artifact): the store was never even created.
        assert not (tmp_path / "cold").exists()
        assert_consistent(cache)


def test_a_mirror_whose_only_refs_are_symbolic_refs_to_missing_refs_is_not_valid(tmp_path: Path) -> None:
    from repocache.gitops import validate_mirror

    mirror = tmp_path / "symbolic-only.git"
    git("init", "-q", "--bare", str(mirror))
    git("symbolic-ref", "HEAD", "refs/heads/nope", cwd=mirror)
    git("symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/nope", cwd=mirror)
    assert validate_mirror(mirror) == "is corrupt (no ref names an object, only symbolic refs to missing refs)"


def test_a_mirror_with_tags_of_trees_and_blobs_and_head_on_a_missing_branch_is_valid(
    tmp_path: Path, upstreams: UpstreamFactory
) -> None:
    from repocache.gitops import validate_mirror

    upstream = upstreams.create("odd-tags")
    upstream.commits(2)
    tree = git("rev-parse", "HEAD^{tree}", cwd=upstream.path).strip()
    blob = git("rev-parse", "HEAD:counter.txt", cwd=upstream.path).strip()
    who = ["-c", "user.name=Tagger", "-c", "user.email=tagger@example.invalid"]
    git(*who, "tag", "-a", "-m", "a tree", "tree-tag", tree, cwd=upstream.path)
    git(*who, "tag", "-a", "-m", "a tag of a tag", "tag-tag", "tree-tag", cwd=upstream.path)
    git("update-ref", "refs/blob", blob, cwd=upstream.path)
    mirror = tmp_path / "odd.git"
    git("clone", "-q", "--mirror", str(upstream.path), str(mirror))
    git("symbolic-ref", "HEAD", "refs/heads/nope", cwd=mirror)
    assert validate_mirror(mirror) is None


# -- a damaged index ------------------------------------------------------------------------------------------


def _damage(index: Path, kind: str) -> None:
    """Damage a real index file the way disks and people do."""
    data = bytearray(index.read_bytes())
    page = 4096
    assert len(data) >= 6 * page, len(data)
    if kind == "garbage-header":
        data[:100] = b"this is not an sqlite database, it was overwritten by something else entirely.\n".ljust(100)
    elif kind == "truncated":
        del data[2 * page :]
    else:  # corrupted pages: every page after the first (the schema page) overwritten with noise
        noise = bytes((i * 131 + 7) % 251 for i in range(page))
        for start in range(page, len(data), page):
            data[start : start + page] = noise[: len(data) - start]
    index.write_bytes(bytes(data))


def _cache_with_two_mirrors(root: Path, upstreams: UpstreamFactory) -> list[str]:
    urls = []
    for name in ("first", "second"):
        upstream = upstreams.create(name)
        upstream.commits(2)
        urls.append(str(upstream.path))
    with RepoCache(root) as cache:
        for url in urls:
            cache.ensure(url)
    for suffix in ("-wal", "-shm"):
        assert not (root / f"index.sqlite{suffix}").exists()  # folded in when the last connection closed
    return urls


@pytest.mark.parametrize("kind", ["garbage-header", "truncated", "corrupted-pages"])
def test_damaged_index_is_kept_aside_and_rebuilt_from_the_mirrors(
    cache_root: Path, upstreams: UpstreamFactory, kind: str
) -> None:
    urls = _cache_with_two_mirrors(cache_root, upstreams)
    _damage(cache_root / "index.sqlite", kind)
    damaged = (cache_root / "index.sqlite").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with RepoCache(cache_root) as cache:
            assert sorted(e.url for e in cache.entries()) == sorted(normalize_url(u).url for u in urls)
            problems = cache.verify()
            assert [p.kind for p in problems] == ["index"], problems
            assert problems[0].path.read_bytes() == damaged  # kept, as it was
            assert cache.verify(repair=True)[0].repaired
            with cache.checkout(urls[0]) as co:
                assert co.source == "hit"
            assert_consistent(cache)
    messages = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(messages) == 1, messages
    assert len(list(cache_root.glob("index.sqlite.damaged-*"))) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [0, 50], ids=["emptied", "shorter-than-a-header"])
def test_an_emptied_index_is_damage_rebuilt_from_the_mirrors(
    cache_root: Path, upstreams: UpstreamFactory, size: int
) -> None:
    """A full disk or an operator's `> index.sqlite` leaves 0 bytes: SQLite reads that as a new, empty database,
    which would forget every mirror. It is damage: kept aside, rebuilt from the mirrors, said once."""
    urls = _cache_with_two_mirrors(cache_root, upstreams)
    os.truncate(cache_root / "index.sqlite", size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with RepoCache(cache_root, lock_timeout=5) as cache:
            assert sorted(e.url for e in cache.entries()) == sorted(normalize_url(u).url for u in urls)
            with cache.checkout(urls[0]) as co:
                assert co.source == "hit"
            assert [p.kind for p in cache.verify()] == ["index"]  # told, until acknowledged
            assert cache.verify(repair=True)[0].repaired
            assert_consistent(cache)
    messages = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(messages) == 1, messages
    assert len(list(cache_root.glob("index.sqlite.damaged-*"))) == 1


@pytest.mark.timeout(120)
def test_an_index_emptied_under_a_running_process_is_rebuilt_within_lock_timeout(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    """The file is truncated while this process holds connections (and the WAL) open: each new thread and the
    old ones get their answer within `lock_timeout`, after one rebuild, with one warning."""
    import threading

    urls = _cache_with_two_mirrors(cache_root, upstreams)
    lock_timeout = 4.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with RepoCache(cache_root, lock_timeout=lock_timeout) as cache:
            with cache.checkout(urls[0]) as co:
                assert co.source == "hit"
            os.truncate(cache_root / "index.sqlite", 0)
            results: list[object] = []

            def reader() -> None:
                started = time.monotonic()
                try:
                    with cache.checkout(urls[1]) as co:
                        results.append((co.source, sorted(e.url for e in cache.entries())))
                except Exception as exc:  # the assertion below shows it
                    results.append(exc)
                results.append(time.monotonic() - started)

            threads = [threading.Thread(target=reader) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            started = time.monotonic()
            entries = sorted(e.url for e in cache.entries())  # the thread that opened the index
            results.append(("main", entries))
            results.append(time.monotonic() - started)
            expected = sorted(normalize_url(u).url for u in urls)
            assert entries == expected, results
            answers = [r for r in results if not isinstance(r, float)]
            waits = [r for r in results if isinstance(r, float)]
            assert answers == [("hit", expected)] * 3 + [("main", expected)], answers
            assert max(waits) < lock_timeout + 2.0, waits
            assert [p.kind for p in cache.verify(repair=True)] == ["index"]
            assert_consistent(cache)
    messages = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(messages) == 1, messages


def test_command_line_rebuilds_a_damaged_index(cache_root: Path, upstreams: UpstreamFactory) -> None:
    urls = _cache_with_two_mirrors(cache_root, upstreams)
    _damage(cache_root / "index.sqlite", "garbage-header")
    env = {**os.environ, "REPOCACHE_DIR": str(cache_root)}
    listed = subprocess.run(
        [sys.executable, "-m", "repocache", "ls"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "unexpected" not in listed.stderr and "damaged" in listed.stderr
    assert all(normalize_url(url).url in listed.stdout for url in urls)


def test_processes_opening_a_damaged_index_at_once_rebuild_it_once(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    urls = _cache_with_two_mirrors(cache_root, upstreams)
    _damage(cache_root / "index.sqlite", "garbage-header")
    program = (
        "import sys, time\n"
        "from repocache import RepoCache\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "with RepoCache(sys.argv[1]) as cache:\n"
        "    print(len(cache.entries()))\n"
    )
    start = str(time.time() + 1.0)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", program, str(cache_root), start], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [worker.communicate(timeout=60) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, results
    assert [out.strip() for out, _err in results] == [str(len(urls)).encode()] * 4
    assert sum(b"damaged" in err for _out, err in results) == 1  # one rebuild, one warning
    assert len(list(cache_root.glob("index.sqlite.damaged-*"))) == 1


def test_older_index_is_migrated_to_the_current_schema(cache_root: Path, upstreams: UpstreamFactory) -> None:
    import sqlite3

    from repocache.index import SCHEMA_VERSION

    urls = _cache_with_two_mirrors(cache_root, upstreams)
    db = sqlite3.connect(cache_root / "index.sqlite")
    db.execute("PRAGMA user_version = 0")  # as every index written before the version was kept
    db.close()
    with RepoCache(cache_root) as cache:
        assert len(cache.entries()) == len(urls)
        assert_consistent(cache)
    db = sqlite3.connect(cache_root / "index.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


# -- worktrees ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["git", "libgit2"])
def test_gitmodules_with_an_update_command_is_checked_out_without_running_it(
    tmp_path: Path, cache_root: Path, upstreams: UpstreamFactory, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine == "libgit2":
        monkeypatch.setenv("REPOCACHE_GIT", "")
    marker = tmp_path / "ran"
    sub = upstreams.create("sub")
    sub.commits(1)
    upstream = upstreams.create("super")
    upstream.commits(1)
    upstream.add_submodule("lib", str(sub.path))
    modules = upstream.read(".gitmodules") + f"\tupdate = !touch {marker}\n".encode()
    upstream.commit({".gitmodules": modules, "src/app.txt": "app\n"})
    with RepoCache(cache_root) as cache, cache.worktree(str(upstream.path), "main") as tree:
        assert (tree.path / ".gitmodules").read_bytes() == modules
        assert (tree.path / "src" / "app.txt").read_text() == "app\n"
        assert (tree.path / "lib").is_dir() and not any((tree.path / "lib").iterdir())
        import pygit2

        checked_out = pygit2.Repository(str(tree.path))
        try:  # the index is exactly the commit's tree, gitlink included (git status itself refuses this file)
            assert checked_out.index.write_tree() == checked_out[tree.commit].peel(pygit2.Commit).tree_id
        finally:
            checked_out.free()
    assert not marker.exists()


def test_worktree_path_that_is_a_symlink_is_refused_and_nothing_is_left(
    tmp_path: Path, cache: RepoCache, upstreams: UpstreamFactory
) -> None:
    from repocache import ConfigError

    upstream = upstreams.create("linked")
    upstream.commits(1)
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"), cache.worktree(str(upstream.path), path=link):
        pass
    assert list(target.iterdir()) == [] and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symbolic link"), cache.worktree(str(upstream.path), path=dangling):
        pass
    assert not (tmp_path / "nowhere").exists()


# -- odd URLs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("git@example.invalid:a/b.git", "'a/b.git'"),  # home-relative, as git sends it
        ("me@example.invalid:~/a/b.git", "'~/a/b.git'"),
        ("git@example.invalid:/srv/a/b.git", "'/srv/a/b.git'"),
        ("ssh://git@example.invalid/srv/a/b.git", "'/srv/a/b.git'"),
    ],
)
def test_scp_like_urls_reach_ssh_with_the_path_git_would_send(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch, url: str, sent: str
) -> None:
    from repocache import CloneError

    record = tmp_path / "argv"
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexit 1\n')
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(fake_ssh))
    with RepoCache(cache_root) as cache, pytest.raises(CloneError), cache.checkout(url):
        pass
    argv = record.read_text().splitlines()
    assert argv[-1].endswith(f"git-upload-pack {sent}"), argv
    assert argv[-2].endswith("example.invalid"), argv


def test_url_longer_than_the_limit_is_invalid_input(cache_root: Path) -> None:
    from repocache import InvalidURLError
    from repocache.keys import MAX_URL_LENGTH

    with RepoCache(cache_root) as cache:
        for url in ("https://example.invalid/" + "a" * 200_000, "/srv/" + "a/" * 100_000, Path("/" + "b" * 5000)):
            with pytest.raises(InvalidURLError, match=f"limited to {MAX_URL_LENGTH} characters"), cache.checkout(url):
                pass
