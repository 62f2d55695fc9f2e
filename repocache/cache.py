"""RepoCache: the facade users hold: one short method per public verb, each forwarded to the room that owns it.

The rooms share a :class:`~repocache.context.Context` and never import this module: :mod:`~repocache.assembly`
(puts them together from the settings), :mod:`~repocache.acquire` (hold a repository as a hit or a miss),
:mod:`~repocache.consequences` (what follows a fetch, a clone, a restore), :mod:`~repocache.refresh` (hits),
:mod:`~repocache.materialize` (misses), :mod:`~repocache.budget` (room and eviction), :mod:`~repocache.cold_tier`
(the cold store), :mod:`~repocache.maintenance` (upkeep of mirrors), :mod:`~repocache.verify` (verify and repair),
:mod:`~repocache.worktrees`, :mod:`~repocache.layout` (paths and holds) and :mod:`~repocache.events` (outcomes).
The design, the lock order and the flow of a checkout are in ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from repocache import gitops, maintenance, partial
from repocache.acquire import Acquirer
from repocache.assembly import assemble
from repocache.budget import entry_of, entry_of_row
from repocache.checkout import Checkout, Worktree
from repocache.cold.manifest import Manifest
from repocache.errors import (
    ConfigError,
    InvalidURLError,
    RepoCacheError,
)
from repocache.events import Event, EventHook
from repocache.keys import RepoURL, normalize_url
from repocache.models import Entry, MaintenanceReport, Problem, Stats
from repocache.partial import USE_CONFIGURED, FilterArg
from repocache.refresh import USE_TTL, MaxAge, parse_max_age
from repocache.settings import CacheOptions, ReadBack, Settings, parse_bytes, parse_seconds
from repocache.verify import sweep_locks, verify_root
from repocache.worktrees import check_ref, worktree_of

if TYPE_CHECKING:
    from typing_extensions import Unpack


_T = TypeVar("_T")

_CHECKOUT_CHANGES = "check a repository out (its recency and counters are written)"

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
        progress: gitops.ProgressCallback | None = None,
        **options: Unpack[CacheOptions],
    ) -> None:
        """Open (creating if needed) the cache at ``root``.

        Args:
            root: the cache directory; ``$REPOCACHE_DIR`` or the platform's user cache directory when None.
            progress: default progress callback for clones, fetches and restores.
            **options: the settings, each declared once in :mod:`repocache.settings` with its default and meaning
                (the table in the README): the everyday ones as plain keywords (``max_bytes``, ``min_free_bytes``,
                ``pins``, ``fetch_ttl``, ``cold_store``, ``lock_timeout``, ``on_fetch_error``, ``on_event``), the
                rest in group objects (``freshness=Freshness(...)``, ``cold=ColdOptions(...)``,
                ``maintenance=Maintenance(...)``, ``transport=Transport(...)``) or by their flat names
                (``maintenance_max_packs=4``). :attr:`settings` reads them back.

        Raises:
            ConfigError: a setting is invalid; the message names it and what is accepted.
        """
        if progress is not None and not callable(progress):
            raise ConfigError(f"progress={progress!r} is not callable; expected a function taking a Progress")
        self.progress = progress
        settings = Settings.from_options(options)
        if settings.filter is not None and gitops.find_git() is None:
            raise ConfigError(
                f"filter={settings.filter!r} needs the git CLI (libgit2 cannot clone or fetch with a filter) and no "
                "git binary was found (install git or set REPOCACHE_GIT to it), or use filter=None"
            )
        parts = assemble(
            root,
            settings,
            pins=options.get("pins"),
            cold_store=options.get("cold_store"),
            on_event=options.get("on_event"),
        )
        self.root, self.pins = parts.root, parts.context.pins
        self._context, self._budget, self._cold = parts.context, parts.budget, parts.cold
        self._background, self._acquirer, self._lifecycle = parts.background, parts.acquirer, parts.lifecycle
        self._consequences = parts.consequences

    # -- settings, read-only --------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """Every setting of this cache, validated (``cache.settings.maintenance.max_packs``)."""
        return self._context.settings

    max_bytes: ReadBack[int | None] = ReadBack("The byte budget for all mirrors together (None: no limit).")
    min_free_bytes: ReadBack[int] = ReadBack("Bytes kept free on the cache's filesystem.")
    fetch_ttl: ReadBack[float | str] = ReadBack(
        'Seconds within which a hit does not contact upstream again, or ``"auto"`` (the adaptive schedule).'
    )
    lock_timeout: ReadBack[float] = ReadBack("Seconds any wait for another worker is bounded by.")
    on_fetch_error: ReadBack[str] = ReadBack('``"warn"`` (serve a stale copy) or ``"raise"``.')
    filter: ReadBack[str | None] = ReadBack(
        'The partial-clone filter of new mirrors (None: full; ``"blob:none"``, ``"tree:0"``), unless a pin or a call '
        "names one."
    )
    cold_min_bytes: ReadBack[int] = ReadBack("Evicted repositories smaller than this are not offloaded.")
    cold_compression: ReadBack[str] = ReadBack('How cold artifacts are compressed (``"none"`` or ``"zstd"``).')
    cold_retention: ReadBack[float | None] = ReadBack("Seconds an artifact is kept in the cold store (None: forever).")
    cold_publish: ReadBack[str] = ReadBack(
        'When mirrors are published besides evictions (``"off"``, ``"clone"``, ``"always"``).'
    )
    cold_publish_after: ReadBack[float] = ReadBack(
        'Seconds after which a fetched mirror is published again (``"always"``).'
    )

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self, *, timeout: float = 60.0) -> None:
        """Release the index; further calls raise :class:`RepoCacheError`. Closing twice is a no-op.

        Background fetches not started yet are cancelled; running ones are waited for up to ``timeout`` seconds,
        then cancelled (their git is killed; the repository keeps its previous state). Background uploads to the
        cold store (``cold_publish``) and checks of restored commit-graphs are waited for.
        """
        if self._lifecycle.close():
            self._background.close(timeout)
            self._consequences.close()
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

    def _writable(self, action: str) -> None:
        """Refuse, before anything is done, what would change a read-only root."""
        if self._context.index.read_only:
            raise self._context.index.refused(action)

    def _parse(self, url: str | os.PathLike[str], *, changes: str | None = None) -> RepoURL:
        self._check_open()
        if changes is not None:
            self._writable(changes)
        parsed = normalize_url(url)
        if parsed.is_local and not self._context.git.allow_local:
            raise InvalidURLError(parsed.url, "local paths are not allowed by this cache (allow_local=False)")
        return parsed

    def _choose(self, url: str | os.PathLike[str], filter: FilterArg, *, changes: str | None = None) -> RepoURL:
        """The parsed URL of the mirror serving ``url`` with the call's ``filter`` (see :mod:`repocache.partial`);
        ``changes``: what the call would change, refused on a read-only root."""
        return partial.choose(self._context, self._parse(url, changes=changes), filter)

    def _reader(
        self, url: str | os.PathLike[str], filter: FilterArg, max_age: MaxAge
    ) -> tuple[Acquirer, RepoURL, MaxAge]:
        """What :class:`~repocache.AsyncRepoCache` needs to hold ``url`` as :meth:`checkout` does, itself (a hit
        on its event loop, else in a thread): the acquire room, the mirror's parsed URL, the validated ``max_age``."""
        # On the loop: a reload of the pin file under way in another thread is not waited for.
        parsed = partial.choose(self._context, self._parse(url, changes=_CHECKOUT_CHANGES), filter, wait=False)
        return self._acquirer, parsed, parse_max_age(max_age)

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

    def report(self, event: Event) -> None:
        """Hand ``event``, from a part built on this cache (the git server), to the cache's hooks and metrics.

        Hooks run in the calling thread; one that raises is logged and ignored.
        """
        self._context.events.emit(event)

    # -- public API -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def checkout(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Iterator[Checkout]:
        """Hold the repository's bare mirror for the ``with`` block, cloning or refreshing it first.

        Args:
            url: the repository.
            progress: progress callback for the clone or fetch.
            max_age: for this call instead of ``fetch_ttl``: seconds the copy may be old (0: fetch unless a fetch
                finished after the call began; None: any age, upstream is not contacted on a hit).
            filter: the mirror's partial-clone filter for this call: None (full), ``"blob:none"`` or ``"tree:0"``;
                by default the first pin naming one, else the cache's ``filter``. A full mirror already on disk
                serves a partial request (``co.filter`` says which it got); see ``docs/partial.md``.

        Yields:
            A :class:`Checkout`; the mirror is not evicted by any process until the block exits.

        Raises:
            InvalidURLError: the URL cannot be cached.
            CloneError: a miss could not be cloned (nothing is left behind).
            FetchError: the fetch failed and ``on_fetch_error="raise"``.
            BudgetError: the repository cannot fit in the budget.
            LockTimeoutError: another worker held the repository longer than ``lock_timeout``.
            ConfigError: ``filter`` is not accepted, or is partial and no git CLI was found.
        """
        parsed = self._choose(url, filter, changes=_CHECKOUT_CHANGES)
        with self._acquirer.held(parsed, progress or self.progress, parse_max_age(max_age)) as checkout:
            yield checkout

    @contextlib.contextmanager
    def checkout_and_read(
        self,
        url: str | os.PathLike[str],
        read: Callable[[Checkout], _T],
        *,
        read_on_loop: bool = False,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Iterator[tuple[Checkout, _T]]:
        """As :meth:`checkout`, with ``read(checkout)`` called once the mirror is held: the counterpart of
        :meth:`AsyncRepoCache.checkout_and_read <repocache.AsyncRepoCache.checkout_and_read>`, where it saves a
        thread hop; here it is ``checkout`` followed by the call, in the caller's thread (``read_on_loop`` is
        accepted for the two signatures to agree, and changes nothing here).

        Yields:
            The :class:`Checkout` and what ``read`` returned; no process evicts the mirror until the block exits.

        Raises:
            RepoCacheError: whatever :meth:`checkout` raises.
            Exception: what ``read`` raised (the hold is released first).
        """
        with self.checkout(url, progress=progress, max_age=max_age, filter=filter) as checkout:
            yield checkout, read(checkout)

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
        filter: FilterArg = USE_CONFIGURED,
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
            filter: as for :meth:`checkout`. From a partial mirror, what the tree at ``ref`` lacks is fetched
                first (:meth:`fetch_missing`, under the fetch lock, charged to the budget).

        Yields:
            A :class:`Worktree` with ``path`` and ``commit``.

        Raises:
            RefNotFoundError: ``ref`` does not exist in the repository (after the fetch).
            GitError: the checkout failed.
            RepoCacheError: whatever :meth:`checkout` raises (``InvalidURLError``, ``CloneError``, ``FetchError``,
                ``BudgetError``, ``LockTimeoutError``).
        """
        check_ref(ref)
        parsed = self._choose(url, filter, changes="make a worktree (its recency and counters are written)")
        context = self._context
        with self._acquirer.held(parsed, progress or self.progress, parse_max_age(max_age)) as checkout:
            if parsed.filter is not None:
                partial.fetch_missing(context, parsed, commit=ref, progress=progress or self.progress)
            with worktree_of(
                context.layout, context.git, checkout, parsed, ref, path=path, submodules=submodules
            ) as tree:
                yield tree

    def ensure(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        """Clone or refresh the repository now without holding it (pre-warming); counts as a use.

        Args:
            url: the repository.
            progress: progress callback for the clone or fetch.
            max_age: as for :meth:`checkout`.
            filter: as for :meth:`checkout`.

        Returns:
            The repository's entry after the operation.
        """
        return self._ensure(url, progress, parse_max_age(max_age), strict=False, filter=filter)

    def refresh(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        """Fetch the repository now, whatever its age (cloning it if it is not cached); counts as a use.

        Like a hit, it holds the repository shared and takes its fetch lock; a fetch by another worker that
        finished after this call began counts as this one.

        Returns:
            The repository's entry after the fetch.

        Raises:
            FetchError: the fetch failed, whatever ``on_fetch_error`` says.
        """
        return self._ensure(url, progress, 0.0, strict=True, filter=filter)

    def mark_stale(self, url: str | os.PathLike[str]) -> bool:
        """Mark the repository stale: its next hit, in any process or host sharing the root, fetches first.

        The mark is kept in the index and consumed by the first successful fetch that began after it (a fetch in
        flight when the mark arrives may have missed the push it announces). A hit with ``max_age=None`` ignores
        it. This is what :mod:`repocache.webhooks` calls for a push.

        Returns:
            True if the repository is in the cache (any of its mirrors, full or partial, each marked); False
            otherwise (nothing is recorded: its clone is fresh).
        """
        parsed = self._parse(url, changes="mark a repository stale")
        now = time.time()
        # every mirror of the URL (full and partial) is as stale as its upstream: each is marked
        marked = any([self._context.index.mark_stale(each.key, now) for each in partial.every_mirror_of(parsed)])
        if marked:
            self._context.events.marked_stale(parsed.url)
        return marked

    def _ensure(
        self,
        url: str | os.PathLike[str],
        progress: gitops.ProgressCallback | None,
        max_age: MaxAge,
        *,
        strict: bool,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        parsed = self._choose(url, filter, changes="get a repository (its recency and counters are written)")
        acquired = self._acquirer.acquire(parsed, progress or self.progress, max_age, strict=strict)
        try:
            entry = entry_of(self._context, parsed.key)
        finally:
            maintained = self._acquirer.release(acquired)
        if maintained is not None:
            entry = entry_of(self._context, parsed.key) or entry
        if entry is None or not entry.path.is_dir():  # evicted once released: never return a path that is gone
            raise self._budget.evicted_on_release(parsed, entry)
        return entry

    def info(self, url: str | os.PathLike[str], *, filter: FilterArg = USE_CONFIGURED) -> Entry | None:
        """The entry of the mirror that would serve the repository (with ``filter``, as for :meth:`checkout`) if it
        is on disk, else None. No network, no recency update."""
        parsed = self._choose(url, filter)
        if not self._context.layout.mirror(parsed.key).is_dir():
            return None
        return entry_of(self._context, parsed.key)

    def entries(self) -> list[Entry]:
        """Every repository on disk, most recently used first."""
        self._check_open()
        return [entry_of_row(self._context, row) for row in self._context.index.rows()]

    def fetch_missing(
        self,
        url: str | os.PathLike[str],
        *,
        oids: Iterable[str] = (),
        commit: str | None = None,
        paths: Sequence[str] | None = None,
        filter: FilterArg = USE_CONFIGURED,
        progress: gitops.ProgressCallback | None = None,
    ) -> int:
        """Fetch into a partial mirror what its filter left out: given objects, or what a commit's tree lacks.

        The repository is held as by :meth:`checkout` (cloned if missing; no fetch of refs on a hit), and the
        objects are fetched under its fetch lock with the git CLI from upstream, which must allow filters
        (``uploadpack.allowFilter``). The mirror's new size is charged to the budget. A full mirror holds
        everything: nothing is fetched. See ``docs/partial.md``.

        Args:
            url: the repository.
            oids: hex ids of objects to fetch (a tree comes with its subtrees, not their blobs); those present are
                skipped.
            commit: a commit, branch or tag: fetch what its tree lacks (trees, then blobs), so that a checkout of it
                or a read of any of its files needs nothing more. ``"HEAD"`` when only ``paths`` is given.
            paths: only the files and directories under these repository-relative paths of ``commit``'s tree.
            filter: which mirror, as for :meth:`checkout`.
            progress: progress callback for the clone and the fetches.

        Returns:
            The number of objects asked from upstream (0 when nothing was missing).

        Raises:
            ConfigError: no ``oids``, ``commit`` or ``paths`` were given, or an oid is not 40 hex digits.
            RefNotFoundError: ``commit`` is not in the mirror.
            FetchError: upstream failed (the mirror keeps what it had).
            RepoCacheError: whatever :meth:`checkout` raises.
        """
        wanted = [oids] if isinstance(oids, str) else list(oids)
        if isinstance(paths, str):
            paths = [paths]
        if commit is None and paths is not None:
            commit = "HEAD"
        if not wanted and commit is None:
            raise ConfigError("fetch_missing needs oids=[...], commit=... or paths=[...]; none was given")
        parsed = self._choose(url, filter)
        callback = progress or self.progress
        with self._acquirer.held(parsed, callback, None):
            return partial.fetch_missing(
                self._context, parsed, oids=wanted, commit=commit, paths=paths, progress=callback
            )

    def evict(self, url: str | os.PathLike[str], *, force: bool = False, filter: FilterArg = USE_CONFIGURED) -> bool:
        """Remove the repository from disk now (offloading it to the cold store when one is configured).

        Args:
            url: the repository.
            force: evict even if it is pinned.
            filter: which mirror of ``url``: exactly the one with this filter (by default the pins' or the
                cache's), never another that would serve it.

        Returns:
            True if it was evicted; False if it was not on disk, is held by a reader (in any process), or is
            pinned and ``force`` is False.
        """
        return self._budget.evict_now(
            partial.exact(self._context, self._parse(url, changes="evict a repository"), filter), force=force
        )

    def enforce(self) -> list[Entry]:
        """Evict least recently used repositories until the budget and ``min_free_bytes`` hold.

        Pinned repositories and repositories held by any process are skipped, never waited for.

        Returns:
            The entries evicted, least recently used first.
        """
        self._check_open()
        self._writable("enforce the budget")
        return self._budget.enforce()

    def stats(self) -> Stats:
        """Counters shared by all processes using this root, and the bytes used."""
        self._check_open()
        used, count = self._context.index.totals()
        return Stats.of(self._context.index.counters(), bytes_used=used, bytes_limit=self.max_bytes, entries=count)

    def maintain(
        self, url: str | os.PathLike[str] | None = None, *, prune: bool = False, filter: FilterArg = USE_CONFIGURED
    ) -> list[MaintenanceReport]:
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
            filter: which mirror of ``url``, as for :meth:`checkout` (partial mirrors keep their promisor packs).

        Returns:
            One report per repository maintained (empty when ``url`` is not cached).

        Raises:
            GitError: git failed for ``url`` (for all repositories, failures are logged and reported as skipped).
            LockTimeoutError: another worker held ``url`` longer than ``lock_timeout``.
        """
        if url is not None:
            parsed = self._choose(url, filter, changes="maintain a repository")
            found = maintenance.maintain_one(self._context, parsed.key, parsed.url, wait=True, forced=True, prune=prune)
            return [] if found is None else [found]
        self._check_open()
        self._writable("maintain its repositories")
        return maintenance.maintain_all(self._context, prune=prune)

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

        Raises:
            ReadOnlyRootError: ``repair`` on a read-only root (without it, a read-only root is verified as any).
        """
        self._check_open()
        if repair:
            self._writable("repair it")
        problems = verify_root(self._context, self._budget, repair)
        if repair:
            sweep_locks(self._context)
        return problems

    # -- cold store -----------------------------------------------------------------------------------------------

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

    def publish(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Manifest:
        """Upload the repository's mirror to the cold store now, for other hosts to restore; clones it first if needed.

        The mirror is held shared while it is packed (readers and fetches go on) and streamed into the store. When
        the store already holds an artifact made after the mirror's last fetch, nothing is uploaded.

        A partial mirror (``filter``, as for :meth:`checkout`) is published under its own key: only a request
        for the same filter restores it.

        Returns:
            The store's manifest of the repository.

        Raises:
            ConfigError: the cache has no cold store.
            ColdStoreError: the store failed.
            RepoCacheError: whatever :meth:`ensure` raises (clone, budget, lock and fetch errors).
        """
        parsed = self._choose(url, filter)
        if self._cold is None:
            raise ConfigError("publish needs a cold store: pass cold_store= (a directory or an fsspec URL)")
        self.ensure(url, progress=progress, filter=filter)
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
