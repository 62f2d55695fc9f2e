"""RepoCache: the facade users hold. It orchestrates keys, locks, the index, pins, git and the cold store.

Layout of a cache root::

    <root>/index.sqlite          the LRU index (WAL), shared by every process
    <root>/repos/<key>/          bare mirrors, each published by one atomic rename
    <root>/staging/<key>.<id>/   clones and restores in progress (swept under the repository's lock)
    <root>/trash/<key>.<id>/     evicted mirrors being deleted (renamed out first, so nobody sees half a repo)
    <root>/locks/<key>.lock      shared by readers, exclusive for clone and eviction
    <root>/locks/<key>.fetch     one fetch at a time per repository
    <root>/locks/budget.lock     one budget decision (room-making or enforcement) at a time
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from repocache import gitops, locks
from repocache.checkout import Checkout, Worktree
from repocache.errors import (
    BudgetError,
    CloneError,
    ColdStoreError,
    ConfigError,
    FetchError,
    InvalidRefError,
    InvalidURLError,
    LockTimeoutError,
    RefNotFoundError,
    RepoCacheError,
)
from repocache.index import Index, Row
from repocache.keys import RepoURL, normalize_url
from repocache.models import Entry, Problem, Progress, Stats
from repocache.pins import Pins
from repocache.settings import default_root, parse_bytes, parse_seconds

__all__ = ["RepoCache"]

logger = logging.getLogger("repocache")

_ON_FETCH_ERROR = ("warn", "raise")
_STAGED_KEY = re.compile(r"\.[0-9a-f]{12}(\.upload)?$")  # staging and trash names: <key>.<id>[.upload]
_FETCH_RETRY_WITHIN = 5.0  # seconds: a fetch that failed faster than this is retried once
_MAX_ATTEMPTS = 8


def _listing(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` sorted by name (empty when it does not exist)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC or EDQUOT error in ``exc`` or its causes, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _remove(path: Path) -> None:
    """Delete a file or a directory tree, whichever ``path`` is; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RepoCache:
    """An on-disk LRU cache of bare git mirrors under a byte budget, safe to share between threads and processes.

    A hit fetches from upstream (unless fetched within ``fetch_ttl``) and hands the mirror out; a miss clones it
    (or restores it from the cold store), first evicting the least recently used repositories that are neither
    pinned nor held by any process. See ``DESIGN.md`` for the guarantees.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | str | None = None,
        min_free_bytes: int | str = 0,
        pins: str | os.PathLike[str] | Iterable[str] | None = None,
        fetch_ttl: float = 0.0,
        cold_store: Any = None,
        lock_timeout: float = 600.0,
        on_fetch_error: str = "warn",
        progress: gitops.ProgressCallback | None = None,
        allow_local: bool = True,
        connect_timeout: float = 30.0,
        idle_timeout: float = 300.0,
        cold_min_bytes: int | str = 0,
        cold_compression: str = "none",
        cold_retention: float | None = None,
    ) -> None:
        """Open (creating if needed) the cache at ``root``.

        Args:
            root: the cache directory; ``$REPOCACHE_DIR`` or the platform's user cache directory when None.
            max_bytes: budget for all mirrors together (int or a string such as ``"20GB"``); None for no limit.
            min_free_bytes: keep at least this much free on the cache's filesystem.
            pins: a never-evict YAML file, or an iterable of URLs / glob patterns.
            fetch_ttl: a hit fetched less than this many seconds ago does not contact upstream.
            cold_store: None, ``"file:///dir"``, an fsspec URL such as ``"s3://bucket/prefix"``, or a ColdStore.
            lock_timeout: seconds to wait for another worker's clone, fetch or eviction of the same repository.
            on_fetch_error: ``"warn"`` serves the cached copy (``co.stale``) when a fetch fails; ``"raise"``
                raises :class:`FetchError` instead.
            progress: default progress callback for clones, fetches and restores.
            allow_local: whether local paths and ``file://`` URLs may be cached.
            connect_timeout: seconds to wait for a connection to upstream.
            idle_timeout: seconds a transfer may make no progress before it is abandoned.
            cold_min_bytes: only evicted repositories at least this large go to the cold store (0: all of them).
            cold_compression: ``"none"`` (a plain tar, fastest to restore) or ``"zstd"`` (needs ``zstandard``).
            cold_retention: seconds an artifact is kept in the cold store; older ones are pruned after uploads
                (at most once an hour per process) and by :meth:`prune_cold`. None keeps them forever.

        Raises:
            ConfigError: a setting is invalid; the message names it and what is accepted.
        """
        self.max_bytes = parse_bytes("max_bytes", max_bytes, allow_none=True)
        self.min_free_bytes = parse_bytes("min_free_bytes", min_free_bytes, allow_none=False) or 0
        self.fetch_ttl = parse_seconds("fetch_ttl", fetch_ttl)
        self.lock_timeout = parse_seconds("lock_timeout", lock_timeout)
        if on_fetch_error not in _ON_FETCH_ERROR:
            raise ConfigError(f"on_fetch_error={on_fetch_error!r} is not accepted; expected 'warn' or 'raise'")
        self.on_fetch_error = on_fetch_error
        if progress is not None and not callable(progress):
            raise ConfigError(f"progress={progress!r} is not callable; expected a function taking a Progress")
        self.progress = progress
        self._git = gitops.GitOptions(
            git=gitops.find_git(),
            allow_local=bool(allow_local),
            connect_timeout=parse_seconds("connect_timeout", connect_timeout, positive=True),
            idle_timeout=parse_seconds("idle_timeout", idle_timeout, positive=True),
        )
        self.pins = Pins(pins)
        self.root = Path(root) if root is not None else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"root={str(self.root)!r} exists and is not a directory")
        self._repos = self.root / "repos"
        self._staging = self.root / "staging"
        self._trash = self.root / "trash"
        self._locks = self.root / "locks"
        self._worktrees = self.root / "worktrees"
        try:
            for directory in (self._repos, self._staging, self._trash, self._locks, self._worktrees):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"root={str(self.root)!r} cannot be created or written: {exc}") from exc
        self._index = Index(self.root / "index.sqlite", lock_path=self._locks / "index.lock", adopt=self._on_disk)
        self.cold_min_bytes = parse_bytes("cold_min_bytes", cold_min_bytes, allow_none=False) or 0
        if cold_compression not in ("none", "zstd"):
            raise ConfigError(f"cold_compression={cold_compression!r} is not accepted; expected 'none' or 'zstd'")
        self.cold_compression = cold_compression
        self.cold_retention = None if cold_retention is None else parse_seconds("cold_retention", cold_retention)
        self._last_prune = 0.0
        self._cold = self._open_cold_store(cold_store)
        self._closed = False
        self._empty_trash()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the index; further calls raise :class:`RepoCacheError`. Closing twice is a no-op."""
        if not self._closed:
            self._closed = True
            self._index.close()

    def __enter__(self) -> RepoCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RepoCache(root={str(self.root)!r}, max_bytes={self.max_bytes!r}, fetch_ttl={self.fetch_ttl!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise RepoCacheError("this RepoCache is closed")

    # -- paths and parsing --------------------------------------------------------------------------------

    def _parse(self, url: str | os.PathLike[str]) -> RepoURL:
        self._check_open()
        parsed = normalize_url(url)
        if parsed.is_local and not self._git.allow_local:
            raise InvalidURLError(parsed.url, "local paths are not allowed by this cache (allow_local=False)")
        return parsed

    def _mirror(self, key: str) -> Path:
        return self._repos / key

    def _lock_path(self, key: str, kind: str = "lock") -> Path:
        return self._locks / f"{key}.{kind}"

    def _remaining(self, deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    # -- public API -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def checkout(
        self, url: str | os.PathLike[str], *, progress: gitops.ProgressCallback | None = None
    ) -> Iterator[Checkout]:
        """Hold the repository's bare mirror for the ``with`` block, cloning or refreshing it first.

        Yields:
            A :class:`Checkout`; the mirror is not evicted by any process until the block exits.

        Raises:
            InvalidURLError: the URL cannot be cached.
            CloneError: a miss could not be cloned (nothing is left behind).
            FetchError: the fetch failed and ``on_fetch_error="raise"``.
            BudgetError: the repository cannot fit in the budget.
            LockTimeoutError: another worker held the repository longer than ``lock_timeout``.
        """
        parsed = self._parse(url)
        hold, checkout = self._acquire(parsed, progress or self.progress)
        try:
            yield checkout
        finally:
            checkout._close()
            hold.release()
            self._enforce_if_over()

    @contextlib.contextmanager
    def worktree(
        self,
        url: str | os.PathLike[str],
        ref: str = "HEAD",
        *,
        path: str | os.PathLike[str] | None = None,
        submodules: bool = False,
        progress: gitops.ProgressCallback | None = None,
    ) -> Iterator[Worktree]:
        """A temporary working tree of the repository at ``ref``, removed when the block exits.

        The tree borrows the mirror's objects through git alternates, so nothing is copied and the mirror is not
        modified; the mirror is held (never evicted) while the tree exists. Worktrees do not count against
        ``max_bytes``.

        Args:
            url: the repository.
            ref: a branch, tag, full ref name or commit id (anything ``git rev-parse`` accepts).
            path: where to create the tree (must not exist or be empty, and not be a symbolic link); a directory
                under the root by default. It is deleted when the block exits either way.
            submodules: also initialise and check out submodules (from their own upstreams).
            progress: progress callback for the clone or fetch.

        Yields:
            A :class:`Worktree` with ``path`` and ``commit``.

        Raises:
            RefNotFoundError: ``ref`` does not exist in the repository (after the fetch).
            GitError: the checkout failed.
            and everything :meth:`checkout` raises.
        """
        if not isinstance(ref, str) or not ref or ref.startswith("-") or any(c in ref for c in "\n\r\x00"):
            raise InvalidRefError(repr(ref), "expected a branch, tag, ref name or commit id")
        with self.checkout(url, progress=progress) as co:
            try:
                commit, branch = gitops.resolve_commit(co.path, ref)
            except KeyError:
                raise RefNotFoundError(co.url, ref) from None
            dest, owner = self._worktree_dir(co.key, path)
            try:
                gitops.make_worktree(co.path, dest, commit, branch, self._parse(url), self._git, submodules=submodules)
                yield Worktree(path=dest, commit=commit, ref=ref, url=co.url)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
                if owner is not None:
                    # Unlink while still holding it: whoever takes a lock at this path later finds no file, or a
                    # file with no tree, and never mistakes a live worktree for a dead one.
                    with contextlib.suppress(FileNotFoundError):
                        owner.path.unlink()
                    owner.release()

    def _worktree_dir(self, key: str, path: str | os.PathLike[str] | None) -> tuple[Path, locks.FileLockHandle | None]:
        """Choose the worktree directory; default ones carry a lock file so ``verify`` can tell dead from live."""
        if path is not None:
            dest = Path(path)
            if dest.is_symlink():  # the tree would be made inside its target and outlive the block
                raise ConfigError(f"path={str(dest)!r} is a symbolic link; pass the directory itself")
            if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
                raise ConfigError(f"path={str(dest)!r} exists and is not an empty directory")
            return dest, None
        self._worktrees.mkdir(exist_ok=True)
        dest = self._worktrees / f"{key}.{uuid.uuid4().hex[:12]}"
        # Created already locked: verify must never find it unlocked and take the live worktree for a dead one.
        return dest, locks.create_locked(dest.with_name(dest.name + ".lock"))

    def ensure(self, url: str | os.PathLike[str], *, progress: gitops.ProgressCallback | None = None) -> Entry:
        """Clone or refresh the repository now without holding it (pre-warming); counts as a use.

        Returns:
            The repository's entry after the operation.
        """
        parsed = self._parse(url)
        hold, _checkout = self._acquire(parsed, progress or self.progress)
        try:
            entry = self._entry_of(parsed.key)
        finally:
            hold.release()
        self._enforce_if_over()
        if entry is None:  # pragma: no cover - the row is written before the hold is released
            raise RepoCacheError(f"{parsed.url} vanished from the index while held")
        return entry

    def info(self, url: str | os.PathLike[str]) -> Entry | None:
        """The repository's entry if it is on disk, else None. No network, no recency update."""
        parsed = self._parse(url)
        if not self._mirror(parsed.key).is_dir():
            return None
        return self._entry_of(parsed.key)

    def entries(self) -> list[Entry]:
        """Every repository on disk, most recently used first."""
        self._check_open()
        return [self._entry(row) for row in self._index.rows()]

    def evict(self, url: str | os.PathLike[str], *, force: bool = False) -> bool:
        """Remove the repository from disk now (offloading it to the cold store when one is configured).

        Args:
            url: the repository.
            force: evict even if it is pinned.

        Returns:
            True if it was evicted; False if it was not on disk, is held by a reader (in any process), or is
            pinned and ``force`` is False.
        """
        parsed = self._parse(url)
        if not force and self.pins.matches(parsed.url):
            return False
        handle = locks.acquire(self._lock_path(parsed.key), shared=False, timeout=0)
        if handle is None:
            return False
        with handle:
            if not self._mirror(parsed.key).is_dir():
                self._index.remove(parsed.key, counter=None)
                return False
            row = self._index.get(parsed.key)
            self._evict_locked(parsed.key, row)
            return True

    def enforce(self) -> list[Entry]:
        """Evict least recently used repositories until the budget and ``min_free_bytes`` hold.

        Pinned repositories and repositories held by any process are skipped, never waited for.

        Returns:
            The entries evicted, least recently used first.
        """
        self._check_open()
        with self._budget_lock():
            evicted, _ = self._free(0, reserved=self._index.reserved_bytes())
        return evicted

    def stats(self) -> Stats:
        """Counters shared by all processes using this root, and the bytes used."""
        self._check_open()
        counters = self._index.counters()
        used, count = self._index.totals()
        return Stats(
            hits=counters.get("hits", 0),
            misses=counters.get("misses", 0),
            clones=counters.get("clones", 0),
            fetches=counters.get("fetches", 0),
            restores=counters.get("restores", 0),
            evictions=counters.get("evictions", 0),
            fetch_errors=counters.get("fetch_errors", 0),
            bytes_used=used,
            bytes_limit=self.max_bytes,
            entries=count,
        )

    def verify(self, repair: bool = False) -> list[Problem]:
        """Compare the index with the disk.

        Finds indexed repositories missing from disk, mirrors on disk the index does not know, mirrors that are not
        usable, recorded sizes that are wrong, and debris of interrupted clones or evictions. Repositories held
        by other workers are skipped.

        Args:
            repair: fix what is found: drop rows of missing mirrors, adopt valid orphans, delete invalid mirrors,
                correct sizes, delete debris.

        Returns:
            The problems found, each with ``repaired`` set when it was fixed.
        """
        self._check_open()
        problems: list[Problem] = []
        damage = self._index.damage_note()
        if damage is not None:
            if repair:
                self._index.acknowledge_damage()
            detail = f"the index was damaged ({damage[1]}) and rebuilt from the mirrors on disk; the file is kept"
            problems.append(Problem("index", "index.sqlite", damage[0], detail, repair))
        indexed = {row.key: row for row in self._index.rows()}
        on_disk = {p.name for p in self._repos.iterdir() if p.is_dir()} if self._repos.is_dir() else set()
        for key in [*indexed, *sorted(on_disk - set(indexed))]:
            handle = locks.acquire(self._lock_path(key), shared=False, timeout=0)
            if handle is None:
                continue  # held or being cloned: its state is in flux, not broken
            with handle:
                # Read again under the lock: the listing above may predate a fetch, a clone or an eviction.
                row = self._index.get(key)
                if row is None and not self._mirror(key).is_dir():
                    continue  # evicted since the listing
                problems.extend(self._verify_one(key, row, repair))
        problems.extend(self._verify_debris(repair))
        return problems

    # -- acquiring ------------------------------------------------------------------------------------------

    def _acquire(
        self, parsed: RepoURL, progress: gitops.ProgressCallback | None
    ) -> tuple[locks.FileLockHandle, Checkout]:
        """Hold ``parsed`` shared, cloning or refreshing as needed; returns the hold and the checkout."""
        started = time.time()
        deadline = time.monotonic() + self.lock_timeout
        key = parsed.key
        mirror = self._mirror(key)
        source = "hit"
        fetched = False
        counted_miss = False
        for _attempt in range(_MAX_ATTEMPTS):
            hold = locks.acquire(self._lock_path(key), shared=True, timeout=self._remaining(deadline))
            if hold is None:
                raise LockTimeoutError(parsed.url, self.lock_timeout, "checkout")
            try:
                if mirror.is_dir():
                    stale = False
                    if source in ("hit", "restore"):  # a restored mirror is as old as its artifact: fetch it
                        fetched, stale = self._refresh(parsed, started, deadline, progress)
                    self._index.touch(key, time.time(), counter="hits" if source == "hit" else None)
                    checkout = Checkout(
                        path=mirror, url=parsed.url, key=key, source=source, fetched=fetched, stale=stale
                    )
                    return hold, checkout
            except BaseException:
                hold.release()
                raise
            hold.release()
            if not counted_miss:
                counted_miss = True
                self._index.count("misses")
            exclusive = locks.acquire(self._lock_path(key), shared=False, timeout=self._remaining(deadline))
            if exclusive is None:
                raise LockTimeoutError(parsed.url, self.lock_timeout, "clone")
            with exclusive:
                if not mirror.is_dir():
                    source = self._materialize(parsed, progress)
                    fetched = source == "clone"
        raise RepoCacheError(
            f"{parsed.url} was evicted {_MAX_ATTEMPTS} times between being cloned and being held; "
            "the budget is too small for the working set"
        )

    def _refresh(
        self, parsed: RepoURL, started: float, deadline: float, progress: gitops.ProgressCallback | None
    ) -> tuple[bool, bool]:
        """Fetch a hit unless fresh enough; returns (fetched, stale). The caller holds the repository shared."""
        key = parsed.key
        row = self._index.get(key)
        if row is None:
            row = self._adopt(parsed)
        if self._fresh(row, started):
            return False, False
        fetch_lock = locks.acquire(self._lock_path(key, "fetch"), shared=False, timeout=self._remaining(deadline))
        if fetch_lock is None:
            raise LockTimeoutError(parsed.url, self.lock_timeout, "fetch")
        with fetch_lock:
            row = self._index.get(key) or row
            if self._fresh(row, started):
                return False, False  # coalesced with a fetch that finished after this request began
            try:
                self._fetch_with_retry(parsed, progress)
            except FetchError as exc:
                self._index.count("fetch_errors")
                if self.on_fetch_error == "raise":
                    raise
                logger.warning("serving a stale copy of %s: %s", parsed.url, exc.detail)
                warnings.warn(f"serving a stale copy: {exc}", RuntimeWarning, stacklevel=4)
                return False, True
            self._index.fetched(key, gitops.disk_usage(self._mirror(key)), time.time())
        return True, False

    def _fetch_with_retry(self, parsed: RepoURL, progress: gitops.ProgressCallback | None) -> None:
        """Fetch; a fetch that failed quickly is tried once more.

        A live upstream can refuse a fetch that raced with a push: over smart HTTP the refs are advertised in one
        request and wanted in the next, and upload-pack refuses a want whose branch was deleted in between. A dead
        upstream fails fast too (connection refused), so the retry costs little; a fetch that failed slowly (a
        timeout) is not retried, so a stalled upstream does not hold the caller twice as long.
        """
        attempt_started = time.monotonic()
        try:
            gitops.fetch_mirror(parsed, self._mirror(parsed.key), self._git, progress=progress)
        except FetchError as exc:
            if time.monotonic() - attempt_started > _FETCH_RETRY_WITHIN:
                raise
            logger.info("fetch of %s failed (%s); trying once more", parsed.url, exc.detail)
            gitops.fetch_mirror(parsed, self._mirror(parsed.key), self._git, progress=progress)

    def _fresh(self, row: Row, started: float) -> bool:
        if row.last_fetched is None:
            return False
        return row.last_fetched >= started or time.time() - row.last_fetched < self.fetch_ttl

    def _adopt(self, parsed: RepoURL) -> Row:
        """Index a mirror found on disk without a row (a process died between rename and index update)."""
        size = gitops.disk_usage(self._mirror(parsed.key))
        now = time.time()
        self._index.put(parsed.key, parsed.url, size, now, counter=None, fetched=False)
        logger.info("adopted %s found on disk without an index entry", parsed.url)
        row = self._index.get(parsed.key)
        assert row is not None
        return row

    # -- materializing a miss --------------------------------------------------------------------------------

    def _materialize(self, parsed: RepoURL, progress: gitops.ProgressCallback | None) -> str:
        """Restore or clone ``parsed`` into place; the caller holds its exclusive lock. Returns the source."""
        key = parsed.key
        self._sweep_staging(key)
        manifest = self._cold_manifest(parsed)
        known = max(self._index.known_size(key), manifest.mirror_bytes if manifest is not None else 0)
        reservation = self._make_room(parsed, known)
        staging = self._staging / f"{key}.{uuid.uuid4().hex[:12]}"
        try:
            source = "clone"
            if manifest is not None and self._restore(parsed, manifest, staging, progress):
                source = "restore"
            else:
                gitops.clone_mirror(parsed, staging, self._git, progress=progress)
            size = gitops.disk_usage(staging)
            if self.max_bytes is not None and size > self.max_bytes and not self.pins.matches(parsed.url):
                # Its size was unknown before the download; remember it so the next miss is refused up front.
                self._index.remember_size(key, parsed.url, size)
                raise BudgetError(parsed.url, size, self.max_bytes)
            os.rename(staging, self._mirror(key))
            counter = "restores" if source == "restore" else "clones"
            self._index.put(
                key, parsed.url, size, time.time(), counter=counter, fetched=source == "clone", reservation=reservation
            )
            reservation = None  # dropped with the put: the bytes are now counted by the entry
            logger.info("%s %s (%d bytes)", "restored" if source == "restore" else "cloned", parsed.url, size)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            if reservation is not None:
                self._index.unreserve(reservation)
        self._enforce_if_over()
        return source

    def _sweep_staging(self, key: str) -> None:
        """Delete staging debris of ``key``; the caller holds its exclusive lock, so the debris is dead."""
        prefix = key + "."
        with contextlib.suppress(FileNotFoundError), os.scandir(self._staging) as entries:
            for entry in entries:
                if entry.name.startswith(prefix):
                    logger.info("removing leftover %s", entry.path)
                    _remove(Path(entry.path))

    # -- budget ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _budget_lock(self) -> Iterator[None]:
        handle = locks.acquire(self._locks / "budget.lock", shared=False, timeout=self.lock_timeout)
        if handle is None:
            raise LockTimeoutError(str(self.root), self.lock_timeout, "budget")
        with handle:
            yield

    def _budgeted(self) -> bool:
        return self.max_bytes is not None or self.min_free_bytes > 0

    def _deficit(self, needed: int, reserved: int) -> int:
        """Bytes that must be freed so that ``needed`` more bytes fit the budget and the free-space floor."""
        used, _count = self._index.totals()
        deficit = 0
        if self.max_bytes is not None:
            deficit = used + reserved + needed - self.max_bytes
        if self.min_free_bytes:
            free = psutil.disk_usage(str(self.root)).free
            deficit = max(deficit, self.min_free_bytes + needed + reserved - free)
        return max(0, deficit)

    def _make_room(self, parsed: RepoURL, needed: int) -> int | None:
        """Evict so that ``needed`` bytes fit, then reserve them; BudgetError if they cannot fit."""
        if not self._budgeted():
            return None
        if self.max_bytes is not None and needed > self.max_bytes:
            raise BudgetError(parsed.url, needed, self.max_bytes)
        with self._budget_lock():
            reserved = self._index.reserved_bytes()
            _evicted, deficit = self._free(needed, reserved=reserved, all_or_nothing=True, url=parsed.url)
            if deficit > 0:
                raise BudgetError(parsed.url, needed, needed - deficit)
            return self._index.reserve(parsed.key, needed) if needed else None

    def _free(
        self, needed: int, *, reserved: int, all_or_nothing: bool = False, url: str = ""
    ) -> tuple[list[Entry], int]:
        """Evict LRU repositories (not pinned, not held) until ``needed`` fits; the caller holds the budget lock.

        With ``all_or_nothing``, nothing is evicted unless enough can be. Returns (evicted, remaining deficit).
        """
        deficit = self._deficit(needed, reserved)
        if deficit <= 0:
            return [], 0
        self.pins.refresh()
        chosen: list[tuple[Row, locks.FileLockHandle]] = []
        freeable = 0
        try:
            for row in self._index.lru():
                if freeable >= deficit:
                    break
                if self.pins.matches(row.url):
                    continue
                handle = locks.acquire(self._lock_path(row.key), shared=False, timeout=0)
                if handle is None:
                    continue  # held by a reader or being cloned/evicted by another worker: skip, never wait
                chosen.append((row, handle))
                freeable += row.size_bytes
                if not all_or_nothing:
                    self._evict_locked(row.key, row)
                    handle.release()
            if all_or_nothing:
                if freeable < deficit:
                    return [], deficit - freeable
                for row, handle in chosen:
                    self._evict_locked(row.key, row)
                    handle.release()
            evicted = [self._entry(row) for row, _handle in chosen]
            return evicted, max(0, deficit - freeable)
        finally:
            for _row, handle in chosen:
                handle.release()

    def _enforce_if_over(self) -> None:
        if self._closed or not self._budgeted():
            return
        if self._deficit(0, 0) > 0:
            self.enforce()

    def _evict_locked(self, key: str, row: Row | None) -> None:
        """Offload ``key`` to the cold store (if configured) and remove it from disk; the caller holds its lock."""
        mirror = self._mirror(key)
        if mirror.is_dir() and row is not None:
            self._offload(row, mirror)
        if mirror.is_dir():
            trash = self._trash / f"{key}.{uuid.uuid4().hex[:12]}"
            os.rename(mirror, trash)
            self._index.remove(key)
            shutil.rmtree(trash, ignore_errors=True)
            logger.info("evicted %s (%d bytes)", row.url if row else key, row.size_bytes if row else 0)
        else:
            self._index.remove(key, counter=None)

    def _empty_trash(self) -> None:
        """Finish deleting what evictions of dead processes left in trash/ (live evictions hold the key's lock)."""
        for entry in _listing(self._trash):
            handle = locks.acquire(self._lock_path(_STAGED_KEY.sub("", entry.name)), shared=False, timeout=0)
            if handle is not None:
                with handle:
                    _remove(Path(entry.path))

    # -- entries and verification ----------------------------------------------------------------------------

    def _entry(self, row: Row) -> Entry:
        return Entry(
            url=row.url,
            key=row.key,
            path=self._mirror(row.key),
            size_bytes=row.size_bytes,
            last_used=row.last_used,
            last_fetched=row.last_fetched,
            pinned=self.pins.matches(row.url),
            in_cold_store=row.in_cold_store,
        )

    def _entry_of(self, key: str) -> Entry | None:
        row = self._index.get(key)
        return None if row is None else self._entry(row)

    def _verify_one(self, key: str, row: Row | None, repair: bool) -> list[Problem]:
        """Check one repository; the caller holds its exclusive lock."""
        mirror = self._mirror(key)
        if row is not None and not mirror.is_dir():
            if repair:
                self._index.remove(key, counter=None)
            return [Problem("missing", key, mirror, f"{row.url} is indexed but not on disk", repair)]
        problem = gitops.validate_mirror(mirror)
        if problem is not None:
            if repair:
                self._evict_locked(key, row)
            return [Problem("invalid", key, mirror, f"the mirror {problem}", repair)]
        if row is None:
            url = self._mirror_url(mirror)
            if repair and url is not None:
                self._index.put(key, url, gitops.disk_usage(mirror), time.time(), counter=None, fetched=False)
            elif repair:
                shutil.rmtree(mirror, ignore_errors=True)
            return [Problem("orphan", key, mirror, "a mirror on disk has no index entry", repair)]
        size = gitops.disk_usage(mirror)
        if size != row.size_bytes:
            if repair:
                self._index.set_size(key, size)
            return [Problem("size", key, mirror, f"recorded {row.size_bytes} bytes, disk has {size}", repair)]
        return []

    def _on_disk(self) -> Iterator[tuple[str, str, int]]:
        """(key, URL, size) of every valid mirror under ``repos/``: what an index rebuilt after damage adopts."""
        for entry in _listing(self._repos):
            mirror = Path(entry.path)
            url = self._mirror_url(mirror) if gitops.validate_mirror(mirror) is None else None
            if url is not None:
                yield entry.name, url, gitops.disk_usage(mirror)

    def _mirror_url(self, mirror: Path) -> str | None:
        """The normalized upstream URL of a mirror, read from its config (which never holds credentials)."""
        try:
            repo = gitops.open_repository(mirror)
        except Exception:
            return None
        try:
            parsed = normalize_url(str(repo.config["remote.origin.url"]))
        except (KeyError, InvalidURLError):
            return None
        finally:
            repo.free()
        return parsed.url if self._mirror(parsed.key) == mirror else None

    def _verify_debris(self, repair: bool) -> list[Problem]:
        """Staging, trash and worktree debris whose owner is dead; anything whose owner holds its lock is skipped."""
        problems: list[Problem] = []
        for directory in (self._staging, self._trash):
            for entry in _listing(directory):
                # Staging and trash entries belong to the clone, restore, upload or eviction holding the key's
                # exclusive lock: they are debris only if that lock is free.
                handle = locks.acquire(self._lock_path(_STAGED_KEY.sub("", entry.name)), shared=False, timeout=0)
                if handle is None:
                    continue
                with handle:
                    if not os.path.lexists(entry.path):
                        continue  # finished and cleaned up while we looked
                    if repair:
                        _remove(Path(entry.path))
                problems.append(
                    Problem("leftover", entry.name, Path(entry.path), "debris of an interrupted operation", repair)
                )
        worktree_names = {e.name.removesuffix(".lock") for e in _listing(self._worktrees)}
        for name in sorted(worktree_names):
            tree, lock_file = self._worktrees / name, self._worktrees / (name + ".lock")
            try:
                owner = locks.acquire(lock_file, shared=False, timeout=0, create=False)
            except FileNotFoundError:
                owner = None  # no lock file: either removed by its owner just now, or a tree whose owner died
                if not tree.exists():
                    continue
            else:
                if owner is None:
                    continue  # its process is alive and using it
                if not owner.is_current():  # its owner removed the tree and unlinked the file while we opened it
                    owner.release()
                    continue
            try:
                if repair:
                    _remove(tree)
                    with contextlib.suppress(FileNotFoundError):
                        lock_file.unlink()
            finally:
                if owner is not None:
                    owner.release()
            detail = "worktree of a process that died" if tree.exists() or repair else "lock file of a dead worktree"
            problems.append(Problem("leftover", name, tree, detail, repair))
        return problems

    # -- cold store -----------------------------------------------------------------------------------------------

    def _open_cold_store(self, spec: Any) -> Any:
        if spec is None:
            return None
        from repocache.cold import open_cold_store

        return open_cold_store(spec)

    def cold_entries(self) -> list[Any]:
        """The manifests in the cold store (one per repository), newest first; empty without a cold store.

        Raises:
            ColdStoreError: the store cannot be listed.
        """
        self._check_open()
        if self._cold is None:
            return []
        return sorted(self._cold.list(), key=lambda m: m.created, reverse=True)

    def prune_cold(self, *, older_than: float | None = None, keep_bytes: int | str | None = None) -> list[Any]:
        """Delete artifacts from the cold store: those older than ``older_than`` seconds (default: the cache's
        ``cold_retention``), then the oldest while the total exceeds ``keep_bytes``.

        Returns:
            The manifests deleted, oldest first.
        """
        self._check_open()
        if self._cold is None:
            return []
        limit = parse_bytes("keep_bytes", keep_bytes, allow_none=True)
        age = self.cold_retention if older_than is None else parse_seconds("older_than", older_than)
        deleted: list[Any] = self._cold.prune(older_than=age, keep_bytes=limit)
        for manifest in deleted:
            self._index.set_in_cold_store(manifest.key, manifest.url, False)
        self._last_prune = time.monotonic()
        return deleted

    def _cold_manifest(self, parsed: RepoURL) -> Any:
        """The cold store's manifest for ``parsed``, or None (also when the store cannot be reached)."""
        if self._cold is None:
            return None
        try:
            manifest = self._cold.get_manifest(parsed.key)
        except ColdStoreError as exc:
            logger.warning("cold store unavailable for %s, cloning instead: %s", parsed.url, exc)
            return None
        if manifest is not None and manifest.url != parsed.url:
            logger.warning("cold store artifact of %s names %s; ignoring it", parsed.url, manifest.url)
            return None
        if manifest is not None:
            from repocache.cold import checked_manifest

            try:
                return checked_manifest(self._cold, manifest)
            except ColdStoreError as exc:
                logger.warning("cannot restore %s from the cold store, cloning instead: %s", parsed.url, exc)
                warnings.warn(f"cold store artifact of {parsed.url} is unusable ({exc}); cloning", RuntimeWarning, 2)
                return None
        return manifest

    def _restore(
        self,
        parsed: RepoURL,
        manifest: Any,
        staging: Path,
        progress: gitops.ProgressCallback | None,
        *,
        retry: bool = True,
    ) -> bool:
        """Unpack the cold artifact into ``staging`` and validate it; False (reported) when it is unusable."""
        from repocache.cold import unpack_artifact

        if progress is not None:
            progress(Progress(parsed.url, "restore", "downloading", 0, 0, manifest.size_bytes))
        try:
            with self._cold.open_artifact(manifest) as artifact:
                unpack_artifact(
                    artifact,
                    staging,
                    expected_sha256=manifest.sha256,
                    compression=manifest.compression,
                    expected_size=manifest.size_bytes,
                    max_bytes=max(manifest.mirror_bytes * 4, 1 << 20),
                )
            gitops.sanitize_restored_mirror(staging, parsed)
            problem = gitops.validate_mirror(staging)
            if problem is not None:
                raise ColdStoreError(f"the restored mirror {problem}")
        except (ColdStoreError, OSError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            full = _disk_full(exc)
            if full is not None:  # the artifact is fine; a clone would fill the disk the same way
                raise CloneError(
                    parsed.url, f"cannot restore from the cold store into {self.root}: {full.strerror}"
                ) from None
            newer = self._cold_manifest(parsed) if retry else None
            if newer is not None and newer.generation != manifest.generation:
                # Another host uploaded a newer artifact meanwhile and the old one was deleted: use the new one.
                return self._restore(parsed, newer, staging, progress, retry=False)
            logger.warning("cannot restore %s from the cold store, cloning instead: %s", parsed.url, exc)
            warnings.warn(f"cold store artifact of {parsed.url} is unusable ({exc}); cloning", RuntimeWarning, 2)
            shutil.rmtree(staging, ignore_errors=True)
            return False
        if progress is not None:
            progress(Progress(parsed.url, "restore", "done", 0, 0, manifest.size_bytes))
        return True

    def _offload(self, row: Row, mirror: Path) -> None:
        """Upload the mirror to the cold store before it is deleted; failures are logged, never fatal."""
        if self._cold is None or row.size_bytes < self.cold_min_bytes:
            return
        from repocache.cold import Manifest, pack_mirror

        upload = self._staging / f"{row.key}.{uuid.uuid4().hex[:12]}.upload"
        try:
            with open(upload, "wb") as out:
                sha256, size = pack_mirror(mirror, out, compression=self.cold_compression)
            ref_count, head = gitops.describe_mirror(mirror)
            manifest = Manifest(
                url=row.url,
                key=row.key,
                sha256=sha256,
                size_bytes=size,
                mirror_bytes=row.size_bytes,
                ref_count=ref_count,
                head=head,
                created=time.time(),
                compression=self.cold_compression,
            )
            self._cold.put(row.key, manifest, upload)
            self._index.set_in_cold_store(row.key, row.url, True, size_bytes=row.size_bytes)
            logger.info("offloaded %s to the cold store (%d bytes)", row.url, size)
        except (ColdStoreError, OSError, ValueError) as exc:
            logger.warning("could not offload %s to the cold store: %s", row.url, exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                upload.unlink()
        if self.cold_retention is not None and time.monotonic() - self._last_prune > 3600:
            try:
                self.prune_cold()
            except ColdStoreError as exc:
                logger.warning("could not prune the cold store: %s", exc)
