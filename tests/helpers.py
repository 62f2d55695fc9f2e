"""What several test modules use, written once: git, keys, refs, upload-pack counting, served upstreams, the worker
processes, the delegating cold store and the checks every test makes of a cache.

Fixtures live in ``conftest.py``; everything here is a plain function or class, imported as
``from tests.helpers import ...``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pygit2
import pytest

from repocache import RepoCache, normalize_url
from repocache.cold import ColdStore, Manifest
from repocache.cold.manifest import FORMAT_VERSION
from repocache.testing import SmartHTTPServer, Upstream, UpstreamFactory

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

PROJECT = Path(__file__).resolve().parent.parent
"""The project's root: the working directory of every worker process, so ``tests`` is importable there."""


# -- git -----------------------------------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 60) -> str:
    """Run the git CLI and return its stdout; fail the test with git's stderr if git fails."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def refs(repository: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every ref of ``repository`` and the object it points to, as the git CLI lists them (sorted by name)."""
    listing = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=repository, env=env)
    found = dict(line.split(" ", 1) for line in listing.splitlines())
    return dict(sorted(found.items()))


def mirror_refs(path: Path) -> dict[str, str]:
    """Every ref of the bare mirror at ``path`` (peeled to direct targets), HEAD excluded, read with pygit2."""
    repo = pygit2.Repository(str(path))
    try:
        found = {}
        for name in repo.references:
            ref = repo.references[name].resolve()
            found[name] = str(ref.target)
        return found
    finally:
        repo.free()


def all_objects(path: Path) -> set[str]:
    """Every object id in the repository at ``path``, reachable or not (packed and loose)."""
    out = git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)", cwd=path)
    return set(out.split())


def key_of(url: str) -> str:
    """The cache's key of ``url``: the name of its mirror under ``repos/`` and of its lock files."""
    return normalize_url(url).key


# -- upstreams and servers -----------------------------------------------------------------------------------------


def served_upstream(
    served: UpstreamFactory, name: str, *, commits: int, size: int = 50_000, tag: bool = False
) -> Upstream:
    """An upstream of the served directory: ``commits`` commits of ``size`` bytes on ``main``, a branch ``feature``
    and, with ``tag``, an annotated tag ``v1``."""
    upstream = served.create(name)
    upstream.commits(commits, size=size)
    upstream.branch("feature")
    if tag:
        upstream.tag("v1", annotated=True)
    return upstream


def upload_packs(server: SmartHTTPServer) -> int:
    """How many upload-pack requests (the POSTs that transfer objects: one a clone or fetch) ``server`` answered."""
    return sum(1 for method, path in server.requests if method == "POST" and path.endswith("git-upload-pack"))


def learn_sizes(root: Path, upstreams: list[Upstream]) -> list[int]:
    """Clone each upstream once without a budget to learn its size, then evict it (the index remembers it)."""
    with RepoCache(root) as cache:
        sizes = [cache.ensure(u.url).size_bytes for u in upstreams]
        for u in upstreams:
            assert cache.evict(u.url)
    return sizes


# -- the cache -----------------------------------------------------------------------------------------------------


def assert_consistent(repo_cache: RepoCache) -> None:
    """The index and the disk agree, and nothing of an interrupted operation is left."""
    problems = repo_cache.verify()
    assert problems == [], problems
    on_disk = {p.name for p in (repo_cache.root / "repos").iterdir()}
    assert on_disk == {entry.key for entry in repo_cache.entries()}


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


POISONS = ("future", "unparseable", "missing-artifact", "truncated")
"""The kinds of generation a hostile or broken writer leaves in a shared store (see :func:`poison_generation`)."""

FAR_FUTURE = 4_102_444_800.0
"""2100-01-01 in epoch seconds: a date no honest upload has."""


