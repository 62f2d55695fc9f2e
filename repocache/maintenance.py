"""The upkeep of long-lived mirrors: repacking, packing refs, the commit-graph, pruning.

The tasks are a table (:data:`TASKS`): each row names a task, says when it is due for a mirror's shape, which hold
its body needs (the fetch hold, or the exclusive hold) and the function that runs it, which takes that hold.
:func:`maintain_one` takes the holds in the lock order and runs the rows due under each; :func:`due_tasks` reads
the same rows for the automatic check after a fetch (:func:`after_fetch`).

Maintenance runs under a shared hold and the repository's fetch lock: never concurrently with a fetch or another
maintenance of the same mirror, while readers keep reading. What it runs never deletes an object a reader can see:
a geometric repack writes the new pack before it deletes the packs it replaces, and keeps every object of those
packs, reachable or not. Only the ``prune`` task drops unreachable objects (older than the grace period), and only
under the exclusive lock, when no reader and no worktree exists. ``docs/architecture.md`` (Maintenance) says why
readers stay safe. Verify and repair are in :mod:`repocache.verify`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeGuard, TypeVar

from repocache import gitops
from repocache.context import Context
from repocache.errors import GitError, LockTimeoutError
from repocache.index import Row
from repocache.layout import ExclusiveHold, FetchHold
from repocache.models import MaintenanceReport
from repocache.settings import Settings

__all__ = [
    "TASKS",
    "Plan",
    "Task",
    "after_fetch",
    "allowed_packs",
    "due_after_fetch",
    "due_tasks",
    "failed_report",
    "graph_due",
    "maintain_one",
    "rolls_up_all",
    "verify_restored_graph",
]


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


# -- the table of tasks ------------------------------------------------------------------------------------------

H = TypeVar("H", FetchHold, ExclusiveHold)


@dataclass(frozen=True)
class Plan:
    """What was asked of one maintenance, and what it has done so far: what a task's ``due`` decides from.

    Attributes:
        forced: ``maintain()``: any work at all is due, not only work past a threshold of the settings.
        prune: ``maintain(prune=True)``: drop unreachable objects older than ``maintenance_grace``.
        done: the tasks run (or, in :func:`due_tasks`, found due) before this one, in order.
    """

    forced: bool
    prune: bool = False
    done: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task(Generic[H]):
    """One row of :data:`TASKS`.

    Attributes:
        name: the task's name in :attr:`MaintenanceReport.tasks`.
        hold: the hold its body needs: :class:`~repocache.layout.FetchHold` (taken inside a shared hold: no fetch
            or other maintenance meanwhile, readers keep reading) or :class:`~repocache.layout.ExclusiveHold` (no
            reader and no worktree).
        due: whether it is due for a mirror of this shape, under these settings and this plan.
        run: runs it on the mirror of the held repository, given the shape that made it due; returns the peak
            resident memory of the git processes it ran.
    """

    name: str
    hold: type[H]
    due: Callable[[gitops.MirrorShape, Settings, Plan], bool]
    run: Callable[[Context, H, gitops.MirrorShape, Plan], int]


def _repack_due(shape: gitops.MirrorShape, settings: Settings, plan: Plan) -> bool:
    packs = 1 if plan.forced else allowed_packs(settings, shape.pack_bytes)
    loose = 0 if plan.forced else settings.maintenance_max_loose_objects
    return shape.packs > packs or shape.loose_objects > loose


def _repack(context: Context, fetch: FetchHold, shape: gitops.MirrorShape, plan: Plan) -> int:
    """Roll packs and loose objects up: geometrically, or by traversal when :func:`rolls_up_all` says so."""
    repack = gitops.repack_all_keeping if rolls_up_all(shape, forced=plan.forced) else gitops.repack_geometric
    return repack(context.layout.mirror(fetch.key), context.git, _limits(context.settings)).peak_rss_bytes


def _pack_refs_due(shape: gitops.MirrorShape, settings: Settings, plan: Plan) -> bool:
    return shape.loose_refs > (0 if plan.forced else settings.maintenance_max_loose_refs)


def _pack_refs(context: Context, fetch: FetchHold, shape: gitops.MirrorShape, plan: Plan) -> int:
    """Move the loose refs into ``packed-refs``."""
    return gitops.pack_refs(context.layout.mirror(fetch.key), context.git, _limits(context.settings)).peak_rss_bytes


def _check_graph(context: Context, key: str) -> bool:
    """Under the fetch hold: verify a commit-graph a restore kept (:func:`gitops.verify_commit_graph`) before any
    task may rewrite it from its own entries; a graph that lies is dropped and reported."""
    mirror = context.layout.mirror(key)
    if gitops.verify_commit_graph(mirror, context.git, _limits(context.settings)):
        return True
    row = context.index.get(key)
    url = row.url if row is not None else key
    context.events.cold_problem("trust the commit-graph restored with", url, "it does not match the commits")
    return False


def _graph_due(shape: gitops.MirrorShape, settings: Settings, plan: Plan) -> bool:
    return graph_due(shape, forced=plan.forced, repacked="repack" in plan.done)


def _write_graph(context: Context, fetch: FetchHold, shape: gitops.MirrorShape, plan: Plan) -> int:
    """Write the commit-graph, one file libgit2 reads."""
    mirror = context.layout.mirror(fetch.key)
    return gitops.write_commit_graph(mirror, context.git, _limits(context.settings)).peak_rss_bytes


def _prune_due(shape: gitops.MirrorShape, settings: Settings, plan: Plan) -> bool:
    return plan.prune  # never due by itself: it is asked for


def _prune(context: Context, exclusive: ExclusiveHold, shape: gitops.MirrorShape, plan: Plan) -> int:
    """Sweep, repack fully dropping unreachable objects older than the grace period, and renew a stale graph."""
    mirror = context.layout.mirror(exclusive.key)
    limits = _limits(context.settings)
    gitops.sweep_mirror(mirror)
    peak = gitops.repack_pruning(mirror, context.git, limits, context.settings.maintenance_grace).peak_rss_bytes
    if graph_due(gitops.mirror_shape(mirror), forced=True):
        peak = max(peak, gitops.write_commit_graph(mirror, context.git, limits).peak_rss_bytes)
    return peak


TASKS: tuple[Task[FetchHold] | Task[ExclusiveHold], ...] = (
    Task("repack", FetchHold, _repack_due, _repack),
    Task("pack-refs", FetchHold, _pack_refs_due, _pack_refs),
    Task("commit-graph", FetchHold, _graph_due, _write_graph),
    Task("prune", ExclusiveHold, _prune_due, _prune),
)
"""The maintenance tasks, in the order they run (a sweep of debris opens the work under the fetch hold)."""


def _needs(task: Task[Any], hold: type[H]) -> TypeGuard[Task[H]]:
    return task.hold is hold


def _rows(hold: type[H]) -> list[Task[H]]:
    """The rows of :data:`TASKS` whose body needs ``hold``, in order."""
    return [task for task in TASKS if _needs(task, hold)]


def due_tasks(shape: gitops.MirrorShape, settings: Settings, *, forced: bool) -> list[str]:
    """The maintenance tasks a mirror of this shape needs (the thresholds of ``settings``, or any work at all when
    ``forced``), in the order they run. A stale commit-graph is rewritten only along with a repack (see
    :func:`graph_due`); a missing or unreadable one is due on its own. Pruning is never due by itself."""
    done: list[str] = []
    for task in TASKS:
        if task.due(shape, settings, Plan(forced=forced, done=tuple(done))):
            done.append(task.name)
    return done


# -- running them under their holds ------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What one maintenance found and did, gathered under its holds for the report."""

    before: gitops.MirrorShape
    size_before: int
    after: gitops.MirrorShape
    size_after: int
    tasks: list[str] = field(default_factory=list)
    skipped: str | None = None
    peak: int = 0

    @classmethod
    def measure_before(cls, context: Context, key: str, row: Row | None) -> _Outcome | None:
        """The mirror's shape and size before any work (called under a hold); None when it is not on disk."""
        mirror = context.layout.mirror(key)
        if not mirror.is_dir():
            return None
        before = gitops.mirror_shape(mirror, exact=True)
        size = row.size_bytes if row is not None else gitops.disk_usage(mirror)
        return cls(before=before, size_before=size, after=before, size_after=size)

    def measure_after(self, context: Context, key: str) -> None:
        """The mirror's shape and size after the work (called under a hold)."""
        mirror = context.layout.mirror(key)
        self.after = gitops.mirror_shape(mirror, exact=True)
        self.size_after = gitops.disk_usage(mirror)

    def report(self, url: str, key: str, seconds: float) -> MaintenanceReport:
        return MaintenanceReport(
            url=url,
            key=key,
            tasks=tuple(self.tasks),
            skipped=self.skipped,
            packs_before=self.before.packs,
            packs_after=self.after.packs,
            loose_objects_before=self.before.loose_objects,
            loose_objects_after=self.after.loose_objects,
            loose_refs_before=self.before.loose_refs,
            loose_refs_after=self.after.loose_refs,
            size_before=self.size_before,
            size_after=self.size_after,
            seconds=seconds,
            peak_rss_bytes=self.peak,
        )


