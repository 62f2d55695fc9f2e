"""The names this module held before it was split; kept so that imports of ``repocache.cold.base`` keep working.

New code imports from :mod:`repocache.cold` (the public names) or from the module that defines a name:
:mod:`~repocache.cold.store` (the protocols), :mod:`~repocache.cold.manifest`, :mod:`~repocache.cold.prune`,
:mod:`~repocache.cold.generations` (the engine of the built-in stores) and :mod:`~repocache.cold.streams`.
"""

from repocache.cold.generations import LEASES, check_ttl, lease_document, parse_lease
from repocache.cold.manifest import (
    COMPRESSIONS,
    FORMAT_VERSION,
    MANIFEST_MAX_BYTES,
    Manifest,
    artifact_suffix,
    check_key,
    checked_manifest,
)
from repocache.cold.prune import prune_store
from repocache.cold.store import ArtifactWriter, ColdStore, FleetStore, Lease

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "LEASES",
    "MANIFEST_MAX_BYTES",
    "ArtifactWriter",
    "ColdStore",
    "FleetStore",
    "Lease",
    "Manifest",
    "artifact_suffix",
    "check_key",
    "check_ttl",
    "checked_manifest",
    "lease_document",
    "parse_lease",
    "prune_store",
]
