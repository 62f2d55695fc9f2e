"""RepoCache: the facade users hold. It validates settings, offers the public API and runs the acquire loop.

The work is done by the parts below it, which share a :class:`~repocache.context.Context` and never import this
module: :mod:`~repocache.refresh` (hits), :mod:`~repocache.materialize` (misses), :mod:`~repocache.budget`
(room and eviction), :mod:`~repocache.cold.tier` (the cold store), :mod:`~repocache.maintenance` (verify and
repair), :mod:`~repocache.layout` (paths and holds) and :mod:`~repocache.events` (outcomes). The design, the
lock order and the flow of a checkout are in ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from repocache import gitops, maintenance
from repocache.acquire import Acquirer
from repocache.budget import Budget, entry_of_row
from repocache.checkout import Checkout, Worktree
from repocache.cold.base import Manifest
from repocache.cold.tier import ColdTier
from repocache.consequences import Consequences
from repocache.context import Context
from repocache.errors import (
    ConfigError,
    GitError,
    InvalidURLError,
    LockTimeoutError,
    RepoCacheError,
)
from repocache.events import EventHook, Events
from repocache.index import Index
from repocache.keys import RepoURL, normalize_url
from repocache.layout import Layout
from repocache.lifecycle import Lifecycle
from repocache.maintenance import mirrors_on_disk, sweep_locks
from repocache.models import Entry, MaintenanceReport, Problem, Stats
from repocache.pins import Pins
from repocache.refresh import USE_TTL, Background, MaxAge, parse_max_age
from repocache.settings import Settings, default_root, parse_bytes, parse_seconds
from repocache.worktrees import check_ref, worktree_of

__all__ = ["RepoCache"]


class RepoCache:
    """An on-disk LRU cache of bare git mirrors under a byte budget, safe to share between threads and processes.

    A hit fetches from upstream (unless fetched within ``fetch_ttl``) and hands the mirror out; a miss clones it
    (or restores it from the cold store), first evicting the least recently used repositories that are neither
    pinned nor held by any process. See ``docs/architecture.md`` for the guarantees and how they are kept.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | str | None = None,
        min_free_bytes: int | str = 0,
        pins: str | os.PathLike[str] | Iterable[str] | None = None,
        fetch_ttl: float | str = 0.0,
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
        on_event: EventHook | None = None,
        fetch_ttl_min: float = 60.0,
        fetch_ttl_max: float = 28800.0,
        refresh: str = "foreground",
        max_stale: float | None = 3600.0,
        cold_publish: str = "off",
        cold_publish_after: float = 3600.0,
        maintenance: str = "auto",
        maintenance_max_packs: int | None = None,
        maintenance_max_loose_objects: int = 1024,
        maintenance_max_loose_refs: int = 128,
        maintenance_window_memory: int | str = "128MiB",
        maintenance_threads: int = 1,
        maintenance_grace: float = 14 * 86400.0,
    ) -> None:
        """Open (creating if needed) the cache at ``root``.

        Args:
            root: the cache directory; ``$REPOCACHE_DIR`` or the platform's user cache directory when None.
            max_bytes: budget for all mirrors together (int or a string such as ``"20GB"``); None for no limit.
            min_free_bytes: keep at least this much free on the cache's filesystem.
            pins: a never-evict YAML file, or an iterable of URLs / glob patterns.
            fetch_ttl: a hit fetched less than this many seconds ago does not contact upstream; ``"auto"``: each
                repository's own interval, half the time since upstream last changed, within ``fetch_ttl_min`` and
                ``fetch_ttl_max`` (kept in the index across restarts).
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
            on_event: a function called with every :class:`~repocache.events.Event` of this cache (hit, miss,
                clone, restore, fetch, stale, eviction, ...); see :meth:`subscribe`.
            fetch_ttl_min: the shortest interval of ``fetch_ttl="auto"``, in seconds.
            fetch_ttl_max: the longest interval of ``fetch_ttl="auto"`` (the staleness bound of a dormant
                repository), in seconds.
            refresh: ``"foreground"``: a due hit waits for its fetch; ``"background"``: a due hit no older than
                ``max_stale`` is handed out at once and one fetch runs in a background thread (stale-while-
                revalidate), joined by :meth:`close`.
            max_stale: with ``refresh="background"``, seconds past its TTL beyond which a hit waits for the
                fetch after all; None: no bound.
            cold_publish: when mirrors go to the cold store besides evictions, for other hosts to restore:
                ``"off"``; ``"clone"``, after each clone (uploaded on a background thread, holding the repository
                shared; hosts missing the same repository at once then clone it once between them when the store
                offers leases); ``"always"``, also after a fetch once the stored artifact is older than
                ``cold_publish_after``.
            cold_publish_after: seconds after which a fetched mirror is published again (``"always"``).
            maintenance: ``"auto"``: after a checkout or ensure that fetched releases the mirror, the caller
                maintains it if it crossed a threshold below (see :meth:`maintain`); ``"off"``: only
                :meth:`maintain` does.
            maintenance_max_packs: packs a mirror may have before it is repacked; None lets it grow with the log of
                the mirror's size (log base 1.3 of its MiB, between 8 and 32, as Gitaly's housekeeping does).
            maintenance_max_loose_objects: loose objects (estimated as ``git gc`` does) before a repack.
            maintenance_max_loose_refs: loose refs before they are packed.
            maintenance_window_memory: delta window memory per repack thread (``pack.windowMemory``); 0 for git's
                default (unbounded).
            maintenance_threads: repack threads (``pack.threads``).
            maintenance_grace: seconds an unreachable object is kept by ``maintain(prune=True)``.

        Raises:
            ConfigError: a setting is invalid; the message names it and what is accepted.
        """
        settings = Settings.parse(
            max_bytes=max_bytes,
            min_free_bytes=min_free_bytes,
            fetch_ttl=fetch_ttl,
            lock_timeout=lock_timeout,
            on_fetch_error=on_fetch_error,
            cold_min_bytes=cold_min_bytes,
            cold_compression=cold_compression,
            cold_retention=cold_retention,
            fetch_ttl_min=fetch_ttl_min,
            fetch_ttl_max=fetch_ttl_max,
            refresh=refresh,
            max_stale=max_stale,
            cold_publish=cold_publish,
            cold_publish_after=cold_publish_after,
            maintenance=maintenance,
            maintenance_max_packs=maintenance_max_packs,
            maintenance_max_loose_objects=maintenance_max_loose_objects,
            maintenance_max_loose_refs=maintenance_max_loose_refs,
            maintenance_window_memory=maintenance_window_memory,
            maintenance_threads=maintenance_threads,
            maintenance_grace=maintenance_grace,
        )
        if progress is not None and not callable(progress):
            raise ConfigError(f"progress={progress!r} is not callable; expected a function taking a Progress")
        self.progress = progress
        git = gitops.GitOptions(
            git=gitops.find_git(),
            allow_local=bool(allow_local),
            connect_timeout=parse_seconds("connect_timeout", connect_timeout, positive=True),
            idle_timeout=parse_seconds("idle_timeout", idle_timeout, positive=True),
        )
        self.pins = Pins(pins)
        self.root = Path(root) if root is not None else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"root={str(self.root)!r} exists and is not a directory")
        layout = Layout(self.root)
        try:
            layout.create()
        except OSError as exc:
            raise ConfigError(f"root={str(self.root)!r} cannot be created or written: {exc}") from exc
        events = Events()
        if on_event is not None:
            events.subscribe(on_event)
        self._context = Context(
            settings=settings,
            layout=layout,
            index=Index(layout.index, lock_path=layout.locks / "index.lock", adopt=lambda: mirrors_on_disk(layout)),
            pins=self.pins,
            git=git,
            events=events,
        )
        self._cold = self._open_cold_store(cold_store)
        self._budget = Budget(self._context, self._cold)
        self._lifecycle = Lifecycle("RepoCache")
        consequences = Consequences(self._context, self._cold, self._lifecycle)
        self._background = Background(self._context, consequences)
        self._acquirer = Acquirer(
            self._context, self._budget, self._cold, consequences, self._background, self._lifecycle
        )
        self._budget.empty_trash()
        sweep_locks(self._context)

    # -- settings, read-only --------------------------------------------------------------------------------

    @property
    def max_bytes(self) -> int | None:
        """The byte budget for all mirrors together (None: no limit)."""
        return self._context.settings.max_bytes

    @property
    def min_free_bytes(self) -> int:
        """Bytes kept free on the cache's filesystem."""
        return self._context.settings.min_free_bytes

    @property
    def fetch_ttl(self) -> float | str:
        """Seconds within which a hit does not contact upstream again, or ``"auto"`` (the adaptive schedule)."""
        settings = self._context.settings
        return "auto" if settings.adaptive else settings.fetch_ttl

    @property
    def lock_timeout(self) -> float:
        """Seconds any wait for another worker is bounded by."""
        return self._context.settings.lock_timeout

    @property
    def on_fetch_error(self) -> str:
        """``"warn"`` (serve a stale copy) or ``"raise"``."""
        return self._context.settings.on_fetch_error

    @property
    def cold_min_bytes(self) -> int:
        """Evicted repositories smaller than this are not offloaded to the cold store."""
        return self._context.settings.cold_min_bytes

    @property
    def cold_compression(self) -> str:
        """How cold artifacts are compressed (``"none"`` or ``"zstd"``)."""
        return self._context.settings.cold_compression

    @property
    def cold_retention(self) -> float | None:
        """Seconds an artifact is kept in the cold store (None: forever)."""
        return self._context.settings.cold_retention

    @property
    def cold_publish(self) -> str:
        """When mirrors are published to the cold store besides evictions (``"off"``, ``"clone"``, ``"always"``)."""
        return self._context.settings.cold_publish

    @property
    def cold_publish_after(self) -> float:
        """Seconds after which a fetched mirror is published again (with ``cold_publish="always"``)."""
        return self._context.settings.cold_publish_after

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self, *, timeout: float = 60.0) -> None:
        """Release the index; further calls raise :class:`RepoCacheError`. Closing twice is a no-op.

        Background fetches not started yet are cancelled; running ones are waited for up to ``timeout`` seconds,
        then cancelled (their git is killed; the repository keeps its previous state). Background uploads to the
        cold store (``cold_publish``) are waited for.
        """
        if self._lifecycle.close():
            self._background.close(timeout)
            if self._cold is not None:
                self._cold.close()
            self._context.index.close()

    def __enter__(self) -> RepoCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RepoCache(root={str(self.root)!r}, max_bytes={self.max_bytes!r}, fetch_ttl={self.fetch_ttl!r})"

    def _check_open(self) -> None:
        self._lifecycle.check()

    def _parse(self, url: str | os.PathLike[str]) -> RepoURL:
        self._check_open()
        parsed = normalize_url(url)
        if parsed.is_local and not self._context.git.allow_local:
            raise InvalidURLError(parsed.url, "local paths are not allowed by this cache (allow_local=False)")
        return parsed

    def subscribe(self, hook: EventHook) -> Callable[[], None]:
        """Call ``hook`` with every :class:`~repocache.events.Event` of this cache from now on.

        Hooks run in the thread that caused the event and should be quick; one that raises is logged and ignored.
        Events describe this process's operations; counters of the whole root are in :meth:`stats`.

        Returns:
            A function that unsubscribes the hook.

        Raises:
            ConfigError: ``hook`` is not callable.
        """
        return self._context.events.subscribe(hook)

    # -- public API -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def checkout(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
    ) -> Iterator[Checkout]:
        """Hold the repository's bare mirror for the ``with`` block, cloning or refreshing it first.

        Args:
            url: the repository.
            progress: progress callback for the clone or fetch.
            max_age: for this call instead of ``fetch_ttl``: seconds the copy may be old (0: fetch unless a fetch
                finished after the call began; None: any age, upstream is not contacted on a hit).

        Yields:
            A :class:`Checkout`; the mirror is not evicted by any process until the block exits.

        Raises:
            InvalidURLError: the URL cannot be cached.
            CloneError: a miss could not be cloned (nothing is left behind).
            FetchError: the fetch failed and ``on_fetch_error="raise"``.
            BudgetError: the repository cannot fit in the budget.
            LockTimeoutError: another worker held the repository longer than ``lock_timeout``.
        """
        with self._acquirer.held(self._parse(url), progress or self.progress, parse_max_age(max_age)) as checkout:
            yield checkout

    @contextlib.contextmanager
    def worktree(
        self,
        url: str | os.PathLike[str],
        ref: str = "HEAD",
        *,
        path: str | os.PathLike[str] | None = None,
        submodules: bool = False,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
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
            max_age: as for :meth:`checkout`.

        Yields:
            A :class:`Worktree` with ``path`` and ``commit``.

        Raises:
            RefNotFoundError: ``ref`` does not exist in the repository (after the fetch).
            GitError: the checkout failed.
            RepoCacheError: whatever :meth:`checkout` raises (``InvalidURLError``, ``CloneError``, ``FetchError``,
                ``BudgetError``, ``LockTimeoutError``).
        """
        check_ref(ref)
        parsed = self._parse(url)
        context = self._context
        with (
            self._acquirer.held(parsed, progress or self.progress, parse_max_age(max_age)) as checkout,
            worktree_of(context.layout, context.git, checkout, parsed, ref, path=path, submodules=submodules) as tree,
        ):
            yield tree

    def ensure(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
    ) -> Entry:
        """Clone or refresh the repository now without holding it (pre-warming); counts as a use.

        Args:
            url: the repository.
            progress: progress callback for the clone or fetch.
            max_age: as for :meth:`checkout`.

        Returns:
            The repository's entry after the operation.
        """
        return self._ensure(url, progress, parse_max_age(max_age), strict=False)

    def refresh(self, url: str | os.PathLike[str], *, progress: gitops.ProgressCallback | None = None) -> Entry:
        """Fetch the repository now, whatever its age (cloning it if it is not cached); counts as a use.

        Like a hit, it holds the repository shared and takes its fetch lock; a fetch by another worker that
        finished after this call began counts as this one.

        Returns:
            The repository's entry after the fetch.

        Raises:
            FetchError: the fetch failed, whatever ``on_fetch_error`` says.
        """
        return self._ensure(url, progress, 0.0, strict=True)

    def mark_stale(self, url: str | os.PathLike[str]) -> bool:
        """Mark the repository stale: its next hit, in any process or host sharing the root, fetches first.

        The mark is kept in the index and consumed by the first successful fetch that began after it (a fetch in
        flight when the mark arrives may have missed the push it announces). A hit with ``max_age=None`` ignores
        it. This is what :mod:`repocache.webhooks` calls for a push.

        Returns:
            True if the repository is in the cache; False otherwise (nothing is recorded: its clone is fresh).
        """
        parsed = self._parse(url)
        marked = self._context.index.mark_stale(parsed.key, time.time())
        if marked:
            self._context.events.marked_stale(parsed.url)
        return marked

    def _ensure(
        self, url: str | os.PathLike[str], progress: gitops.ProgressCallback | None, max_age: MaxAge, *, strict: bool
    ) -> Entry:
        parsed = self._parse(url)
        acquired = self._acquirer.acquire(parsed, progress or self.progress, max_age, strict=strict)
        try:
            entry = self._entry_of(parsed.key)
        finally:
            maintained = self._acquirer.release(acquired)
        if maintained is not None:
            entry = self._entry_of(parsed.key) or entry
        if entry is None or not entry.path.is_dir():
            # Evicted as soon as it was released: by this call's own enforcement (min_free_bytes, or room held by
            # others), or by another process. An entry whose path is gone is never returned.
            raise RepoCacheError(
                f"{parsed.url} was evicted as soon as it was released (the cache is over its budget or its "
                "min_free_bytes floor, or another process evicted it); hold it with checkout() to keep it"
            )
        return entry

    def info(self, url: str | os.PathLike[str]) -> Entry | None:
        """The repository's entry if it is on disk, else None. No network, no recency update."""
        parsed = self._parse(url)
        if not self._context.layout.mirror(parsed.key).is_dir():
            return None
        return self._entry_of(parsed.key)

    def entries(self) -> list[Entry]:
        """Every repository on disk, most recently used first."""
        self._check_open()
        return [entry_of_row(self._context, row) for row in self._context.index.rows()]

    def evict(self, url: str | os.PathLike[str], *, force: bool = False) -> bool:
        """Remove the repository from disk now (offloading it to the cold store when one is configured).

        Args:
            url: the repository.
            force: evict even if it is pinned.

        Returns:
            True if it was evicted; False if it was not on disk, is held by a reader (in any process), or is
            pinned and ``force`` is False.
        """
        return self._budget.evict_now(self._parse(url), force=force)

    def enforce(self) -> list[Entry]:
        """Evict least recently used repositories until the budget and ``min_free_bytes`` hold.

        Pinned repositories and repositories held by any process are skipped, never waited for.

        Returns:
            The entries evicted, least recently used first.
        """
        self._check_open()
        return self._budget.enforce()

    def stats(self) -> Stats:
        """Counters shared by all processes using this root, and the bytes used."""
        self._check_open()
        used, count = self._context.index.totals()
        return Stats.of(self._context.index.counters(), bytes_used=used, bytes_limit=self.max_bytes, entries=count)

    def maintain(self, url: str | os.PathLike[str] | None = None, *, prune: bool = False) -> list[MaintenanceReport]:
        """Repack, pack refs and write the commit-graph of one cached repository (or of every one) now.

        Runs under the mirror's fetch lock while readers keep reading (waits up to ``lock_timeout`` for a fetch
        in flight): small packs and loose objects are rolled up geometrically (every object kept), loose refs
        packed, the commit-graph written in the format libgit2 reads, and debris of killed git processes removed.
        The index gets the new size. Automatic maintenance (``maintenance="auto"``) does the same when a fetch
        left a mirror over a threshold.

        Args:
            url: the repository; None for every cached one.
            prune: also repack fully and drop unreachable objects older than ``maintenance_grace``. That needs the
                repository's exclusive lock and never waits for it: a mirror held by a reader or a worktree is
                left alone (``skipped`` says so).

        Returns:
            One report per repository maintained (empty when ``url`` is not cached).

        Raises:
            GitError: git failed for ``url`` (for all repositories, failures are logged and reported as skipped).
            LockTimeoutError: another worker held ``url`` longer than ``lock_timeout``.
        """
        if url is not None:
            parsed = self._parse(url)
            found = maintenance.maintain_one(self._context, parsed.key, parsed.url, wait=True, forced=True, prune=prune)
            return [] if found is None else [found]
        self._check_open()
        reports = []
        for row in self._context.index.rows():
            try:
                report = maintenance.maintain_one(self._context, row.key, row.url, wait=True, forced=True, prune=prune)
            except (GitError, LockTimeoutError) as exc:
                self._context.events.maintenance_failed(row.url, exc)
                report = maintenance.failed_report(self._context, row, exc)
            if report is not None:
                reports.append(report)
        return reports

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
        problems = maintenance.verify(self._context, self._budget, repair)
        if repair:
            maintenance.sweep_locks(self._context)
        return problems

    # -- cold store -----------------------------------------------------------------------------------------------

    def _open_cold_store(self, spec: Any) -> ColdTier | None:
        if spec is None:
            return None
        from repocache.cold import open_cold_store

        store = open_cold_store(spec)
        return None if store is None else ColdTier(self._context, store)

    @property
    def has_cold_store(self) -> bool:
        """Whether a cold store is configured."""
        return self._cold is not None

    def cold_entries(self) -> list[Manifest]:
        """The manifests in the cold store (one per repository), newest first; empty without a cold store.

        Raises:
            ColdStoreError: the store cannot be listed.
        """
        self._check_open()
        return [] if self._cold is None else self._cold.entries()

    def publish(self, url: str | os.PathLike[str], *, progress: gitops.ProgressCallback | None = None) -> Manifest:
        """Upload the repository's mirror to the cold store now, for other hosts to restore; clones it first if needed.

        The mirror is held shared while it is packed (readers and fetches go on) and streamed into the store. When
        the store already holds an artifact made after the mirror's last fetch, nothing is uploaded.

        Returns:
            The store's manifest of the repository.

        Raises:
            ConfigError: the cache has no cold store.
            ColdStoreError: the store failed.
            RepoCacheError: whatever :meth:`ensure` raises (clone, budget, lock and fetch errors).
        """
        parsed = self._parse(url)
        if self._cold is None:
            raise ConfigError("publish needs a cold store: pass cold_store= (a directory or an fsspec URL)")
        self.ensure(url, progress=progress)
        self._cold.wait(parsed.key)  # an upload started by the clone: let it finish rather than upload twice
        manifest = self._cold.publish(parsed)
        if manifest is None:
            raise RepoCacheError(f"{parsed.url} was evicted by another process before it could be published")
        return manifest

    def prune_cold(self, *, older_than: float | None = None, keep_bytes: int | str | None = None) -> list[Manifest]:
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
        return self._cold.prune(older_than=age, keep_bytes=limit)

    # -- acquiring ------------------------------------------------------------------------------------------

    def _entry_of(self, key: str) -> Entry | None:
        row = self._context.index.get(key)
        return None if row is None else entry_of_row(self._context, row)