def _run_due(context: Context, hold: H, plan: Plan, outcome: _Outcome) -> bool:
    """Run the rows that need ``hold`` and are due, in order; each is judged on the shape the one before left.

    Returns whether any ran.
    """
    mirror = context.layout.mirror(hold.key)
    shape = gitops.mirror_shape(mirror, exact=plan.forced)
    ran = False
    for task in _rows(type(hold)):
        if task.due(shape, context.settings, dataclasses.replace(plan, done=tuple(outcome.tasks))):
            outcome.peak = max(outcome.peak, task.run(context, hold, shape, plan))
            outcome.tasks.append(task.name)
            ran = True
            shape = gitops.mirror_shape(mirror, exact=plan.forced)  # a repack may leave the graph stale
    return ran


def _maintain_fetching(context: Context, fetch: FetchHold, plan: Plan, outcome: _Outcome) -> None:
    """The work under the fetch hold: sweep the debris of killed git processes, then the tasks due."""
    mirror = context.layout.mirror(fetch.key)
    if gitops.sweep_mirror(mirror):
        outcome.tasks.append("sweep")
    if gitops.graph_unverified(mirror) and context.git.git is not None:
        _check_graph(context, fetch.key)  # a check of data from the store, not upkeep: not a task of the report
    _run_due(context, fetch, plan, outcome)
    if outcome.tasks:
        _record_size(context, fetch.key)


