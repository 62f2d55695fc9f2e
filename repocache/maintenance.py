"""Keeping a root healthy: verify and repair (index against disk, debris of dead processes), and the upkeep of
long-lived mirrors (repacking, packing refs, the commit-graph).

Every check of a repository by :func:`verify` runs under its exclusive lock, tried without waiting: a repository
that is held or being cloned is in flux, not broken, and is skipped.

Maintenance (:func:`maintain_one`) runs under a shared hold and the repository's fetch lock: never concurrently
with a fetch or another maintenance of the same mirror, while readers keep reading. What it runs never deletes an
object a reader can see: a geometric repack writes the new pack before it deletes the packs it replaces, and keeps
every object of those packs, reachable or not. Only :func:`maintain_one` with ``prune`` drops unreachable objects
(older than the grace period), and only under the exclusive lock, when no reader and no worktree exists.
``docs/architecture.md`` (Maintenance) says why readers stay safe.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from repocache import gitops, locks
from repocache.budget import Budget
from repocache.context import Context
from repocache.errors import GitError, InvalidURLError, LockTimeoutError
from repocache.index import Row
from repocache.keys import normalize_url
from repocache.layout import ExclusiveHold, Layout, key_of, listing, remove
from repocache.models import MaintenanceReport, Problem
from repocache.settings import Settings

__all__ = [
    "after_fetch",
    "allowed_packs",
    "due_tasks",
    "failed_report",
    "graph_due",
    "maintain_one",
    "mirror_url",
    "mirrors_on_disk",
    "rolls_up_all",
    "sweep_locks",
    "verify",
]


def verify(context: Context, budget: Budget, repair: bool) -> list[Problem]:
    """Compare the index with the disk, and find debris; with ``repair``, fix what is found."""
    problems: list[Problem] = []
    damage = context.index.damage_note()
    if damage is not None:
        if repair:
            context.index.acknowledge_damage()
        detail = f"the index was damaged ({damage[1]}) and rebuilt from the mirrors on disk; the file is kept"
        problems.append(Problem("index", "index.sqlite", damage[0], detail, repair))
    indexed = {row.key: row for row in context.index.rows()}
    on_disk = context.layout.mirror_keys()
    for key in [*indexed, *sorted(on_disk - set(indexed))]:
        hold = context.layout.try_exclusive(key)
        if hold is None:
            continue  # held or being cloned: its state is in flux, not broken
        with hold:
            # Read again under the lock: the listing above may predate a fetch, a clone or an eviction.
            row = context.index.get(key)
            if row is None and not context.layout.mirror(key).is_dir():
                continue  # evicted since the listing
            problems.extend(_verify_one(context, budget, hold, row, repair))
    problems.extend(_verify_debris(context, repair))
    return problems


def sweep_locks(context: Context) -> None:
    """Delete the lock files of repositories that are not on disk (typos, failed clones, evicted ones).

    Each file is deleted by :func:`repocache.locks.sweep` only while it holds the file's exclusive lock, the rule
    that keeps deletion safe against a process about to lock it.
    """
    present = context.layout.mirror_keys()  # one listing, not a stat per lock file

    def unused(key: str) -> bool:
        return key != "budget" and key not in present and not context.layout.mirror(key).is_dir()

    removed = locks.sweep(context.layout.locks, unused, suffixes=(".lock", ".fetch"))
    if removed:
        context.events.leftover_removed(f"{len(removed)} lock files of repositories not on disk")


def _verify_one(context: Context, budget: Budget, hold: ExclusiveHold, row: Row | None, repair: bool) -> list[Problem]:
    key = hold.key
    mirror = context.layout.mirror(key)
    if row is not None and not mirror.is_dir():
        if repair:
            context.index.remove(key, counter=None)
        return [Problem("missing", key, mirror, f"{row.url} is indexed but not on disk", repair)]
    problem = gitops.validate_mirror(mirror)
    if problem is not None:
        if repair:
            budget.evict_locked(hold, row, reason="invalid")
        return [Problem("invalid", key, mirror, f"the mirror {problem}", repair)]
    if row is None:
        url = mirror_url(context.layout, mirror)
        if repair and url is not None:
            context.index.put(key, url, gitops.disk_usage(mirror), time.time(), counter=None, fetched=False)
        elif repair:
            shutil.rmtree(mirror, ignore_errors=True)
        return [Problem("orphan", key, mirror, "a mirror on disk has no index entry", repair)]
    debris = gitops.sweep_mirror(mirror, dry_run=not repair)
    if debris:
        names = ", ".join(str(path.relative_to(mirror)) for path in debris[:5])
        detail = f"debris of a killed fetch or maintenance inside the mirror: {names}"
        problems = [Problem("leftover", key, mirror, detail, repair)]
    else:
        problems = []
    size = gitops.disk_usage(mirror)
    if size != row.size_bytes:
        if repair:
            context.index.set_size(key, size)
        problems.append(Problem("size", key, mirror, f"recorded {row.size_bytes} bytes, disk has {size}", repair))
    return problems


def mirrors_on_disk(layout: Layout) -> Iterator[tuple[str, str, int]]:
    """(key, URL, size) of every valid mirror under ``repos/``: what an index rebuilt after damage adopts."""
    for entry in listing(layout.repos):
        mirror = Path(entry.path)
        url = mirror_url(layout, mirror) if gitops.validate_mirror(mirror) is None else None
        if url is not None:
            yield entry.name, url, gitops.disk_usage(mirror)


def mirror_url(layout: Layout, mirror: Path) -> str | None:
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
    return parsed.url if layout.mirror(parsed.key) == mirror else None


def _verify_debris(context: Context, repair: bool) -> list[Problem]:
    """Staging, trash and worktree debris whose owner is dead; anything whose owner holds its lock is skipped."""
    layout = context.layout
    problems: list[Problem] = []
    for directory in (layout.staging, layout.trash):
        for entry in listing(directory):
            # Staging and trash entries belong to the clone, restore, upload or eviction holding the key's
            # exclusive lock: they are debris only if that lock is free.
            hold = layout.try_exclusive(key_of(entry.name))
            if hold is None:
                continue
            with hold:
                if not os.path.lexists(entry.path):
                    continue  # finished and cleaned up while we looked
                if repair:
                    remove(Path(entry.path))
            detail = "debris of an interrupted operation"
            problems.append(Problem("leftover", entry.name, Path(entry.path), detail, repair))
    worktree_names = {e.name.removesuffix(".lock") for e in listing(layout.worktrees)}
    for name in sorted(worktree_names):
        tree = layout.worktrees / name
        lock_file = layout.worktree_lock(tree)
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
                remove(tree)
                with contextlib.suppress(FileNotFoundError):
                    lock_file.unlink()
        finally:
            if owner is not None:
                owner.release()
        detail = "worktree of a process that died" if tree.exists() or repair else "lock file of a dead worktree"
        problems.append(Problem("leftover", name, tree, detail, repair))
    return problems


# -- maintenance -------------------------------------------------------------------------------------------------

_MIB = 1024**2
FULL_REPACK_SHARE = 0.1  # repack all once the packs besides the largest hold this share of its bytes
GRAPH_STALE_SHARE = 0.2  # rewrite the commit-graph once packs written after it hold this share of the bytes


def allowed_packs(settings: Settings, pack_bytes: int) -> int:
    """How many packs a mirror of ``pack_bytes`` may have before it is repacked.

    The limit grows with the logarithm of the size, as in Gitaly's housekeeping (log base 1.3 of the size in MiB,
    here between 8 and 32): a geometric repack leaves about log2(largest / smallest) packs, so a large mirror
    needs more room before the next one is worth its cost. Measured on a 53 MB mirror, up to 33 packs cost a
    pygit2 walk or blob reads at most 2.4% more CPU than one pack; the price of many packs is paid in the
    hundreds and thousands.
    """
    if settings.maintenance_max_packs is not None:
        return settings.maintenance_max_packs
    return max(8, min(32, int(math.log(max(pack_bytes, 1) / _MIB + 1) / math.log(1.3))))


def due_tasks(shape: gitops.MirrorShape, settings: Settings, *, forced: bool) -> list[str]:
    """The maintenance tasks a mirror of this shape needs (the thresholds of ``settings``, or any work at all when
    ``forced``), in the order they run. A stale commit-graph is rewritten only along with a repack (see
    :func:`graph_due`); a missing or unreadable one is due on its own."""
    tasks = []
    if shape.packs > (1 if forced else allowed_packs(settings, shape.pack_bytes)) or shape.loose_objects > (
        0 if forced else settings.maintenance_max_loose_objects
    ):
        tasks.append("repack")
    if shape.loose_refs > (0 if forced else settings.maintenance_max_loose_refs):
        tasks.append("pack-refs")
    if graph_due(shape, forced=forced, repacked=bool(tasks) and tasks[0] == "repack"):
        tasks.append("commit-graph")
    return tasks


def graph_due(shape: gitops.MirrorShape, *, forced: bool, repacked: bool = True) -> bool:
    """Whether to write the commit-graph: it is missing or unreadable by libgit2, or (along with a repack) packs
    written after it hold more than :data:`GRAPH_STALE_SHARE` of the bytes; explicitly, whenever it is stale.

    Commits missing from the graph are read from their packs as if there were no graph, so a somewhat stale graph
    costs little; rewriting it costs a pass over every commit.
    """
    if shape.pack_bytes == 0 and shape.loose_objects == 0:
        return False
    if shape.commit_graph != "ok":
        return True
    if forced:
        return shape.graph_stale_bytes > 0
    return repacked and shape.graph_stale_bytes > GRAPH_STALE_SHARE * shape.pack_bytes


def rolls_up_all(shape: gitops.MirrorShape, *, forced: bool) -> bool:
    """Whether to repack everything by traversal (:func:`gitops.repack_all_keeping`) instead of geometrically:
    when asked explicitly, or once the packs besides the largest hold :data:`FULL_REPACK_SHARE` of its bytes.

    libgit2's fetched packs carry whole copies of delta bases and a roll-up reuses them as they are, so the packs
    rolled up cost more disk than the same objects in a fresh clone; a repack by traversal finds deltas again.
    Doing it once the fetched packs reach a tenth of the largest bounds that excess to about 10% and rewrites the
    mirror about once each time it grows by a tenth: amortized, ten bytes written per byte fetched.
    """
    return forced or shape.pack_bytes - shape.largest_pack_bytes >= FULL_REPACK_SHARE * shape.largest_pack_bytes


def _limits(settings: Settings) -> gitops.MaintenanceLimits:
    return gitops.MaintenanceLimits(
        window_memory=settings.maintenance_window_memory, threads=settings.maintenance_threads
    )


def maintain_one(
    context: Context, key: str, url: str, *, wait: bool, forced: bool, prune: bool = False
) -> MaintenanceReport | None:
    """Maintain the mirror of ``key``; None when it is not on disk.

    Under a shared hold and the fetch lock (waited for up to ``lock_timeout`` with ``wait``, else only tried):
    sweep debris of killed git processes, then the due tasks (see :func:`due_tasks`). With ``prune``, then, under
    the exclusive lock tried without waiting (no reader, no worktree), a full repack that drops unreachable
    objects older than ``maintenance_grace``. The index gets the new size.

    Raises:
        GitError: a git command failed (the mirror still holds every object it had).
        LockTimeoutError: ``wait`` and another worker held the repository longer than ``lock_timeout``.
    """
    settings = context.settings
    layout = context.layout
    mirror = layout.mirror(key)
    timeout = settings.lock_timeout if wait else 0.0
    started = time.monotonic()
    limits = _limits(settings)
    tasks: list[str] = []
    peak = 0
    skipped: str | None = None
    row = context.index.get(key)
    size_before = row.size_bytes if row is not None else 0
    hold = layout.hold_shared(key, timeout)
    if hold is None:
        if wait:
            raise LockTimeoutError(url, settings.lock_timeout, "maintenance")
        return None
    with hold:
        if not mirror.is_dir():
            return None
        before = gitops.mirror_shape(mirror, exact=True)
        if row is None:
            size_before = gitops.disk_usage(mirror)
        fetch = layout.hold_fetch(key, timeout)
        if fetch is None:
            if wait:
                raise LockTimeoutError(url, settings.lock_timeout, "maintenance")
            skipped = "a fetch or another maintenance of this mirror is running"
        else:
            with fetch:
                if gitops.sweep_mirror(mirror):
                    tasks.append("sweep")
                shape = gitops.mirror_shape(mirror, exact=forced)
                due = due_tasks(shape, settings, forced=forced)
                if "repack" in due:
                    repack = (
                        gitops.repack_all_keeping if rolls_up_all(shape, forced=forced) else gitops.repack_geometric
                    )
                    peak = max(peak, repack(mirror, context.git, limits).peak_rss_bytes)
                    tasks.append("repack")
                    shape = gitops.mirror_shape(mirror, exact=forced)  # the graph may be stale now
                if "pack-refs" in due:
                    peak = max(peak, gitops.pack_refs(mirror, context.git, limits).peak_rss_bytes)
                    tasks.append("pack-refs")
                if graph_due(shape, forced=forced, repacked="repack" in tasks):
                    peak = max(peak, gitops.write_commit_graph(mirror, context.git, limits).peak_rss_bytes)
                    tasks.append("commit-graph")
                if tasks:
                    _record_size(context, key, mirror)
        after = gitops.mirror_shape(mirror, exact=True)
        size_after = gitops.disk_usage(mirror)
    if prune:
        exclusive = layout.try_exclusive(key)
        if exclusive is None:
            skipped = "in use: pruning waits until no reader or worktree holds the mirror"
        else:
            with exclusive:
                if mirror.is_dir():
                    gitops.sweep_mirror(mirror)
                    peak = max(
                        peak,
                        gitops.repack_pruning(mirror, context.git, limits, settings.maintenance_grace).peak_rss_bytes,
                    )
                    tasks.append("prune")
                    if graph_due(gitops.mirror_shape(mirror), forced=True):
                        peak = max(peak, gitops.write_commit_graph(mirror, context.git, limits).peak_rss_bytes)
                    _record_size(context, key, mirror)
                    after = gitops.mirror_shape(mirror, exact=True)
                    size_after = gitops.disk_usage(mirror)
    report = MaintenanceReport(
        url=url,
        key=key,
        tasks=tuple(tasks),
        skipped=skipped,
        packs_before=before.packs,
        packs_after=after.packs,
        loose_objects_before=before.loose_objects,
        loose_objects_after=after.loose_objects,
        loose_refs_before=before.loose_refs,
        loose_refs_after=after.loose_refs,
        size_before=size_before,
        size_after=size_after,
        seconds=time.monotonic() - started,
        peak_rss_bytes=peak,
    )
    if tasks:
        context.events.maintained(report)
    return report


def _record_size(context: Context, key: str, mirror: Path) -> None:
    """Give the index the mirror's new size, so the budget sees what maintenance freed (or used)."""
    if context.index.get(key) is not None:
        context.index.set_size(key, gitops.disk_usage(mirror))


