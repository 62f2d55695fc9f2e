"""A process that runs one caching library for the benchmarks, driven by JSON lines on stdin.

Usage: ``python _worker.py ENGINE ROOT OPTIONS_JSON`` where ENGINE is ``ours`` (repocache), ``peer``
(git-cache-clone, run with the interpreter of its own virtualenv) or ``floor`` (the irreducible work of a hit on
the same root: :class:`Floor`; ``hit`` only). The worker imports its library and opens the
cache at ROOT, answers ``{"ready": true, ...}``, then executes commands and answers each with one JSON line:

* ``{"op": "clone", "url": U}``: a miss; repocache ``checkout(U)``, git-cache-clone ``add(U)`` (mirror mode).
  With ``"ttl": "long"`` (repocache only) the miss is made by the cache with the long ``fetch_ttl``: a restore
  whose artifact that TTL covers contacts upstream not at all.
* ``{"op": "fetch", "url": U}``: a hit that contacts upstream; repocache ``checkout(U)`` with ``fetch_ttl=0``,
  git-cache-clone ``refresh(U)``.
* ``{"op": "hit", "url": U, "n": N}``: N hits that must not contact upstream; repocache ``checkout(U)`` with a
  long ``fetch_ttl``, git-cache-clone ``add(U)`` of a cached repository (which answers "already exists").
* ``{"op": "evict", "urls": [...]}``: repocache ``evict(U)``, git-cache-clone ``clean(U)`` for each.
* ``{"op": "worktree", "url": U, "ref": R}`` (repocache only): ``with cache.worktree(U, R)`` of a cached
  repository, entered and exited (the tree removed), with the long ``fetch_ttl``; ``seconds`` leaves out the
  check, made inside the block, that the tree holds files.
* ``{"op": "publish", "url": U}`` (repocache only): ``publish(U)`` of a cached repository (long ``fetch_ttl``: no
  fetch), the upload to the cold store alone; replies with ``started`` (``time.monotonic()`` before the call).
* ``{"op": "publish_for", "url": U, "seconds": S}`` (repocache only): upload U again and again for S seconds
  (``prune_cold(keep_bytes=0)`` empties the store between uploads, so each is a full upload); replies with
  ``uploads`` and ``started``.
* ``{"op": "stats"}`` (repocache only) and ``{"op": "quit"}``.

Options (``OPTIONS_JSON``) for repocache: ``cold_store``, ``cold_publish``, ``max_bytes``.

Replies carry ``seconds`` measured in this process around the library call alone, and ``end``, the
``time.monotonic()`` at which the call returned (a system-wide clock on Linux, comparable between processes).
This file imports only the standard library at module level, so either engine's interpreter can run it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Ours:
    """repocache."""

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        from repocache import RepoCache

        extra: dict[str, Any] = {}
        for name in ("cold_store", "cold_publish", "max_bytes"):
            if options.get(name):
                extra[name] = options[name]
        self.fetching = RepoCache(root, fetch_ttl=0, **extra)
        self.fresh = RepoCache(root, fetch_ttl=1e9, **extra)
        if options.get("event_hook") == "metrics":  # the Prometheus hook, on a registry of its own
            from prometheus_client import CollectorRegistry

            from repocache import metrics

            metrics.instrument(self.fresh, CollectorRegistry())

    def clone(self, url: str, ttl: str = "zero") -> dict[str, Any]:
        cache = self.fresh if ttl == "long" else self.fetching
        started = time.perf_counter()
        with cache.checkout(url) as co:
            source, fetched = co.source, co.fetched
        return {"seconds": time.perf_counter() - started, "source": source, "fetched": fetched}

    def fetch(self, url: str) -> dict[str, Any]:
        return self.clone(url)

    def hit(self, url: str, n: int) -> dict[str, Any]:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            with self.fresh.checkout(url) as co:
                pass
            samples.append(time.perf_counter() - started)
            if co.fetched or co.source != "hit":
                raise RuntimeError(f"expected a hit without a fetch, got {co!r}")
        return {"samples": samples}

    def worktree(self, url: str, ref: str) -> dict[str, Any]:
        before = self.fresh.stats()
        started = time.perf_counter()
        with self.fresh.worktree(url, ref) as tree:
            entered = time.perf_counter()
            populated = any(name != ".git" for name in os.listdir(tree.path))
            leaving = time.perf_counter()
        seconds = (entered - started) + (time.perf_counter() - leaving)
        after = self.fresh.stats()
        if not populated or after.hits != before.hits + 1 or after.fetches != before.fetches:
            raise RuntimeError(f"expected a populated tree from a hit without a fetch: {before!r} -> {after!r}")
        return {"seconds": seconds, "commit": tree.commit}

    def publish(self, url: str) -> dict[str, Any]:
        started = time.monotonic()
        manifest = self.fresh.publish(url)
        return {"seconds": time.monotonic() - started, "started": started, "size_bytes": manifest.size_bytes}

    def publish_for(self, url: str, seconds: float) -> dict[str, Any]:
        started = time.monotonic()
        uploads = 0
        while time.monotonic() - started < seconds:
            self.fresh.prune_cold(keep_bytes=0)
            self.fresh.publish(url)
            uploads += 1
        return {"seconds": time.monotonic() - started, "started": started, "uploads": uploads}

    def evict(self, urls: list[str]) -> dict[str, Any]:
        started = time.perf_counter()
        evicted = sum(1 for url in urls if self.fetching.evict(url))
        return {"seconds": time.perf_counter() - started, "evicted": evicted}

    def stats(self) -> dict[str, Any]:
        stats = self.fetching.stats()
        return {name: getattr(stats, name) for name in ("hits", "misses", "clones", "fetches", "restores")}


class Floor:
    """The floor of a hit: the irreducible work, on the same root (the hit's lock file, index and mirror).

    Per hit: open and ``flock(LOCK_SH)`` the repository's lock file, one ``SELECT`` of its index row by key, one
    autocommit ``UPDATE`` of ``last_used``, ``stat`` of the mirror, close. The connection is opened once, in WAL
    with ``synchronous=NORMAL``, as repocache opens it. Nothing else: no URL parsing, no freshness rule, no events.
    """

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        import sqlite3

        self.root = root
        self.db = sqlite3.connect(root / "index.sqlite", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")

    def _key(self, url: str) -> str:
        from repocache.keys import normalize_url

        return normalize_url(url).key

    def clone(self, url: str) -> dict[str, Any]:
        raise NotImplementedError("the floor only measures hits of a repository already cached")

    def fetch(self, url: str) -> dict[str, Any]:
        return self.clone(url)

    def worktree(self, url: str, ref: str) -> dict[str, Any]:
        return self.clone(url)

    def publish(self, url: str) -> dict[str, Any]:
        return self.clone(url)

    def publish_for(self, url: str, seconds: float) -> dict[str, Any]:
        return self.clone(url)

    def evict(self, urls: list[str]) -> dict[str, Any]:
        return self.clone(urls[0])

    def hit(self, url: str, n: int) -> dict[str, Any]:
        import fcntl

        key = self._key(url)
        lock = str(self.root / "locks" / f"{key}.lock")
        mirror = str(self.root / "repos" / key)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if self.db.execute("SELECT * FROM entries WHERE key = ?", (key,)).fetchone() is None:
                    raise RuntimeError(f"{url} is not in the index")
                self.db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (time.time(), key))
                os.stat(mirror)
            finally:
                os.close(fd)
            samples.append(time.perf_counter() - started)
        return {"samples": samples}

    def stats(self) -> dict[str, Any]:
        return {}


class Peer:
    """git-cache-clone (its ``core`` API, which its command line calls)."""

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        from git_cache_clone import core
        from git_cache_clone.config import GitCacheConfig

        self.core = core
        self.config = GitCacheConfig(
            root_dir=root, use_lock=True, lock_wait_timeout=-1, clone_mode="mirror", metadata_store_mode="sqlite"
        )

    def _check(self, error: Any, allowed: tuple[str, ...] = ()) -> str:
        if error is None:
            return "ok"
        kind = str(getattr(getattr(error, "type", None), "name", error))
        if kind.lower() not in allowed:
            raise RuntimeError(f"git-cache-clone failed: {error}")
        return kind.lower()

    def clone(self, url: str) -> dict[str, Any]:
        started = time.perf_counter()
        error = self.core.add(self.config, url)
        seconds = time.perf_counter() - started
        outcome = self._check(error, ("repo_already_exists",))
        return {"seconds": seconds, "source": "clone" if outcome == "ok" else "hit", "fetched": outcome == "ok"}

    def fetch(self, url: str) -> dict[str, Any]:
        started = time.perf_counter()
        error = self.core.refresh(self.config, url)
        seconds = time.perf_counter() - started
        self._check(error)
        return {"seconds": seconds, "source": "hit", "fetched": True}

    def hit(self, url: str, n: int) -> dict[str, Any]:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            error = self.core.add(self.config, url)
            samples.append(time.perf_counter() - started)
            self._check(error, ("repo_already_exists",))
        return {"samples": samples}

    def worktree(self, url: str, ref: str) -> dict[str, Any]:
        raise NotImplementedError("git-cache-clone has no temporary worktrees")

    def publish(self, url: str) -> dict[str, Any]:
        raise NotImplementedError("git-cache-clone has no shared store")

    def publish_for(self, url: str, seconds: float) -> dict[str, Any]:
        raise NotImplementedError("git-cache-clone has no shared store")

    def evict(self, urls: list[str]) -> dict[str, Any]:
        started = time.perf_counter()
        for url in urls:
            self._check(self.core.clean(self.config, url))
        return {"seconds": time.perf_counter() - started, "evicted": len(urls)}

    def stats(self) -> dict[str, Any]:
        return {}


def main() -> int:
    engine, root, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    # Answers go to the original stdout; anything a library or git prints goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def answer(payload: dict[str, Any]) -> None:
        payload.setdefault("end", time.monotonic())
        protocol.write(json.dumps(payload) + "\n")

    try:
        engines: dict[str, type[Ours] | type[Peer] | type[Floor]] = {"ours": Ours, "peer": Peer, "floor": Floor}
        library = engines[engine](root, options)
    except BaseException:
        answer({"error": traceback.format_exc()})
        return 1
    answer({"ready": True, "pid": os.getpid(), "rss": _rss()})
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            if op == "clone":
                reply = library.clone(command["url"], **({"ttl": command["ttl"]} if "ttl" in command else {}))
            elif op == "fetch":
                reply = library.fetch(command["url"])
            elif op == "hit":
                reply = library.hit(command["url"], int(command["n"]))
            elif op == "worktree":
                reply = library.worktree(command["url"], command["ref"])
            elif op == "evict":
                reply = library.evict(list(command["urls"]))
            elif op == "stats":
                reply = library.stats()
            elif op == "publish":
                reply = library.publish(command["url"])
            elif op == "publish_for":
                reply = library.publish_for(command["url"], float(command["seconds"]))
            else:
                raise ValueError(f"unknown op {op!r}")
            reply["end"] = time.monotonic()
            reply["rss"] = _rss()
            answer(reply)
        except BaseException:
            answer({"error": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
