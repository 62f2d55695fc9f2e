"""Worktrees: a working tree at any ref, made from the mirror without touching it, held, and removed on exit."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from repocache import BudgetError, InvalidRefError, RefNotFoundError, RepoCache
from repocache.testing import Upstream, UpstreamFactory
from tests.helpers import assert_consistent, git


def _snapshot(path: Path) -> dict[str, str]:
    """Every file of ``path`` and a digest of its content (git may refresh an mtime; it must change no byte)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.fixture
def project(upstreams: UpstreamFactory) -> Upstream:
    upstream = upstreams.create("project", files={"src/app.py": "print('v1')\n", "README.md": "one\n"})
    upstream.tag("v1")
    upstream.commit({"src/app.py": "print('v2')\n", "NEW": "x"})
    upstream.branch("release", at="v1")
    upstream.commit({"hotfix.txt": "fix"}, branch="release")
    return upstream


@pytest.mark.parametrize(
    ("ref", "expected_file", "absent_file"),
    [("HEAD", "NEW", "hotfix.txt"), ("main", "NEW", None), ("v1", None, "NEW"), ("release", "hotfix.txt", "NEW")],
)
def test_worktree_checks_out_the_ref(
    cache: RepoCache, project: Upstream, ref: str, expected_file: str | None, absent_file: str | None
) -> None:
    upstream = project
    with cache.worktree(upstream.url, ref) as wt:
        assert wt.commit == upstream.resolve(ref)
        assert (wt.path / "src" / "app.py").read_bytes() == upstream.read("src/app.py", ref)
        if expected_file:
            assert (wt.path / expected_file).exists()
        if absent_file:
            assert not (wt.path / absent_file).exists()
        assert git("rev-parse", "HEAD", cwd=wt.path).strip() == wt.commit
        assert git("status", "--porcelain", cwd=wt.path).strip() == ""
        path = wt.path
    assert not path.exists()


def test_a_branch_worktree_is_on_that_branch_and_a_commit_is_detached(
    cache: RepoCache, upstreams: UpstreamFactory
) -> None:
    upstream = upstreams.create("branches")
    upstream.branch("feature")
    with cache.worktree(upstream.url, "feature") as wt:
        assert git("symbolic-ref", "--short", "HEAD", cwd=wt.path).strip() == "feature"
    sha = upstream.resolve("main")
    with cache.worktree(upstream.url, sha) as wt:
        assert wt.commit == sha
        assert subprocess.run(["git", "symbolic-ref", "HEAD"], cwd=wt.path, capture_output=True).returncode != 0


def test_worktree_does_not_touch_the_mirror(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("untouched", files={"a": "1"})
    mirror = cache.ensure(upstream.url).path
    before = _snapshot(mirror)
    with RepoCache(cache.root, fetch_ttl=3600) as quiet, quiet.worktree(upstream.url) as wt:
        (wt.path / "a").write_text("edited")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "local change", cwd=wt.path)
        assert (wt.path / ".git" / "objects" / "info" / "alternates").read_text().strip() == str(mirror / "objects")
    assert _snapshot(mirror) == before
    assert not (mirror / "worktrees").exists()


def test_worktree_holds_the_mirror_against_eviction(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    upstream, other = upstreams.create("held-wt"), upstreams.create("other-wt")
    with RepoCache(tmp_path / "measure") as measure:
        budget = measure.ensure(upstream.url).size_bytes * 3 // 2
    with RepoCache(cache_root, max_bytes=budget) as cache:
        with cache.worktree(upstream.url) as wt:
            with pytest.raises(BudgetError):  # no room beside the held mirror: the other one goes, and says so
                cache.ensure(other.url)
            assert cache.info(upstream.url) is not None
            assert cache.info(other.url) is None
            assert cache.evict(upstream.url) is False
            assert (wt.path / "README.md").exists()
        assert cache.evict(upstream.url) is True


def test_worktree_is_removed_when_the_block_raises(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("raises")
    with pytest.raises(RuntimeError, match="boom"), cache.worktree(upstream.url) as wt:
        path = wt.path
        raise RuntimeError("boom")
    assert not path.exists()
    assert list((cache.root / "worktrees").iterdir()) == []


def test_missing_ref_raises_naming_the_ref(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("refless")
    with (
        pytest.raises(RefNotFoundError, match="no-such-branch") as caught,
        cache.worktree(upstream.url, "no-such-branch"),
    ):
        pass
    assert isinstance(caught.value, LookupError) and caught.value.ref == "no-such-branch"
    assert list((cache.root / "worktrees").iterdir()) == []


@pytest.mark.parametrize("ref", ["", "--orphan", "main\nx", None])
def test_unusable_refs_are_rejected(cache: RepoCache, upstreams: UpstreamFactory, ref: object) -> None:
    upstream = upstreams.create("badref")
    with pytest.raises(InvalidRefError), cache.worktree(upstream.url, ref):  # type: ignore[arg-type]
        pass


def test_worktree_at_a_given_path(cache: RepoCache, upstreams: UpstreamFactory, tmp_path: Path) -> None:
    upstream = upstreams.create("at-path")
    target = tmp_path / "here"
    with cache.worktree(upstream.url, path=target) as wt:
        assert wt.path == target and (target / "README.md").exists()
    assert not target.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with (
        pytest.raises(ValueError, match="not an empty directory"),
        cache.worktree(upstream.url, path=tmp_path / "full"),
    ):
        pass
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_submodules_are_left_uninitialised_unless_asked(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    library = upstreams.create("library", files={"lib.txt": "library code"})
    superproject = upstreams.create("super")
    superproject.add_submodule("vendor/library", library.url, commit=library)
    with cache.worktree(superproject.url) as wt:
        assert (wt.path / ".gitmodules").exists()
        assert (wt.path / "vendor" / "library").is_dir()
        assert not (wt.path / "vendor" / "library" / "lib.txt").exists()
    with cache.worktree(superproject.url, submodules=True) as wt:
        assert (wt.path / "vendor" / "library" / "lib.txt").read_text() == "library code"


def test_worktree_with_libgit2_alone(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = upstreams.create("lg2", files={"f.txt": "content"})
    upstream.branch("side")
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
    monkeypatch.setenv("REPOCACHE_GIT", "")
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        with cache.worktree(upstream.url, "side") as wt:
            assert (wt.path / "f.txt").read_text() == "content"
            assert wt.commit == upstream.resolve("side")
        assert_consistent(cache)


def test_verify_removes_worktrees_of_dead_processes(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("dead-wt")
    with cache.worktree(upstream.url) as live:
        (cache.root / "worktrees" / "somekey.deadbeef0000").mkdir()
        problems = cache.verify(repair=True)
        assert [(p.kind, p.key) for p in problems] == [("leftover", "somekey.deadbeef0000")]
        assert live.path.exists()
    assert os.listdir(cache.root / "worktrees") == []
