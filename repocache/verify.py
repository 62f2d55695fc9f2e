"""Verify and repair a root: the index against the disk, and the debris of dead processes.

Every check of a repository by :func:`verify_root` runs under its exclusive lock, tried without waiting: a repository
that is held or being cloned is in flux, not broken, and is skipped. Debris (staging, trash, worktrees) is deleted
only while its owner's lock is free: its owner is dead. :func:`mirrors_on_disk` is what an index rebuilt after
damage adopts, and :func:`sweep_locks` deletes the lock files of repositories that are not on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from repocache import gitops, locks
from repocache.budget import Budget, dead_trash
from repocache.context import Context
from repocache.errors import ConfigError, InvalidURLError, UnsafeFileError
from repocache.index import Row
from repocache.keys import normalize_url, with_filter
from repocache.layout import ExclusiveHold, Layout, key_of, listing, remove
from repocache.models import Problem

__all__ = ["mirror_url", "mirrors_on_disk", "sweep_locks", "verify_root"]


def verify_root(context: Context, budget: Budget, repair: bool) -> list[Problem]:
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
            problems.extend(_verify_held(context, budget, hold, repair))
    problems.extend(_verify_staged(context.layout, repair))
    problems.extend(_verify_worktrees(context.layout, repair))
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


def _verify_held(context: Context, budget: Budget, hold: ExclusiveHold, repair: bool) -> list[Problem]:
    """Check (and with ``repair`` fix) the repository ``hold`` holds: its index row against its mirror."""
    # Read again under the lock: the listing of verify_root() may predate a fetch, a clone or an eviction.
    row = context.index.get(hold.key)
    if row is None and not context.layout.mirror(hold.key).is_dir():
        return []  # evicted since the listing
    return _verify_one(context, budget, hold, row, repair)


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
        config = repo.config
        name = "remote.origin.partialclonefilter"
        filter = str(config[name]) if name in config else None
        parsed = with_filter(parsed, filter)  # a partial mirror's key says its filter
    except (KeyError, InvalidURLError, ConfigError):
        return None
    finally:
        repo.free()
    return parsed.url if layout.mirror(parsed.key) == mirror else None


def _verify_staged(layout: Layout, repair: bool) -> list[Problem]:
    """Staging and trash entries whose owner is dead; one whose owner holds its lock is skipped."""
    problems: list[Problem] = []
    for entry in listing(layout.staging):
        # Staging entries belong to the clone, restore or upload holding the key's lock: they are debris only if
        # that lock is free.
        hold = layout.try_exclusive(key_of(entry.name))
        if hold is None:
            continue
        with hold:
            problem = _staged_leftover(hold, Path(entry.path), repair)
        if problem is not None:
            problems.append(problem)
    # Trash entries belong to an eviction holding the key's lock, or to an upload of an evicted mirror holding
    # the entry's own lock file.
    for path in dead_trash(layout, repair=repair):
        problems.append(Problem("leftover", path.name, path, "debris of an interrupted operation", repair))
    return problems


def _staged_leftover(hold: ExclusiveHold, path: Path, repair: bool) -> Problem | None:
    """The leftover at ``path`` of an operation on ``hold``'s repository that died (None: it finished meanwhile)."""
    if not os.path.lexists(path):
        return None  # finished and cleaned up while we looked
    if repair:
        remove(path)
    return Problem("leftover", path.name, path, "debris of an interrupted operation", repair)


def _verify_worktrees(layout: Layout, repair: bool) -> list[Problem]:
    """Worktrees (and worktree lock files) whose owner is dead: the owner of a live one holds its lock file."""
    problems: list[Problem] = []
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
        except UnsafeFileError as exc:  # planted by someone else: reported, never followed or removed blindly
            problems.append(Problem("leftover", name, lock_file, f"worktree lock file refused: {exc.reason}"))
            continue
        else:
            if owner is None:
                continue  # its process is alive and using it
            if not owner.is_current():  # its owner removed the tree and unlinked the file while we opened it
                owner.release()
                continue
        try:
            problems.append(_dead_worktree(tree, lock_file, repair))
        finally:
            if owner is not None:
                owner.release()
    return problems


def _dead_worktree(tree: Path, lock_file: Path, repair: bool) -> Problem:
    """A worktree whose owner died; called holding its lock file, or when that file is gone."""
    if repair:
        remove(tree)
        with contextlib.suppress(FileNotFoundError):
            lock_file.unlink()
    detail = "worktree of a process that died" if tree.exists() or repair else "lock file of a dead worktree"
    return Problem("leftover", tree.name, tree, detail, repair)
