"""Git: the only package that runs git or imports pygit2 for git operations, and maps their errors.

Its rooms:

- :mod:`~repocache.gitops.run`: finding git, the one environment every git process gets, spawning and killing it,
  its progress and its error lines;
- :mod:`~repocache.gitops.mirror`: a mirror on disk (validate, describe, size, ref tips, shape, config, sweep);
- :mod:`~repocache.gitops.transfer`: clone and fetch, with the git CLI or libgit2;
- :mod:`~repocache.gitops.partial`: partial mirrors (what a filter left out, fetching it, typed reads);
- :mod:`~repocache.gitops.worktree`: resolving a ref and checking a commit out;
- :mod:`~repocache.gitops.housekeeping`: the maintenance git runs (repacks, packed refs, commit-graph);
- :mod:`~repocache.gitops.probe`: whether an upstream answers (one bounded ``ls-remote``).

Transports are restricted with ``GIT_ALLOW_PROTOCOL``, so ``ext::`` and ``fd::`` are never reachable; credentials
from the URL never reach the disk. Every failure leaves as a :class:`~repocache.errors.GitError` subclass with a
scrubbed message.
"""

from repocache.gitops.housekeeping import (
    GitRun,
    pack_refs,
    repack_all_keeping,
    repack_geometric,
    repack_pruning,
    run_maintenance_git,
    verify_commit_graph,
    write_commit_graph,
)
from repocache.gitops.mirror import (
    GRAPH_UNVERIFIED,
    MirrorShape,
    commit_graph_state,
    describe_mirror,
    disk_usage,
    ensure_mirror_config,
    graph_unverified,
    mirror_config,
    mirror_shape,
    newest_commit_time,
    open_repository,
    ref_tips,
    refs_digest,
    sanitize_restored_mirror,
    sweep_mirror,
    validate_mirror,
)
from repocache.gitops.partial import absent_objects, fetch_missing_of, fetch_objects, missing_for, read_object
from repocache.gitops.probe import probe_upstream
from repocache.gitops.run import GitOptions, MaintenanceLimits, ProgressCallback, find_git
from repocache.gitops.transfer import clone_mirror, fetch_mirror, fetch_reports_moves, require_cli_for_filter
from repocache.gitops.worktree import make_worktree, resolve_commit

__all__ = [
    "GRAPH_UNVERIFIED",
    "GitOptions",
    "GitRun",
    "MaintenanceLimits",
    "MirrorShape",
    "ProgressCallback",
    "absent_objects",
    "clone_mirror",
    "commit_graph_state",
    "describe_mirror",
    "disk_usage",
    "graph_unverified",
    "ensure_mirror_config",
    "fetch_mirror",
    "fetch_missing_of",
    "fetch_objects",
    "fetch_reports_moves",
    "find_git",
    "make_worktree",
    "mirror_config",
    "mirror_shape",
    "missing_for",
    "newest_commit_time",
    "open_repository",
    "pack_refs",
    "probe_upstream",
    "read_object",
    "ref_tips",
    "refs_digest",
    "repack_all_keeping",
    "repack_geometric",
    "repack_pruning",
    "require_cli_for_filter",
    "resolve_commit",
    "run_maintenance_git",
    "sanitize_restored_mirror",
    "sweep_mirror",
    "validate_mirror",
    "verify_commit_graph",
    "write_commit_graph",
]
