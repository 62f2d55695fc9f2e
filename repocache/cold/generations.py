"""The layout and rules the built-in stores share, implemented once on top of a few primitives per backend.

:class:`GenerationStore` is the engine of :class:`~repocache.cold.LocalDirStore` and
:class:`~repocache.cold.FsspecStore`; a backend provides the primitives (list, upload, read, open, size, remove)
and inherits the layout::

    <root>/<key>/<generation>.tar        the artifact (".tar.zst" when compressed with zstd)
    <root>/<key>/<generation>.json       its manifest, written after the artifact: the commit point
    generation = "<created, integer nanoseconds, 20 digits>-<16 random hex digits>"

Every upload writes objects with a name of its own, so concurrent uploads of one key never write to the same
object and a reader never sees a half-written artifact: a manifest only exists once its artifact is complete.
Generations sort by their ``created`` time, and the current manifest of a key is the newest readable one, so an
older upload can never shadow a newer one; object stores need neither rename nor compare-and-swap for this. After
committing, an upload deletes the older generations (manifests first, then artifacts), or deletes itself when it
finds that a newer upload committed meanwhile.

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
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from os import PathLike
from typing import BinaryIO, cast

from repocache.cold.manifest import (
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

__all__ = ["LEASES", "GenerationStore", "check_ttl", "lease_document", "parse_lease"]

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


class GenerationStore(ColdStore):
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
        """
        check_key(key)
        suffix = artifact_suffix(compression)
        generation = _new_generation(time.time() if created is None else created)
        committed, _ = _parse(self._names(key))
        if committed and committed[0][:20] >= generation[:20]:
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
            except UnsafeFileError as exc:
                logger.warning(
                    "ignoring unreadable cold store manifest %s: %s", self._describe(key, generation + ".json"), exc
                )
                continue
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
            if not is_key(key):
                continue
            manifest = self._newest_manifest(key, names)
            if manifest is not None:
                yield manifest

    def prune(self, *, older_than: float | None = None, keep_bytes: int | None = None) -> builtins.list[Manifest]:
        """Apply a retention policy with :func:`prune_store`; returns the manifests whose keys were deleted."""
        return prune_store(self, older_than=older_than, keep_bytes=keep_bytes)
