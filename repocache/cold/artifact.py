"""Packing a bare mirror into an artifact, unpacking it safely, and choosing a cold store from a setting.

An artifact is a tar stream of the mirror's directory (members relative to it, regular files and directories
only, owners cleared), optionally compressed as one zstd frame with a content checksum. Both directions stream:
memory stays at a few buffers of 1 MiB whatever the size of the repository. A plain artifact that is a local
file (a directory store's) is unpacked without streaming its data through Python (see :func:`_unpack_local`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import os
import shutil
import stat
import tarfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote

from repocache import cancel
from repocache.cold.fsspec_store import FsspecStore
from repocache.cold.local import LocalDirStore
from repocache.cold.manifest import artifact_suffix
from repocache.cold.store import ColdStore
from repocache.cold.streams import HashingReader, HashingWriter
from repocache.errors import ColdStoreError, ConfigError
from repocache.keys import scrub

__all__ = ["ColdStoreSpec", "is_leftover", "open_cold_store", "pack_mirror", "unpack_artifact"]

ColdStoreSpec = ColdStore | str | os.PathLike[str] | None
"""What ``RepoCache(cold_store=...)`` accepts."""

_CHUNK = 256 * 1024
# copybufsize: tarfile copies a member's data in 16 KiB pieces by default, which made restores 2.2x slower
# (medium benchmark upstream: 213 ms against 96 ms). A dict because typeshed omits copybufsize for stream modes.
_TAR_BUFFERS: dict[str, Any] = {"bufsize": _CHUNK, "copybufsize": _CHUNK}
_HASH_BLOCK = 1 << 20  # bytes hashed (and copied without the kernel's help) at a time
_ZSTD_LEVEL = 3
_ZSTD_HINT = "pip install 'git-repocache[zstd]'"
# What of a mirror is packed: its data, and the config older readers expect. A restore keeps only the data and
# writes the config afresh (gitops.sanitize_restored_mirror), so hooks/, info/, description and the like would only
# cost time to pack, unpack and delete. Of objects/info/ only the commit-graph file is packed (what makes a mirror's
# walks fast, and what maintenance would otherwise write after the restore); alternates and the rest are not.
_PACKED_TOP = frozenset({"HEAD", "config", "objects", "packed-refs", "refs"})
_PACKED_OBJECTS_INFO = frozenset({"commit-graph"})
# Leftovers of interrupted git operations: never part of a consistent mirror.
_SKIPPED_PREFIXES = ("tmp_pack_", "tmp_idx_", "tmp_obj_", "pack_git2_", "incoming-")
_SKIPPED_SUFFIXES = (".lock",)


def _zstandard() -> Any:
    try:
        return importlib.import_module("zstandard")
    except ImportError as exc:
        raise ConfigError(
            f"compression 'zstd' needs the zstandard package, which is not installed: {_ZSTD_HINT}"
        ) from exc


def is_leftover(name: str) -> bool:
    """Whether a file or directory of a mirror is a leftover of an interrupted git operation (never packed)."""
    return name.startswith(_SKIPPED_PREFIXES) or name.endswith(_SKIPPED_SUFFIXES)


def pack_mirror(
    mirror_dir: str | os.PathLike[str], out_fileobj: BinaryIO, *, compression: str = "none"
) -> tuple[str, int]:
    """Write a tar of the bare mirror ``mirror_dir`` to ``out_fileobj``, streaming, and hash what is written.

    Members are the mirror's directories and regular files, relative to ``mirror_dir``, in sorted order, with
    owners cleared: ``HEAD``, ``config``, ``packed-refs``, ``refs/`` and ``objects/`` (of ``objects/info/`` only the
    ``commit-graph`` file), which is all a restore keeps; hooks, ``info/`` and the like are left out, and so are
    leftovers of interrupted git operations (``*.lock``, ``tmp_pack_*``, ``pack_git2_*``, ...). ``out_fileobj`` is
    only written to, sequentially, and is neither flushed nor closed. The caller must keep the mirror from changing
    while it is packed (hold its lock).

    Args:
        mirror_dir: the bare mirror's directory.
        out_fileobj: where the artifact's bytes go.
        compression: ``"none"`` for a plain tar, ``"zstd"`` for one zstd frame with a content checksum.

    Returns:
        (lower-case hex SHA-256, size in bytes) of exactly the bytes written to ``out_fileobj``.

    Raises:
        ConfigError: ``compression`` is unknown, or ``"zstd"`` without the zstandard package installed.
        ColdStoreError: the mirror is missing, contains a symlink or special file, or cannot be read.
    """
    artifact_suffix(compression)  # validates the name
    zstandard = _zstandard() if compression == "zstd" else None
    root = Path(mirror_dir)
    if not root.is_dir():
        raise ColdStoreError(f"cannot pack {root}: not a directory")
    hashing = HashingWriter(out_fileobj)
    try:
        if zstandard is not None:
            compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
            with compressor.stream_writer(hashing, closefd=False) as sink:
                _write_tar(root, sink)
        else:
            _write_tar(root, hashing)
    except ColdStoreError:
        raise
    except (OSError, tarfile.TarError) as exc:
        raise ColdStoreError(f"cannot pack {root}: {exc}") from exc
    return hashing.digest.hexdigest(), hashing.size


def _write_tar(root: Path, sink: Any) -> None:
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, **_TAR_BUFFERS) as tar:
        for directory, dirnames, filenames in os.walk(root):
            base = Path(directory)
            if base == root:
                dirnames[:] = [d for d in dirnames if d in _PACKED_TOP]
                filenames = [f for f in filenames if f in _PACKED_TOP]
            elif base == root / "objects":
                # objects/info/ only to carry the commit-graph: never alternates, nor an empty directory.
                if not (base / "info" / "commit-graph").is_file():
                    dirnames[:] = [d for d in dirnames if d != "info"]
            elif base == root / "objects" / "info":
                dirnames[:] = []  # no split commit-graph chains (libgit2 reads only the single file)
                filenames = [f for f in filenames if f in _PACKED_OBJECTS_INFO]
            dirnames[:] = sorted(d for d in dirnames if not is_leftover(d))
            for name in dirnames + sorted(f for f in filenames if not is_leftover(f)):
                path = base / name
                info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
                if not (info.isreg() or info.isdir()):
                    raise ColdStoreError(f"cannot pack {root}: {path} is not a regular file or directory")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = int(info.mtime)
                if info.isreg():
                    with open(path, "rb") as source:
                        tar.addfile(info, source)
                else:
                    tar.addfile(info)


def unpack_artifact(
    in_fileobj: BinaryIO,
    dest_dir: str | os.PathLike[str],
    *,
    expected_sha256: str,
    compression: str = "none",
    expected_size: int | None = None,
    max_bytes: int | None = None,
) -> None:
    """Unpack an artifact from ``in_fileobj`` into ``dest_dir``, streaming, and verify its SHA-256.

    ``in_fileobj`` is read to its end and every byte is hashed; the artifact is accepted only if the hash (and
    ``expected_size``, when given) match. Members are refused unless they are regular files or directories whose
    path stays inside ``dest_dir`` (no absolute paths, no ``..``, no links of any kind); tarfile's ``data``
    filter is applied on top where Python has it. On any failure ``dest_dir`` is emptied (and removed if this
    call created it), so a corrupt, truncated or hostile artifact never leaves anything to serve.

    Args:
        in_fileobj: the artifact's bytes, e.g. from :meth:`ColdStore.open_artifact`; not closed.
        dest_dir: a staging directory that does not exist or is empty.
        expected_sha256: the manifest's ``sha256``.
        compression: the manifest's ``compression``.
        expected_size: the manifest's ``size_bytes``, or None not to check it.
        max_bytes: refuse the artifact if its files total more than this many bytes (a guard against
            decompression bombs), or None for no limit.

    Raises:
        ColdStoreError: the artifact is corrupt, truncated, longer than ``expected_size`` (detected as it streams),
            does not match, escapes ``dest_dir``, exceeds ``max_bytes``, is compressed with a codec this host
            lacks (``"zstd"`` without the zstandard package), or cannot be read or written.
        ConfigError: ``compression`` is unknown.
    """
    artifact_suffix(compression)
    try:
        zstandard = _zstandard() if compression == "zstd" else None
    except ConfigError as exc:  # the artifact is fine, this host cannot read it: unusable here, not a setting
        raise ColdStoreError(f"cannot unpack a {compression} artifact on this host: {exc}") from None
    dest = Path(dest_dir)
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise ColdStoreError(f"cannot unpack into {dest}: the directory is not empty")
    except OSError as exc:
        raise ColdStoreError(f"cannot unpack into {dest}: {exc}") from exc
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError, ValueError)
    if zstandard is not None:
        errors += (zstandard.ZstdError,)
    local = _local_file(in_fileobj) if zstandard is None else None
    try:
        try:
            if local is not None:
                actual, size = _unpack_local(in_fileobj, local, dest, max_bytes, expected_size)
            else:
                actual, size = _unpack_stream(in_fileobj, zstandard, dest, max_bytes, expected_size)
        except errors as exc:
            raise ColdStoreError(f"corrupt or unreadable cold store artifact: {type(exc).__name__}: {exc}") from exc
        if expected_size is not None and size != expected_size:
            raise ColdStoreError(f"truncated or corrupt cold store artifact: {size} bytes, expected {expected_size}")
        if actual != expected_sha256:
            raise ColdStoreError(
                f"corrupt cold store artifact: sha256 {actual} ({size} bytes), expected {expected_sha256}"
            )
    except BaseException:
        _discard(dest, remove_dir=created)
        raise


def _unpack_stream(
    in_fileobj: BinaryIO, zstandard: Any, dest: Path, max_bytes: int | None, expected_size: int | None
) -> tuple[str, int]:
    """Unpack a stream read once, front to back (an object store's body, a compressed artifact): every byte
    passes through a :class:`HashingReader`. Returns the sha256 and the size of what was read."""
    hashing = HashingReader(in_fileobj, limit=expected_size)
    try:
        if zstandard is not None:
            decompressor = zstandard.ZstdDecompressor()
            with decompressor.stream_reader(hashing, read_size=_CHUNK, closefd=False) as source:
                _extract(source, dest, max_bytes)
                while source.read(_CHUNK):  # the rest of the frame, so its checksum is verified
                    pass
        else:
            _extract(hashing, dest, max_bytes)
        hashing.drain()
        return hashing.digest.hexdigest(), hashing.size
    finally:
        hashing.close()


def _local_file(fileobj: BinaryIO) -> tuple[int, int] | None:
    """(descriptor, offset of the artifact's first byte) when ``fileobj`` is a regular file of this host that
    can be read at any offset (a directory store's artifact), else None."""
    try:
        descriptor = fileobj.fileno()
        if not stat.S_ISREG(os.fstat(descriptor).st_mode) or not fileobj.seekable():
            return None
        return descriptor, fileobj.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _unpack_local(
    fileobj: BinaryIO, local: tuple[int, int], dest: Path, max_bytes: int | None, expected_size: int | None
) -> tuple[str, int]:
    """Unpack a plain tar that is a regular local file without passing its members' data through Python: the
    data is copied file to file by the kernel (``copy_file_range``; a reflink where the filesystem shares
    blocks) while a helper thread hashes the file with ``pread``. Copying and hashing overlap, and neither
    copies the bytes through a tar stream's buffers: on the 570 MB benchmark upstream this is most of a restore.

    The members are checked exactly as a stream's are (:func:`_check_member`), and the tar is read from the
    same open file the hash covers, so what is unpacked is what was hashed. Returns the sha256 and the size of
    the file from ``local``'s offset to its end.
    """
    descriptor, start = local
    size = os.fstat(descriptor).st_size - start
    if expected_size is not None and size > expected_size:
        raise ColdStoreError(f"the artifact is longer than the {expected_size} bytes its manifest declares")
    hasher = _FileHasher(descriptor, start)
    hasher.start()
    try:
        _extract_local(fileobj, descriptor, dest, max_bytes)
    except BaseException:
        hasher.finish(stop=True)
        raise
    hasher.finish()
    return hasher.hexdigest(), hasher.size


class _FileHasher(threading.Thread):
    """Hashes a file from an offset to its end with ``pread`` (the file's position is left to the tar reader)."""

    def __init__(self, descriptor: int, start: int) -> None:
        super().__init__(name="repocache-sha256", daemon=True)
        self._descriptor = descriptor
        self._offset = start
        self._digest = hashlib.sha256()
        self._halt = threading.Event()
        self._error: OSError | None = None
        self.size = 0

    def run(self) -> None:
        buffer = bytearray(_HASH_BLOCK)
        view = memoryview(buffer)
        try:
            while not self._halt.is_set():
                count = os.preadv(self._descriptor, [buffer], self._offset + self.size)
                if count == 0:
                    return
                self._digest.update(view[:count])
                self.size += count
        except OSError as exc:
            self._error = exc

    def finish(self, *, stop: bool = False) -> None:
        """Wait for the hash to end; with ``stop``, end it early (the unpack failed: the hash is not wanted)."""
        if stop:
            self._halt.set()
        self.join()
        if self._error is not None and not stop:
            raise self._error

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _extract_local(fileobj: BinaryIO, descriptor: int, dest: Path, max_bytes: int | None) -> None:
    root = os.path.realpath(dest)
    total = 0
    seen: set[tuple[str, ...]] = set()
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for member in tar:
            cancel.check()  # an async caller that gave up stops the restore; the caller discards dest
            _check_member(member, root)
            _check_unique(member, seen)
            target = os.path.join(root, *PurePosixPath(member.name).parts)
            if member.isdir():
                try:
                    os.makedirs(target, exist_ok=True)
                except FileExistsError:
                    raise ColdStoreError(
                        f"cold store artifact member {member.name!r} is both a file and a directory; refused"
                    ) from None
                continue
            if member.issparse():
                raise ColdStoreError(f"cold store artifact member {member.name!r} is a sparse file; refused")
            total += member.size
            if max_bytes is not None and total > max_bytes:
                raise ColdStoreError(f"cold store artifact unpacks to more than {max_bytes} bytes; refused")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            mode = member.mode & 0o755  # what tarfile's data filter keeps of a regular file's mode
            if not mode & 0o100:
                mode &= ~0o111
            mode |= 0o600
            try:
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            except FileExistsError:
                raise ColdStoreError(
                    f"cold store artifact member {member.name!r} would replace an earlier member; refused"
                ) from None
            try:
                _copy_range(descriptor, out, member.offset_data, member.size, member.name)
                os.fchmod(out, mode)
                os.utime(out, (member.mtime, member.mtime))
            finally:
                os.close(out)


_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM})


def _copy_range(source: int, out: int, offset: int, count: int, name: str) -> None:
    """Copy ``count`` bytes of ``source`` from ``offset`` to the start of ``out``, in the kernel where it can."""
    copied = 0
    kernel = hasattr(os, "copy_file_range")
    while copied < count:
        if kernel:
            try:
                moved = os.copy_file_range(source, out, count - copied, offset + copied, copied)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(source, min(count - copied, _HASH_BLOCK), offset + copied)
            moved = os.pwrite(out, data, copied) if data else 0
        if moved == 0:
            raise ColdStoreError(f"truncated cold store artifact: member {name!r} ends early")
        copied += moved


def _extract(source: Any, dest: Path, max_bytes: int | None) -> None:
    root = os.path.realpath(dest)
    total = 0
    seen: set[tuple[str, ...]] = set()
    data_filter = getattr(tarfile, "data_filter", None)
    with tarfile.open(fileobj=source, mode="r|", **_TAR_BUFFERS) as tar:
        for member in tar:
            cancel.check()  # an async caller that gave up stops the restore; the caller discards dest
            _check_member(member, root)
            _check_unique(member, seen)
            if member.isreg():
                total += member.size
                if max_bytes is not None and total > max_bytes:
                    raise ColdStoreError(f"cold store artifact unpacks to more than {max_bytes} bytes; refused")
            if data_filter is not None:
                tar.extract(member, root, filter=data_filter)
            else:  # pragma: no cover - Python without PEP 706; _check_member already refused what it would
                member.mode &= 0o755
                member.uid = member.gid = 0
                tar.extract(member, root, numeric_owner=True)


def _check_unique(member: tarfile.TarInfo, seen: set[tuple[str, ...]]) -> None:
    """Refuse a member that names a path an earlier member named: a tar may, an artifact never does, and
    extracting it would replace (or merge into) what the earlier one wrote."""
    parts = PurePosixPath(member.name).parts
    if parts in seen:
        raise ColdStoreError(f"cold store artifact member {member.name!r} appears twice; refused")
    seen.add(parts)


def _check_member(member: tarfile.TarInfo, root: str) -> None:
    name = member.name
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ColdStoreError(f"cold store artifact member {name!r} is a {kind}; refused")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name or not path.parts:
        raise ColdStoreError(f"cold store artifact member {name!r} escapes the destination; refused")
    target = os.path.realpath(os.path.join(root, *path.parts))
    if os.path.commonpath([root, target]) != root:
        raise ColdStoreError(f"cold store artifact member {name!r} escapes the destination; refused")


def _discard(dest: Path, *, remove_dir: bool) -> None:
    if remove_dir:
        shutil.rmtree(dest, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()


def open_cold_store(spec: ColdStoreSpec) -> ColdStore | None:
    """Turn the ``cold_store`` setting into a store.

    Accepted values: None (no cold tier); ``"file:///absolute/dir"`` or a plain directory path (``str`` or
    ``os.PathLike``) for a :class:`LocalDirStore`; any other ``scheme://`` URL fsspec knows, such as
    ``s3://bucket/prefix``, for an :class:`FsspecStore` (configured from the environment; construct one yourself
    to pass storage options); or an object implementing :class:`ColdStore`, returned as is.

    Raises:
        ConfigError: the value is none of the above, names a non-directory, or needs a package that is not
            installed (the message says which extra to install, e.g. ``git-repocache[s3]``).
    """
    if spec is None:
        return None
    if isinstance(spec, ColdStore):
        return spec
    if isinstance(spec, os.PathLike):
        return LocalDirStore(spec)
    if not isinstance(spec, str):
        raise ConfigError(
            f"invalid cold_store {spec!r} of type {type(spec).__name__}: expected None, a directory path, "
            "'file:///dir', an fsspec URL such as 's3://bucket/prefix', or a ColdStore object"
        )
    value = spec.strip()
    if not value:
        raise ConfigError("invalid cold_store '': expected None, a directory path, 'file:///dir' or an fsspec URL")
    if value.lower().startswith("file://"):
        rest = value[len("file://") :]
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise ConfigError(
                f"invalid cold_store {scrub(value)!r}: a file URL must name an absolute local path, e.g. file:///dir"
            )
        return LocalDirStore("/" + unquote(path))
    if "://" in value:
        return FsspecStore(value)
    return LocalDirStore(value)