def _maintain_exclusive(context: Context, exclusive: ExclusiveHold, plan: Plan, outcome: _Outcome) -> None:
    """The work under the exclusive hold (no reader, no worktree): the tasks due that need it."""
    if context.layout.mirror(exclusive.key).is_dir() and _run_due(context, exclusive, plan, outcome):
        _record_size(context, exclusive.key)
        outcome.measure_after(context, exclusive.key)


def maintain_one(
    context: Context, key: str, url: str, *, wait: bool, forced: bool, prune: bool = False
) -> MaintenanceReport | None:
    """Maintain the mirror of ``key``; None when it is not on disk.

    Under a shared hold and the fetch hold (waited for up to ``lock_timeout`` with ``wait``, else only tried):
    sweep debris of killed git processes, verify a commit-graph restored from an artifact (before any task could
    rewrite it from its own entries; a lying one is dropped), then the tasks of :data:`TASKS` due under the fetch
    hold (see :func:`due_tasks`). Then, when a task that needs the exclusive hold is due (``prune``: a full repack
    that drops unreachable objects older than ``maintenance_grace``), under the exclusive hold tried without
    waiting (no reader, no worktree). The index gets the new size.

    Raises:
        GitError: a git command failed (the mirror still holds every object it had).
        LockTimeoutError: ``wait`` and another worker held the repository longer than ``lock_timeout``.
    """
    started = time.monotonic()
    plan = Plan(forced=forced, prune=prune)
    timeout = context.settings.lock_timeout if wait else 0.0
    row = context.index.get(key)
    shared = context.layout.hold_shared(key, timeout)
    if shared is None:
        _busy(context, url, wait)
        return None
    with shared:
        outcome = _Outcome.measure_before(context, key, row)
        if outcome is None:
            return None
        fetch = context.layout.hold_fetch(key, timeout)
        if fetch is None:
            _busy(context, url, wait)
            outcome.skipped = "a fetch or another maintenance of this mirror is running"
        else:
            with fetch:
                _maintain_fetching(context, fetch, plan, outcome)
        outcome.measure_after(context, key)
    if any(task.due(outcome.after, context.settings, plan) for task in _rows(ExclusiveHold)):
        exclusive = context.layout.try_exclusive(key)
        if exclusive is None:
            outcome.skipped = "in use: pruning waits until no reader or worktree holds the mirror"
        else:
            with exclusive:
                _maintain_exclusive(context, exclusive, plan, outcome)
    report = outcome.report(url, key, time.monotonic() - started)
    if report.tasks:
        context.events.maintained(report)
    return report


