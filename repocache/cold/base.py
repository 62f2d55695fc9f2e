"""The cold storage protocol, the manifest of one stored mirror, and the layout the built-in stores share.

A cold store holds, per repository key, at most one *current* artifact (a tar of the bare mirror, optionally
zstd-compressed) described by a JSON :class:`Manifest`. The built-in stores (:class:`~repocache.cold.LocalDirStore`
and :class:`~repocache.cold.FsspecStore`) share one layout and one set of rules, implemented once here::

    <root>/<key>/<generation>.tar        the artifact (".tar.zst" when compressed with zstd)
    <root>/<key>/<generation>.json       its manifest, written after the artifact: the commit point
    generation = "<created, integer nanoseconds, 20 digits>-<16 random hex digits>"

Every upload writes objects with a name of its own, so concurrent uploads of one key never write to the same
object and a reader never sees a half-written artifact: a manifest only exists once its artifact is complete.
Generations sort by their ``created`` time, and the current manifest of a key is the newest readable one, so an
older upload can never shadow a newer one; object stores need neither rename nor compare-and-swap for this. After
committing, an upload deletes the older generations (manifests first, then artifacts), or deletes itself when it
finds that a newer upload committed meanwhile.

Stores shared by a fleet of hosts (:class:`FleetStore`, which both built-in stores are) also take uploads as a
stream (:meth:`FleetStore.put_stream`: the artifact is written straight into the store's upload, no local copy)
and hand out *leases*, one small object per key with an expiry, so that hosts missing the same repository at once
agree on one of them to clone it::

    <root>/.leases/<key>.json            {"holder": ..., "expires": epoch seconds, "token": ...}

A lease is taken with the store's own atomic primitive (an S3 conditional write, ``If-None-Match: *`` to create and
``If-Match: <etag>`` to take over an expired one or renew; a lock file in a local directory) and is released by
overwriting it with an expired one, so a dead holder's lease is taken over once it expires.
"""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import hashlib
import io
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields, replace
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable

from repocache.errors import ColdStoreError, ConfigError

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "ArtifactWriter",
    "ColdStore",
    "FleetStore",
    "Lease",
    "Manifest",
    "artifact_suffix",
    "check_key",
    "checked_manifest",
    "prune_store",
]

logger = logging.getLogger("repocache.cold")

FORMAT_VERSION = 1
"""The artifact and manifest format this version writes and the newest one it reads."""

COMPRESSIONS = ("none", "zstd")
"""The accepted values of ``compression``."""

MANIFEST_MAX_BYTES = 64 * 1024
"""A manifest is a few hundred bytes; anything larger than this is refused unread."""

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GENERATION = re.compile(r"^[0-9]{20}-[0-9a-f]{16}$")
_OBJECT = re.compile(r"^(?P<generation>[0-9]{20}-[0-9a-f]{16})(?P<suffix>\.json|\.tar|\.tar\.zst)$")
_CHUNK = 256 * 1024
_HASH_AHEAD = 1 << 20  # bytes read ahead of the sha256 helper thread, at most


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object name, else raise.

    A key is one path segment: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot, at most 200
    characters. Every key :func:`repocache.keys.normalize_url` makes qualifies.

    Raises:
        ColdStoreError: the key could name a path outside the store or is not a string.
    """
    if not isinstance(key, str) or not _KEY.match(key):
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
        created: epoch seconds of the upload; of two manifests of one key, the larger ``created`` wins.
        compression: ``"none"`` or ``"zstd"``.
        format_version: the artifact/manifest format; readers refuse versions newer than :data:`FORMAT_VERSION`.
        generation: the name of this upload inside the key's directory; empty until a store accepts the manifest
            (:meth:`ColdStore.put` assigns a fresh one), set on every manifest a store returns.

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

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"url must be a non-empty string, not {self.url!r}")
        if not isinstance(self.key, str) or not _KEY.match(self.key):
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


@runtime_checkable
class ColdStore(Protocol):
    """Where evicted mirrors go: one current artifact and manifest per repository key.

    Implementations must guarantee, whatever other processes or hosts do concurrently:

    * a manifest returned by :meth:`get_manifest` or :meth:`list` describes an artifact that was completely
      written before the manifest became visible (a half-written artifact is never offered for restore);
    * a manifest with a larger ``created`` is never replaced by one with a smaller ``created``;
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
            created: the time of the snapshot (default: now); it orders generations.

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


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read from ``inner``.

    The hashing runs on a helper thread, overlapped with whatever the reader does with the data (hashlib releases
    the GIL): sha256 was the largest cost of a restore (34 of 86 ms for the 50 MB benchmark upstream). At most
    ``_HASH_AHEAD`` bytes wait to be hashed. Read :attr:`digest` only after the last read. With ``limit``, reading
    more than ``limit`` bytes raises :class:`ColdStoreError` at once (a stream longer than its manifest says).
    """

    def __init__(self, inner: Any, *, limit: int | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self._digest = hashlib.sha256()
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: collections.deque[tuple[int, concurrent.futures.Future[None]]] = collections.deque()
        self._pending_bytes = 0
        self.size = 0

    @property
    def digest(self) -> Any:
        """The sha256 of everything read so far (waits for the helper thread)."""
        self._settle()
        return self._digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data: bytes = self._inner.read(len(view))
        count = len(data)
        view[:count] = data
        self._update(data)
        return count

    def drain(self) -> None:
        """Read ``inner`` to its end so that the digest covers every byte."""
        while True:
            data: bytes = self._inner.read(_CHUNK)
            if not data:
                return
            self._update(data)

    def close(self) -> None:
        self._settle()
        super().close()

    def _update(self, data: bytes) -> None:
        self.size += len(data)
        if self._limit is not None and self.size > self._limit:
            raise ColdStoreError(f"the artifact is longer than the {self._limit} bytes its manifest declares")
        if self._hasher is None:
            if len(data) < _CHUNK // 4:  # small streams are not worth a thread
                self._digest.update(data)
                return
            self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="repocache-sha256")
        self._pending.append((len(data), self._hasher.submit(self._digest.update, data)))
        self._pending_bytes += len(data)
        while self._pending_bytes > _HASH_AHEAD:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        size, future = self._pending.popleft()
        self._pending_bytes -= size
        future.result()

    def _settle(self) -> None:
        while self._pending:
            self._wait_oldest()
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts every byte before passing it to ``inner``."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._inner.write(view)
        self.digest.update(view)
        self.size += len(view)
        return len(view)


class _CountingWriter(io.RawIOBase):
    """A write-only stream that counts the bytes it passes on to ``inner`` (set before the first write)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner: Any = None
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.inner.write(view)
        self.size += len(view)
        return len(view)


