"""The manifest of one stored mirror, the rules for keys and artifact names, and the check of a manifest's figures.

A cold store holds, per repository key, at most one *current* artifact (a tar of the bare mirror, optionally
zstd-compressed) described by a JSON :class:`Manifest`, written next to it. A manifest is a hint written by whoever
uploaded: :func:`checked_manifest` checks its figures against the store before the cache trusts them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from repocache.errors import ColdStoreError, ConfigError
from repocache.keys import FILTERS, filter_of_key

if TYPE_CHECKING:
    from repocache.cold.store import ColdStore

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "GENERATION_PATTERN",
    "MANIFEST_MAX_BYTES",
    "Manifest",
    "artifact_suffix",
    "check_key",
    "checked_manifest",
    "is_key",
]

logger = logging.getLogger("repocache.cold")

FORMAT_VERSION = 1
"""The artifact and manifest format this version writes and the newest one it reads."""

COMPRESSIONS = ("none", "zstd")
"""The accepted values of ``compression``."""

MANIFEST_MAX_BYTES = 64 * 1024
"""A manifest is a few hundred bytes; anything larger than this is refused unread."""

GENERATION_PATTERN = "[0-9]{20}-[0-9a-f]{16}"
"""The form of :attr:`Manifest.generation`: created time in integer nanoseconds (20 digits), a dash, 16 random hex
digits (see :mod:`repocache.cold.generations`)."""

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GENERATION = re.compile(f"^{GENERATION_PATTERN}$")


def is_key(key: object) -> bool:
    """Whether ``key`` is a safe object name: what :func:`check_key` accepts."""
    return isinstance(key, str) and _KEY.match(key) is not None


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object name, else raise.

    A key is one path segment: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot, at most 200
    characters. Every key :func:`repocache.keys.normalize_url` makes qualifies.

    Raises:
        ColdStoreError: the key could name a path outside the store or is not a string.
    """
    if not is_key(key):
        raise ColdStoreError(f"invalid cold store key {key!r}: expected one path segment of [A-Za-z0-9._-]")
    return key


