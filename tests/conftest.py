"""Shared fixtures: an isolated home, real upstream repositories, and real servers on 127.0.0.1."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from repocache import RepoCache
from repocache.cold import ColdStore, Manifest
from repocache.testing import GitDaemon, SmartHTTPServer, UpstreamFactory
from tests._s3 import s3_endpoint  # noqa: F401  (a real S3 endpoint, moto_server on 127.0.0.1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point HOME, XDG dirs and git's global config away from the user's files for the whole session."""
    home = tmp_path_factory.mktemp("home")
    saved = {name: os.environ.get(name) for name in _ISOLATED}
    os.environ.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_GLOBAL=os.devnull,
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


def assert_consistent(repo_cache: RepoCache) -> None:
    """The index and the disk agree, and nothing of an interrupted operation is left."""
    problems = repo_cache.verify()
    assert problems == [], problems
    on_disk = {p.name for p in (repo_cache.root / "repos").iterdir()}
    assert on_disk == {entry.key for entry in repo_cache.entries()}


def mirror_refs(path: Path) -> dict[str, str]:
    """Every ref of the bare mirror at ``path`` (peeled to direct targets), HEAD excluded."""
    import pygit2

    repo = pygit2.Repository(str(path))
    try:
        refs = {}
        for name in repo.references:
            ref = repo.references[name].resolve()
            refs[name] = str(ref.target)
        return refs
    finally:
        repo.free()


class Worker:
    """A real worker process running ``tests._worker`` with a JSON spec."""

    def __init__(self, spec: dict[str, object]) -> None:
        import json
        import subprocess
        import sys

        self.spec = spec
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests._worker", json.dumps(spec)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self, timeout: float = 60.0) -> dict[str, object]:
        """Wait for the worker and return its JSON result (failing the test on a crash)."""
        import json

        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err
        parsed: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return parsed

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        import signal

        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)


def wait_for_file(path: Path, timeout: float = 60.0, worker: Worker | None = None) -> str:
    """Wait until ``path`` exists and return its text; fail early if ``worker`` died."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if worker is not None and worker.process.poll() is not None:
            raise AssertionError(f"worker exited early: {worker.process.communicate()}")
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.01)
    time.sleep(0.01)
    return path.read_text()


def all_objects(path: Path) -> set[str]:
    """Every object id in the repository at ``path``, reachable or not (packed and loose)."""
    import subprocess

    out = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch-check=%(objectname)"],
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


class DelegatingStore:
    """A plain :class:`~repocache.cold.ColdStore` (no streaming put, no leases, as a user's own store may be) that
    hands every call to ``inner``; tests override the calls they want to change."""

    def __init__(self, inner: ColdStore) -> None:
        self.inner = inner

    def put(self, key: str, manifest: Manifest, artifact_path: Path) -> bool:
        return self.inner.put(key, manifest, artifact_path)

    def get_manifest(self, key: str) -> Manifest | None:
        return self.inner.get_manifest(key)

    def open_artifact(self, manifest: Manifest) -> BinaryIO:
        return self.inner.open_artifact(manifest)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self) -> Iterator[Manifest]:
        return self.inner.list()

    def prune(self, *, older_than: float | None = None, keep_bytes: int | None = None) -> builtins.list[Manifest]:
        return self.inner.prune(older_than=older_than, keep_bytes=keep_bytes)