LEASES = ".leases"
"""The directory (prefix) of lease objects inside a store; its leading dot keeps it out of key listings."""


def lease_document(holder: str, expires: float, token: str = "") -> bytes:
    """The JSON bytes of a lease object."""
    return json.dumps({"holder": holder, "expires": expires, "token": token}, sort_keys=True).encode("utf-8")


def parse_lease(data: bytes) -> tuple[str, float, str]:
    """(holder, expires, token) of a lease object; an unreadable one reads as expired (anyone may replace it)."""
    try:
        raw = json.loads(data)
        return str(raw["holder"]), float(raw["expires"]), str(raw.get("token", ""))
    except (ValueError, TypeError, KeyError):
        return "", 0.0, ""


def check_ttl(ttl: float) -> float:
    """Return ``ttl`` if it is a positive finite number of seconds.

    Raises:
        ConfigError: it is not.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise ConfigError(f"invalid lease ttl {ttl!r}: expected a positive number of seconds")
    return float(ttl)


def _new_generation(created: float) -> str:
    return f"{round(created * 1e9):020d}-{secrets.token_hex(8)}"


def _parse(names: Iterable[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split object names into committed generations (newest first) and every object name by generation."""
    committed: list[str] = []
    objects: dict[str, list[str]] = {}
    for name in names:
        match = _OBJECT.match(name)
        if not match:
            continue
        generation = match["generation"]
        objects.setdefault(generation, []).append(name)
        if match["suffix"] == ".json":
            committed.append(generation)
    committed.sort(reverse=True)
    return committed, objects


