"""The cold storage tier: evicted mirrors are kept as tar artifacts in a directory or an object store."""

from repocache.cold.artifact import ColdStoreSpec, open_cold_store, pack_mirror, unpack_artifact
from repocache.cold.base import (
    COMPRESSIONS,
    FORMAT_VERSION,
    ColdStore,
    FleetStore,
    Lease,
    Manifest,
    checked_manifest,
    prune_store,
)
from repocache.cold.fsspec_store import FsspecStore
from repocache.cold.local import LocalDirStore

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "ColdStore",
    "ColdStoreSpec",
    "FleetStore",
    "FsspecStore",
    "Lease",
    "LocalDirStore",
    "Manifest",
    "checked_manifest",
    "open_cold_store",
    "pack_mirror",
    "prune_store",
    "unpack_artifact",
]
