"""The cold storage tier: evicted mirrors are kept as tar artifacts in a directory or an object store.

What users configure or implement: the protocols (``store``), the manifest (``manifest``), the retention policy
(``prune``), the engine the built-in stores share (``generations``, with ``streams``), artifacts (``artifact``) and
the two stores (``local``, ``fsspec_store``). The cache's use of a store is :mod:`repocache.cold_tier`.
"""

from repocache.cold.artifact import ColdStoreSpec, open_cold_store, pack_mirror, unpack_artifact
from repocache.cold.fsspec_store import FsspecStore
from repocache.cold.generations import FUTURE_BOUND, STALE_UPLOAD_AGE
from repocache.cold.local import LocalDirStore
from repocache.cold.manifest import COMPRESSIONS, FORMAT_VERSION, Manifest, checked_manifest
from repocache.cold.prune import prune_store
from repocache.cold.store import ColdStore, FleetStore, Lease

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "FUTURE_BOUND",
    "STALE_UPLOAD_AGE",
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
