"""Untrusted input: a shared cold store others can write to, a damaged index, odd URLs and paths.

Nothing in them runs, escapes the root or misleads the cache; an unusable piece is reported once and replaced.
"""

from __future__ import annotations

import os
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.cold import LocalDirStore, Manifest, pack_mirror
from repocache.gitops import describe_mirror, disk_usage
from repocache.keys import normalize_url
from repocache.testing import GitDaemon, Upstream, UpstreamFactory
from tests.conftest import assert_consistent, mirror_refs

pytestmark = pytest.mark.timeout(120)


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _store_artifact(
    store_dir: Path, url: str, mirror: Path, *, compression: str = "none", **overrides: object
) -> Manifest:
    """Pack ``mirror`` as the cold store's artifact of ``url``, with a valid manifest (fields may be overridden)."""
    parsed = normalize_url(url)
    artifact = store_dir.parent / f"{parsed.key}.artifact"
    with open(artifact, "wb") as out:
        sha256, size = pack_mirror(mirror, out, compression=compression)
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
        compression=compression,
    )
    manifest = Manifest(**{**values, **overrides})  # type: ignore[arg-type]
    assert LocalDirStore(store_dir).put(parsed.key, manifest, artifact)
    artifact.unlink()
    return manifest


def _hostile_mirror(tmp_path: Path, upstream_url: str, other: Path, marker: Path) -> Path:
    """A real mirror of the upstream whose config, hooks, alternates and commondir act on whoever uses it."""
    mirror = tmp_path / "hostile.git"
    _git("clone", "-q", "--mirror", upstream_url, str(mirror))
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


_ = (os, warnings)
