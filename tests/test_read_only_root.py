"""A read-only root can be inspected (``ls``, ``stats``, ``verify``); what would change it says the root is
read-only, naming it.

The tests run as root, whom permissions never stop, so the command-line test makes the root read-only the way a
read-only mount does: a read-only bind mount in a private mount namespace (``unshare -m``), which disappears with
the command. Where that is not permitted it is skipped, and the second test drives the read-only open directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.testing import UpstreamFactory
from tests.helpers import PROJECT

pytestmark = pytest.mark.timeout(120)


def _run_on_read_only_mount(root: Path, mount: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``repocache ARGS`` with ``REPOCACHE_DIR`` a read-only bind mount of ``root`` at ``mount``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REPOCACHE_", "GIT_"))}
    env.update(REPOCACHE_DIR=str(mount), PYTHONPATH=str(PROJECT), GIT_CONFIG_NOSYSTEM="1")
    env.update(GIT_CONFIG_GLOBAL=os.devnull)
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    command = ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh", str(root), str(mount)]
    return subprocess.run(
        [*command, sys.executable, "-m", "repocache", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _read_only_mounts_work(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/x" 2>/dev/null'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh", str(probe)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def test_ls_stats_and_verify_read_a_read_only_root_and_writes_name_it(
    tmp_path: Path, upstreams: UpstreamFactory
) -> None:
    if not _read_only_mounts_work(tmp_path):
        pytest.skip("a read-only bind mount (unshare -m, mount) is not permitted here")
    root, mount = tmp_path / "cache", tmp_path / "mount"
    mount.mkdir()
    upstream = upstreams.create("inspected")
    with RepoCache(root) as cache:
        cache.ensure(upstream.url)
    listed = _run_on_read_only_mount(root, mount, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [entry["url"] for entry in json.loads(listed.stdout)] == [f"file://{upstream.path}"]
    table = _run_on_read_only_mount(root, mount, "ls")
    assert table.returncode == 0 and f"file://{upstream.path}" in table.stdout, table.stderr
    stats = _run_on_read_only_mount(root, mount, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["clones"] == 1
    verified = _run_on_read_only_mount(root, mount, "verify")
    assert verified.returncode == 0, verified.stderr
    for args in (("verify", "--repair"), ("get", upstream.url), ("evict", upstream.url), ("stale", upstream.url)):
        refused = _run_on_read_only_mount(root, mount, *args)
        assert refused.returncode != 0, args
        assert f"the cache root {mount} is read-only" in refused.stderr, (args, refused.stderr)
        assert "OperationalError" not in refused.stderr and "Traceback" not in refused.stderr


def test_a_read_only_index_is_opened_read_only_and_never_written(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repocache import ReadOnlyRootError

    upstream = upstreams.create("read-only")
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
    index = cache_root / "index.sqlite"
    before = index.read_bytes()
    monkeypatch.setattr("repocache.index._is_read_only", lambda path: True)
    with RepoCache(cache_root) as cache:
        assert [entry.url for entry in cache.entries()] == [f"file://{upstream.path}"]
        assert cache.stats().clones == 1
        assert cache.verify() == []
        with pytest.raises(ReadOnlyRootError, match=f"the cache root {cache_root} is read-only"):
            cache.ensure(upstream.url)
        with pytest.raises(ReadOnlyRootError, match="cannot repair it"):
            cache.verify(repair=True)
    assert index.read_bytes() == before