def poison_generation(store: ColdStore, key: str, url: str, kind: str, artifact: bytes) -> str:
    """Write a generation of ``key`` into ``store`` as a peer with write access could, and return its name.

    ``"future"`` is a whole manifest and artifact dated in 2100; the others are dated ten minutes ahead (newer than
    any honest upload, within the clock skew tolerated): ``"unparseable"`` has a manifest that is not JSON,
    ``"missing-artifact"`` no artifact, ``"truncated"`` half of the artifact its manifest declares. Not a poison:
    ``"newer-format"`` is a whole generation written by a newer repocache (a ``format_version`` above ours).
    """
    assert kind in (*POISONS, "newer-format"), kind
    created = FAR_FUTURE if kind == "future" else time.time() + 600
    generation = f"{round(created * 1e9):020d}-00000000deadbeef"
    manifest = Manifest(
        url=url,
        key=key,
        sha256=hashlib.sha256(artifact).hexdigest(),
        size_bytes=len(artifact),
        mirror_bytes=4 * len(artifact),
        ref_count=1,
        head="refs/heads/main",
        created=created,
        generation=generation,
    )
    publish = store._publish  # type: ignore[attr-defined]  # the store's own primitive, as a peer's writer
    if kind != "missing-artifact":
        data = artifact[: len(artifact) // 2] if kind == "truncated" else artifact
        publish(key, generation + ".tar", io.BytesIO(data))
    text = b'{"url": "https://half-writ' if kind == "unparseable" else manifest.to_json().encode()
    if kind == "newer-format":  # whole, as a newer repocache in a rolling upgrade writes it
        text = json.dumps({**json.loads(text), "format_version": FORMAT_VERSION + 1}).encode()
    publish(key, generation + ".json", io.BytesIO(text))
    return generation


def stored_generations(store: ColdStore, key: str) -> set[str]:
    """The generations that have any object of ``key`` in ``store`` (committed or not)."""
    entries = store._entries(key)  # type: ignore[attr-defined]
    return {name.split(".", 1)[0] for name in entries}


# -- worker processes ----------------------------------------------------------------------------------------------


def spawn_worker(module: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m tests.<module> ARGS...`` in the project's root, its stdout and stderr piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", f"tests.{module}", *args],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Worker:
    """A real worker process running ``tests._worker`` with a JSON spec."""

    def __init__(self, spec: dict[str, object]) -> None:
        self.spec = spec
        self.process = spawn_worker("_worker", json.dumps(spec))

    def result(self, timeout: float = 60.0) -> dict[str, object]:
        """Wait for the worker and return its JSON result (failing the test on a crash)."""
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err
        parsed: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return parsed

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)


def wait_for_file(path: Path, timeout: float = 60.0, worker: Worker | None = None) -> str:
    """Wait until ``path`` exists and return its text; fail early if ``worker`` died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if worker is not None and worker.process.poll() is not None:
            raise AssertionError(f"worker exited early: {worker.process.communicate()}")
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.01)
    time.sleep(0.01)
    return path.read_text()


def stress_worker(mode: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start ``tests._stress_worker`` in ``mode`` ("crash" or "load") with a JSON spec."""
    return spawn_worker("_stress_worker", mode, json.dumps(spec))


# -- stress runs ---------------------------------------------------------------------------------------------------


def stress_seed() -> int:
    """The seed of a stress run: ``$REPOCACHE_STRESS_SEED`` to replay one, else a fresh random one."""
    return int(os.environ.get("REPOCACHE_STRESS_SEED") or random.SystemRandom().randrange(1 << 32))


def report_figures(name: str, summary: dict[str, Any]) -> None:
    """Print the figures (visible with ``-s``) and append them to ``$REPOCACHE_STRESS_REPORT`` when it is set."""
    print(f"\n=== {name} ===\n{json.dumps(summary, indent=2, sort_keys=True)}")
    target = os.environ.get("REPOCACHE_STRESS_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": name, **summary}, sort_keys=True) + "\n")


def listing(directory: Path) -> list[str]:
    """The names in ``directory``, sorted (none when it does not exist)."""
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# -- a WSGI application on loopback ---------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_wsgi(app: WSGIApplication, path: str = "/hooks") -> Iterator[str]:
    """Serve ``app`` with a real ``wsgiref`` server on 127.0.0.1 for the block; yields the URL of ``path``."""
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