def _busy(context: Context, url: str, wait: bool) -> None:
    """A hold maintenance needs could not be had: an error when it was waited for, else nothing (it skips)."""
    if wait:
        raise LockTimeoutError(url, context.settings.lock_timeout, "maintenance")


def _record_size(context: Context, key: str) -> None:
    """Give the index the mirror's new size, so the budget sees what maintenance freed (or used)."""
    if context.index.get(key) is not None:
        context.index.set_size(key, gitops.disk_usage(context.layout.mirror(key)))


def verify_restored_graph(context: Context, key: str, url: str, *, wait: bool = True) -> bool | None:
    """Check the commit-graph a restore kept from its artifact (see :func:`gitops.verify_commit_graph`), under a
    shared hold and the fetch hold, whatever the maintenance mode; run in the background after a restore, and by
    the first fetch after it if that never finished. None when there was nothing to check (no mark, no mirror,
    the holds not had within ``lock_timeout``, or at once without ``wait``: the mark stays for the next fetch).
    """
    if context.git.git is None:
        return None
    timeout = context.settings.lock_timeout if wait else 0.0
    shared = context.layout.hold_shared(key, timeout)
    if shared is None:
        return None
    with shared:
        if not gitops.graph_unverified(context.layout.mirror(key)):
            return None
        fetch = context.layout.hold_fetch(key, timeout)
        if fetch is None:
            return None
        with fetch:
            if not gitops.graph_unverified(context.layout.mirror(key)):
                return None
            return _check_graph(context, key)


def due_after_fetch(context: Context, key: str) -> bool:
    """Whether :func:`after_fetch` would maintain the mirror of ``key`` now (a few directory listings)."""
    if context.settings.maintenance.mode != "auto" or context.git.git is None:
        return False  # off, or no git command line tool to maintain with (libgit2 cannot repack)
    try:
        shape = gitops.mirror_shape(context.layout.mirror(key))
    except FileNotFoundError:
        return False  # evicted meanwhile
    return bool(due_tasks(shape, context.settings, forced=False))


def after_fetch(context: Context, key: str, url: str) -> MaintenanceReport | None:
    """Automatic maintenance, run by the caller that fetched once it has released the mirror.

    A few directory listings decide (:func:`gitops.mirror_shape`); only when a threshold is crossed does it
    maintain, and only if the mirror's locks are free now (it never waits, and never holds the budget lock).
    Failures are logged, never raised: the caller's checkout already succeeded. A commit-graph restored from an
    artifact and not yet verified is verified first (see :func:`maintain_one`).
    """
    if not due_after_fetch(context, key):
        return None
    try:
        return maintain_one(context, key, url, wait=False, forced=False)
    except (GitError, OSError) as exc:
        context.events.maintenance_failed(url, exc)
        return None


def maintain_all(context: Context, *, prune: bool) -> list[MaintenanceReport]:
    """:func:`maintain_one` of every cached repository, waiting for each; a failure is reported, never raised."""
    reports = []
    for row in context.index.rows():
        try:
            report = maintain_one(context, row.key, row.url, wait=True, forced=True, prune=prune)
        except (GitError, LockTimeoutError) as exc:
            context.events.maintenance_failed(row.url, exc)
            report = failed_report(context, row, exc)
        if report is not None:
            reports.append(report)
    return reports


def failed_report(context: Context, row: Row, error: Exception) -> MaintenanceReport:
    """The report of a maintenance that failed (the mirror is as it was: every object kept)."""
    shape = gitops.MirrorShape(0, 0, 0, 0, 0, "missing", 0)
    with contextlib.suppress(FileNotFoundError):
        shape = gitops.mirror_shape(context.layout.mirror(row.key), exact=True)
    outcome = _Outcome(before=shape, size_before=row.size_bytes, after=shape, size_after=row.size_bytes)
    outcome.skipped = f"failed: {error}"
    return outcome.report(row.url, row.key, 0.0)
