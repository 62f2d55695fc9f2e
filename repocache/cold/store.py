"""The cold store protocols: what a store users configure or implement must guarantee.

:class:`ColdStore` is all a store needs to offer; :class:`FleetStore` adds what hosts sharing one store use
(streaming uploads and clone leases). The built-in stores implement both on top of
:class:`~repocache.cold.generations.GenerationStore`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from repocache.cold.manifest import Manifest
from repocache.cold.prune import prune_store

__all__ = ["ArtifactWriter", "ColdStore", "FleetStore", "Lease"]


@runtime_checkable
class ColdStore(Protocol):
    """Where evicted mirrors go: one current artifact and manifest per repository key.

    Implementations must guarantee, whatever other processes or hosts do concurrently:

    * a manifest returned by :meth:`get_manifest` or :meth:`list` describes an artifact that was completely
      written before the manifest became visible (a half-written artifact is never offered for restore);
    * a newer upload is never replaced by an older one (the built-in stores rank uploads by ``created``, but never
      later than the time the store wrote them, and skip unusable ones: see :mod:`repocache.cold.generations`);
    * nothing is held in memory whole: artifacts move as streams.

    Methods raise :class:`~repocache.errors.ColdStoreError` when the store fails.
    """

    def put(self, key: str, manifest: Manifest, artifact_path: Path) -> bool:
        """Upload the artifact at ``artifact_path``, then ``manifest``, as the current version of ``key``.

        Returns:
            True if it became current; False if a manifest at least as new was already there or committed
            concurrently (nothing of this upload is left in the store then).
        """
        ...

    def get_manifest(self, key: str) -> Manifest | None:
        """Return the current manifest of ``key``, or None when the store holds nothing for it."""
        ...

    def open_artifact(self, manifest: Manifest) -> BinaryIO:
        """Open the artifact a manifest from this store describes, for streaming reads; close it (``with``).

        Raises:
            ColdStoreError: the artifact is gone (replaced by a newer upload or deleted) or cannot be read.
        """
        ...

    def exists(self, key: str) -> bool:
        """Return True when the store holds a manifest of ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Delete everything stored for ``key``: manifests first, so no manifest outlives its artifact."""
        ...

    def list(self) -> Iterator[Manifest]:
        """Yield the current manifest of every key in the store, in no particular order."""
        ...

    def prune(self, *, older_than: float | None = None, keep_bytes: int | None = None) -> builtins.list[Manifest]:
        """Apply a retention policy; see :func:`prune_store`. Returns the manifests whose keys were deleted."""
        return prune_store(self, older_than=older_than, keep_bytes=keep_bytes)


ArtifactWriter = Callable[[BinaryIO], "Manifest"]
"""Writes an artifact to the stream it is given and returns the manifest describing exactly those bytes."""


@dataclass(frozen=True)
class Lease:
    """A held claim on one key of a shared store: "this host is cloning it; restore what it publishes".

    Attributes:
        key: the repository key.
        holder: who holds it (host name, process id and a random part: unique per holder).
        expires: epoch seconds after which anyone may take it over (the holder renews it while it works).
        token: the store's version of the lease object (an ETag, a random id), for conditional renewal and release.
    """

    key: str
    holder: str
    expires: float
    token: str


@runtime_checkable
class FleetStore(ColdStore, Protocol):
    """A :class:`ColdStore` that several hosts share: streaming uploads and leases.

    A store that is only a :class:`ColdStore` still works: the cache packs into a temporary file for
    :meth:`ColdStore.put` and every host that misses clones independently.

    A fleet store may also offer ``current_lease(key, *, known=None) -> Lease | None`` (the built-in ones do): the
    lease of ``key`` as the store holds it now, whoever holds it and whether or not it expired, None when there is
    none; with ``known`` (a lease it returned before) an unchanged lease costs one small request and ``known``
    itself is returned. A host waiting for another's clone watches the lease with it, one request a round; without
    it, the waiting host looks the artifact up and tries the lease each round (two requests a round). It is not part
    of the protocol's checked members, so a store written before it existed is still a fleet store.
    """

    @property
    def supports_leases(self) -> bool:
        """Whether :meth:`try_lease` is backed by an atomic primitive of the store (False: leases are never taken)."""
        ...

    def put_stream(
        self,
        key: str,
        write: Callable[[BinaryIO], Manifest],
        *,
        compression: str = "none",
        created: float | None = None,
    ) -> Manifest | None:
        """Upload an artifact that ``write`` streams into the store, then its manifest, as the current version.

        ``write`` receives a write-only binary stream, writes the whole artifact to it and returns its manifest
        (sha256 and size of exactly the bytes written). Nothing of the artifact is staged on local disk. A reader
        never takes a partial upload for an artifact: the manifest is written last, and an upload that fails or
        whose writer dies leaves at most objects that no manifest names.

        Args:
            key: the repository key.
            write: writes the artifact and returns its manifest.
            compression: the artifact's compression (its object name depends on it).
            created: the time of the snapshot (default: now); it orders generations (never later than the time the
                store writes the manifest).

        Returns:
            The manifest as stored (with its generation), or None if a manifest at least as new was already there
            or committed concurrently (nothing of this upload is left then).

        Raises:
            ColdStoreError: the store failed, or the stream written differs from the manifest ``write`` returned.
        """
        ...

    def try_lease(self, key: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease of ``key`` for ``ttl`` seconds if nobody else holds an unexpired one.

        Returns:
            The lease, or None when another holder's lease has not expired (or was taken concurrently).

        Raises:
            ColdStoreError: the store failed or offers no atomic primitive for it.
        """
        ...

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a held lease by ``ttl`` seconds from now; None when it was lost (expired and taken over)."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Give a held lease up (a lease already taken over by another holder is left alone)."""
        ...
