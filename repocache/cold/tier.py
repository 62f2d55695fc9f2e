"""The cache's use of a cold store: manifest lookup, restore into staging, offload of evicted mirrors, pruning.

The store itself (:class:`~repocache.cold.base.ColdStore`) only keeps artifacts; this module decides when to use it,
and turns every failure of the store into "carry on without it" (a clone instead of a restore, an eviction that
is not uploaded), never into a failed checkout.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from pathlib import Path

from repocache import gitops
from repocache.cold.artifact import pack_mirror, unpack_artifact
from repocache.cold.base import ColdStore, Manifest, checked_manifest
from repocache.context import Context
from repocache.errors import CloneError, ColdStoreError
from repocache.events import warn_caller
from repocache.index import Row
from repocache.keys import RepoURL
from repocache.layout import ExclusiveHold
from repocache.models import Progress

__all__ = ["ColdTier"]

_PRUNE_EVERY = 3600.0  # seconds between automatic prunes (per process) when cold_retention is set


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
            gitops.sanitize_restored_mirror(staging, parsed)  # an artifact is data, never configuration
            problem = gitops.validate_mirror(staging)
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
            self._context.events.restore_unusable(parsed.url, exc)
            warn_caller(f"cold store artifact of {parsed.url} is unusable ({exc}); cloning")
            return False
        if progress is not None:
            progress(Progress(parsed.url, "restore", "done", 0, 0, manifest.size_bytes))
        return True

    def offload(self, hold: ExclusiveHold, row: Row) -> None:
        """Upload the mirror before it is deleted; failures are reported, never fatal."""
        context = self._context
        if row.size_bytes < context.settings.cold_min_bytes:
            return
        mirror = context.layout.mirror(hold.key)
        upload = context.layout.new_upload(hold.key)
        compression = context.settings.cold_compression
        started = time.perf_counter()
        try:
            with open(upload, "wb") as out:
                sha256, size = pack_mirror(mirror, out, compression=compression)
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
                compression=compression,
            )
            self.store.put(row.key, manifest, upload)
            context.index.set_in_cold_store(row.key, row.url, True, size_bytes=row.size_bytes)
            context.events.published(row.url, row.key, time.perf_counter() - started, size, "evict")
        except (ColdStoreError, OSError, ValueError) as exc:
            context.events.cold_problem("offload", row.url, exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                upload.unlink()
        self._prune_if_due()

    def _prune_if_due(self) -> None:
        retention = self._context.settings.cold_retention
        if retention is None or time.monotonic() - self._last_prune <= _PRUNE_EVERY:
            return
        try:
            self.prune(older_than=retention, keep_bytes=None)
        except ColdStoreError as exc:
            self._context.events.cold_problem("prune", "the store", exc)
