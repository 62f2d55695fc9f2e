"""A cold store on any filesystem fsspec speaks: S3 first, GCS, Azure and others when their package is installed.

This is the only module that imports fsspec, and the one place where fsspec's and its backends' exceptions
(``botocore``, ``aiohttp``, ...) become :class:`~repocache.errors.ColdStoreError`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import logging
import queue
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any, BinaryIO, cast

from repocache.cold.conditional import ConditionalWrites, conditional_writes_for
from repocache.cold.enforcement import enforces_conditions
from repocache.cold.generations import (
    LEASES,
    GenerationStore,
    StoredObject,
    check_ttl,
    lease_document,
    parse_lease,
)
from repocache.cold.manifest import MANIFEST_MAX_BYTES, check_key
from repocache.cold.store import Lease
from repocache.errors import ColdStoreError, ConfigError, UnsafeFileError
from repocache.keys import scrub

__all__ = ["ACCEPTED_PROTOCOLS", "STREAM_MEMORY_BOUND", "FsspecStore"]

logger = logging.getLogger("repocache.cold")

_BLOCK = 5 << 20  # upload part size: memory per upload stays near this, whatever the repo size
# Download window: each is one ranged GET, held in memory until it has been read, then dropped before the next
# GET (which briefly needs a second window: botocore joins the body's chunks). Memory per download is therefore
# about two windows whatever the artifact's size (measured: 17 MB traced for 50 MB and 100 MB artifacts). Object
# stores answer a GET after tens of milliseconds, so a window much smaller than this spends more time waiting
# than transferring.
_READ_BLOCK = 8 << 20
# S3 downloads: one streamed GET read _STREAM_CHUNK at a time by a helper thread, at most _STREAM_DEPTH chunks
# queued ahead of the unpacking. Memory per download is therefore bounded by STREAM_MEMORY_BOUND (the queue, the
# chunk being read and the chunk being unpacked), whatever the artifact's size.
_STREAM_CHUNK = 1 << 20
_STREAM_DEPTH = 8
STREAM_MEMORY_BOUND = (_STREAM_DEPTH + 2) * _STREAM_CHUNK
"""Bytes of an artifact held in memory at most by one download from S3 (10 MiB): 8 MiB read ahead, plus the MiB
being received and the MiB being unpacked; botocore's socket buffer comes on top (tens of KiB)."""
_STREAM_RETRIES = 3  # a broken stream is resumed with a ranged GET from where it broke, this many times
_PUT_TIMEOUT = 0.1  # seconds between checks that the reader still wants the helper's next chunk
_CHUNK = 256 * 1024
_JOIN_TIMEOUT = 5.0  # seconds a closed download waits for its helper thread (a stalled socket: it is a daemon)
_S3_PROTOCOLS = ("s3", "s3a")
_S3_HINT = "pip install 'git-repocache[s3]'"
_HINTS = {"gs": "pip install 'git-repocache[gcs]'", "gcs": "pip install 'git-repocache[gcs]'"}
_HINTS.update(dict.fromkeys(("az", "abfs", "abfss"), "pip install 'git-repocache[azure]'"))
_OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "tos"})
ACCEPTED_PROTOCOLS = _OBJECT_STORE_PROTOCOLS | {"file", "local", "memory", "sftp", "hdfs", "webhdfs"}
"""The fsspec schemes a cold store may use: object stores, shared filesystems, and ``memory://`` for tests."""


