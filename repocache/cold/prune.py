"""The retention policy of a cold store, written against the :class:`~repocache.cold.store.ColdStore` protocol."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from repocache.cold.manifest import Manifest
from repocache.errors import ConfigError

if TYPE_CHECKING:
    from repocache.cold.store import ColdStore

__all__ = ["prune_store"]

logger = logging.getLogger("repocache.cold")


def prune_store(store: ColdStore, *, older_than: float | None = None, keep_bytes: int | None = None) -> list[Manifest]:
    """Delete old artifacts from ``store`` using only :meth:`ColdStore.list` and :meth:`ColdStore.delete`.

    First every key whose manifest is more than ``older_than`` seconds old is deleted; then, while the
    artifacts left total more than ``keep_bytes``, the oldest is deleted. With both None nothing is deleted.
    A key re-uploaded after the listing (its generation changed) is left alone.

    Args:
        store: the store to prune.
        older_than: maximum age in seconds (``30 * 86400`` keeps thirty days), or None for no age limit.
        keep_bytes: maximum total ``size_bytes`` of the artifacts kept, or None for no size limit.

    Returns:
        The manifests whose keys were deleted, oldest first.

    Raises:
        ConfigError: ``older_than`` or ``keep_bytes`` is negative.
        ColdStoreError: the store failed.
    """
    if older_than is not None and (not math.isfinite(older_than) or older_than < 0):
        raise ConfigError(f"invalid older_than {older_than!r}: expected a non-negative number of seconds")
    if keep_bytes is not None and keep_bytes < 0:
        raise ConfigError(f"invalid keep_bytes {keep_bytes!r}: expected a non-negative number of bytes")
    manifests = sorted(store.list(), key=lambda m: (m.created, m.key))
    doomed: list[Manifest] = []
    kept: list[Manifest] = []
    cutoff = time.time() - older_than if older_than is not None else None
    for manifest in manifests:
        (doomed if cutoff is not None and manifest.created < cutoff else kept).append(manifest)
    if keep_bytes is not None:
        total = sum(m.size_bytes for m in kept)
        while kept and total > keep_bytes:
            oldest = kept.pop(0)
            doomed.append(oldest)
            total -= oldest.size_bytes
    deleted: list[Manifest] = []
    for manifest in sorted(doomed, key=lambda m: (m.created, m.key)):
        current = store.get_manifest(manifest.key)
        if current is None or current.generation != manifest.generation:
            continue  # gone already, or re-uploaded since the listing: keep the new upload
        store.delete(manifest.key)
        deleted.append(manifest)
        logger.info(
            "pruned %s from the cold store (created %.0f, %d bytes)",
            manifest.url,
            manifest.created,
            manifest.size_bytes,
        )
    return deleted
