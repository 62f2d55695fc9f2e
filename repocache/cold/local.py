"""A cold store in a local (or network-mounted) directory."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from repocache import locks
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
from repocache.safe_read import open_regular, read_regular

__all__ = ["LocalDirStore"]

logger = logging.getLogger("repocache.cold")

_TEMP_PREFIX = ".tmp-"
_LEASE_LOCK_TIMEOUT = 30.0  # seconds: the lock only guards a read and a rename
_TEMP_MAX_AGE = 24 * 3600.0  # an upload still writing after a day has crashed
_CHUNK = 256 * 1024


class LocalDirStore(GenerationStore):
    """A :class:`~repocache.cold.ColdStore` in a directory, shared safely by processes and by hosts mounting it.

    Objects follow the layout of :mod:`repocache.cold.generations`. Each object is written to a temporary file in its
    final directory (``<key>/.tmp-*``), flushed with ``fsync`` and renamed into place with :func:`os.replace`, and
    the directory is synced, so after a crash a file is either complete or absent. Temporary files left by
    crashed uploads are swept after a day. The directory is created on the first upload; until then, listing the
    store (``cold ls``, ``ls`` with a cold store, prune) raises :class:`~repocache.errors.ColdStoreError` naming it,
    so a mistyped path or an unmounted share is not taken for an empty store (a miss just finds no artifact).

    Args:
        path: the store's directory (``~`` is expanded, relative paths are made absolute).

    Attributes:
        root: the store's absolute directory.

    Raises:
        ConfigError: ``path`` exists and is not a directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"cold_store {str(self.root)!r} exists and is not a directory")

    def __repr__(self) -> str:
        return f"LocalDirStore({str(self.root)!r})"

    def _describe(self, key: str, name: str = "") -> str:
        return str(self.root / key / name) if name else str(self.root / key)

    def _fail(self, action: str, key: str, name: str, exc: OSError) -> ColdStoreError:
        detail = exc.reason if isinstance(exc, UnsafeFileError) else exc
        return ColdStoreError(f"cold store: cannot {action} {self._describe(key, name)}: {detail}")

    def _entries(self, key: str) -> dict[str, StoredObject]:
        directory = self.root / key
        found: dict[str, StoredObject] = {}
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted while we listed
                    found[entry.name] = StoredObject(st.st_size, st.st_mtime)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            raise self._fail("list", key, "", exc) from exc
        return found

    def _all_entries(self) -> Iterator[tuple[str, dict[str, StoredObject]]]:
        try:
            keys = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False))
        except FileNotFoundError as exc:
            # Not an empty store: a mistyped path or an unmounted share would pass for one, and hide every artifact.
            raise ColdStoreError(
                f"cold store: {self.root} does not exist (it is created by the first upload: evict or publish a "
                "repository into it, or create the directory)"
            ) from exc
        except OSError as exc:
            raise ColdStoreError(f"cold store: cannot list {self.root}: {exc}") from exc
        for key in keys:
            if not key.startswith("."):
                yield key, self._entries(key)

    @contextlib.contextmanager
    def _upload(self, key: str, name: str) -> Iterator[BinaryIO]:
        directory = self.root / key
        temp = directory / f"{_TEMP_PREFIX}{secrets.token_hex(8)}-{name}"
        try:
            out = _create(temp)
        except OSError as exc:
            raise self._fail("write", key, name, exc) from exc
        try:
            with out:
                yield out  # the writer's own errors pass through unchanged
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise self._fail("write", key, name, exc) from exc
            try:
                os.replace(temp, directory / name)
            except OSError as exc:
                raise self._fail("write", key, name, exc) from exc
            _fsync_directory(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        self._sweep_temporaries(key)

    def _sweep_temporaries(self, key: str) -> None:
        directory = self.root / key
        cutoff = time.time() - _TEMP_MAX_AGE
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(_TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)

    def _read(self, key: str, name: str, limit: int) -> bytes:
        try:
            return read_regular(self.root / key / name, limit=limit)
        except (FileNotFoundError, UnsafeFileError):
            raise
        except OSError as exc:
            raise self._fail("read", key, name, exc) from exc

    def _open(self, key: str, name: str) -> BinaryIO:
        try:
            return open_regular(self.root / key / name, buffering=_CHUNK)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._fail("open", key, name, exc) from exc

    def _size(self, key: str, name: str) -> int:
        try:
            return (self.root / key / name).stat().st_size
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._fail("stat", key, name, exc) from exc

    def _remove(self, key: str, names: Iterable[str]) -> None:
        for name in names:
            try:
                os.unlink(self.root / key / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._fail("delete", key, name, exc) from exc

    # -- leases ------------------------------------------------------------------------------------------------

    @property
    def supports_leases(self) -> bool:
        """True: a lock file next to the lease makes taking it atomic."""
        return True

    def _lease_path(self, key: str) -> Path:
        return self.root / LEASES / f"{check_key(key)}.json"

    @contextlib.contextmanager
    def _lease_lock(self, key: str) -> Iterator[Path]:
        """Hold ``.leases/<key>.lock`` (flock, freed by the kernel if the holder dies) around a read-modify-write."""
        path = self._lease_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = locks.acquire(path.with_suffix(".lock"), shared=False, timeout=_LEASE_LOCK_TIMEOUT)
        except OSError as exc:
            raise ColdStoreError(f"cold store: cannot lock the lease {path}: {exc}") from exc
        if handle is None:
            raise ColdStoreError(f"cold store: the lease lock {path.with_suffix('.lock')} stayed held")
        with handle:
            yield path

    def _read_lease(self, path: Path) -> tuple[str, float, str] | None:
        """The lease at ``path``, or None; one that is not a small regular file reads as expired (and is
        replaced by the next lease written, the rename replacing the file itself, never what a link names)."""
        try:
            return parse_lease(read_regular(path, limit=MANIFEST_MAX_BYTES))
        except FileNotFoundError:
            return None
        except UnsafeFileError as exc:
            logger.warning("cold store: the lease %s reads as expired: %s", path, exc.reason)
            return parse_lease(b"")
        except OSError as exc:
            raise ColdStoreError(f"cold store: cannot read the lease {path}: {exc}") from exc

    def _write_lease(self, path: Path, holder: str, expires: float) -> str:
        token = secrets.token_hex(8)
        temp = path.with_name(f"{_TEMP_PREFIX}{token}-{path.name}")
        try:
            temp.write_bytes(lease_document(holder, expires, token))
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise ColdStoreError(f"cold store: cannot write the lease {path}: {exc}") from exc
        return token

    def try_lease(self, key: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease of ``key`` unless another holder's is live (see :meth:`FleetStore.try_lease`)."""
        ttl = check_ttl(ttl)
        with self._lease_lock(key) as path:
            current = self._read_lease(path)
            now = time.time()
            if current is not None and current[1] > now and current[0] != holder:
                return None
            expires = now + ttl
            return Lease(key, holder, expires, self._write_lease(path, holder, expires))

    def current_lease(self, key: str, *, known: Lease | None = None) -> Lease | None:
        """The lease of ``key`` as stored (see :class:`~repocache.cold.FleetStore`): one read of the small lease file,
        without its lock (a lease is replaced by a rename, so a read sees the old or the new one whole)."""
        current = self._read_lease(self._lease_path(key))
        if current is None:
            return None
        holder, expires, token = current
        if known is not None and token and token == known.token:
            return known
        return Lease(key, holder, expires, token)

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a held lease (see :meth:`FleetStore.renew_lease`)."""
        ttl = check_ttl(ttl)
        with self._lease_lock(lease.key) as path:
            current = self._read_lease(path)
            if current is None or current[2] != lease.token:
                return None
            expires = time.time() + ttl
            return Lease(lease.key, lease.holder, expires, self._write_lease(path, lease.holder, expires))

    def release_lease(self, lease: Lease) -> None:
        """Give a held lease up (see :meth:`FleetStore.release_lease`)."""
        with self._lease_lock(lease.key) as path:
            current = self._read_lease(path)
            if current is not None and current[2] == lease.token:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise ColdStoreError(f"cold store: cannot release the lease {path}: {exc}") from exc

    def _sweep_stale_uploads(self, older_than: float) -> int:
        """Delete the temporary files (``<key>/.tmp-*``, ``.leases/.tmp-*``) not written for ``older_than``
        seconds: a live upload writes its file every few seconds, so only a killed host's are that old."""
        cutoff = time.time() - older_than
        swept = 0
        try:
            directories = [entry.path for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False)]
        except OSError:
            return 0  # no store yet, or not listable: the listing that follows says why
        for directory in directories:
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    if not entry.name.startswith(_TEMP_PREFIX):
                        continue
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                            swept += 1
        return swept

    def _forget_key(self, key: str) -> None:
        self._sweep_temporaries(key)
        with contextlib.suppress(OSError):  # not empty: a concurrent upload is writing; leave it be
            (self.root / key).rmdir()


def _create(path: Path) -> BinaryIO:
    """Create ``path`` exclusively, with its directory; retried once if a concurrent delete() removes the latter."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