class _GenerationStore(ColdStore):
    """The layout and rules of the module docstring on top of a few primitives a backend provides.

    Primitives raise :class:`FileNotFoundError` for a missing object where documented and
    :class:`~repocache.errors.ColdStoreError` for every other failure.
    """

    @property
    def supports_leases(self) -> bool:
        """Whether this store can take leases (see :class:`FleetStore`); False unless a backend says otherwise."""
        return False

    def _names(self, key: str) -> builtins.list[str]:
        """Object names directly under ``<root>/<key>/`` (none when it does not exist)."""
        raise NotImplementedError

    def _all_names(self) -> Iterator[tuple[str, builtins.list[str]]]:
        """(key, object names) for every key directory in the store."""
        raise NotImplementedError

    def _upload(self, key: str, name: str) -> AbstractContextManager[BinaryIO]:
        """A stream to ``<root>/<key>/<name>``: the object appears complete when the block exits cleanly, and not
        at all when it raises (or the process dies in it)."""
        raise NotImplementedError

    def _publish(self, key: str, name: str, source: BinaryIO) -> None:
        """Write ``source`` to ``<root>/<key>/<name>`` so that it appears complete or not at all."""
        with self._upload(key, name) as out:
            while True:
                data = source.read(_CHUNK)
                if not data:
                    break
                try:
                    out.write(data)
                except OSError as exc:
                    raise ColdStoreError(f"cold store: cannot write {self._describe(key, name)}: {exc}") from exc

    def _read(self, key: str, name: str, limit: int) -> bytes:
        """Return at most ``limit + 1`` bytes of an object; FileNotFoundError when it is missing."""
        raise NotImplementedError

    def _open(self, key: str, name: str) -> BinaryIO:
        """Open an object for streaming reads; FileNotFoundError when it is missing."""
        raise NotImplementedError

    def _size(self, key: str, name: str) -> int:
        """Return an object's size; FileNotFoundError when it is missing."""
        raise NotImplementedError

    def _remove(self, key: str, names: Iterable[str]) -> None:
        """Delete objects in the given order; missing ones are ignored."""
        raise NotImplementedError

    def _forget_key(self, key: str) -> None:
        """Called after :meth:`delete` removed every object of ``key``; backends may drop the directory."""

    def _describe(self, key: str, name: str = "") -> str:
        raise NotImplementedError

    def put(self, key: str, manifest: Manifest, artifact_path: str | PathLike[str]) -> bool:
        """Upload an artifact and its manifest as the current version of ``key`` (see :class:`ColdStore`).

        The artifact is streamed and hashed on the way: if its SHA-256 or size differs from the manifest's, or
        the stored object's size differs, nothing is committed and ColdStoreError is raised. The manifest is
        stored with a fresh ``generation`` whatever ``manifest.generation`` says.

        Returns:
            True if the upload became current; False if a manifest at least as new was already there or was
            committed concurrently, in which case this upload's objects are deleted again.

        Raises:
            ColdStoreError: the key is invalid or differs from ``manifest.key``, the artifact does not match the
                manifest, or the store failed.
        """
        check_key(key)
        if manifest.key != key:
            raise ColdStoreError(f"manifest key {manifest.key!r} does not match the key {key!r} it is stored under")
        committed, _ = _parse(self._names(key))
        generation = _new_generation(manifest.created)
        if committed and committed[0][:20] >= generation[:20]:
            logger.info("cold store already holds a newer or same-age artifact of %s; not uploading", manifest.url)
            return False
        stored = replace(manifest, generation=generation)
        artifact = stored.artifact_name
        try:
            with open(artifact_path, "rb") as local:
                reader = _HashingReader(local)
                self._publish(key, artifact, io.BufferedReader(reader, _CHUNK))
        except OSError as exc:
            raise ColdStoreError(f"cannot read the artifact {artifact_path}: {exc}") from exc
        if reader.digest.hexdigest() != manifest.sha256 or reader.size != manifest.size_bytes:
            self._remove(key, [artifact])
            raise ColdStoreError(
                f"artifact {artifact_path} ({reader.size} bytes, sha256 {reader.digest.hexdigest()}) does not "
                f"match its manifest ({manifest.size_bytes} bytes, sha256 {manifest.sha256})"
            )
        return self._commit(key, stored) is not None

    def put_stream(
        self,
        key: str,
        write: Callable[[BinaryIO], Manifest],
        *,
        compression: str = "none",
        created: float | None = None,
    ) -> Manifest | None:
        """Stream an artifact into the store, then commit its manifest (see :meth:`FleetStore.put_stream`).

        The bytes ``write`` writes are counted on their way into the store's upload; the manifest it returns
        must name ``key``, ``compression`` and exactly that many bytes, and the stored object must hold them.
        """
        check_key(key)
        suffix = artifact_suffix(compression)
        generation = _new_generation(time.time() if created is None else created)
        committed, _ = _parse(self._names(key))
        if committed and committed[0][:20] >= generation[:20]:
            logger.info("cold store already holds a newer or same-age artifact of %s; not uploading", key)
            return None
        artifact = generation + suffix
        counter = _CountingWriter()
        with self._upload(key, artifact) as out:
            counter.inner = out
            manifest = write(cast(BinaryIO, counter))
            if manifest.key != key or manifest.compression != compression or manifest.size_bytes != counter.size:
                raise ColdStoreError(
                    f"the artifact streamed for {key} ({counter.size} bytes, {compression}) does not match its "
                    f"manifest ({manifest.key}, {manifest.size_bytes} bytes, {manifest.compression})"
                )
        return self._commit(key, replace(manifest, generation=generation))

    def _commit(self, key: str, stored: Manifest) -> Manifest | None:
        """Check the uploaded artifact of ``stored``, write its manifest, then drop older generations.

        Returns ``stored``, or None when a newer upload committed meanwhile (this one's objects are deleted).
        """
        generation = stored.generation
        artifact = stored.artifact_name
        manifest = stored
        try:
            stored_size = self._size(key, artifact)
            if stored_size != manifest.size_bytes:
                raise ColdStoreError(
                    f"{self._describe(key, artifact)} holds {stored_size} bytes after upload, expected "
                    f"{manifest.size_bytes}"
                )
            self._publish(key, generation + ".json", io.BytesIO(stored.to_json().encode("utf-8")))
        except FileNotFoundError as exc:
            self._remove(key, [generation + ".json", artifact])
            committed, _ = _parse(self._names(key))
            if committed and committed[0] > generation:
                # A newer upload committed meanwhile and swept this one's artifact as an older orphan.
                logger.info("a newer artifact of %s was committed concurrently; dropping this upload", manifest.url)
                return None
            raise ColdStoreError(f"{self._describe(key, artifact)} vanished right after upload") from exc
        except BaseException:
            self._remove(key, [generation + ".json", artifact])
            raise
        committed, objects = _parse(self._names(key))
        if committed and committed[0] > generation:
            logger.info("a newer artifact of %s was committed concurrently; dropping this upload", manifest.url)
            self._remove(key, [generation + ".json", artifact])
            return None
        self._collect(key, generation, objects)
        return stored

    def _collect(self, key: str, current: str, objects: dict[str, builtins.list[str]]) -> None:
        """Delete every generation older than ``current``: all their manifests first, then their artifacts."""
        older = sorted(g for g in objects if g < current)
        manifests = [name for g in older for name in objects[g] if name.endswith(".json")]
        artifacts = [name for g in older for name in objects[g] if not name.endswith(".json")]
        self._remove(key, manifests)
        self._remove(key, artifacts)

    def _newest_manifest(self, key: str, names: Iterable[str]) -> Manifest | None:
        committed, _ = _parse(names)
        for generation in committed:
            try:
                data = self._read(key, generation + ".json", MANIFEST_MAX_BYTES)
            except FileNotFoundError:
                continue  # superseded and deleted while we listed
            try:
                if len(data) > MANIFEST_MAX_BYTES:
                    raise ColdStoreError(f"larger than {MANIFEST_MAX_BYTES} bytes")
                manifest = Manifest.from_json(data)
                if manifest.key != key or manifest.generation != generation:
                    raise ColdStoreError(f"it names key {manifest.key!r}, generation {manifest.generation!r}")
            except ColdStoreError as exc:
                logger.warning(
                    "ignoring unreadable cold store manifest %s: %s", self._describe(key, generation + ".json"), exc
                )
                continue
            return manifest
        return None

    def get_manifest(self, key: str) -> Manifest | None:
        """Return the newest readable manifest of ``key``, or None (see :meth:`ColdStore.get_manifest`).

        A malformed manifest (e.g. one written by a newer repocache) is logged and skipped.
        """
        check_key(key)
        return self._newest_manifest(key, self._names(key))

    def open_artifact(self, manifest: Manifest) -> BinaryIO:
        """Open the artifact described by ``manifest`` (see :meth:`ColdStore.open_artifact`)."""
        check_key(manifest.key)
        name = manifest.artifact_name
        try:
            return self._open(manifest.key, name)
        except FileNotFoundError as exc:
            raise ColdStoreError(
                f"{self._describe(manifest.key, name)} is gone (replaced by a newer upload or deleted); "
                "read the manifest again"
            ) from exc

    def artifact_size(self, manifest: Manifest) -> int:
        """The size of the stored artifact ``manifest`` describes, as the store reports it (not as declared).

        Raises:
            ColdStoreError: the artifact is gone or the store failed.
        """
        check_key(manifest.key)
        name = manifest.artifact_name
        try:
            return self._size(manifest.key, name)
        except FileNotFoundError as exc:
            raise ColdStoreError(f"{self._describe(manifest.key, name)} is gone") from exc

    def exists(self, key: str) -> bool:
        """Return True when a manifest of ``key`` is stored (see :meth:`ColdStore.exists`)."""
        check_key(key)
        committed, _ = _parse(self._names(key))
        return bool(committed)

    def delete(self, key: str) -> None:
        """Delete every object of ``key``, manifests first (see :meth:`ColdStore.delete`)."""
        check_key(key)
        names = self._names(key)
        self._remove(key, sorted(names, key=lambda name: not name.endswith(".json")))
        self._forget_key(key)

    def list(self) -> Iterator[Manifest]:
        """Yield the newest readable manifest of every key (see :meth:`ColdStore.list`)."""
        for key, names in self._all_names():
            if not _KEY.match(key):
                continue
            manifest = self._newest_manifest(key, names)
            if manifest is not None:
                yield manifest

    def prune(self, *, older_than: float | None = None, keep_bytes: int | None = None) -> builtins.list[Manifest]:
        """Apply a retention policy with :func:`prune_store`; returns the manifests whose keys were deleted."""
        return prune_store(self, older_than=older_than, keep_bytes=keep_bytes)