def artifact_suffix(compression: str) -> str:
    """Return the file suffix of an artifact: ``".tar"`` or ``".tar.zst"``.

    Raises:
        ConfigError: ``compression`` is not one of :data:`COMPRESSIONS`.
    """
    if compression == "none":
        return ".tar"
    if compression == "zstd":
        return ".tar.zst"
    raise ConfigError(f"invalid compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


@dataclass(frozen=True)
class Manifest:
    """What a cold store knows about one stored mirror; written as JSON next to the artifact.

    Construction validates every field, so a ``Manifest`` in hand is always well-formed.

    Attributes:
        url: the repository's normalized URL (never with credentials).
        key: the repository's key (see :func:`check_key`).
        sha256: lower-case hex SHA-256 of the artifact's bytes as stored (after compression).
        size_bytes: the artifact's size in bytes as stored.
        mirror_bytes: allocated bytes of the unpacked mirror on disk, so room can be made before a restore.
        ref_count: number of refs in the mirror when it was packed.
        head: what HEAD pointed at when packed (a ref name such as ``refs/heads/main``, or a commit id).
        created: epoch seconds of the snapshot uploaded; of two manifests of one key the later wins, ranked by
            ``created`` but never later than the time the store wrote the manifest (a writer cannot date an upload
            past later ones); more than :data:`~repocache.cold.generations.FUTURE_BOUND` ahead, it is unusable.
        compression: ``"none"`` or ``"zstd"``.
        format_version: the artifact/manifest format; readers refuse versions newer than :data:`FORMAT_VERSION`.
        generation: the name of this upload inside the key's directory; empty until a store accepts the manifest
            (:meth:`ColdStore.put` assigns a fresh one), set on every manifest a store returns.
        fetched: epoch seconds of the mirror's last successful fetch (or clone) before it was packed, or None when
            unknown (manifests of older versions): a restored copy is as fresh as this (see :meth:`fetched_at`).
        refs_sha256: lower-case hex SHA-256 of the mirror's refs when it was packed (see
            :func:`repocache.gitops.refs_digest`: every ref and what it points at), or None (older versions). What
            the fleet can compare without downloading; a restore whose refs differ from it is refused.
        filter: the mirror's partial-clone filter (``"blob:none"``, ``"tree:0"``), or None: a full mirror, or a
            manifest of an older version (its key still says). A filter must be the one the key ends with
            (``-blobless``, ``-treeless``), so an artifact is restored only for the mirror it is.

    Raises:
        ValueError: a field has the wrong type or an invalid value.
    """

    url: str
    key: str
    sha256: str
    size_bytes: int
    mirror_bytes: int
    ref_count: int
    head: str
    created: float
    compression: str = "none"
    format_version: int = FORMAT_VERSION
    generation: str = ""
    fetched: float | None = None
    refs_sha256: str | None = None
    filter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"url must be a non-empty string, not {self.url!r}")
        if not is_key(self.key):
            raise ValueError(f"key {self.key!r} is not a valid cold store key")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits, not {self.sha256!r}")
        _check_count("size_bytes", self.size_bytes)
        _check_count("mirror_bytes", self.mirror_bytes)
        _check_count("ref_count", self.ref_count)
        if not isinstance(self.head, str):
            raise ValueError(f"head must be a string, not {self.head!r}")
        created: object = self.created
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise ValueError(f"created must be a number of epoch seconds, not {created!r}")
        if not math.isfinite(created) or created < 0 or created >= 1e11:
            raise ValueError(f"created must be finite epoch seconds, not {created!r}")
        object.__setattr__(self, "created", float(created))
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {self.compression!r}")
        _check_count("format_version", self.format_version)
        if not 1 <= self.format_version <= FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this repocache reads 1..{FORMAT_VERSION})"
            )
        if not isinstance(self.generation, str) or (self.generation and not _GENERATION.match(self.generation)):
            raise ValueError(f"generation {self.generation!r} is not a valid generation id")
        if self.filter is not None:
            if not isinstance(self.filter, str) or self.filter not in FILTERS:
                raise ValueError(f"filter must be one of {', '.join(FILTERS)} or null, not {self.filter!r}")
            if filter_of_key(self.key) != self.filter:
                raise ValueError(f"filter {self.filter!r} is not the filter of key {self.key!r}")
        if self.refs_sha256 is not None and (
            not isinstance(self.refs_sha256, str) or not _SHA256.match(self.refs_sha256)
        ):
            raise ValueError(f"refs_sha256 must be 64 lower-case hex digits or null, not {self.refs_sha256!r}")
        fetched: object = self.fetched
        if fetched is not None:
            if isinstance(fetched, bool) or not isinstance(fetched, (int, float)):
                raise ValueError(f"fetched must be a number of epoch seconds or null, not {fetched!r}")
            if not math.isfinite(fetched) or fetched < 0 or fetched >= 1e11:
                raise ValueError(f"fetched must be finite epoch seconds, not {fetched!r}")
            object.__setattr__(self, "fetched", float(fetched))

    def fetched_at(self, now: float) -> float | None:
        """When a copy restored from this artifact was last fetched, as far as it can be trusted; None if unknown.

        The manifest's word is bounded by what it cannot exceed: the mirror was packed after its last fetch, so
        never later than ``created``, nor later than ``now``. (A store already ranks ``created`` no later than the
        time it wrote the manifest.) A hostile manifest can at most claim an age of zero at its upload's time.
        """
        if self.fetched is None:
            return None
        return min(self.fetched, self.created, now)

    @property
    def artifact_name(self) -> str:
        """The artifact's object name inside the key's directory, e.g. ``<generation>.tar.zst``.

        Raises:
            ColdStoreError: the manifest has no generation (it was never accepted by a store).
        """
        if not self.generation:
            raise ColdStoreError(f"the manifest of {self.url} has no generation: it was not read from a store")
        return self.generation + artifact_suffix(self.compression)

    def to_json(self) -> str:
        """Return the manifest as a JSON object with sorted keys; :meth:`from_json` reads it back unchanged."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> Manifest:
        """Parse and validate a manifest written by :meth:`to_json`. Unknown fields are ignored.

        Raises:
            ColdStoreError: ``data`` is not JSON, is not an object, lacks a field or has an invalid value.
        """
        try:
            raw = json.loads(data)
        except (ValueError, TypeError) as exc:
            raise ColdStoreError(f"malformed cold store manifest: not JSON ({exc})") from exc
        except RecursionError:
            raise ColdStoreError("malformed cold store manifest: JSON nested too deeply") from None
        if not isinstance(raw, dict):
            raise ColdStoreError(f"malformed cold store manifest: expected a JSON object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {name: value for name, value in raw.items() if name in known}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ColdStoreError(f"malformed cold store manifest: {exc}") from exc


# A restored mirror occupies at most this many times its artifact's bytes on disk (plus a little): tar pads small
# files to 512-byte blocks where the disk allocates 4 KiB, and zstd shrinks tar headers to almost nothing.
_UNPACK_RATIO = {"none": 8, "zstd": 64}
_UNPACK_SLACK = 1 << 20


def checked_manifest(store: ColdStore, manifest: Manifest) -> Manifest:
    """``manifest`` with its figures checked against the store: its sizes are hints written by whoever uploaded.

    The artifact's size must be what the store holds (when the store can tell, as the built-in stores can), and
    ``mirror_bytes``, which the budget reserves before a restore, is capped at what an artifact of that size can
    unpack to, so a manifest that lies cannot refuse a repository forever or evict others to make room for it.

    Raises:
        ColdStoreError: the stored artifact's size differs from the manifest's, or it is gone.
    """
    measure = getattr(store, "artifact_size", None)
    actual = manifest.size_bytes if measure is None else int(measure(manifest))
    if actual != manifest.size_bytes:
        raise ColdStoreError(
            f"the artifact of {manifest.url} holds {actual} bytes but its manifest declares {manifest.size_bytes}"
        )
    cap = actual * _UNPACK_RATIO.get(manifest.compression, 1) + _UNPACK_SLACK
    if manifest.mirror_bytes > cap:
        logger.info(
            "the manifest of %s declares %d mirror bytes for a %d-byte artifact; trusting %d",
            manifest.url,
            manifest.mirror_bytes,
            actual,
            cap,
        )
        return replace(manifest, mirror_bytes=cap)
    return manifest