def after_fetch(context: Context, key: str, url: str) -> MaintenanceReport | None:
    """Automatic maintenance, run by the caller that fetched once it has released the mirror.

    A few directory listings decide (:func:`gitops.mirror_shape`); only when a threshold is crossed does it
    maintain, and only if the mirror's locks are free now (it never waits, and never holds the budget lock).
    Failures are logged, never raised: the caller's checkout already succeeded.
    """
    if context.settings.maintenance.mode != "auto" or context.git.git is None:
        return None  # off, or no git command line tool to maintain with (libgit2 cannot repack)
    try:
        shape = gitops.mirror_shape(context.layout.mirror(key))
    except FileNotFoundError:
        return None  # evicted meanwhile
    if not due_tasks(shape, context.settings, forced=False):
        return None
    try:
        return maintain_one(context, key, url, wait=False, forced=False)
    except (GitError, OSError) as exc:
        context.events.maintenance_failed(url, exc)
        return None


def failed_report(context: Context, row: Row, error: Exception) -> MaintenanceReport:
    """The report of a maintenance that failed (the mirror is as it was: every object kept)."""
    packs = loose = refs = 0
    with contextlib.suppress(FileNotFoundError):
        shape = gitops.mirror_shape(context.layout.mirror(row.key), exact=True)
        packs, loose, refs = shape.packs, shape.loose_objects, shape.loose_refs
    return MaintenanceReport(
        url=row.url,
        key=row.key,
        tasks=(),
        skipped=f"failed: {error}",
        packs_before=packs,
        packs_after=packs,
        loose_objects_before=loose,
        loose_objects_after=loose,
        loose_refs_before=refs,
        loose_refs_after=refs,
        size_before=row.size_bytes,
        size_after=row.size_bytes,
        seconds=0.0,
        peak_rss_bytes=0,
    )
