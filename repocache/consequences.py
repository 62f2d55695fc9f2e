"""What follows each act, written once beside the act: every path that fetches, clones or restores comes through here.

A fetch is recorded under its fetch hold (:meth:`Consequences.fetched`: the index row with its size, when it
began and whether it moved refs, and the :class:`~repocache.events.FetchEvent`) and hands back a
:class:`Fetched`; whoever made the fetch settles it once it has released its holds on the repository
(:meth:`Consequences.settle`): the republish when due (``cold_publish="always"``), then the automatic
maintenance check. A mirror put into place by a miss is recorded under its exclusive hold
(:meth:`Consequences.materialized`): a clone seeds the adaptive schedule and is published (``cold_publish``), a
restore remembers the artifact it came from.

The paths that fetch are the foreground hit (:func:`repocache.refresh.refresh`, for ``checkout``, ``worktree``,
``ensure``, ``refresh()`` and the fetch after a restore alike) and the background pool
(:class:`repocache.refresh.Background`); a new one calls the same two methods, so it cannot miss a rule, and a
new rule added here reaches every path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from repocache import gitops, maintenance
from repocache.cold.manifest import Manifest
from repocache.cold_tier import Claim, ColdTier
from repocache.context import Context
from repocache.events import Source
from repocache.jobs import Jobs
from repocache.keys import RepoURL
from repocache.layout import ExclusiveHold, FetchHold
from repocache.lifecycle import Lifecycle
from repocache.models import MaintenanceReport

__all__ = ["Consequences", "Fetched"]


@dataclass(frozen=True)
class Fetched:
    """A fetch that succeeded; what follows it once its caller lets the repository go is :meth:`Consequences.settle`."""

    url: RepoURL


class Consequences:
    """The consequences of the acts of one cache: after a fetch, a clone and a restore.

    Args:
        context: the cache's shared context.
        cold: the cache's cold tier, if it has a cold store.
        lifecycle: the cache's state; nothing is started for a cache that is closed.
    """

    def __init__(self, context: Context, cold: ColdTier | None, lifecycle: Lifecycle) -> None:
        self._context = context
        self._cold = cold
        self._lifecycle = lifecycle
        self._checks = Jobs("repocache-graph", daemon=True)  # an unfinished check is redone by the next fetch

    def fetched(
        self,
        fetch: FetchHold,
        *,
        started: float,
        moved: bool,
        seconds: float,
        previous_size: int,
    ) -> Fetched:
        """Record a successful fetch of the held mirror: its new size, when it began, whether it moved refs.

        Returns:
            What still follows the fetch, for :meth:`settle` once the caller has released the repository.
        """
        context = self._context
        size = gitops.disk_usage(context.layout.mirror(fetch.key))
        context.index.fetched(fetch.key, size, time.time(), started=started, changed=started if moved else None)
        context.events.fetched(fetch.url.url, fetch.key, seconds, size, size - previous_size)
        return Fetched(fetch.url)

    def settle(self, fetched: Fetched | None) -> MaintenanceReport | None:
        """What follows a fetch once its caller holds the repository no more: republish when due, then maintain.

        Both are decided by a few reads and only then act; neither raises (the caller's work succeeded already).

        Returns:
            The report of the automatic maintenance, when it ran.
        """
        if fetched is None or not self._lifecycle.is_open:
            return None
        key = fetched.url.key
        if gitops.graph_unverified(self._context.layout.mirror(key)) and not maintenance.due_after_fetch(
            self._context, key
        ):
            self._check_graph(fetched.url)  # else the maintenance below checks it first, under the fetch hold
        if self._cold is not None:
            self._cold.after_fetch(fetched.url)
        return maintenance.after_fetch(self._context, fetched.url.key, fetched.url.url)

    def _check_graph(self, parsed: RepoURL) -> None:
        """Verify a commit-graph a restore kept from its artifact, on a background thread, while the mirror is
        already handed out (:func:`maintenance.verify_restored_graph`).

        Until the check has compared every entry with its commit, the graph is trusted as the artifact's refs
        are: as data from the store, for the seconds the check takes. A graph that lies is dropped. The mark
        stays on disk until the check is done, so a process that ends first leaves it to the next fetch, here or
        on another cache of the same root; :meth:`close` waits for the checks running.
        """

        def job() -> None:
            try:
                maintenance.verify_restored_graph(self._context, parsed.key, parsed.url)
            except Exception as exc:  # a background job has nobody to raise to: report it
                self._context.events.cold_problem("verify the commit-graph restored with", parsed.url, exc)

        self._checks.start(parsed.key, job)

    def close(self) -> None:
        """Wait for the checks of restored commit-graphs running (called when the cache closes)."""
        self._checks.wait()

    def materialized(
        self,
        hold: ExclusiveHold,
        parsed: RepoURL,
        source: Source,
        *,
        started: float,
        manifest: Manifest | None,
        claim: Claim | None,
    ) -> None:
        """Record a mirror that a miss put into place, still under its exclusive hold.

        A clone begun at ``started`` brought the repository up to date: its newest commit's time seeds the
        adaptive schedule, and it is published when ``cold_publish`` says so (releasing the fleet's clone lease
        ``claim``); a restore remembers the artifact ``manifest`` it came from.
        """
        if source is Source.CLONE:
            newest = gitops.newest_commit_time(self._context.layout.mirror(hold.key))
            # A change seen by an earlier life of the repository (before an eviction) is kept if newer.
            self._context.index.cloned(hold.key, started, None if newest is None else min(newest, started))
        if self._cold is not None:
            self._cold.materialized(parsed, source, manifest, claim)
