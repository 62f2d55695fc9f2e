"""Partial mirrors: a filter per cache, pin and call; git CLI clones and fetches; typed errors for absent objects.

Real partial clones of real upstreams (``uploadpack.allowFilter=true``) over ``file://``, ``git://`` and smart HTTP.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pygit2
import pytest

from repocache import ConfigError, FetchError, Maintenance, MissingObjectError, RepoCache, gitops
from repocache.events import Event, MaintenanceEvent
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests.helpers import all_objects, assert_consistent, git, key_of

pytestmark = pytest.mark.timeout(120)

UPLOAD_PACK = "git -c uploadpack.allowFilter=true upload-pack"
FILES = {f"dir/file{n}.txt": f"content {n}\n" * 200 for n in range(20)}


def _allow_filters(upstream: Upstream) -> Upstream:
    git("config", "uploadpack.allowFilter", "true", cwd=upstream.path)
    return upstream


def _history(upstream: Upstream, commits: int = 12) -> Upstream:
    """An upstream with ``commits`` commits, each rewriting a large file, and a tree of 20 files."""
    for number in range(commits):
        upstream.commit({"big.bin": random.Random(number).randbytes(40_000), f"n{number}": "x"})
    return _allow_filters(upstream)


@pytest.fixture
def local(upstreams: UpstreamFactory) -> Upstream:
    return _history(upstreams.create("local", files=FILES))


@pytest.fixture(params=["file", "git", "http"])
def remote(
    request: pytest.FixtureRequest, upstreams: UpstreamFactory, served: UpstreamFactory
) -> Iterator[tuple[Upstream, str]]:
    """An upstream and its URL over each transport (the servers are started only for their case)."""
    if request.param == "file":
        upstream = _history(upstreams.create("overfile", files=FILES))
        yield upstream, upstream.url
        return
    upstream = _history(served.create(f"partial-{request.param}", files=FILES))
    server: GitDaemon | SmartHTTPServer = request.getfixturevalue("daemon" if request.param == "git" else "http")
    yield upstream, server.url_for(upstream)


def _config(path: Path, name: str) -> str:
    return git("config", "--get", name, cwd=path).strip()


def _blob(upstream: Upstream, path: str, rev: str = "HEAD") -> str:
    return git("rev-parse", f"{rev}:{path}", cwd=upstream.path).strip()


# -- item 1: identity -----------------------------------------------------------------------------------------------


def test_a_blobless_mirror_is_smaller_than_the_full_one_and_keeps_the_promisor_config(
    cache: RepoCache, remote: tuple[Upstream, str]
) -> None:
    _upstream, url = remote
    # from the least to the most complete: a mirror holding more would serve the later requests
    treeless = cache.ensure(url, filter="tree:0")
    blobless = cache.ensure(url, filter="blob:none")
    with cache.checkout(url, filter="blob:none") as co:
        assert co.filter == "blob:none"
        assert co.key == blobless.key
    full = cache.ensure(url, filter=None)
    assert full.key == key_of(url)
    assert blobless.key == key_of(url) + "-blobless"
    assert treeless.key == key_of(url) + "-treeless"
    assert treeless.size_bytes <= blobless.size_bytes < full.size_bytes / 2
    assert len(all_objects(treeless.path)) < len(all_objects(blobless.path)) < len(all_objects(full.path))
    for entry, wanted in ((blobless, "blob:none"), (treeless, "tree:0")):
        assert _config(entry.path, "remote.origin.promisor") == "true"
        assert _config(entry.path, "remote.origin.partialclonefilter") == wanted
        assert any(p.suffix == ".promisor" for p in (entry.path / "objects" / "pack").iterdir())
    assert not any(p.suffix == ".promisor" for p in (full.path / "objects" / "pack").iterdir())
    assert len(cache.entries()) == 3


def test_a_full_request_after_a_partial_one_makes_a_full_mirror(cache: RepoCache, local: Upstream) -> None:
    blob = _blob(local, "big.bin")
    with cache.checkout(local.url, filter="blob:none") as co:
        assert co.source == "clone"
        assert co.filter == "blob:none"
        with pytest.raises(MissingObjectError):
            co.read_object(blob)
    with cache.checkout(local.url, filter=None) as co:
        assert co.source == "clone"  # a partial mirror never serves a full request
        assert co.filter is None
        assert co.key == key_of(local.url)
        assert co.read_object(blob).id == pygit2.Oid(hex=blob)
    assert {entry.key for entry in cache.entries()} == {key_of(local.url), key_of(local.url) + "-blobless"}


def test_a_partial_request_after_a_full_one_is_served_by_the_full_mirror(cache: RepoCache, local: Upstream) -> None:
    cache.ensure(local.url)
    for wanted in ("blob:none", "tree:0"):
        with cache.checkout(local.url, filter=wanted) as co:
            assert co.source == "hit"
            assert co.filter is None
            assert co.key == key_of(local.url)
    assert cache.info(local.url, filter="tree:0") is not None
    assert [entry.key for entry in cache.entries()] == [key_of(local.url)]


def test_a_treeless_request_is_served_by_a_blobless_mirror_but_not_the_reverse(
    cache: RepoCache, local: Upstream
) -> None:
    cache.ensure(local.url, filter="blob:none")
    with cache.checkout(local.url, filter="tree:0") as co:
        assert (co.source, co.filter) == ("hit", "blob:none")
    assert not cache.evict(local.url, filter="tree:0")  # exactly the tree-less mirror: not on disk
    assert cache.ensure(local.url, filter="tree:0").key.endswith("-blobless")
    assert cache.evict(local.url, filter="blob:none")
    assert cache.ensure(local.url, filter="tree:0").key.endswith("-treeless")


def test_the_cache_filter_applies_to_every_call_unless_the_call_names_one(cache_root: Path, local: Upstream) -> None:
    with RepoCache(cache_root, filter="tree:0") as cache:
        assert cache.filter == "tree:0"
        assert cache.settings.filter == "tree:0"
        assert cache.ensure(local.url).key.endswith("-treeless")
        assert cache.ensure(local.url, filter=None).key == key_of(local.url)
        assert_consistent(cache)


@pytest.mark.parametrize("bad", ["blob:limit=1k", "sparse:oid=x", "", 3, ["blob:none"]])
def test_a_filter_that_is_not_accepted_is_refused_naming_it(cache: RepoCache, local: Upstream, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"filter=.*not accepted.*'blob:none' or 'tree:0'"):
        cache.ensure(local.url, filter=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"filter=.*not accepted"):
        RepoCache(cache.root / "other", filter=bad)  # type: ignore[arg-type]
    assert cache.entries() == []


def test_a_pin_with_a_filter_chooses_the_mirror(tmp_path: Path, local: Upstream, upstreams: UpstreamFactory) -> None:
    plain = _history(upstreams.create("plain"), commits=1)
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_text(
        f'never_evict:\n  - {{url: "file://{tmp_path}/upstreams/loc*", filter: "tree:0"}}\n  - "{plain.url}"\n',
        encoding="utf-8",
    )
    with RepoCache(tmp_path / "cache", pins=pin_file, filter="blob:none") as cache:
        pinned = cache.ensure(local.url)
        assert pinned.key.endswith("-treeless")
        assert pinned.pinned
        assert cache.ensure(plain.url).key.endswith("-blobless")  # no filter in its pin: the cache's
        assert cache.ensure(local.url, filter=None).key == key_of(local.url)  # the call wins
        assert_consistent(cache)
    with RepoCache(tmp_path / "cache2", pins=[{"url": local.url, "filter": None}], filter="tree:0") as cache:
        assert cache.ensure(local.url).key == key_of(local.url)  # a pin can ask for a full mirror


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "https://h/a", "filter": "blob:limit=1"}, "has filter 'blob:limit=1'"),
        ({"url": "https://h/a", "filters": "tree:0"}, "nor a mapping with a 'url'"),
        ({"filter": "tree:0"}, "nor a mapping with a 'url'"),
        ({"url": "https://h/a", "filter": ["tree:0"]}, r"has filter \['tree:0'\]"),
    ],
)
def test_a_pin_with_a_bad_filter_is_refused_naming_it(cache_root: Path, entry: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RepoCache(cache_root, pins=[entry])  # type: ignore[list-item]


# -- item 2: git CLI, pygit2 reads them -----------------------------------------------------------------------------


def test_only_libgit2_refuses_a_partial_filter_saying_the_git_cli_is_needed(
    cache_root: Path, local: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPOCACHE_GIT", "")
    with pytest.raises(ConfigError, match=r"filter='tree:0'.*needs the git CLI"):
        RepoCache(cache_root, filter="tree:0")
    with RepoCache(cache_root) as cache:
        with pytest.raises(ConfigError, match=r"filter='blob:none' for .*needs the git CLI"):
            cache.ensure(local.url, filter="blob:none")
        assert cache.ensure(local.url).key == key_of(local.url)  # a full mirror still works with libgit2


@pytest.mark.parametrize("wanted", ["blob:none", "tree:0"])
def test_a_pygit2_walk_of_every_commit_works_in_a_partial_mirror(
    cache: RepoCache, remote: tuple[Upstream, str], wanted: str
) -> None:
    upstream, url = remote
    expected = git("log", "--format=%H %an %s", "HEAD", cwd=upstream.path).split("\n")[:-1]
    with cache.checkout(url, filter=wanted) as co:
        repo = co.repo
        walked = [
            f"{commit.id} {commit.author.name} {commit.message.splitlines()[0]}"
            for commit in repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
        ]
    assert walked == expected


def test_a_fetch_after_a_push_keeps_the_mirror_partial(cache: RepoCache, remote: tuple[Upstream, str]) -> None:
    upstream, url = remote
    before = cache.ensure(url, filter="blob:none")
    promisor_packs = len(list((before.path / "objects" / "pack").glob("*.promisor")))
    pushed = upstream.commit({"big.bin": b"pushed" * 50_000})
    after = cache.refresh(url, filter="blob:none")
    assert after.key == before.key
    assert _config(after.path, "remote.origin.partialclonefilter") == "blob:none"
    assert len(list((after.path / "objects" / "pack").glob("*.promisor"))) == promisor_packs + 1
    with cache.checkout(url, filter="blob:none", max_age=None) as co:
        assert str(co.repo.head.target) == pushed
        with pytest.raises(MissingObjectError):
            co.read_object(_blob(upstream, "big.bin"))  # the fetch kept the filter: the new blob stayed upstream
    assert after.size_bytes < before.size_bytes + 100_000


# -- item 3: typed errors, fetching what is missing -----------------------------------------------------------------


def test_reading_a_missing_blob_raises_the_typed_error_naming_url_object_and_filter(
    cache: RepoCache, remote: tuple[Upstream, str]
) -> None:
    upstream, url = remote
    blob = _blob(upstream, "big.bin")
    with cache.checkout(url, filter="blob:none") as co:
        with pytest.raises(MissingObjectError) as caught:
            co.read_object(blob)
        assert isinstance(caught.value, KeyError)
        assert (caught.value.url, caught.value.oid, caught.value.filter) == (co.url, blob, "blob:none")
        assert co.url in str(caught.value) and blob in str(caught.value) and "blob:none" in str(caught.value)
        assert "fetch_missing" in str(caught.value)
        tree = co.read_object(str(co.repo.head.peel(pygit2.Commit).tree_id))
        assert isinstance(tree, pygit2.Tree)  # trees are there
        assert cache.fetch_missing(caught.value.url, oids=[blob], filter=caught.value.filter) == 1
        assert co.read_object(blob).data == upstream.read("big.bin")  # still held: the new pack is seen


def test_reading_a_missing_tree_raises_the_typed_error(cache: RepoCache, remote: tuple[Upstream, str]) -> None:
    upstream, url = remote
    tree_id = git("rev-parse", "HEAD~1^{tree}", cwd=upstream.path).strip()
    with cache.checkout(url, filter="tree:0") as co:
        with pytest.raises(MissingObjectError) as caught:
            co.read_object(tree_id)
        assert (caught.value.url, caught.value.oid, caught.value.filter) == (co.url, tree_id, "tree:0")
        with pytest.raises((KeyError, pygit2.GitError)):  # what pygit2 alone raises: why read_object exists
            _ = co.repo.revparse_single("HEAD~1").peel(pygit2.Commit).tree


def test_fetch_missing_makes_a_blob_readable_and_charges_the_budget(
    cache: RepoCache, remote: tuple[Upstream, str]
) -> None:
    upstream, url = remote
    blob = _blob(upstream, "big.bin", "HEAD~3")
    before = cache.ensure(url, filter="blob:none")
    assert cache.fetch_missing(url, oids=[blob], filter="blob:none") == 1
    after = cache.info(url, filter="blob:none")
    assert after is not None and after.size_bytes > before.size_bytes
    assert cache.stats().bytes_used == sum(entry.size_bytes for entry in cache.entries())
    with cache.checkout(url, filter="blob:none", max_age=None) as co:
        data = co.read_object(blob)
        assert isinstance(data, pygit2.Blob)
        assert data.data == upstream.read("big.bin", "HEAD~3")
    assert cache.fetch_missing(url, oids=[blob], filter="blob:none") == 0  # present: nothing asked


def test_fetch_missing_for_a_path_fetches_the_trees_and_blobs_leading_to_it(
    cache: RepoCache, remote: tuple[Upstream, str]
) -> None:
    upstream, url = remote
    cache.ensure(url, filter="tree:0")
    wanted = _blob(upstream, "dir/file3.txt")
    other = _blob(upstream, "big.bin")
    assert cache.fetch_missing(url, paths=["dir/file3.txt"], filter="tree:0") >= 2  # the root tree, then the blob
    with cache.checkout(url, filter="tree:0", max_age=None) as co:
        tree = co.repo.head.peel(pygit2.Commit).tree
        assert tree["dir/file3.txt"].id == pygit2.Oid(hex=wanted)
        assert co.read_object(wanted).data == upstream.read("dir/file3.txt")
        with pytest.raises(MissingObjectError):
            co.read_object(other)  # outside the path: left upstream


def test_fetch_missing_for_a_commit_fetches_its_whole_tree(cache: RepoCache, local: Upstream) -> None:
    cache.ensure(local.url, filter="tree:0")
    cache.fetch_missing(local.url, commit="HEAD~2", filter="tree:0")
    with cache.checkout(local.url, filter="tree:0", max_age=None) as co:
        commit = co.repo.revparse_single("HEAD~2").peel(pygit2.Commit)
        files = {}
        for entry in _walk(co.repo, commit.tree):
            files[entry[0]] = co.read_object(entry[1]).data
    assert files["big.bin"] == local.read("big.bin", "HEAD~2")
    assert len(files) == len(FILES) + 1 + 1 + 10  # README, big.bin, n0..n9


def _walk(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = "") -> Iterator[tuple[str, str]]:
    for entry in tree:
        if entry.type_str == "tree":
            sub = repo[entry.id]
            assert isinstance(sub, pygit2.Tree)
            yield from _walk(repo, sub, f"{prefix}{entry.name}/")
        else:
            yield f"{prefix}{entry.name}", str(entry.id)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, u: c.fetch_missing(u, filter="blob:none"), "needs oids="),
        (lambda c, u: c.fetch_missing(u, oids=["xyz"], filter="blob:none"), "'xyz' is not an object id"),
    ],
)
def test_fetch_missing_refuses_bad_input_naming_it(
    cache: RepoCache, local: Upstream, call: Callable[[RepoCache, str], int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        call(cache, local.url)


def test_fetch_missing_on_a_full_mirror_fetches_nothing(cache: RepoCache, local: Upstream) -> None:
    cache.ensure(local.url)
    assert cache.fetch_missing(local.url, commit="HEAD", filter="blob:none") == 0


def test_a_worktree_from_a_partial_mirror_fetches_what_its_commit_needs(cache: RepoCache, local: Upstream) -> None:
    before = cache.ensure(local.url, filter="tree:0")
    with cache.worktree(local.url, "HEAD~1", filter="tree:0") as wt:
        assert (wt.path / "big.bin").read_bytes() == local.read("big.bin", "HEAD~1")
        assert (wt.path / "dir" / "file7.txt").read_bytes() == local.read("dir/file7.txt")
        assert git("status", "--porcelain", cwd=wt.path).strip() == ""
        assert not (before.path / "objects" / "info" / "alternates").exists()
    entry = cache.info(local.url, filter="tree:0")
    assert entry is not None
    assert entry.size_bytes > before.size_bytes + 40_000  # big.bin and the tree came into the mirror: charged
    assert cache.stats().bytes_used == entry.size_bytes
    assert cache.fetch_missing(local.url, commit="HEAD~1", filter="tree:0") == 0  # nothing left to fetch


# -- verify and maintenance of partial mirrors ----------------------------------------------------------------------


def test_verify_adopts_a_partial_mirror_without_an_index_row_instead_of_deleting_it(
    cache: RepoCache, local: Upstream
) -> None:
    entry = cache.ensure(local.url, filter="blob:none")
    cache._context.index.remove(entry.key, counter=None)  # a process died between its rename and its row
    problems = cache.verify(repair=True)
    assert [(problem.kind, problem.repaired) for problem in problems] == [("orphan", True)]
    assert entry.path.is_dir()
    assert [found.key for found in cache.entries()] == [entry.key]


def test_maintenance_after_many_fetches_keeps_the_mirror_partial_and_readable(
    cache: RepoCache, local: Upstream
) -> None:
    cache.ensure(local.url, filter="blob:none")
    for number in range(20):
        local.commit({"big.bin": random.Random(1000 + number).randbytes(20_000)})
        cache.refresh(local.url, filter="blob:none")
    entry = cache.info(local.url, filter="blob:none")
    assert entry is not None
    packs_before = len(list(entry.path.glob("objects/pack/*.pack")))
    reports = cache.maintain(local.url, prune=True, filter="blob:none")
    assert len(reports) == 1
    with cache.checkout(local.url, filter="blob:none", max_age=None) as co:
        packs = list(co.path.glob("objects/pack/*.pack"))
        assert len(packs) < packs_before
        assert all(pack.with_suffix(".promisor").exists() for pack in packs)
        assert _config(co.path, "remote.origin.partialclonefilter") == "blob:none"
        walked = sum(1 for _ in co.repo.walk(co.repo.head.target))
        assert walked == int(git("rev-list", "--count", "HEAD", cwd=local.path))
        with pytest.raises(MissingObjectError):
            co.read_object(_blob(local, "big.bin"))  # maintenance did not fetch what the filter left out
        assert cache.fetch_missing(local.url, paths=["big.bin"], filter="blob:none") == 1
        assert co.read_object(_blob(local, "big.bin")).data == local.read("big.bin")


@pytest.mark.parametrize("wanted", ["blob:none", "tree:0"])
def test_a_geometric_repack_of_a_partial_mirror_rolls_its_promisor_packs_up(
    cache_root: Path, local: Upstream, wanted: str
) -> None:
    with RepoCache(cache_root, fetch_ttl=0, maintenance="off") as cache:
        cache.ensure(local.url, filter=wanted)
        for number in range(3):
            local.commit({"big.bin": random.Random(3000 + number).randbytes(4_000)})
            cache.ensure(local.url, filter=wanted)
        entry = cache.info(local.url, filter=wanted)
        assert entry is not None
        assert len(list(entry.path.glob("objects/pack/*.pack"))) == 4
        # git 2.39 refuses --geometric where a promisor remote is set: the mirror is repacked whole instead
        gitops.repack_geometric(entry.path, cache._context.git, gitops.MaintenanceLimits(window_memory=0, threads=1))
        packs = list(entry.path.glob("objects/pack/*.pack"))
        assert len(packs) == 1
        assert all(pack.with_suffix(".promisor").exists() for pack in packs)
        git("fsck", "--connectivity-only", cwd=entry.path)
        assert cache.fetch_missing(local.url, paths=["big.bin"], filter=wanted) >= 1


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("wanted", ["blob:none", "tree:0"])
def test_maintenance_after_200_fetches_keeps_a_working_promisor(
    cache_root: Path, local: Upstream, tmp_path: Path, wanted: str
) -> None:
    """200 fetches, each after a push, with automatic maintenance as configured and forced pruning repacks."""
    events: list[Event] = []
    with RepoCache(
        cache_root, fetch_ttl=0, maintenance=Maintenance(max_packs=4, grace=0.0), on_event=events.append
    ) as cache:
        cache.ensure(local.url, filter=wanted)
        for number in range(200):
            local.commit({"big.bin": random.Random(2000 + number).randbytes(4_000), f"dir/n{number % 7}": f"{number}"})
            with cache.checkout(local.url, filter=wanted) as co:
                assert co.fetched
            if number % 50 == 49:
                (report,) = cache.maintain(local.url, prune=True, filter=wanted)
                assert not report.skipped
        automatic = [event for event in events if isinstance(event, MaintenanceEvent)]
        assert len(automatic) >= 200 // 4 // 2  # maintenance ran as configured, not only when forced
        entry = cache.info(local.url, filter=wanted)
        assert entry is not None
        mirror = entry.path
        packs = list(mirror.glob("objects/pack/*.pack"))
        assert packs and all(pack.with_suffix(".promisor").exists() for pack in packs)
        # the config repocache writes names the promisor remote (git needs no extensions.partialclone beside it)
        assert _config(mirror, "core.repositoryformatversion") == "1"
        assert _config(mirror, "remote.origin.promisor") == "true"
        assert _config(mirror, "remote.origin.partialclonefilter") == wanted
        git("fsck", "--connectivity-only", cwd=mirror)  # promisor semantics: what the filter left out is allowed
        upstream_head = git("rev-parse", "HEAD", cwd=local.path).strip()
        with cache.checkout(local.url, filter=wanted, max_age=None) as co:
            assert str(co.repo.head.target) == upstream_head
            walked = sum(1 for _ in co.repo.walk(co.repo.head.target))
            assert walked == int(git("rev-list", "--count", "HEAD", cwd=local.path))
            with pytest.raises(MissingObjectError):
                co.read_object(_blob(local, "big.bin"))  # maintenance never fetched what the filter left out
            assert cache.fetch_missing(local.url, paths=["big.bin"], filter=wanted) >= 1
            assert co.read_object(_blob(local, "big.bin")).data == local.read("big.bin")
        clone = tmp_path / "from-the-mirror.git"
        command = ["git", "clone", "--bare", f"--filter={wanted}", f"--upload-pack={UPLOAD_PACK}"]
        cloned = subprocess.run([*command, f"file://{mirror}", str(clone)], capture_output=True, text=True, check=False)
        if wanted == "tree:0":  # git 2.39's pack-objects reads the root trees a tree-less mirror lacks: documented
            assert cloned.returncode != 0 and "promisor remote" in cloned.stderr
        else:
            assert cloned.returncode == 0, cloned.stderr
            assert git("rev-parse", "HEAD", cwd=clone).strip() == upstream_head
            assert int(git("rev-list", "--count", "HEAD", cwd=clone)) == walked
        assert_consistent(cache)


def test_mark_stale_reaches_a_partial_mirror(cache_root: Path, local: Upstream) -> None:
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(local.url, filter="blob:none")  # the only mirror of the URL: the full key is not on disk
        pushed = local.commit({"after": "push"})
        assert cache.mark_stale(local.url)
        with cache.checkout(local.url, filter="blob:none") as co:
            assert co.fetched  # within the TTL: only the mark makes it fetch
            assert git("rev-parse", "HEAD", cwd=co.path).strip() == pushed
        assert_consistent(cache)


def test_an_evicted_partial_mirror_is_restored_only_for_a_partial_request(
    tmp_path: Path, remote: tuple[Upstream, str]
) -> None:
    upstream, url = remote
    store = tmp_path / "cold"
    with RepoCache(tmp_path / "cache", cold_store=store, cold_min_bytes=0) as cache:
        first = cache.ensure(url, filter="blob:none")
        assert cache.evict(url, filter="blob:none")
        with cache.checkout(url, filter=None) as co:
            assert co.source == "clone"  # the blob-less artifact cannot serve a full request
            assert co.filter is None
        assert cache.evict(url, filter=None)
        with cache.checkout(url, filter="blob:none") as co:
            assert co.source == "restore"
            assert (co.key, co.filter) == (first.key, "blob:none")
            assert _config(co.path, "remote.origin.partialclonefilter") == "blob:none"
            assert all(p.with_suffix(".promisor").exists() for p in co.path.glob("objects/pack/*.pack"))
            with pytest.raises(MissingObjectError):
                co.read_object(_blob(upstream, "big.bin"))
        assert cache.fetch_missing(url, paths=["big.bin"], filter="blob:none") == 1  # still a working promisor
        assert_consistent(cache)


def test_a_published_partial_mirror_is_restored_by_another_host_for_the_same_filter(
    tmp_path: Path, local: Upstream
) -> None:
    store = tmp_path / "shared-store"
    with RepoCache(tmp_path / "host-a", cold_store=store) as host_a:
        manifest = host_a.publish(local.url, filter="blob:none")
        assert manifest.key == key_of(local.url) + "-blobless"
        assert manifest.filter == "blob:none"
    with RepoCache(tmp_path / "host-b", cold_store=store) as host_b:
        with host_b.checkout(local.url, filter="blob:none") as co:
            assert (co.source, co.filter) == ("restore", "blob:none")
            with pytest.raises(MissingObjectError):
                co.read_object(_blob(local, "big.bin"))
        with host_b.checkout(local.url, filter=None) as co:
            assert (co.source, co.filter) == ("clone", None)
        assert_consistent(host_b)


def test_an_upstream_that_refuses_filters_yields_a_whole_mirror_under_the_partial_key(
    cache: RepoCache, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("nofilter", files=FILES)  # no uploadpack.allowFilter
    upstream.commit({"big.bin": random.Random(5).randbytes(30_000)})
    with cache.checkout(upstream.url, filter="blob:none") as co:
        assert co.filter == "blob:none"
        assert co.read_object(_blob(upstream, "big.bin")).data == upstream.read("big.bin")  # it holds everything


@pytest.mark.timeout(60)
def test_concurrent_partial_misses_clone_once_beside_a_full_one(cache: RepoCache, local: Upstream) -> None:
    def get(wanted: str | None) -> tuple[str, str | None]:
        with cache.checkout(local.url, filter=wanted) as co:
            return co.key, co.filter

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(get, ["tree:0"] * 6 + [None] * 2))
    partial = {key for key, got in results if got == "tree:0"}
    full = {key for key, got in results if got is None}
    assert full == {key_of(local.url)}
    assert len(partial) <= 1  # a tree-less request that came after the full clone is served by it
    assert cache.stats().clones == len(partial) + 1


def test_fetch_missing_of_an_object_upstream_lacks_is_a_fetch_error_naming_it(
    cache: RepoCache, local: Upstream
) -> None:
    before = cache.ensure(local.url, filter="blob:none")
    absent = "1" * 40
    with pytest.raises(FetchError, match=f"not our ref {absent}") as caught:
        cache.fetch_missing(local.url, oids=[absent], filter="blob:none")
    assert "partial clone with missing objects" not in str(caught.value)
    after = cache.info(local.url, filter="blob:none")
    assert after is not None and after.size_bytes == before.size_bytes
