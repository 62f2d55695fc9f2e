"""The cache's use of a cold store: manifest lookup, restore into staging, offload of evicted mirrors, publishing
for a fleet, the fleet's one clone per repository, pruning.

The store itself (:class:`~repocache.cold.ColdStore`) only keeps artifacts; this module decides when to use it,
and turns every failure of the store into "carry on without it" (a clone instead of a restore, an eviction that
is not uploaded, an independent clone instead of waiting for another host), never into a failed checkout.

Publishing (``cold_publish="clone"`` or ``"always"``): after a clone, and with ``"always"`` after a fetch once the
stored artifact is older than ``cold_publish_after``, the mirror is uploaded on a background thread of this process.
The upload holds the repository *shared* (a reader: never evicted under it, never blocking another reader or a
miss of any other repository) and never the budget lock; for the few milliseconds it takes to hard-link a snapshot
of the mirror it also holds the fetch lock, so the artifact is one consistent state of the mirror while fetches
go on. The artifact streams from ``pack_mirror`` straight into the store (:meth:`FleetStore.put_stream`).

One clone for a fleet: when publishing is on and the store offers leases, a miss that finds no artifact takes the
key's lease before cloning; a host that finds the lease held waits, watching the lease (one request a round, at most
one a second once grown), until it is released (then it restores the artifact, or takes the lease and clones when
none was committed) or expires (then it takes it and clones). The holder renews its lease while it
clones and uploads, and releases it after the upload committed or failed. Every wait is bounded by
``lock_timeout``; a store without leases, or one that fails, means independent clones, never a stuck host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from repocache import gitops, maintenance
from repocache.cold.artifact import is_leftover, pack_mirror, unpack_artifact
from repocache.cold.manifest import Manifest, checked_manifest
from repocache.cold.store import ArtifactWriter, ColdStore, FleetStore, Lease
from repocache.context import Context
from repocache.counters import Counter
from repocache.errors import CloneError, ColdStoreError, GitError, LockTimeoutError
from repocache.events import Source, warn_caller
from repocache.index import Row
from repocache.jobs import Jobs
from repocache.keys import RepoURL, filter_of_key
from repocache.layout import ExclusiveHold, remove
from repocache.models import Progress

__all__ = [
    "CLAIM_WAIT_FIRST",
    "CLAIM_WAIT_LONGEST",
    "LEASE_TTL",
    "LOOKUP_AGAIN_FIRST",
    "LOOKUP_AGAIN_MAX",
    "Claim",
    "ColdTier",
    "Lookup",
]

_PRUNE_EVERY = 3600.0  # seconds between automatic prunes (per process) when cold_retention is set
LEASE_TTL = 60.0
"""The default of ``cold_lease_ttl``: seconds a clone lease lasts unless renewed, how long the fleet waits for a
host that died while cloning."""
CLAIM_WAIT_FIRST = 0.05
"""Seconds a host waiting for another host's clone sleeps before its first look at the holder's lease; each later
round is half as long again, up to :data:`CLAIM_WAIT_LONGEST`."""
CLAIM_WAIT_LONGEST = 1.0
"""The most seconds between two looks of a host waiting for another's clone: once grown (after 3.5 s), one store
request a second per waiting miss while the holder's lease is unchanged, and the artifact is restored within about
this long of its commit."""
_EXPIRY_MARGIN = 0.01  # seconds past a lease's expiry at which a waiter looks again, to find it expired
LOOKUP_AGAIN_FIRST = 1.0
"""Seconds a miss waiting for room keeps what it learnt from the store before it looks again (doubling each time)."""
LOOKUP_AGAIN_MAX = 30.0
"""The most seconds a miss waiting for room goes between two looks at the store."""


class Claim:
    """A held clone lease, renewed on a helper thread every third of ``cold_lease_ttl`` until :meth:`release` (which
    is idempotent)."""

    def __init__(self, store: FleetStore, lease: Lease, context: Context, url: str) -> None:
        self._ttl = context.settings.cold_lease_ttl
        self._store = store
        self.lease = lease
        self._context = context
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="repocache-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                renewed = self._store.renew_lease(self.lease, self._ttl)
            except ColdStoreError as exc:
                self._context.events.cold_problem("renew the clone lease of", self._url, exc)
                continue
            if renewed is None:
                self._context.events.cold_problem("renew the clone lease of", self._url, "another host took it over")
                return
            self.lease = renewed

    def release(self) -> None:
        """Stop renewing and give the lease up; failures are reported (the lease then expires by itself)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self._store.release_lease(self.lease)
        except ColdStoreError as exc:
            self._context.events.cold_problem("release the clone lease of", self._url, exc)


