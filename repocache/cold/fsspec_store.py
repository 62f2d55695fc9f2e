"""A cold store on any filesystem fsspec speaks: S3 first, GCS, Azure and others when their package is installed.

This is the only module that imports fsspec, and the one place where fsspec's and its backends' exceptions
(``botocore``, ``aiohttp``, ...) become :class:`~repocache.errors.ColdStoreError`.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import shutil
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from repocache.cold.base import _GenerationStore
from repocache.errors import ColdStoreError, ConfigError
from repocache.keys import scrub

__all__ = ["FsspecStore"]

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
_OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "tos"})


class FsspecStore(_GenerationStore):
    """A :class:`~repocache.cold.ColdStore` under an fsspec URL such as ``s3://bucket/prefix``.

    Objects follow the layout of :mod:`repocache.cold.base`. Object stores have no rename, so atomicity comes
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
        try:
            fsspec = importlib.import_module("fsspec")
        except ImportError as exc:
            hint = _S3_HINT if protocol in _S3_PROTOCOLS else f"pip install fsspec and its {protocol} filesystem"
            raise ConfigError(f"cold_store {self.url!r} needs fsspec, which is not installed: {hint}") from exc
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            hint = _S3_HINT if protocol in _S3_PROTOCOLS else str(exc)
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

    def _names(self, key: str) -> builtins.list[str]:
        directory = self._path(key)
        try:
            with self._translated("list", key, missing_ok=True):
                self._fs.invalidate_cache(directory)
                paths = self._fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
        return [str(path).rstrip("/").rsplit("/", 1)[-1] for path in paths]

    def _all_names(self) -> Iterator[tuple[str, builtins.list[str]]]:
        with self._translated("list", ""):
            self._fs.invalidate_cache(self._root)
            try:
                paths = self._fs.find(self._root, detail=False)
            except FileNotFoundError:
                paths = []
        by_key: dict[str, builtins.list[str]] = {}
        prefix = self._root + "/"
        for path in paths:
            path = str(path)
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if len(parts) == 2 and parts[0] and parts[1]:
                by_key.setdefault(parts[0], []).append(parts[1])
        for key in sorted(by_key):
            yield key, by_key[key]

    def _publish(self, key: str, name: str, source: BinaryIO) -> None:
        path = self._path(key, name)
        with self._translated("write", key, name):
            if not self._object_store:
                self._fs.makedirs(self._path(key), exist_ok=True)
            out = self._fs.open(path, "wb", block_size=_BLOCK)
            try:
                shutil.copyfileobj(source, out, _CHUNK)
            except BaseException:
                _abandon(out)
                raise
            out.close()  # completes the upload: only now does the object appear
            self._fs.invalidate_cache(self._path(key))

    def _read(self, key: str, name: str, limit: int) -> bytes:
        with self._translated("read", key, name, missing_ok=True), self._fs.open(self._path(key, name), "rb") as f:
            data: bytes = f.read(limit + 1)
            return data

    def _open(self, key: str, name: str) -> BinaryIO:
        path = self._path(key, name)
        with self._translated("open", key, name, missing_ok=True):
            self._fs.invalidate_cache(self._path(key))
            # No fsspec cache: its read-ahead cache kept the window, a copy of it and a joined result alive at once
            # (72 MB for a 50 MB artifact); _TranslatingReader keeps exactly one window instead.
            inner = self._fs.open(path, "rb", block_size=_READ_BLOCK, cache_type="none")
        return io.BufferedReader(_TranslatingReader(inner, self, key, name, window=_READ_BLOCK), _CHUNK)

    def _size(self, key: str, name: str) -> int:
        with self._translated("stat", key, name, missing_ok=True):
            self._fs.invalidate_cache(self._path(key))
            return int(self._fs.size(self._path(key, name)))

    def _remove(self, key: str, names: Iterable[str]) -> None:
        for name in names:
            try:
                with self._translated("delete", key, name, missing_ok=True):
                    self._fs.rm_file(self._path(key, name))
            except FileNotFoundError:
                continue
        self._fs.invalidate_cache(self._path(key))


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
