"""The layout and rules the built-in stores share, implemented once on top of a few primitives per backend.

:class:`GenerationStore` is the engine of :class:`~repocache.cold.LocalDirStore` and
:class:`~repocache.cold.FsspecStore`; a backend provides the primitives (list with sizes and store times, upload,
read, open, size, remove) and inherits the layout::

    <root>/<key>/<generation>.tar        the artifact (".tar.zst" when compressed with zstd)
    <root>/<key>/<generation>.json       its manifest, written after the artifact: the commit point
    generation = "<created, integer nanoseconds, 20 digits>-<16 random hex digits>"

Every upload writes objects with a name of its own, so concurrent uploads of one key never write to the same
object and a reader never sees a half-written artifact: a manifest only exists once its artifact is complete.
The current manifest of a key is the newest *usable* generation, so an older upload can never shadow a newer
one; object stores need neither rename nor compare-and-swap for this. After committing, an upload deletes the
older and the unusable generations (manifests first, then artifacts), or deletes itself when it finds that a newer
upload committed meanwhile.

Anyone who can write the store can write a generation, so its name is a claim, not a fact:

* *Order.* A generation ranks by the earlier of its ``created`` time (the writer's clock, in its name) and the
  time the store wrote its manifest (S3's ``LastModified``, a file's modification time, plus one second for the
  store's resolution), which the writer does not choose. A generation dated far ahead therefore ranks at the
  moment it was written, and an honest snapshot taken after that moment always ranks above it.
* *Usable.* A generation is skipped (with one warning per process) and deleted by the next upload or
  :meth:`GenerationStore.prune` when it is dated more than :data:`FUTURE_BOUND` seconds after the store wrote
  its manifest or after this host's clock, when its manifest is unreadable, larger than
  :data:`~repocache.cold.manifest.MANIFEST_MAX_BYTES` or names another key or generation, or when its artifact
  is missing or does not hold the size its manifest declares. The checks read one manifest and use the sizes
  and times of the listing: no extra request per artifact.

Stores shared by a fleet of hosts (:class:`~repocache.cold.FleetStore`, which both built-in stores are) also take
uploads as a stream (:meth:`~repocache.cold.FleetStore.put_stream`: the artifact is written straight into the
store's upload, no local copy) and hand out *leases*, one small object per key with an expiry, so that hosts
missing the same repository at once agree on one of them to clone it::

    <root>/.leases/<key>.json            {"holder": ..., "expires": epoch seconds, "token": ...}

A lease is taken with the store's own atomic primitive (an S3 conditional write, ``If-None-Match: *`` to create and
``If-Match: <etag>`` to take over an expired one or renew; a lock file in a local directory) and is released by
overwriting it with an expired one, so a dead holder's lease is taken over once it expires.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import BinaryIO, cast

from repocache.cold.manifest import (
    FORMAT_VERSION,
    GENERATION_PATTERN,
    MANIFEST_MAX_BYTES,
    Manifest,
    artifact_suffix,
    check_key,
    is_key,
)
from repocache.cold.prune import prune_store
from repocache.cold.store import ColdStore
from repocache.cold.streams import CHUNK, CountingWriter, HashingReader
from repocache.errors import ColdStoreError, ConfigError, UnsafeFileError

__all__ = [
    "FUTURE_BOUND",
    "LEASES",
    "STALE_UPLOAD_AGE",
    "GenerationStore",
    "StoredObject",
    "check_ttl",
    "lease_document",
    "parse_lease",
]

logger = logging.getLogger("repocache.cold")

_OBJECT = re.compile(rf"^(?P<generation>{GENERATION_PATTERN})(?P<suffix>\.json|\.tar|\.tar\.zst)$")


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


STALE_UPLOAD_AGE = 3600.0
"""Seconds after which an upload that has not written anything is taken for dead (its host was killed): its
temporary files, its incomplete S3 multipart upload, or an artifact that never got a manifest are deleted by
:meth:`GenerationStore.prune`. A live upload writes every few seconds, so it is never this old."""

FUTURE_BOUND = 3600.0
"""Seconds a generation's ``created`` may lie after the time the store wrote its manifest, or after this host's
clock: the clock skew tolerated between hosts. A generation dated further ahead is forged or broken: unusable."""

_NS = 1_000_000_000
_STORE_RESOLUTION_NS = _NS  # S3 reports LastModified in whole seconds


@dataclass(frozen=True)
class StoredObject:
    """What a backend's listing says of one object.

    Attributes:
        size: its size in bytes.
        modified: epoch seconds at which the store wrote it (S3 ``LastModified``, a file's modification time), or
            None when the backend does not say.
    """

    size: int
    modified: float | None = None


@dataclass
class _Generation:
    """One generation's objects in a listing."""

    name: str
    created_ns: int
    objects: dict[str, StoredObject] = field(default_factory=dict)

    @property
    def manifest(self) -> StoredObject | None:
        return self.objects.get(self.name + ".json")

    @property
    def rank(self) -> tuple[int, str]:
        """The order of generations: the writer's date, but never later than when the store wrote the manifest."""
        manifest = self.manifest
        when = self.created_ns
        if manifest is not None and manifest.modified is not None:
            when = min(when, round(manifest.modified * _NS) + _STORE_RESOLUTION_NS)
        return when, self.name

    def ahead(self, now: float) -> str | None:
        """Why this generation is dated impossibly far ahead, or None."""
        manifest = self.manifest
        created = self.created_ns / _NS
        if manifest is not None and manifest.modified is not None and created > manifest.modified + FUTURE_BOUND:
            return f"dated {created - manifest.modified:.0f} s after the store wrote it (more than {FUTURE_BOUND:.0f})"
        if created > now + FUTURE_BOUND:
            return f"dated {created - now:.0f} s ahead of this host's clock (more than {FUTURE_BOUND:.0f})"
        return None


@dataclass
class _Scan:
    """The newest usable generation of a key (and its manifest), and the unusable ones ranked above it."""

    generations: list[_Generation]
    current: _Generation | None = None
    manifest: Manifest | None = None
    unusable: list[_Generation] = field(default_factory=list)


_reported: set[str] = set()
_reported_lock = threading.Lock()


class _NewerFormat(ColdStoreError):
    """A manifest written by a newer repocache (``format_version`` above :data:`FORMAT_VERSION`)."""


def _newer_format(data: bytes) -> bool:
    """True when ``data`` is a JSON object whose ``format_version`` is an integer this repocache does not read yet."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return False
    version = value.get("format_version") if isinstance(value, dict) else None
    return type(version) is int and version > FORMAT_VERSION


def _report_once(what: str, reason: str) -> None:
    """One warning per unusable generation per process: every lookup skips it, only the first says so."""
    with _reported_lock:
        if what in _reported:
            return
        _reported.add(what)
    logger.warning("ignoring the cold store generation %s: %s", what, reason)


def _new_generation(created: float) -> str:
    return f"{round(created * 1e9):020d}-{secrets.token_hex(8)}"


def _parse(entries: dict[str, StoredObject]) -> list[_Generation]:
    """Group a key's objects by generation, newest rank first (committed or not)."""
    generations: dict[str, _Generation] = {}
    for name, stored in entries.items():
        match = _OBJECT.match(name)
        if not match:
            continue
        generation = match["generation"]
        found = generations.get(generation)
        if found is None:
            found = generations[generation] = _Generation(generation, int(generation[:20]))
        found.objects[name] = stored
    return sorted(generations.values(), key=lambda g: g.rank, reverse=True)


class GenerationStore(ColdStore):
    """The layout and rules of the module docstring on top of a few primitives a backend provides.

    Primitives raise :class:`FileNotFoundError` for a missing object where documented and
    :class:`~repocache.errors.ColdStoreError` for every other failure.
    """

    @property
    def supports_leases(self) -> bool:
        """Whether this store can take leases (see :class:`FleetStore`); False unless a backend says otherwise."""
        return False

    def _entries(self, key: str) -> dict[str, StoredObject]:
        """The objects directly under ``<root>/<key>/`` by name, with size and store time (none when it does not
        exist)."""
        raise NotImplementedError

    def _all_entries(self) -> Iterator[tuple[str, dict[str, StoredObject]]]:
        """(key, its objects as :meth:`_entries` gives them) for every key directory in the store."""
        raise NotImplementedError

    def _upload(self, key: str, name: str) -> AbstractContextManager[BinaryIO]:
        """A stream to ``<root>/<key>/<name>``: the object appears complete when the block exits cleanly, and not
        at all when it raises (or the process dies in it)."""
        raise NotImplementedError

    def _publish(self, key: str, name: str, source: BinaryIO) -> None:
        """Write ``source`` to ``<root>/<key>/<name>`` so that it appears complete or not at all."""
        with self._upload(key, name) as out:
            while True:
                data = source.read(CHUNK)
                if not data:
                    break
                try:
                    out.write(data)
                except OSError as exc:
                    raise ColdStoreError(f"cold store: cannot write {self._describe(key, name)}: {exc}") from exc

    def _read(self, key: str, name: str, limit: int) -> bytes:
        """Return at most ``limit + 1`` bytes of an object; FileNotFoundError when it is missing, UnsafeFileError
        when it is not a regular file or holds more than ``limit`` bytes (never read whole, never waited on)."""
        raise NotImplementedError

    def _open(self, key: str, name: str) -> BinaryIO:
        """Open an object for streaming reads; FileNotFoundError when it is missing, ColdStoreError when it is not
        a regular file (opened without blocking: a FIFO must not stall a restore)."""
        raise NotImplementedError

    def _size(self, key: str, name: str) -> int:
        """Return an object's size; FileNotFoundError when it is missing."""
        raise NotImplementedError

    def _remove(self, key: str, names: Iterable[str]) -> None:
        """Delete objects in the given order; missing ones are ignored."""
        raise NotImplementedError

    def _sweep_stale_uploads(self, older_than: float) -> int:
        """Delete what uploads killed more than ``older_than`` seconds ago left behind that the listing does not
        show (temporary files, incomplete multipart uploads); how many. Backends override this."""
        return 0

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
            True if the upload became current; False if a usable manifest at least as new was already there or
            was committed concurrently, in which case this upload's objects are deleted again. Unusable
            generations (see the module docstring) never count as newer, and are deleted once this one commits.

        Raises:
            ColdStoreError: the key is invalid or differs from ``manifest.key``, the artifact does not match the
                manifest, or the store failed.
        """
        check_key(key)
        if manifest.key != key:
            raise ColdStoreError(f"manifest key {manifest.key!r} does not match the key {key!r} it is stored under")
        generation = _new_generation(manifest.created)
        if self._superseded(key, generation):
            logger.info("cold store already holds a newer or same-age artifact of %s; not uploading", manifest.url)
            return False
        stored = replace(manifest, generation=generation)
        artifact = stored.artifact_name
        try:
            with open(artifact_path, "rb") as local:
                reader = HashingReader(local)
                self._publish(key, artifact, io.BufferedReader(reader, CHUNK))
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
        Unusable generations (see the module docstring) never count as newer, and are deleted once this one
        commits.
        """
        check_key(key)
        suffix = artifact_suffix(compression)
        generation = _new_generation(time.time() if created is None else created)
        if self._superseded(key, generation):
            logger.info("cold store already holds a newer or same-age artifact of %s; not uploading", key)
            return None
        artifact = generation + suffix
        counter = CountingWriter()
        with self._upload(key, artifact) as out:
            counter.inner = out
            manifest = write(cast(BinaryIO, counter))
            if manifest.key != key or manifest.compression != compression or manifest.size_bytes != counter.size:
                raise ColdStoreError(
                    f"the artifact streamed for {key} ({counter.size} bytes, {compression}) does not match its "
                    f"manifest ({manifest.key}, {manifest.size_bytes} bytes, {manifest.compression})"
                )
        return self._commit(key, replace(manifest, generation=generation))

    def _superseded(self, key: str, generation: str) -> bool:
        """Whether a usable generation of ``key`` ranks at least as high as a new one named ``generation``."""
        created = int(generation[:20])
        current = self._scan(key, self._entries(key), down_to=created).current
        return current is not None and current.rank[0] >= created

    def _commit(self, key: str, stored: Manifest) -> Manifest | None:
        """Check the uploaded artifact of ``stored``, write its manifest, then drop older and unusable generations.

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
            if self._superseded(key, generation):
                # A newer upload committed meanwhile and swept this one's artifact as an older orphan.
                logger.info("a newer artifact of %s was committed concurrently; dropping this upload", manifest.url)
                return None
            raise ColdStoreError(f"{self._describe(key, artifact)} vanished right after upload") from exc
        except BaseException:
            self._remove(key, [generation + ".json", artifact])
            raise
        scan = self._scan(key, self._entries(key), known=stored)
        if scan.current is None or scan.current.name != generation:
            if scan.current is None:
                logger.warning(
                    "the upload %s of %s is not usable once stored (is this host's clock more than %.0f s ahead of "
                    "the store's?); dropping it",
                    self._describe(key, generation + ".json"),
                    manifest.url,
                    FUTURE_BOUND,
                )
            else:
                logger.info("a newer artifact of %s was committed concurrently; dropping this upload", manifest.url)
            self._remove(key, [generation + ".json", artifact])
            return None
        self._collect(key, scan)
        return stored

    def _scan(
        self,
        key: str,
        entries: dict[str, StoredObject],
        *,
        down_to: int | None = None,
        known: Manifest | None = None,
    ) -> _Scan:
        """Find the newest usable generation of ``key`` in a listing, reading manifests newest rank first.

        Args:
            key: the key listed.
            entries: its objects.
            down_to: stop (with no current generation) at the first one ranked below this many nanoseconds.
            known: a manifest this process just wrote: not read back (its listed artifact is still checked).
        """
        scan = _Scan(_parse(entries))
        now = time.time()
        for candidate in scan.generations:
            if down_to is not None and candidate.rank[0] < down_to:
                break
            if candidate.manifest is None:
                continue  # an upload in progress, or the artifact of a superseded one: not committed
            problem = candidate.ahead(now)
            manifest = None
            if problem is None:
                try:
                    manifest = self._usable_manifest(key, candidate, known)
                except FileNotFoundError:
                    continue  # superseded and deleted while we listed
                except _NewerFormat as exc:
                    # A newer repocache's generation (a fleet in a rolling upgrade): not ours to read, nor to
                    # delete as poison; an older one below it may still be read.
                    _report_once(self._describe(key, candidate.name + ".json"), str(exc))
                    continue
                except (ColdStoreError, UnsafeFileError) as exc:
                    problem = str(exc)
            if manifest is None:
                _report_once(self._describe(key, candidate.name + ".json"), problem or "unusable")
                scan.unusable.append(candidate)
                continue
            scan.current, scan.manifest = candidate, manifest
            break
        return scan

    def _usable_manifest(self, key: str, generation: _Generation, known: Manifest | None = None) -> Manifest:
        """The manifest of ``generation`` if it and its listed artifact are whole (``known``: it, unread).

        Raises:
            FileNotFoundError: the manifest is gone (deleted since the listing).
            ColdStoreError: the manifest is unreadable or does not match, or its artifact is missing or truncated.
        """
        if known is not None and known.generation == generation.name:
            manifest = known
        else:
            data = self._read(key, generation.name + ".json", MANIFEST_MAX_BYTES)
            if len(data) > MANIFEST_MAX_BYTES:
                raise ColdStoreError(f"the manifest is larger than {MANIFEST_MAX_BYTES} bytes")
            if _newer_format(data):
                raise _NewerFormat(f"its manifest is of a newer format than {FORMAT_VERSION} (a newer repocache)")
            manifest = Manifest.from_json(data)
        if manifest.key != key or manifest.generation != generation.name:
            raise ColdStoreError(f"its manifest names key {manifest.key!r}, generation {manifest.generation!r}")
        stored = generation.manifest
        clock = time.time() if stored is None or stored.modified is None else min(time.time(), stored.modified)
        if manifest.created > clock + FUTURE_BOUND:
            raise ColdStoreError(f"its manifest is dated {manifest.created - clock:.0f} s ahead of the store's clock")
        artifact = generation.objects.get(manifest.artifact_name)
        if artifact is None:
            raise ColdStoreError(f"its artifact {manifest.artifact_name} is missing")
        if artifact.size != manifest.size_bytes:
            raise ColdStoreError(
                f"its artifact {manifest.artifact_name} holds {artifact.size} bytes, its manifest declares "
                f"{manifest.size_bytes}"
            )
        return manifest

    def _collect(self, key: str, scan: _Scan) -> int:
        """Delete what no reader will use: every generation ranked below the current one, every unusable one, and
        objects of uploads dated beyond :data:`FUTURE_BOUND` (manifests first, then artifacts). Returns how many
        generations were deleted.

        With no current generation, only the unusable ones and those dated too far ahead go: an upload in
        progress is left alone.
        """
        now = time.time()
        doomed = {g.name: g for g in scan.unusable}
        for candidate in scan.generations:
            impossible = candidate.created_ns / _NS > now + FUTURE_BOUND
            older = scan.current is not None and candidate.rank < scan.current.rank
            if impossible or older:
                doomed[candidate.name] = candidate
        if scan.current is not None:
            doomed.pop(scan.current.name, None)
        manifests = [name for g in doomed.values() for name in g.objects if name.endswith(".json")]
        artifacts = [name for g in doomed.values() for name in g.objects if not name.endswith(".json")]
        self._remove(key, sorted(manifests))
        self._remove(key, sorted(artifacts))
        return len(doomed)

    def get_manifest(self, key: str) -> Manifest | None:
        """Return the newest usable manifest of ``key``, or None (see :meth:`ColdStore.get_manifest`).

        An unusable generation (dated too far ahead, a malformed manifest such as one written by a newer
        repocache, a missing or truncated artifact) is skipped, with one warning per process.
        """
        check_key(key)
        return self._scan(key, self._entries(key)).manifest

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
        """Return True when a usable manifest of ``key`` is stored (see :meth:`ColdStore.exists`)."""
        return self.get_manifest(key) is not None

    def delete(self, key: str) -> None:
        """Delete every object of ``key``, manifests first (see :meth:`ColdStore.delete`)."""
        check_key(key)
        names = self._entries(key)
        self._remove(key, sorted(names, key=lambda name: not name.endswith(".json")))
        self._forget_key(key)

    def list(self) -> Iterator[Manifest]:
        """Yield the newest usable manifest of every key (see :meth:`ColdStore.list`)."""
        for key, entries in self._all_entries():
            if not is_key(key):
                continue
            manifest = self._scan(key, entries).manifest
            if manifest is not None:
                yield manifest

    def prune(
        self,
        *,
        older_than: float | None = None,
        keep_bytes: int | None = None,
        stale_after: float = STALE_UPLOAD_AGE,
    ) -> builtins.list[Manifest]:
        """Delete what dead uploads left and unusable generations of every key, then apply a retention policy with
        :func:`prune_store`.

        First the leftovers of uploads that wrote nothing for ``stale_after`` seconds (their host was killed):
        temporary files of a directory store, incomplete S3 multipart uploads under the store's prefix, and
        artifacts that never got a manifest. Then unusable generations (see the module docstring) whatever the
        policy, and generations ranked below a key's current one (leftovers of interrupted clean-ups). These are
        logged, not returned.

        Args:
            older_than: see :func:`prune_store`.
            keep_bytes: see :func:`prune_store`.
            stale_after: seconds without a write after which an upload is taken for dead
                (:data:`STALE_UPLOAD_AGE`, an hour, by default).

        Returns:
            The manifests whose keys were deleted by the policy.

        Raises:
            ConfigError: ``stale_after``, ``older_than`` or ``keep_bytes`` is negative.
            ColdStoreError: the store failed.
        """
        if isinstance(stale_after, bool) or not isinstance(stale_after, (int, float)) or not stale_after >= 0:
            raise ConfigError(f"invalid stale_after {stale_after!r}: expected a non-negative number of seconds")
        swept = self._sweep_stale_uploads(stale_after)
        if swept:
            logger.info("pruned %d leftovers of uploads dead for more than %.0f s from %s", swept, stale_after, self)
        cutoff = time.time() - stale_after
        for key, entries in self._all_entries():
            if not is_key(key):
                continue
            scan = self._scan(key, entries)
            removed = self._collect(key, scan)
            orphans = [g for g in scan.generations if g.manifest is None and _last_write(g) < cutoff]
            orphans = [g for g in orphans if scan.current is None or g.name != scan.current.name]
            if orphans:
                self._remove(key, sorted(name for g in orphans for name in g.objects))
                logger.info("pruned %d artifacts of %s that never got a manifest", len(orphans), self._describe(key))
            if removed or orphans:
                if removed:
                    logger.info("pruned %d unusable or superseded generations of %s", removed, self._describe(key))
                if scan.current is None and not self._entries(key):
                    self._forget_key(key)
        return prune_store(self, older_than=older_than, keep_bytes=keep_bytes)


def _last_write(generation: _Generation) -> float:
    """When the store last wrote an object of ``generation`` (its creation time when the store does not say)."""
    times = [o.modified for o in generation.objects.values() if o.modified is not None]
    return max(times) if times else generation.created_ns / _NS