class Lookup:
    """What one miss learnt from the store (the manifest, the clone lease it holds), kept across the rounds of its
    wait for room so that a round costs no store request.

    The first round looks the repository up (and takes the fleet's clone lease when no artifact is found); later
    rounds reuse that answer, looking again only once :data:`LOOKUP_AGAIN_FIRST` seconds have passed, then after
    twice as long each time up to :data:`LOOKUP_AGAIN_MAX`. A held lease is kept (renewed by its :class:`Claim`
    every third of ``cold_lease_ttl``) until the miss clones, gives up or finds an artifact.

    Attributes:
        manifest: the artifact found (None: none, or not looked up yet).
        claim: the clone lease held, if any.
    """

    def __init__(self) -> None:
        self.manifest: Manifest | None = None
        self.claim: Claim | None = None
        self._looked: float | None = None
        self._again = LOOKUP_AGAIN_FIRST

    def due(self, now: float) -> bool:
        """Whether the store should be asked again at ``now`` (monotonic seconds); True for the first round."""
        return self._looked is None or now - self._looked >= self._again

    def looked(self, now: float, manifest: Manifest | None, claim: Claim | None) -> None:
        """Remember the store's answer of ``now``; the next look is due twice as late as the last one."""
        if self._looked is not None:
            self._again = min(self._again * 2, LOOKUP_AGAIN_MAX)
        self._looked = now
        self.manifest, self.claim = manifest, claim

    def hand_on(self) -> Claim | None:
        """The held lease, no longer this lookup's to release (the miss that used it releases it after publishing)."""
        claim, self.claim = self.claim, None
        return claim

    def release(self) -> None:
        """Give the held lease up (idempotent); what was learnt is forgotten."""
        claim, self.claim = self.claim, None
        self.manifest, self._looked = None, None
        if claim is not None:
            claim.release()


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC or EDQUOT error in ``exc`` or its causes, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class ColdTier:
    """One cache's use of one :class:`ColdStore`."""

    def __init__(self, context: Context, store: ColdStore) -> None:
        self._context = context
        self.store = store
        self._last_prune = 0.0
        self._fleet: FleetStore | None = store if isinstance(store, FleetStore) else None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._jobs = Jobs("repocache-publish", daemon=False)  # the interpreter lets an upload finish at exit

    @property
    def publishing(self) -> bool:
        """Whether mirrors are published besides evictions (``cold_publish`` is not ``"off"``)."""
        return self._context.settings.cold_publish != "off"

    def entries(self) -> list[Manifest]:
        """The manifests in the store (one per repository), newest first.

        Raises:
            ColdStoreError: the store cannot be listed.
        """
        return sorted(self.store.list(), key=lambda m: m.created, reverse=True)

    def prune(self, *, older_than: float | None, keep_bytes: int | None) -> list[Manifest]:
        """Delete artifacts older than ``older_than`` seconds, then the oldest while over ``keep_bytes``."""
        deleted = self.store.prune(older_than=older_than, keep_bytes=keep_bytes)
        for manifest in deleted:
            self._context.index.set_in_cold_store(manifest.key, manifest.url, False)
            self._context.index.forget_published(manifest.key)
        self._last_prune = time.monotonic()
        return deleted

    def manifest(self, parsed: RepoURL) -> Manifest | None:
        """The store's manifest for ``parsed``, or None (also when the store cannot be reached)."""
        try:
            manifest = self.store.get_manifest(parsed.key)
        except ColdStoreError as exc:
            self._context.events.cold_problem("look up", parsed.url, f"{exc}; cloning instead")
            return None
        if manifest is not None and manifest.url != parsed.url:
            self._context.events.cold_problem("use the artifact of", parsed.url, f"it names {manifest.url}")
            return None
        if manifest is not None:
            try:
                return checked_manifest(self.store, manifest)
            except ColdStoreError as exc:  # a manifest is a hint from a store others write: check it first
                self._context.events.restore_unusable(parsed.url, exc)
                warn_caller(f"cold store artifact of {parsed.url} is unusable ({exc}); cloning")
                return None
        return manifest

    def restore(
        self,
        hold: ExclusiveHold,
        parsed: RepoURL,
        manifest: Manifest,
        staging: Path,
        progress: gitops.ProgressCallback | None,
        *,
        retry: bool = True,
    ) -> bool:
        """Unpack the artifact into ``staging`` and validate it; False (reported once) when it is unusable.

        Raises:
            CloneError: the disk filled up (the artifact is fine, and a clone would fill it the same way).
        """
        if progress is not None:
            progress(Progress(parsed.url, "restore", "downloading", 0, 0, manifest.size_bytes))
        try:
            with self.store.open_artifact(manifest) as artifact:
                unpack_artifact(
                    artifact,
                    staging,
                    expected_sha256=manifest.sha256,
                    compression=manifest.compression,
                    expected_size=manifest.size_bytes,
                    max_bytes=max(manifest.mirror_bytes * 4, 1 << 20),
                )
            # An artifact is data, never configuration. Its commit-graph is kept only where git can verify it.
            gitops.sanitize_restored_mirror(staging, parsed, keep_commit_graph=self._context.git.git is not None)
            problem = gitops.validate_mirror(staging)
            if problem is None and manifest.refs_sha256 not in (None, gitops.refs_digest(staging)):
                problem = "has other refs than its manifest records"
            if problem is not None:
                raise ColdStoreError(f"the restored mirror {problem}")
        except (ColdStoreError, OSError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            full = _disk_full(exc)
            if full is not None:
                detail = f"cannot restore from the cold store into {self._context.layout.root}: {full.strerror}"
                raise CloneError(parsed.url, detail) from None
            newer = self.manifest(parsed) if retry else None
            if newer is not None and newer.generation != manifest.generation:
                # Another host uploaded a newer artifact meanwhile and the old one was deleted: use the new one.
                return self.restore(hold, parsed, newer, staging, progress, retry=False)
            self._context.index.count(Counter.RESTORE_ERRORS)
            self._context.events.restore_unusable(parsed.url, exc)
            warn_caller(f"cold store artifact of {parsed.url} is unusable ({exc}); cloning")
            return False
        # The artifact this mirror came from is in the store: say so, as for a mirror this host offloaded.
        self._context.index.set_in_cold_store(hold.key, parsed.url, True)
        if progress is not None:
            progress(Progress(parsed.url, "restore", "done", 0, 0, manifest.size_bytes))
        return True

    def offload(self, row: Row, mirror: Path) -> None:
        """Upload an evicted mirror before it is deleted; failures are reported, never fatal.

        ``mirror`` is the evicted copy, handed over by the budget (renamed into ``trash/``, owned by the caller,
        never changed meanwhile); this runs outside the budget lock. Skipped when the store holds an artifact this
        root published or restored after the mirror's last fetch (it has every object and ref). The artifact
        streams into the store; only a store that is not a :class:`FleetStore` gets a temporary file packed first.
        """
        context = self._context
        if row.size_bytes < context.settings.cold_min_bytes:
            return
        try:
            if self._current_artifact(row) is not None:
                return
            started = time.perf_counter()
            stored = self._upload(row.url, row.key, mirror, row.size_bytes, time.time(), row.last_fetched)
            if stored is not None:
                context.events.published(row.url, row.key, time.perf_counter() - started, stored.size_bytes, "evict")
        except (ColdStoreError, OSError, ValueError) as exc:
            context.events.cold_problem("offload", row.url, exc)
        self._prune_if_due()

    def _current_artifact(self, row: Row) -> Manifest | None:
        """The store's artifact of ``row`` if this root recorded it and it is not older than the last fetch."""
        recorded = self._context.index.published(row.key)
        if recorded is None or row.last_fetched is None or recorded[0] < row.last_fetched:
            return None
        current = self.store.get_manifest(row.key)
        return current if current is not None and current.generation == recorded[1] else None

    def _upload(
        self, url: str, key: str, mirror: Path, mirror_bytes: int, created: float, fetched: float | None
    ) -> Manifest | None:
        """Pack ``mirror`` (which must not change meanwhile) into the store; the manifest stored, or None when a
        newer artifact was there already. Records it in the index.

        ``fetched`` is when the mirror was last fetched (None: unknown), recorded in the manifest so that a host
        restoring it knows how fresh it is; it is never later than ``created``.
        """
        context = self._context
        compression = context.settings.cold_compression
        ref_count, head = gitops.describe_mirror(mirror)
        refs_sha256 = gitops.refs_digest(mirror)

        def write(out: BinaryIO) -> Manifest:
            sha256, size = pack_mirror(mirror, out, compression=compression)
            return Manifest(
                url=url,
                key=key,
                sha256=sha256,
                size_bytes=size,
                mirror_bytes=mirror_bytes,
                ref_count=ref_count,
                head=head,
                created=created,
                compression=compression,
                fetched=None if fetched is None else min(fetched, created),
                refs_sha256=refs_sha256,
                filter=filter_of_key(key),
            )

        if self._fleet is not None:
            stored = self._fleet.put_stream(key, write, compression=compression, created=created)
        else:
            stored = self._put_through_file(key, write)
        if stored is not None:
            context.index.set_published(key, url, stored.created, stored.generation)
            context.index.set_in_cold_store(key, url, True, size_bytes=mirror_bytes)
        return stored

    def _put_through_file(self, key: str, write: ArtifactWriter) -> Manifest | None:
        """For a store that only offers :meth:`ColdStore.put`: pack into ``staging/<key>.<id>.upload`` first."""
        upload = self._context.layout.new_upload(key)
        try:
            with open(upload, "wb") as out:
                manifest = write(out)
            if not self.store.put(key, manifest, upload):
                return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                upload.unlink()
        return self.store.get_manifest(key)

    def look_up(self, parsed: RepoURL, lookup: Lookup) -> tuple[Manifest | None, Claim | None]:
        """The manifest (or the clone lease) for a miss of ``parsed``, reusing what ``lookup`` learnt while it is
        fresh: the first round of a wait for room asks the store, later ones only when :meth:`Lookup.due`.

        A miss that holds the lease looks only for an artifact (published meanwhile by a host that did not ask
        for the lease): found, the lease is given up and the artifact restored.
        """
        now = time.monotonic()
        if not lookup.due(now):
            return lookup.manifest, lookup.claim
        claim = lookup.claim
        manifest = self.manifest(parsed)
        if manifest is not None and claim is not None:
            lookup.hand_on()
            claim.release()
            claim = None
        elif manifest is None and claim is None:
            manifest, claim = self.claim(parsed)  # one clone for the fleet: clone (holding the lease) or restore
        lookup.looked(now, manifest, claim)
        return manifest, claim

    # -- publishing for a fleet ---------------------------------------------------------------------------------

    def claim(self, parsed: RepoURL) -> tuple[Manifest | None, Claim | None]:
        """For a miss the store has no artifact of: become the fleet's one cloner, or wait for the one cloning.

        The wait watches the holder's lease, one request a round (the store's ``current_lease``, see
        :class:`FleetStore`: on an object store a HEAD of the lease object while it is unchanged), rounds growing from
        :data:`CLAIM_WAIT_FIRST` by half each time up to :data:`CLAIM_WAIT_LONGEST` seconds. Only a change makes it ask
        more: a renewal (every third of the holder's ``cold_lease_ttl``) costs a read of the lease and a manifest lookup
        (an artifact published by a host that did not hold the lease); a release (the holder committed its upload, or
        failed) a manifest lookup, then the artifact is restored or the lease taken. A round never sleeps past the
        lease's expiry, so a dead holder's lease is taken over as it expires. Every wait ends by ``lock_timeout``.

        Returns:
            (manifest, None) when another host published the repository meanwhile: restore it;
            (None, claim) when this host holds the clone lease: clone, then publish (which releases it);
            (None, None) when leases are off, unsupported or failing, or the wait ran out: clone independently.
        """
        context = self._context
        fleet = self._fleet
        if not self.publishing or fleet is None or not fleet.supports_leases:
            return None, None
        started = time.monotonic()
        deadline = started + context.settings.lock_timeout
        pause = CLAIM_WAIT_FIRST
        try:
            lease, seen = self._try_lease(fleet, parsed)
        except ColdStoreError as exc:
            context.events.cold_problem("take the clone lease of", parsed.url, f"{exc}; cloning independently")
            return None, None
        if lease is not None:
            return self._claimed(parsed, lease, waited=None)
        while True:
            if not self._held_by_another(seen):
                # Released (after its holder's upload committed, or failed), expired, or gone: restore or take it.
                manifest = self.manifest(parsed)
                if manifest is not None:
                    context.events.fleet_wait(parsed.url, "restoring what it published", time.monotonic() - started)
                    return manifest, None
                try:
                    lease, seen = self._try_lease(fleet, parsed)
                except ColdStoreError as exc:
                    context.events.cold_problem("take the clone lease of", parsed.url, f"{exc}; cloning independently")
                    return None, None
                if lease is not None:
                    return self._claimed(parsed, lease, waited=time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                context.events.cold_problem(
                    "wait for another host's clone of", parsed.url, "lock_timeout passed; cloning independently"
                )
                return None, None
            wake = min(pause, remaining)
            if seen is not None and self._held_by_another(seen):
                wake = min(wake, seen.expires - time.time() + _EXPIRY_MARGIN)  # look again as it expires
            time.sleep(max(wake, 0.0))
            pause = min(pause * 1.5, CLAIM_WAIT_LONGEST)
            try:
                current = _current_lease(fleet, parsed.key, seen)
            except ColdStoreError as exc:
                context.events.cold_problem("watch the clone lease of", parsed.url, f"{exc}; cloning independently")
                return None, None
            changed = current is not None and (seen is None or current.token != seen.token)
            seen = current
            if changed and self._held_by_another(current):
                # Renewed, or taken by another: look for an artifact published by a host that held no lease.
                manifest = self.manifest(parsed)
                if manifest is not None:
                    context.events.fleet_wait(parsed.url, "restoring what it published", time.monotonic() - started)
                    return manifest, None

    def _try_lease(self, fleet: FleetStore, parsed: RepoURL) -> tuple[Lease | None, Lease | None]:
        """(the lease taken, None), or (None, the lease another holds as read now; None if it just went)."""
        lease = fleet.try_lease(parsed.key, self.holder, self._context.settings.cold_lease_ttl)
        return lease, (None if lease is not None else _current_lease(fleet, parsed.key, None))

    def _held_by_another(self, lease: Lease | None) -> bool:
        """Whether ``lease`` (as read) is another holder's and has not expired."""
        return lease is not None and lease.holder not in ("", self.holder) and lease.expires > time.time()

    def _claimed(self, parsed: RepoURL, lease: Lease, *, waited: float | None) -> tuple[Manifest | None, Claim | None]:
        """The lease was taken: hold it (renewed), unless an artifact was published meanwhile (then restore it)."""
        assert self._fleet is not None
        claim = Claim(self._fleet, lease, self._context, parsed.url)
        manifest = self.manifest(parsed)  # published between our last look and the lease: use it
        if manifest is not None:
            claim.release()
            return manifest, None
        if waited is not None:
            self._context.events.fleet_wait(parsed.url, "the lease came free: cloning", waited)
        return None, claim

    def materialized(self, parsed: RepoURL, source: Source, manifest: Manifest | None, claim: Claim | None) -> None:
        """After a miss was published into place: remember a restored artifact, or publish a clone."""
        context = self._context
        if source is Source.RESTORE and manifest is not None:
            context.index.set_published(parsed.key, parsed.url, manifest.created, manifest.generation)
        if source is Source.CLONE and self.publishing:
            self._start_job(parsed, claim, fresh_enough=None)
        elif claim is not None:
            claim.release()

    def after_fetch(self, parsed: RepoURL) -> None:
        """With ``cold_publish="always"``: publish again once the stored artifact is older than
        ``cold_publish_after`` (one host at a time when the store has leases)."""
        settings = self._context.settings
        if settings.cold_publish != "always":
            return
        recorded = self._context.index.published(parsed.key)
        if recorded is not None and time.time() - recorded[0] < settings.cold_publish_after:
            return
        if self._jobs.running(parsed.key):
            return
        claim = None
        fleet = self._fleet
        if fleet is not None and fleet.supports_leases:
            try:
                lease = fleet.try_lease(parsed.key, self.holder, settings.cold_lease_ttl)
            except ColdStoreError as exc:
                self._context.events.cold_problem("take the publish lease of", parsed.url, exc)
                return
            if lease is None:
                return  # another host is cloning or publishing it now
            claim = Claim(fleet, lease, self._context, parsed.url)
        self._start_job(parsed, claim, fresh_enough=settings.cold_publish_after, reason="fetch")

    def _start_job(
        self, parsed: RepoURL, claim: Claim | None, *, fresh_enough: float | None, reason: str = "clone"
    ) -> None:
        """Publish on a background thread (non-daemon: the interpreter lets it finish before exiting)."""

        def job() -> None:
            try:
                self.publish(parsed, fresh_enough=fresh_enough, reason=reason)
            except Exception as exc:  # a background job has nobody to raise to: report it
                self._context.events.cold_problem("publish", parsed.url, exc)
            finally:
                if claim is not None:
                    claim.release()

        if not self._jobs.start(parsed.key, job) and claim is not None:
            claim.release()

    def wait(self, key: str | None = None) -> None:
        """Wait for this process's background uploads (of ``key``, or all of them) to finish."""
        self._jobs.wait(key)

    def publish(
        self, parsed: RepoURL, *, fresh_enough: float | None = None, reason: str = "explicit"
    ) -> Manifest | None:
        """Upload the mirror of ``parsed`` (on disk) to the store now, holding it shared; the manifest stored.

        Returns the store's current manifest instead, without uploading, when it already covers the mirror's last
        fetch, or (with ``fresh_enough``) when it is younger than that many seconds, or when a usable artifact at
        least as new was committed meanwhile. None only when the mirror is not on disk.

        Raises:
            ColdStoreError: the store failed, or refused the upload while holding no usable artifact.
            LockTimeoutError: the repository or its fetch lock stayed held longer than ``lock_timeout`` (and a
                ``cold_lease_ttl``).
        """
        context = self._context
        layout = context.layout
        self._write_graph_first(parsed)
        # At least a lease's time: a publish started by a clone waits for that clone's own exclusive hold to end.
        timeout = max(context.settings.lock_timeout, context.settings.cold_lease_ttl)
        hold = layout.hold_shared(parsed.key, timeout)
        if hold is None:
            raise LockTimeoutError(parsed.url, timeout, "publish")
        with hold:
            mirror = layout.mirror(parsed.key)
            row = context.index.get(parsed.key)
            if row is None or not mirror.is_dir():
                return None
            current = self._current_artifact(row)
            if current is None and fresh_enough is not None:
                current = self.store.get_manifest(parsed.key)
                if current is not None and time.time() - current.created >= fresh_enough:
                    current = None
            if current is not None:
                context.index.set_published(parsed.key, parsed.url, current.created, current.generation)
                return current
            started = time.monotonic()
            with self._snapshot(parsed, mirror) as (snapshot, created):
                # The row was read before the snapshot: its last fetch is at most as new as the snapshot's.
                stored = self._upload(parsed.url, parsed.key, snapshot, row.size_bytes, created, row.last_fetched)
            if stored is None:  # a usable artifact at least as new was there, or committed meanwhile
                current = self.store.get_manifest(parsed.key)
                if current is None:  # never "evicted": the mirror is here, the store refused and holds nothing
                    raise ColdStoreError(f"the cold store refused the upload of {parsed.url} and holds no artifact")
                return current
            context.events.published(parsed.url, parsed.key, time.monotonic() - started, stored.size_bytes, reason)
            return stored

    def _write_graph_first(self, parsed: RepoURL) -> None:
        """Before packing a mirror that has no commit-graph libgit2 reads (a fresh clone), maintain it, so the
        artifact carries one and no restoring host writes it (about 2 s for git.git); skipped with
        ``maintenance="off"``, and a failure only means an artifact without a graph."""
        context = self._context
        if context.settings.maintenance.mode == "off":
            return
        mirror = context.layout.mirror(parsed.key)
        if not mirror.is_dir() or gitops.commit_graph_state(mirror) == "ok":
            return
        try:
            maintenance.maintain_one(context, parsed.key, parsed.url, wait=True, forced=False)
        except (GitError, LockTimeoutError, OSError) as exc:
            context.events.cold_problem("write the commit-graph before publishing", parsed.url, exc)

    @contextlib.contextmanager
    def _snapshot(self, parsed: RepoURL, mirror: Path) -> Iterator[tuple[Path, float]]:
        """A consistent copy of the held mirror to pack: hard links made under the fetch lock (milliseconds), so
        fetches go on during the upload. Where links cannot be made, the mirror itself, under the fetch lock."""
        context = self._context
        timeout = max(context.settings.lock_timeout, context.settings.cold_lease_ttl)
        fetch = context.layout.hold_fetch(parsed.key, timeout)
        if fetch is None:
            raise LockTimeoutError(parsed.url, timeout, "publish")
        snapshot = context.layout.new_upload(parsed.key)
        try:
            with fetch:
                created = time.time()
                try:
                    _link_tree(mirror, snapshot)
                except OSError:
                    remove(snapshot)
                    yield mirror, created  # packed under the fetch lock
                    return
            yield snapshot, created
        finally:
            remove(snapshot)

    def close(self) -> None:
        """Wait for background uploads (called when the cache closes)."""
        self.wait()

    def _prune_if_due(self) -> None:
        retention = self._context.settings.cold_retention
        if retention is None or time.monotonic() - self._last_prune <= _PRUNE_EVERY:
            return
        try:
            self.prune(older_than=retention, keep_bytes=None)
        except ColdStoreError as exc:
            self._context.events.cold_problem("prune", "the store", exc)


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link every file of ``source`` into a new tree at ``dest`` (leftovers of git operations left out).

    git and libgit2 never modify a file of a repository in place (packs are immutable, refs and config are
    replaced by renaming a lock file), so the links keep the state of the moment they were made.
    """
    dest.mkdir()
    for directory, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if not is_leftover(d)]
        target = dest / Path(directory).relative_to(source)
        for name in dirnames:
            (target / name).mkdir()
        for name in filenames:
            if not is_leftover(name):
                os.link(Path(directory) / name, target / name)


def _current_lease(fleet: FleetStore, key: str, known: Lease | None) -> Lease | None:
    """The store's ``current_lease`` of ``key``; None (nothing known: the waiter tries the lease and looks the
    artifact up each round, as before the method existed) for a store that does not offer it."""
    watch = getattr(fleet, "current_lease", None)
    if watch is None:
        return None
    lease: Lease | None = watch(key, known=known)
    return lease
