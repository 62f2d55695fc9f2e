"""Shared fixtures: an isolated home, real upstream repositories, and real servers on 127.0.0.1 (the plain helpers
the tests share are in ``tests/helpers.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.testing import GitDaemon, SmartHTTPServer, UpstreamFactory
from tests._s3 import s3_endpoint  # noqa: F401  (a real S3 endpoint, moto_server on 127.0.0.1)
from tests.helpers import (  # noqa: F401  (their old home: `from tests.conftest import` still works)
    DelegatingStore,
    Worker,
    all_objects,
    assert_consistent,
    mirror_refs,
    wait_for_file,
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point HOME, XDG dirs and git's global config away from the user's files for the whole session."""
    home = tmp_path_factory.mktemp("home")
    saved = {name: os.environ.get(name) for name in _ISOLATED}
    os.environ.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        # Not /dev/null: as root, a `git config --global` in a test would replace the device for the machine.
        GIT_CONFIG_GLOBAL=str(tmp_path_factory.mktemp("git-global") / "config"),
        GIT_CONFIG_NOSYSTEM="1",
        REPOCACHE_DIR=str(tmp_path_factory.mktemp("default-cache")),
    )
    os.environ.pop("REPOCACHE_GIT", None)
    try:
        yield home
        written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
        assert written == [], f"tests wrote to the home directory: {written}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_ISOLATED = (
    "HOME",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_NOSYSTEM",
    "REPOCACHE_DIR",
    "REPOCACHE_GIT",
)


@pytest.fixture(scope="session")
def served_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory both servers export."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="session")
def served(served_dir: Path) -> UpstreamFactory:
    """A factory whose repositories the session's git daemon and HTTP server serve."""
    return UpstreamFactory(served_dir)


@pytest.fixture
def upstreams(tmp_path: Path) -> UpstreamFactory:
    """A factory of local upstream repositories for one test."""
    return UpstreamFactory(tmp_path / "upstreams")


@pytest.fixture(scope="session")
def daemon(served_dir: Path) -> Iterator[GitDaemon]:
    """A real ``git daemon`` on 127.0.0.1 serving :func:`served`."""
    with GitDaemon(served_dir) as server:
        yield server


@pytest.fixture(scope="session")
def http(served_dir: Path) -> Iterator[SmartHTTPServer]:
    """Real smart HTTP (``git http-backend``) on 127.0.0.1 serving :func:`served`."""
    with SmartHTTPServer(served_dir) as server:
        yield server


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    """A fresh cache directory."""
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_root: Path) -> Iterator[RepoCache]:
    """A RepoCache with no budget in a fresh directory; after the test, the index must agree with the disk."""
    with RepoCache(cache_root) as repo_cache:
        yield repo_cache
        assert_consistent(repo_cache)