class FsspecStore(GenerationStore):
    """A :class:`~repocache.cold.ColdStore` under an fsspec URL such as ``s3://bucket/prefix``.

    Objects follow the layout of :mod:`repocache.cold.generations`. Object stores have no rename, so atomicity comes
    from the layout: each upload writes an artifact under a name of its own (one PUT, or a multipart upload that
    only becomes visible when completed, and is aborted on failure), then its manifest in one PUT. Listings are
    never served from fsspec's cache, so uploads by other hosts are seen at once. Uploads stream in parts of 5 MiB,
    downloads in windows of 8 MiB (one ranged GET each, one window in memory at a time).

    Args:
        url: an fsspec URL naming the store's root, e.g. ``s3://bucket/prefix`` or ``gcs://bucket/prefix``.
        **storage_options: passed to the fsspec filesystem, e.g. ``endpoint_url=...`` or ``anon=True`` for s3fs.

    Attributes:
        url: the store's URL with any user-info removed (safe for messages and logs).

    Raises:
        ConfigError: fsspec or the filesystem package for the URL's protocol is not installed (for S3:
            ``pip install 'git-repocache[s3]'``), the protocol is unknown, or the URL names no location.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = scrub(url)
        protocol = url.split("://", 1)[0].split("::")[-1].lower() if "://" in url else "file"
        if protocol not in ACCEPTED_PROTOCOLS:
            # Refused before fsspec sees it: some of its filesystems (ftp) connect on construction, and would fail
            # with a bare "Name or service not known" instead of naming the setting.
            raise ConfigError(
                f"invalid cold_store {self.url!r}: unsupported scheme {protocol!r}; accepted are a directory path, "
                f"file:///dir, or {', '.join(f'{name}://' for name in sorted(ACCEPTED_PROTOCOLS - {'file'}))}"
            )
        try:
            fsspec = importlib.import_module("fsspec")
        except ImportError as exc:
            hint = _S3_HINT if protocol in _S3_PROTOCOLS else f"pip install fsspec and its {protocol} filesystem"
            hint = _HINTS.get(protocol, hint)
            raise ConfigError(f"cold_store {self.url!r} needs fsspec, which is not installed: {hint}") from exc
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            hint = _S3_HINT if protocol in _S3_PROTOCOLS else _HINTS.get(protocol, str(exc))
            raise ConfigError(
                f"cold_store {self.url!r} needs the fsspec filesystem for {protocol!r}, which is not installed: {hint}"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"invalid cold_store {self.url!r}: {scrub(str(exc))}; expected an fsspec URL such as s3://bucket/prefix"
            ) from exc
        self._fs: Any = fs
        self._root: str = str(root).rstrip("/")
        if not self._root:
            raise ConfigError(f"invalid cold_store {self.url!r}: it names no bucket or directory")
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        # Object stores have no directories to make, and s3fs's makedirs would create a missing bucket.
        self._object_store = bool(_OBJECT_STORE_PROTOCOLS.intersection(protocols))
        self._writes: ConditionalWrites | None = conditional_writes_for(fs, protocols)
        self._s3 = bool(set(_S3_PROTOCOLS).intersection(protocols))  # multipart uploads to abort, streamed GETs

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def _path(self, key: str, name: str = "") -> str:
        return f"{self._root}/{key}/{name}" if name else f"{self._root}/{key}"

    def _describe(self, key: str, name: str = "") -> str:
        return f"{self.url.rstrip('/')}/{key}/{name}" if name else f"{self.url.rstrip('/')}/{key}"

    @contextlib.contextmanager
    def _translated(self, action: str, key: str, name: str = "", *, missing_ok: bool = False) -> Iterator[None]:
        """Turn every backend exception into ColdStoreError; FileNotFoundError passes when ``missing_ok``."""
        try:
            yield
        except ColdStoreError:
            raise
        except FileNotFoundError:
            if missing_ok:
                raise
            raise ColdStoreError(f"cold store: cannot {action} {self._describe(key, name)}: not found") from None
        except Exception as exc:
            raise ColdStoreError(
                f"cold store: cannot {action} {self._describe(key, name)}: {type(exc).__name__}: {scrub(str(exc))}"
            ) from exc

    def _entries(self, key: str) -> dict[str, StoredObject]:
        directory = self._path(key)
        try:
            with self._translated("list", key, missing_ok=True):
                self._fs.invalidate_cache(directory)
                infos = self._fs.ls(directory, detail=True)
        except FileNotFoundError:
            return {}
        found: dict[str, StoredObject] = {}
        for info in infos:
            if isinstance(info, dict) and info.get("type", "file") == "file":
                found[str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]] = _stored_object(info)
        return found

    def _all_entries(self) -> Iterator[tuple[str, dict[str, StoredObject]]]:
        with self._translated("list", ""):
            self._fs.invalidate_cache(self._root)
            try:
                infos = self._fs.find(self._root, detail=True)
            except FileNotFoundError:
                infos = {}
        by_key: dict[str, dict[str, StoredObject]] = {}
        prefix = self._root + "/"
        for path, info in infos.items():
            path = str(path)
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if len(parts) == 2 and parts[0] and parts[1]:
                by_key.setdefault(parts[0], {})[parts[1]] = _stored_object(info)
        for key in sorted(by_key):
            yield key, by_key[key]

    @contextlib.contextmanager
    def _upload(self, key: str, name: str) -> Iterator[BinaryIO]:
        path = self._path(key, name)
        with self._translated("write", key, name):
            if not self._object_store:
                self._fs.makedirs(self._path(key), exist_ok=True)
            out = self._fs.open(path, "wb", block_size=_BLOCK)
        try:
            yield cast(BinaryIO, _TranslatingWriter(out, self, key, name))
        except BaseException:
            _abandon(out)
            raise
        try:
            with self._translated("write", key, name):
                out.close()  # completes the upload: only now does the object appear
        except BaseException:
            _abandon(out)  # a failed completion leaves the multipart upload open: abort it
            raise
        self._fs.invalidate_cache(self._path(key))

    def _read(self, key: str, name: str, limit: int) -> bytes:
        self._check_regular(key, name)
        # No read-ahead: s3fs would fetch a whole block (50 MiB by default) of an oversize object; this fetches
        # limit + 1 bytes at most, in one ranged read.
        with (
            self._translated("read", key, name, missing_ok=True),
            self._fs.open(self._path(key, name), "rb", block_size=limit + 1, cache_type="none") as f,
        ):
            data: bytes = f.read(limit + 1)
        if len(data) > limit:
            raise UnsafeFileError(self._describe(key, name), f"it holds more than the bound of {limit} bytes")
        return data

    def _open(self, key: str, name: str) -> BinaryIO:
        path = self._path(key, name)
        try:
            self._check_regular(key, name)
        except UnsafeFileError as exc:
            raise ColdStoreError(f"cold store: cannot open {self._describe(key, name)}: {exc.reason}") from exc
        with self._translated("open", key, name, missing_ok=True):
            self._fs.invalidate_cache(self._path(key))
            if self._s3:
                # One streamed GET for the whole artifact (resumed from where it broke, at most _STREAM_RETRIES
                # times): ranged GETs one after another cost a round trip each, and a server that reads the whole
                # object per range (moto) made a 323 MiB restore 12 times slower than one GET.
                info = self._fs.info(path)  # FileNotFoundError before any thread starts
                bucket, object_key, _ = self._fs.split_path(path)
                chunks = _s3_stream(self._fs, bucket, object_key, str(info.get("ETag") or ""))
                return io.BufferedReader(
                    _PrefetchingReader(chunks, self, key, name, depth=_STREAM_DEPTH, chunk=_STREAM_CHUNK), _CHUNK
                )
            # No fsspec cache: its read-ahead cache kept the window, a copy of it and a joined result alive at once
            # (72 MB for a 50 MB artifact); the readers below keep one window at a time instead.
            inner = self._fs.open(path, "rb", block_size=_READ_BLOCK, cache_type="none")
        if self._object_store:
            # Other object stores: the next window is fetched while this one is unpacked.
            windows = _windows(inner, _READ_BLOCK)
            return io.BufferedReader(_PrefetchingReader(windows, self, key, name, depth=1, chunk=_READ_BLOCK), _CHUNK)
        return io.BufferedReader(_TranslatingReader(inner, self, key, name, window=_READ_BLOCK), _CHUNK)

    def _check_regular(self, key: str, name: str) -> None:
        """On a filesystem with special files (not an object store): refuse an object that is not a regular file
        before opening it (a FIFO would block the read forever, a link to ``/dev/zero`` never end).

        Raises:
            FileNotFoundError: it is missing.
            UnsafeFileError: it is a FIFO, a device, a directory or a symbolic link.
        """
        if self._object_store:
            return  # every object of an object store is a plain, finite blob
        with self._translated("stat", key, name, missing_ok=True):
            self._fs.invalidate_cache(self._path(key))
            info = self._fs.info(self._path(key, name))
        _refuse_special(self._describe(key, name), info)

    def _size(self, key: str, name: str) -> int:
        with self._translated("stat", key, name, missing_ok=True):
            self._fs.invalidate_cache(self._path(key))
            return int(self._fs.size(self._path(key, name)))

    # -- leases (conditional writes: S3, GCS, Azure) ----------------------------------------------------------

    @property
    def supports_leases(self) -> bool:
        """True on a store whose conditional writes make a lease atomic, once it was seen to enforce them.

        S3 (``If-None-Match: *``, ``If-Match``), GCS (``ifGenerationMatch``) and Azure Blob Storage
        (``If-None-Match: *``, ``If-Match``) offer them. The first time this is asked in a process, the store is
        probed (:mod:`repocache.cold.enforcement`): one that ignores the conditions is used without leases, with
        one warning. A store that fails during the probe reads as without leases this time (the miss clones
        independently) and is probed again next time.
        """
        if self._writes is None:
            return False
        try:
            return self._enforced()
        except ColdStoreError as exc:
            logger.warning("%s; cloning independently", exc)
            return False

    def _enforced(self) -> bool:
        """Whether the store enforces its conditional writes (probed once per process; see enforcement)."""
        assert self._writes is not None
        writes = self._writes
        identity = (type(self._fs).__qualname__, getattr(self._fs, "_fs_token", None) or id(self._fs), self._root)
        with self._translated("check the conditional writes of", LEASES):
            return enforces_conditions(identity, self.url, writes, f"{self._root}/{LEASES}", self._fs.rm_file)

    def _lease_path(self, key: str) -> str:
        return f"{self._root}/{LEASES}/{check_key(key)}.json"

    def _conditional_put(self, key: str, data: bytes, token: str | None) -> str | None:
        """Write ``data`` as the lease of ``key``: create-only without ``token``, else only over that version.
        Its new token, or None if the condition did not hold."""
        assert self._writes is not None
        path = self._lease_path(key)
        try:
            with self._translated("write the lease of", key):
                if token is None:
                    return self._writes.create(path, data)
                return self._writes.replace(path, data, token)
        finally:
            self._fs.invalidate_cache(f"{self._root}/{LEASES}")

    def _lease_info(self, key: str) -> dict[str, Any] | None:
        """The listing entry of the lease object of ``key`` (one metadata request: S3 HEAD, GCS object GET, Azure
        blob properties), or None when there is none."""
        path = self._lease_path(key)
        self._fs.invalidate_cache(f"{self._root}/{LEASES}")
        try:
            with self._translated("read the lease of", key, missing_ok=True):
                info: dict[str, Any] = self._fs.info(path)
        except FileNotFoundError:
            return None
        return info

    def _read_lease(self, key: str, info: dict[str, Any] | None = None) -> tuple[tuple[str, float, str], str] | None:
        """((holder, expires, token), version token) of the lease of ``key``, or None. The version is read first
        (or taken from ``info``, its listing entry), so a change in between makes a conditional write with it fail
        instead of acting on a lease replaced."""
        assert self._writes is not None
        path = self._lease_path(key)
        if info is None:
            info = self._lease_info(key)
            if info is None:
                return None
        etag = str(self._writes.token(info))
        try:
            _refuse_special(path, info)
            size = info.get("size")
            if isinstance(size, int) and size > MANIFEST_MAX_BYTES:
                raise UnsafeFileError(path, f"it holds {size} bytes, more than the bound of {MANIFEST_MAX_BYTES}")
            data = b""
            if size != 0:  # a ranged read of an empty object is an error on S3 (416)
                with self._translated("read the lease of", key, missing_ok=True):
                    # Never more than the bound, even if it grew since: an oversize lease is not read whole.
                    data = bytes(self._fs.cat_file(path, start=0, end=MANIFEST_MAX_BYTES + 1))
        except FileNotFoundError:
            return None
        except UnsafeFileError as exc:
            logger.warning("cold store: the lease %s reads as expired: %s", path, exc.reason)
            data = b""
        if len(data) > MANIFEST_MAX_BYTES:
            logger.warning("cold store: the lease %s reads as expired: larger than %d bytes", path, MANIFEST_MAX_BYTES)
            data = b""
        return parse_lease(data), etag

    def _require_leases(self) -> None:
        if self._writes is None:
            raise ColdStoreError(
                f"cold store {self.url}: leases need conditional writes, which only S3, GCS and Azure offer here"
            )
        if not self._enforced():
            raise ColdStoreError(
                f"cold store {self.url}: the store does not enforce conditional writes, so it takes no leases"
            )

    def try_lease(self, key: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease of ``key`` with a conditional write (see :meth:`FleetStore.try_lease`).

        A missing lease is created create-only (``If-None-Match: *``, ``ifGenerationMatch=0``); an expired one (or
        our own) is replaced only over the version it was read with (its ETag or generation), so of two hosts
        taking over the same expired lease one wins.
        """
        self._require_leases()
        ttl = check_ttl(ttl)
        current = self._read_lease(key)
        now = time.time()
        expires = now + ttl
        if current is None:
            etag = self._conditional_put(key, lease_document(holder, expires), None)
        else:
            (owner, until, _token), seen = current
            if until > now and owner != holder:
                return None
            etag = self._conditional_put(key, lease_document(holder, expires), seen)
        return None if etag is None else Lease(key, holder, expires, etag)

    def current_lease(self, key: str, *, known: Lease | None = None) -> Lease | None:
        """The lease of ``key`` as stored (see :class:`~repocache.cold.FleetStore`): one metadata request for its
        version (ETag, generation), and only when that is not ``known``'s one GET of the object (at most 64 KiB)."""
        self._require_leases()
        assert self._writes is not None
        info = self._lease_info(key)
        if info is None:
            return None
        version = self._writes.token(info)
        if known is not None and version is not None and version == known.token:
            return known
        current = self._read_lease(key, info)
        if current is None:
            return None
        (holder, expires, _token), seen = current
        return Lease(key, holder, expires, seen)

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a held lease, if its version is still ours (see :meth:`FleetStore.renew_lease`)."""
        self._require_leases()
        expires = time.time() + check_ttl(ttl)
        etag = self._conditional_put(lease.key, lease_document(lease.holder, expires), lease.token)
        return None if etag is None else Lease(lease.key, lease.holder, expires, etag)

    def release_lease(self, lease: Lease) -> None:
        """Overwrite a held lease with an expired one, if its version is still ours (see
        :meth:`FleetStore.release_lease`); a lease taken over meanwhile is left alone."""
        self._require_leases()
        self._conditional_put(lease.key, lease_document("", 0.0), lease.token)

    def _sweep_stale_uploads(self, older_than: float) -> int:
        """On S3: abort the incomplete multipart uploads under the store's prefix that neither started nor got a
        part in the last ``older_than`` seconds (a killed host's; a live upload adds a part every few seconds)."""
        if not self._s3:
            return 0  # other filesystems write objects in place: a dead upload is an artifact without a manifest
        bucket, prefix, _ = self._fs.split_path(self._root)
        prefix = f"{prefix}/" if prefix else ""
        cutoff = time.time() - older_than
        aborted = 0
        with self._translated("list the multipart uploads of", ""):
            request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            while True:
                reply = self._fs.call_s3("list_multipart_uploads", **request)
                for upload in reply.get("Uploads", []) or []:
                    if self._abort_if_stale(bucket, upload, cutoff):
                        aborted += 1
                if not reply.get("IsTruncated"):
                    break
                request["KeyMarker"] = reply.get("NextKeyMarker", "")
                request["UploadIdMarker"] = reply.get("NextUploadIdMarker", "")
        return aborted

    def _abort_if_stale(self, bucket: str, upload: dict[str, Any], cutoff: float) -> bool:
        """Abort one listed multipart upload if nothing was written to it since ``cutoff``; whether it was."""
        key, upload_id = str(upload.get("Key", "")), str(upload.get("UploadId", ""))
        last = _epoch(upload.get("Initiated"))
        # The generation in the object's name is when its writer started (moto reports a fixed Initiated).
        named = re.match(r"^(\d{20})-", key.rsplit("/", 1)[-1])
        if named is not None:
            last = max(last or 0.0, int(named[1]) / 1e9)
        if not key or not upload_id or last is None or last >= cutoff:
            return False
        parts = self._fs.call_s3("list_parts", Bucket=bucket, Key=key, UploadId=upload_id, MaxParts=1000)
        for part in parts.get("Parts", []) or []:
            written = _epoch(part.get("LastModified"))
            if written is not None and written >= cutoff:
                return False  # still receiving parts: a live upload
        try:
            self._fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except FileNotFoundError:
            return False  # completed or aborted meanwhile
        logger.info(
            "cold store: aborted the incomplete multipart upload of s3://%s/%s (started %.0f)", bucket, key, last
        )
        return True

    def _remove(self, key: str, names: Iterable[str]) -> None:
        for name in names:
            try:
                with self._translated("delete", key, name, missing_ok=True):
                    self._fs.rm_file(self._path(key, name))
            except FileNotFoundError:
                continue
        self._fs.invalidate_cache(self._path(key))


def _epoch(value: Any) -> float | None:
    """Epoch seconds of a datetime from an S3 reply (naive ones are UTC), or None."""
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return float(value.timestamp())


def _stored_object(info: Any) -> StoredObject:
    """Size and store time of an fsspec listing entry (S3 ``LastModified``, a file's ``mtime``, GCS ``updated``)."""
    info = info if isinstance(info, dict) else {}
    try:
        size = int(info.get("size", info.get("Size", 0)) or 0)
    except (TypeError, ValueError):
        size = -1  # unknown: never matches a manifest, so the generation is not trusted
    modified: float | None = None
    for name in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            modified = value.timestamp()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            modified = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                modified = datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        if modified is not None:
            break
    return StoredObject(size, modified)


def _refuse_special(where: str, info: dict[str, Any]) -> None:
    """Raise UnsafeFileError unless fsspec's ``info`` describes a regular file that is not a symbolic link."""
    kind = info.get("type")
    if info.get("islink"):
        raise UnsafeFileError(where, "it is a symbolic link; expected a regular file, not a symbolic link")
    if kind not in (None, "file"):
        what = "a directory" if kind == "directory" else "not a regular file (a FIFO, a device or a socket)"
        raise UnsafeFileError(where, f"it is {what}; expected a regular file")


class _TranslatingWriter(io.RawIOBase):
    """A write-only stream over a backend file whose errors surface as ColdStoreError."""

    def __init__(self, inner: Any, store: FsspecStore, key: str, name: str) -> None:
        super().__init__()
        self._inner = inner
        self._store = store
        self._key = key
        self._name = name

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with self._store._translated("write", self._key, self._name):
            written = self._inner.write(data)
        return int(written) if written is not None else len(memoryview(data))


def _abandon(out: Any) -> None:
    """Drop a partly written file without publishing it (s3fs aborts the multipart upload)."""
    with contextlib.suppress(Exception):
        discard = getattr(out, "discard", None)
        if callable(discard):
            discard()
    # Closing would upload what was buffered as if it were complete; mark the file closed instead.
    with contextlib.suppress(Exception):
        out.closed = True


class _TranslatingReader(io.RawIOBase):
    """A read-only stream over a backend file whose errors surface as ColdStoreError.

    With ``window``, the backend is read ``window`` bytes at a time (one ranged GET each) and reads are served
    from that one window without copying it; the window is dropped before the next is fetched.
    """

    def __init__(self, inner: Any, store: FsspecStore, key: str, name: str, *, window: int = 0) -> None:
        super().__init__()
        self._inner = inner
        self._store = store
        self._key = key
        self._name = name
        self._window_size = window
        self._window = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._window_size:
            data = self._fetch(len(view))
            view[: len(data)] = data
            return len(data)
        if not self._window:
            self._window = memoryview(b"")  # let the old window go before the next one arrives
            self._window = memoryview(self._fetch(self._window_size))
        count = min(len(view), len(self._window))
        view[:count] = self._window[:count]
        self._window = self._window[count:]
        return count

    def _fetch(self, size: int) -> bytes:
        with self._store._translated("read", self._key, self._name):
            data: bytes = self._inner.read(size)
        return data

    def close(self) -> None:
        if not self.closed:
            self._window = memoryview(b"")
            try:
                with contextlib.suppress(Exception):
                    self._inner.close()
            finally:
                super().close()


def _windows(inner: Any, size: int) -> Generator[bytes, None, None]:
    """The bytes of a backend file, ``size`` at a time (one ranged GET each); the file is closed at the end."""
    try:
        while True:
            data: bytes = inner.read(size)
            if not data:
                return
            yield data
    finally:
        with contextlib.suppress(Exception):
            inner.close()


def _s3_stream(fs: Any, bucket: str, object_key: str, etag: str) -> Generator[bytes, None, None]:
    """The bytes of an S3 object from one streamed GET, in chunks of at most ``_STREAM_CHUNK``.

    A stream that breaks is resumed from where it broke with a ranged GET (``If-Match`` the ETag first seen, so a
    replaced object is never spliced onto the old one's bytes), at most ``_STREAM_RETRIES`` times.
    """
    from fsspec.asyn import sync  # fsspec is imported by then: only FsspecStore calls this

    offset = 0
    retries = 0
    broken = _stream_errors()
    while True:
        request: dict[str, Any] = {"Bucket": bucket, "Key": object_key}
        if etag:
            request["IfMatch"] = etag
        if offset:
            request["Range"] = f"bytes={offset}-"
        reply = fs.call_s3("get_object", **request)
        etag = etag or str(reply.get("ETag") or "")
        body = reply["Body"]
        try:
            while True:
                try:
                    data: bytes = sync(fs.loop, _read_chunk, body, _STREAM_CHUNK)
                except broken as exc:
                    if retries >= _STREAM_RETRIES:
                        raise
                    retries += 1
                    logger.info(
                        "cold store: the download of %s broke at byte %d (%s); resuming", object_key, offset, exc
                    )
                    break
                if not data:
                    return
                offset += len(data)
                yield data
        finally:
            with contextlib.suppress(Exception):
                body.close()


def _stream_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a broken or stalled HTTP stream raises under s3fs (aiohttp's, botocore's, a timeout)."""
    import asyncio

    found: list[type[BaseException]] = [OSError, asyncio.TimeoutError]
    for module, name in (("aiohttp", "ClientError"), ("botocore.exceptions", "HTTPClientError")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


async def _read_chunk(body: Any, size: int) -> bytes:
    """Up to ``size`` bytes of a streaming body (fewer only at its end), read on fsspec's event loop."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        data: bytes = await body.read(size - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _End:
    """The helper thread's last item: the stream ended cleanly."""


class _PrefetchingReader(io.RawIOBase):
    """A read-only stream fed by a helper thread that runs ``chunks`` ahead of the reader.

    At most ``depth`` chunks wait in the queue, so at most ``(depth + 2) * chunk`` bytes are held: the queue, the
    chunk the helper is receiving, and the one being read. A failure in the helper surfaces, as ColdStoreError, at
    the read that reaches it; closing the reader stops the helper (and closes its connection).
    """

    def __init__(
        self, chunks: Generator[bytes, None, None], store: FsspecStore, key: str, name: str, *, depth: int, chunk: int
    ) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._name = name
        self._chunks = chunks
        self._queue: queue.Queue[bytes | BaseException | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._window = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="repocache-download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        item: bytes | BaseException | _End
        try:
            for data in self._chunks:
                if not self._offer(data):
                    return
            item = _End()
        except BaseException as exc:  # handed to the reader, which raises it
            item = exc
        finally:
            with contextlib.suppress(Exception):
                self._chunks.close()
        self._offer(item)

    def _offer(self, item: bytes | BaseException | _End) -> bool:
        """Queue ``item`` unless the reader closed meanwhile; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_TIMEOUT)
                return True
            except queue.Full:
                continue
        return False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._window:
            if self._ended:
                return 0
            self._window = memoryview(b"")  # let the old chunk go before taking the next
            item = self._queue.get()
            if isinstance(item, _End):
                self._ended = True
                return 0
            if isinstance(item, BaseException):
                self._ended = True
                with self._store._translated("read", self._key, self._name):
                    raise item
            self._window = memoryview(item)
        count = min(len(view), len(self._window))
        view[:count] = self._window[:count]
        self._window = self._window[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._window = memoryview(b"")
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(timeout=_JOIN_TIMEOUT)
            super().close()
