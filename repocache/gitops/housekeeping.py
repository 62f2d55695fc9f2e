"""Housekeeping: the maintenance git runs (repacks, packed refs, the commit-graph) with bounded memory.

Each returns a :class:`GitRun` (its time and peak memory); which to run, and under which lock, is decided by
:mod:`repocache.maintenance`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from repocache.errors import GitError
from repocache.gitops.mirror import GRAPH_UNVERIFIED
from repocache.gitops.run import GitOptions, MaintenanceLimits, git_environment, kill_git, spawn_git

logger = logging.getLogger("repocache")


@dataclass(frozen=True)
class GitRun:
    """One maintenance git process: how long it took and the peak resident memory of its process tree."""

    seconds: float
    peak_rss_bytes: int


def run_maintenance_git(path: Path, args: list[str], options: GitOptions, limits: MaintenanceLimits) -> GitRun:
    """Run ``git args`` in the mirror at ``path`` with bounded memory; returns its time and peak memory.

    Raises:
        GitError: git failed (the message is its last lines of standard error).
    """
    if options.git is None:
        raise GitError(str(path), "maintenance needs the git command line tool, which was not found")
    started = time.monotonic()
    process = spawn_git(options.git, args, path, git_environment(options, limits=limits))
    assert process.stderr is not None
    try:
        error = process.stderr.read()
        # wait4 gives the resource usage of git and of the children it waited for (pack-objects).
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        kill_git(process)
        raise
    finally:
        process.stderr.close()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        detail = error.decode("utf-8", "replace").strip().splitlines()[-4:]
        raise GitError(str(path), f"git {args[0]} failed: {'; '.join(detail) or process.returncode}")
    return GitRun(seconds=seconds, peak_rss_bytes=int(usage.ru_maxrss) * 1024)


def repack_geometric(path: Path, options: GitOptions, limits: MaintenanceLimits) -> GitRun:
    """Roll small packs and loose objects into packs that form a geometric progression (factor 2).

    Every object of the packs rolled up (reachable or not) and every loose object goes into the new pack before
    the old ones are deleted, so nothing is ever lost and no unreachable object is pruned.

    A partial mirror (one with promisor packs) is repacked whole instead (:func:`repack_all_keeping`): git 2.39
    cannot repack geometrically where a promisor remote is configured ("cannot use internal rev list with
    --stdin-packs"), while ``-a`` repacks the promisor packs' objects into one promisor pack.
    """
    if has_promisor_packs(path):
        return repack_all_keeping(path, options, limits)
    return run_maintenance_git(
        path, ["repack", "--geometric=2", "-d", "-q", "--no-write-bitmap-index"], options, limits
    )


def has_promisor_packs(path: Path) -> bool:
    """Whether the mirror at ``path`` is partial: it holds promisor packs (``*.promisor``) or its config names a
    promisor remote (the line :func:`repocache.gitops.mirror.mirror_config` writes for a partial mirror)."""
    try:
        with os.scandir(path / "objects" / "pack") as entries:
            if any(entry.name.endswith(".promisor") for entry in entries):
                return True
        with open(path / "config", "rb") as config:
            return b"\tpromisor = true\n" in config.read(1 << 16)
    except OSError:
        return False


def repack_all_keeping(path: Path, options: GitOptions, limits: MaintenanceLimits) -> GitRun:
    """Repack every object into one pack, unreachable ones included (``-a -d -k``), with deltas found afresh.

    A geometric roll-up reuses objects as the packs store them, and libgit2's fetched packs carry whole copies of
    the delta bases it appended to complete thin packs: repacking them by traversal (which knows paths, so finds
    good deltas) brings the mirror back to a fresh clone's size. Objects no ref reaches are appended, not dropped.
    """
    args = ["repack", "-a", "-d", "-k", "-q", "--no-write-bitmap-index"]
    return run_maintenance_git(path, args, options, limits)


def repack_pruning(path: Path, options: GitOptions, limits: MaintenanceLimits, grace: float) -> GitRun:
    """Repack everything into one pack plus a cruft pack; unreachable objects older than ``grace`` seconds go.

    Only safe while nobody reads the mirror (a worktree may need an unreachable commit): the caller holds the
    repository's exclusive lock.
    """
    expiration = f"{int(grace)}.seconds.ago" if grace > 0 else "now"
    args = ["repack", "-a", "-d", "-q", "--cruft", f"--cruft-expiration={expiration}", "--no-write-bitmap-index"]
    return run_maintenance_git(path, args, options, limits)


def pack_refs(path: Path, options: GitOptions, limits: MaintenanceLimits) -> GitRun:
    """Move loose refs into ``packed-refs`` (written whole, then the loose files are deleted)."""
    return run_maintenance_git(path, ["pack-refs", "--all", "--prune"], options, limits)


def verify_commit_graph(path: Path, options: GitOptions, limits: MaintenanceLimits) -> bool:
    """Check the commit-graph of an artifact against the commits it describes: True when every entry holds.

    ``git commit-graph verify`` parses each commit from its object, without the graph, and compares its root tree,
    parents, commit date and generation with the graph's entry (about the cost of writing the graph). On success
    the :data:`~repocache.gitops.mirror.GRAPH_UNVERIFIED` mark is removed; on failure the graph and the mark are
    deleted, before anything rewrites the graph: ``git commit-graph write`` would copy the entries of the graph
    it finds. Nothing is done (True) when the mirror has no mark.

    Raises:
        GitError: git could not be run at all (no git command line tool).
    """
    info = path / "objects" / "info"
    mark = info / GRAPH_UNVERIFIED
    if not mark.exists():
        return True
    graph = info / "commit-graph"
    try:
        verified = os.stat(graph)
    except FileNotFoundError:
        mark.unlink(missing_ok=True)
        return True
    try:
        run_maintenance_git(path, ["commit-graph", "verify", "--no-progress"], options, limits)
        good = True
    except GitError as exc:
        if options.git is None:
            raise
        logger.warning("the commit-graph of %s does not match its commits (%s); dropping it", path, exc)
        good = False
    with contextlib.suppress(FileNotFoundError):
        current = os.stat(graph)
        # Dropped only if it is the file just verified (maintenance under the fetch hold never replaces it
        # meanwhile, but a caller without that hold might).
        if not good and (current.st_ino, current.st_dev) == (verified.st_ino, verified.st_dev):
            graph.unlink()
    mark.unlink(missing_ok=True)
    return good


def write_commit_graph(path: Path, options: GitOptions, limits: MaintenanceLimits) -> GitRun:
    """Write ``objects/info/commit-graph`` for every reachable commit, in the format libgit2 and git both read.

    One file (libgit2 does not read split chains) with generation numbers v1 (libgit2 rejects a graph that has
    the generation data v2 chunks git writes by default); any split chain is replaced.
    """
    run = run_maintenance_git(path, ["commit-graph", "write", "--reachable", "--no-progress"], options, limits)
    # git reads the single file first, so a chain left by someone else's split write is dead weight now.
    shutil.rmtree(path / "objects" / "info" / "commit-graphs", ignore_errors=True)
    return run
