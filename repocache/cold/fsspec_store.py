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
import time
from collections.abc import Iterable, Iterator
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

__all__ = ["ACCEPTED_PROTOCOLS", "FsspecStore"]

logger = logging.getLogger("repocache.cold")

_BLOCK = 5 << 20  # upload part size: memory per upload stays near this, whatever the repo size
# Download window: each is one ranged GET, held in memory until it has been read, then dropped before the next
# GET (which briefly needs a second window: botocore joins the body's chunks). Memory per download is therefore
# about two windows whatever the artifact's size (measured: 17 MB traced for 50 MB and 100 MB artifacts). Object
# stores answer a GET after tens of milliseconds, so a window much smaller than this spends more time waiting
# than transferring.
_READ_BLOCK = 8 << 20
_CHUNK = 256 * 1024
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
        with self._translated("write", key, name):
            out.close()  # completes the upload: only now does the object appear
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
            # No fsspec cache: its read-ahead cache kept the window, a copy of it and a joined result alive at once
            # (72 MB for a 50 MB artifact); _TranslatingReader keeps exactly one window instead.
            inner = self._fs.open(path, "rb", block_size=_READ_BLOCK, cache_type="none")
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

    def _read_lease(self, key: str) -> tuple[tuple[str, float, str], str] | None:
        """((holder, expires, token), version token) of the lease of ``key``, or None. The version is read first,
        so a change in between makes a conditional write with it fail instead of acting on a lease replaced."""
        assert self._writes is not None
        path = self._lease_path(key)
        self._fs.invalidate_cache(f"{self._root}/{LEASES}")
        try:
            with self._translated("read the lease of", key, missing_ok=True):
                info = self._fs.info(path)
                etag = str(self._writes.token(info))
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

    def _remove(self, key: str, names: Iterable[str]) -> None:
        for name in names:
            try:
                with self._translated("delete", key, name, missing_ok=True):
                    self._fs.rm_file(self._path(key, name))
            except FileNotFoundError:
                continue
        self._fs.invalidate_cache(self._path(key))


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
