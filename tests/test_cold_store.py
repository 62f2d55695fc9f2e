"""The cold storage tier on its own: artifacts, manifests, a real directory and a real S3 endpoint (moto_server)."""

from __future__ import annotations

import builtins
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pygit2
import pytest

from repocache.cold import (
    ColdStore,
    FsspecStore,
    LocalDirStore,
    Manifest,
    open_cold_store,
    pack_mirror,
    prune_store,
    unpack_artifact,
)
from repocache.errors import ColdStoreError, ConfigError
from tests._s3 import s3_endpoint  # noqa: F401
from tests.helpers import DelegatingStore

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0
COMPRESSIONS = ["none", "zstd"]


# -- helpers ---------------------------------------------------------------------------------------------------


def make_mirror(path: Path, *, content: bytes = b"hello\n", blobs: int = 0, blob_size: int = 0) -> str:
    """Create a bare repository at ``path`` with one commit on main and a tag; return the commit id."""
    repo = pygit2.init_repository(str(path), bare=True)
    signature = pygit2.Signature("Cold Tester", "cold@example.invalid", 1_700_000_000, 0)
    builder = repo.TreeBuilder()
    builder.insert("README", repo.create_blob(content), pygit2.GIT_FILEMODE_BLOB)
    for index in range(blobs):
        builder.insert(f"blob-{index:04d}", repo.create_blob(os.urandom(blob_size)), pygit2.GIT_FILEMODE_BLOB)
    commit = repo.create_commit("refs/heads/main", signature, signature, "initial", builder.write(), [])
    repo.create_reference("refs/tags/v1", commit)
    repo.set_head("refs/heads/main")
    return str(commit)


def pack(mirror: Path, artifact: Path, compression: str) -> tuple[str, int]:
    with open(artifact, "wb") as out:
        return pack_mirror(mirror, out, compression=compression)


def manifest_for(key: str, sha256: str, size: int, *, created: float, compression: str = "none") -> Manifest:
    return Manifest(
        url=f"https://example.invalid/{key}",
        key=key,
        sha256=sha256,
        size_bytes=size,
        mirror_bytes=4096,
        ref_count=2,
        head="refs/heads/main",
        created=created,
        compression=compression,
    )


def packed(
    tmp_path: Path, key: str, *, created: float, compression: str = "none", content: bytes = b"hello\n"
) -> tuple[Manifest, Path, str]:
    """Make a mirror, pack it and describe it: (manifest, artifact path, commit id)."""
    name = uuid.uuid4().hex
    commit = make_mirror(tmp_path / f"{name}.git", content=content)
    artifact = tmp_path / f"{name}.artifact"
    sha256, size = pack(tmp_path / f"{name}.git", artifact, compression)
    return manifest_for(key, sha256, size, created=created, compression=compression), artifact, commit


def restore(store: ColdStore, manifest: Manifest, dest: Path) -> None:
    with store.open_artifact(manifest) as source:
        unpack_artifact(
            source,
            dest,
            expected_sha256=manifest.sha256,
            compression=manifest.compression,
            expected_size=manifest.size_bytes,
        )


SOURCES = ["stream", "file"]
"""How an artifact reaches unpack_artifact: a stream read once (an object store's body), or a regular local file
(a directory store's), which is unpacked by copying its members' bytes in the kernel and hashing it beside."""


def artifact_source(data: bytes, tmp_path: Path, how: str) -> Any:
    """``data`` as a stream (``how="stream"``) or as an open regular file (``"file"``); close it when done."""
    if how == "stream":
        return io.BytesIO(data)
    path = tmp_path / f"source-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return open(path, "rb")


def tree_of(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory (None) under ``root``."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        found[path.relative_to(root).as_posix()] = None if path.is_dir() else path.read_bytes()
    return found


class S3:
    """Direct access to the moto bucket, to inspect and damage what a store wrote."""

    def __init__(self, endpoint: str, bucket: str, prefix: str) -> None:
        boto3: Any = importlib.import_module("boto3")  # untyped; imported only when an S3 test runs
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.bucket = bucket
        self.prefix = prefix

    def names(self, key: str) -> list[str]:
        response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{key}/")
        return sorted(item["Key"].rsplit("/", 1)[-1] for item in response.get("Contents", []))

    def read(self, key: str, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}/{name}")["Body"].read()
        return body

    def write(self, key: str, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}/{name}", Body=data)


class Backend:
    """A store under test plus raw access to its objects, the same for a directory and for S3."""

    def __init__(self, store: LocalDirStore | FsspecStore, s3: S3 | None = None) -> None:
        self.store = store
        self.s3 = s3

    def names(self, key: str) -> list[str]:
        if self.s3 is not None:
            return self.s3.names(key)
        assert isinstance(self.store, LocalDirStore)
        directory = self.store.root / key
        return sorted(os.listdir(directory)) if directory.exists() else []

    def read(self, key: str, name: str) -> bytes:
        if self.s3 is not None:
            return self.s3.read(key, name)
        assert isinstance(self.store, LocalDirStore)
        return (self.store.root / key / name).read_bytes()

    def write(self, key: str, name: str, data: bytes) -> None:
        if self.s3 is not None:
            self.s3.write(key, name, data)
            return
        assert isinstance(self.store, LocalDirStore)
        (self.store.root / key).mkdir(parents=True, exist_ok=True)
        (self.store.root / key / name).write_bytes(data)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The same tests against a real directory and a real S3 endpoint."""
    if request.param == "local":
        return Backend(LocalDirStore(tmp_path / "cold"))
    endpoint, bucket = request.getfixturevalue("s3_endpoint")
    prefix = f"tests/{uuid.uuid4().hex}"
    store = FsspecStore(f"s3://{bucket}/{prefix}", endpoint_url=endpoint)
    return Backend(store, S3(endpoint, bucket, prefix))


# -- manifests ---------------------------------------------------------------------------------------------------


def test_manifest_json_round_trip_is_exact() -> None:
    manifest = replace(
        manifest_for("a-1", "ab" * 32, 10, created=1_700_000_000.123456, compression="zstd"),
        generation="01700000000123456000-0123456789abcdef",
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(manifest.to_json().encode()) == manifest
    with_extra = json.loads(manifest.to_json()) | {"added_by_a_later_version": 1}
    assert Manifest.from_json(json.dumps(with_extra)) == manifest


@pytest.mark.parametrize(
    "change",
    [
        {"sha256": "xyz"},
        {"sha256": "AB" * 32},
        {"size_bytes": -1},
        {"size_bytes": True},
        {"size_bytes": "10"},
        {"ref_count": 1.5},
        {"created": "yesterday"},
        {"created": float("inf")},
        {"compression": "gzip"},
        {"format_version": 99},
        {"key": "../escape"},
        {"key": "a/b"},
        {"url": ""},
        {"head": None},
        {"generation": "../../x"},
        {"refs_sha256": "AB" * 32},
        {"refs_sha256": 5},
        {"refs_sha256": ""},
        {"filter": "blob:limit=1k"},
        {"filter": "blob:none"},  # the key a-1 is a full mirror's
        {"filter": 0},
    ],
)
def test_manifest_from_json_refuses_invalid_fields(change: dict[str, Any]) -> None:
    raw = json.loads(manifest_for("a-1", "ab" * 32, 10, created=1.0).to_json()) | change
    with pytest.raises(ColdStoreError, match="malformed"):
        Manifest.from_json(json.dumps(raw))


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"manifest"', '{"url": "https://x/y"}'])
def test_manifest_from_json_refuses_malformed_documents(text: str) -> None:
    with pytest.raises(ColdStoreError, match="malformed"):
        Manifest.from_json(text)


def test_manifest_without_generation_cannot_open_an_artifact(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "cold")
    with pytest.raises(ColdStoreError, match="not read from a store"):
        store.open_artifact(manifest_for("a-1", "ab" * 32, 10, created=1.0))


# -- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_restores_an_identical_mirror(backend: Backend, tmp_path: Path, compression: str) -> None:
    mirror = tmp_path / "mirror.git"
    commit = make_mirror(mirror)
    artifact = tmp_path / "artifact"
    sha256, size = pack(mirror, artifact, compression)
    assert size == artifact.stat().st_size
    manifest = manifest_for("repo-1", sha256, size, created=time.time(), compression=compression)
    store = backend.store

    assert store.put("repo-1", manifest, artifact) is True
    assert store.exists("repo-1")
    stored = store.get_manifest("repo-1")
    assert stored is not None
    assert replace(stored, generation="") == manifest
    suffix = ".tar.zst" if compression == "zstd" else ".tar"
    assert backend.names("repo-1") == [stored.generation + ".json", stored.generation + suffix]

    restore(store, stored, tmp_path / "restored")
    packed_part = {
        name: content
        for name, content in tree_of(mirror).items()
        if name.split("/")[0] in ("HEAD", "config", "objects", "packed-refs", "refs")
        and not name.startswith("objects/info")
    }
    assert tree_of(tmp_path / "restored") == packed_part  # the data, and the config older readers expect
    repo = pygit2.Repository(str(tmp_path / "restored"))
    assert str(repo.head.target) == commit
    assert sorted(repo.references) == ["refs/heads/main", "refs/tags/v1"]


def test_packing_leaves_out_leftovers_of_interrupted_git_operations(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    make_mirror(mirror)
    (mirror / "packed-refs.lock").write_bytes(b"")
    (mirror / "objects" / "pack" / "tmp_pack_abc").write_bytes(b"partial")
    (mirror / "objects" / "pack" / "pack_git2_abc").write_bytes(b"partial")
    sha256, size = pack(mirror, tmp_path / "artifact", "none")
    with open(tmp_path / "artifact", "rb") as source:
        unpack_artifact(source, tmp_path / "restored", expected_sha256=sha256, expected_size=size)
    restored = tree_of(tmp_path / "restored")
    assert "packed-refs.lock" not in restored
    assert not [name for name in restored if "tmp_pack_" in name or "pack_git2_" in name]


def test_packing_refuses_a_mirror_with_a_symlink(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    make_mirror(mirror)
    (mirror / "refs" / "evil").symlink_to("/etc/passwd")
    with pytest.raises(ColdStoreError, match="not a regular file"):
        pack(mirror, tmp_path / "artifact", "none")


def test_put_refuses_an_artifact_that_does_not_match_its_manifest(backend: Backend, tmp_path: Path) -> None:
    manifest, artifact, _ = packed(tmp_path, "repo-1", created=time.time())
    with pytest.raises(ColdStoreError, match="does not match"):
        backend.store.put("repo-1", replace(manifest, sha256="00" * 32), artifact)
    with pytest.raises(ColdStoreError, match="does not match"):
        backend.store.put("repo-1", replace(manifest, size_bytes=manifest.size_bytes + 1), artifact)
    with pytest.raises(ColdStoreError, match="does not match the key"):
        backend.store.put("repo-2", manifest, artifact)
    assert backend.names("repo-1") == []
    assert backend.store.get_manifest("repo-1") is None


@pytest.mark.parametrize("key", ["", "..", "../x", "a/b", ".hidden", "a\x00b"])
def test_keys_that_could_escape_the_store_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalDirStore(tmp_path / "cold")
    with pytest.raises(ColdStoreError, match="invalid cold store key"):
        store.get_manifest(key)
    with pytest.raises(ColdStoreError, match="invalid cold store key"):
        store.delete(key)


# -- corruption ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_artifact_is_detected_and_nothing_is_left(
    backend: Backend, tmp_path: Path, compression: str, damage: str
) -> None:
    manifest, artifact, _ = packed(tmp_path, "repo-1", created=time.time(), compression=compression)
    assert backend.store.put("repo-1", manifest, artifact)
    stored = backend.store.get_manifest("repo-1")
    assert stored is not None
    data = bytearray(backend.read("repo-1", stored.artifact_name))
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2 :]
    backend.write("repo-1", stored.artifact_name, bytes(data))

    dest = tmp_path / "restored"
    with pytest.raises(ColdStoreError, match=r"corrupt|truncated"):
        restore(backend.store, stored, dest)
    assert not dest.exists()


@pytest.mark.parametrize("how", SOURCES)
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncation_is_caught_by_the_checksum_alone(tmp_path: Path, compression: str, how: str) -> None:
    """Cut at a tar block boundary, a plain tar still looks complete: the SHA-256 is what catches it."""
    mirror = tmp_path / "mirror.git"
    make_mirror(mirror, blobs=3, blob_size=300_000)
    sha256, size = pack(mirror, tmp_path / "artifact", compression)
    data = (tmp_path / "artifact").read_bytes()
    for cut in (512, size // 2, size - 1024, size - 1):
        dest = tmp_path / f"restored-{cut}"
        dest.mkdir()
        with (
            artifact_source(data[:cut], tmp_path, how) as source,
            pytest.raises(ColdStoreError, match=r"corrupt|truncated"),
        ):
            unpack_artifact(source, dest, expected_sha256=sha256, compression=compression)
        assert dest.exists() and list(dest.iterdir()) == []  # emptied, but the caller's directory is kept


@pytest.mark.parametrize("how", SOURCES)
def test_both_ways_of_reading_an_artifact_unpack_the_same_mirror(tmp_path: Path, how: str) -> None:
    mirror = tmp_path / "mirror.git"
    commit = make_mirror(mirror, blobs=3, blob_size=300_000)
    subprocess.run(["git", "-C", str(mirror), "repack", "-a", "-d", "-q"], check=True)
    pygit2.Repository(str(mirror)).create_blob(b"a loose object beside the pack")
    sha256, size = pack(mirror, tmp_path / "artifact", "none")
    with artifact_source((tmp_path / "artifact").read_bytes(), tmp_path, how) as source:
        unpack_artifact(source, tmp_path / "restored", expected_sha256=sha256, expected_size=size)
    restored = tree_of(tmp_path / "restored")
    assert {name: data for name, data in tree_of(mirror).items() if name in restored} == restored
    assert any(name.endswith(".pack") for name in restored)
    assert any(len(name) == len("objects/00/") + 38 for name in restored)  # and the loose one
    repo = pygit2.Repository(str(tmp_path / "restored"))
    assert str(repo.head.target) == commit
    for path in (tmp_path / "restored").rglob("*"):  # tarfile's data filter: no group/other write, owner rw
        mode = path.stat().st_mode
        assert not mode & 0o022, path
        assert path.is_dir() or mode & 0o600 == 0o600, path


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a second filesystem (tmpfs at /dev/shm)")
def test_an_artifact_on_another_filesystem_is_copied_without_the_kernel_copy(tmp_path: Path) -> None:
    """``copy_file_range`` between filesystems of different types fails with EXDEV (Linux 5.19 and later): a
    directory store mounted elsewhere (NFS, tmpfs) is unpacked by ``pread``/``pwrite`` instead, byte for byte."""
    import tempfile

    mirror = tmp_path / "mirror.git"
    make_mirror(mirror, blobs=3, blob_size=1_500_000)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        if os.stat(elsewhere).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem as the test's directory")
        artifact = Path(elsewhere) / "artifact"
        sha256, size = pack(mirror, artifact, "none")
        with open(artifact, "rb") as source:
            unpack_artifact(source, tmp_path / "restored", expected_sha256=sha256, expected_size=size)
    restored = tree_of(tmp_path / "restored")
    assert {name: data for name, data in tree_of(mirror).items() if name in restored} == restored
    assert sum(len(data or b"") for data in restored.values()) > 3_000_000


def test_a_local_artifact_longer_than_its_manifest_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    make_mirror(mirror)
    sha256, size = pack(mirror, tmp_path / "artifact", "none")
    with open(tmp_path / "artifact", "ab") as grown:
        grown.write(b"\0" * 10240)
    with open(tmp_path / "artifact", "rb") as source, pytest.raises(ColdStoreError, match=f"longer than the {size}"):
        unpack_artifact(source, tmp_path / "dest", expected_sha256=sha256, expected_size=size)
    assert not (tmp_path / "dest").exists()


def test_unpack_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    make_mirror(mirror)
    sha256, _ = pack(mirror, tmp_path / "artifact", "none")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with open(tmp_path / "artifact", "rb") as source, pytest.raises(ColdStoreError, match="not empty"):
        unpack_artifact(source, dest, expected_sha256=sha256)
    assert (dest / "keep").read_text() == "mine"


def test_unpack_refuses_an_artifact_larger_than_max_bytes(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    make_mirror(mirror, blobs=2, blob_size=100_000)
    sha256, _ = pack(mirror, tmp_path / "artifact", "zstd")
    with open(tmp_path / "artifact", "rb") as source, pytest.raises(ColdStoreError, match="more than"):
        unpack_artifact(source, tmp_path / "dest", expected_sha256=sha256, compression="zstd", max_bytes=50_000)
    assert not (tmp_path / "dest").exists()


def _hostile_tar(members: list[tuple[str, str, str]]) -> bytes:
    """A tar of (kind, name, target-or-content) members, kind being "file", "dir", "symlink" or "hardlink"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            info.linkname = value
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("file", "../outside/evil", "x")],
        [("file", "objects/../../outside/evil", "x")],
        [("file", "{outside}/evil", "x")],
        [("symlink", "link", "{outside}")],
        [("symlink", "link", "../outside")],
        [("symlink", "harmless", "objects"), ("file", "HEAD", "x")],
        [("symlink", "d", ".."), ("file", "d/outside/evil", "x")],
        [("hardlink", "hl", "{outside}/target")],
        [("hardlink", "hl", "../outside/target")],
        [("file", "ok", "x"), ("hardlink", "hl", "ok")],
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-absolute",
        "symlink-relative",
        "any-symlink",
        "through-symlink",
        "hardlink-absolute",
        "hardlink-relative",
        "any-hardlink",
    ],
)
@pytest.mark.parametrize("how", SOURCES)
@pytest.mark.parametrize("python_filter", [True, False], ids=["with-data-filter", "library-check-alone"])
def test_tar_members_that_could_escape_the_destination_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    members: list[tuple[str, str, str]],
    python_filter: bool,
    how: str,
) -> None:
    """The library's own member check refuses these, also where tarfile has no ``data`` filter (3.10 before
    3.10.12, 3.11 before 3.11.4): ``library-check-alone`` removes the filter and extracts fully trusted."""
    if not python_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        if hasattr(tarfile, "fully_trusted_filter"):  # Pythons with PEP 706: make the default filter a no-op
            monkeypatch.setattr(tarfile.TarFile, "extraction_filter", staticmethod(tarfile.fully_trusted_filter))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("precious")
    resolved = [(kind, name.format(outside=outside), value.format(outside=outside)) for kind, name, value in members]
    data = _hostile_tar(resolved)
    dest = tmp_path / "dest"
    with artifact_source(data, tmp_path, how) as source, pytest.raises(ColdStoreError, match="refused"):
        unpack_artifact(source, dest, expected_sha256=hashlib.sha256(data).hexdigest())
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    assert (outside / "target").read_text() == "precious"
    assert not dest.exists()


def _sparse_tar() -> bytes:
    """A tar whose one member is a GNU sparse file (tarfile reads them, never writes them)."""
    info = tarfile.TarInfo("objects/pack/sparse.pack")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386 : 386 + 24] = b"0" * 11 + b"\0" + b"0" * 11 + b"\0"  # one sparse map entry: offset 0, 0 bytes
    header[483 : 483 + 12] = b"00000001000\0"  # real size 512
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"\0" * 1024


@pytest.mark.parametrize("how", SOURCES)
@pytest.mark.parametrize(
    "members",
    [
        [("file", "HEAD", "one"), ("file", "HEAD", "two")],
        [("file", "objects", "x"), ("dir", "objects", "")],
        [("file", "objects", "x"), ("file", "objects/pack", "y")],
        [("dir", "refs", ""), ("file", "refs", "x")],
    ],
    ids=["file-twice", "file-then-directory", "file-as-parent", "directory-then-file"],
)
def test_tar_members_that_would_replace_one_another_leave_nothing(
    tmp_path: Path, members: list[tuple[str, str, str]], how: str
) -> None:
    """A tar stream may name a path twice; an artifact that does is hostile or broken, never half-applied."""
    data = _hostile_tar(members)
    dest = tmp_path / "dest"
    with artifact_source(data, tmp_path, how) as source, pytest.raises(ColdStoreError):
        unpack_artifact(source, dest, expected_sha256=hashlib.sha256(data).hexdigest())
    assert not dest.exists()


def test_a_sparse_member_of_a_local_artifact_is_refused(tmp_path: Path) -> None:
    data = _sparse_tar()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmembers()[0].issparse()  # the double is what it claims
    with artifact_source(data, tmp_path, "file") as source, pytest.raises(ColdStoreError, match="sparse"):
        unpack_artifact(source, tmp_path / "dest", expected_sha256=hashlib.sha256(data).hexdigest())
    assert not (tmp_path / "dest").exists()


# -- newer wins, concurrency -----------------------------------------------------------------------------------------


def test_an_older_manifest_does_not_replace_a_newer_one(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    newer, newer_artifact, _ = packed(tmp_path, "repo-1", created=1_700_000_000.0, content=b"newer")
    older, older_artifact, _ = packed(tmp_path, "repo-1", created=1_600_000_000.0, content=b"older")
    assert store.put("repo-1", newer, newer_artifact) is True
    assert store.put("repo-1", older, older_artifact) is False
    assert store.put("repo-1", newer, newer_artifact) is False  # same age: what is there stays
    current = store.get_manifest("repo-1")
    assert current is not None and current.sha256 == newer.sha256
    assert backend.names("repo-1") == [current.generation + ".json", current.generation + ".tar"]


def test_a_newer_upload_replaces_the_older_and_deletes_its_objects(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    older, older_artifact, _ = packed(tmp_path, "repo-1", created=1_600_000_000.0, content=b"older")
    newer, newer_artifact, commit = packed(tmp_path, "repo-1", created=1_700_000_000.0, content=b"newer")
    assert store.put("repo-1", older, older_artifact)
    first = store.get_manifest("repo-1")
    assert store.put("repo-1", newer, newer_artifact)
    current = store.get_manifest("repo-1")
    assert current is not None and first is not None and current.sha256 == newer.sha256
    assert backend.names("repo-1") == [current.generation + ".json", current.generation + ".tar"]
    with pytest.raises(ColdStoreError, match="is gone"):
        store.open_artifact(first)  # a reader holding the old manifest is told to read it again
    restore(store, current, tmp_path / "restored")
    assert str(pygit2.Repository(str(tmp_path / "restored")).head.target) == commit


def test_leftovers_of_a_crashed_upload_are_never_restored_and_are_swept(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    first, first_artifact, _ = packed(tmp_path, "repo-1", created=1_600_000_000.0)
    assert store.put("repo-1", first, first_artifact)
    # A newer upload died after its artifact was (partly) written and before its manifest: no manifest names it.
    backend.write("repo-1", "01650000000000000000-00000000deadbeef.tar", b"half an artifact")
    current = store.get_manifest("repo-1")
    assert current is not None and current.sha256 == first.sha256
    assert [m.sha256 for m in store.list()] == [first.sha256]
    later, later_artifact, _ = packed(tmp_path, "repo-1", created=1_700_000_000.0)
    assert store.put("repo-1", later, later_artifact)
    current = store.get_manifest("repo-1")
    assert current is not None
    assert backend.names("repo-1") == [current.generation + ".json", current.generation + ".tar"]


def test_an_unreadable_newest_manifest_falls_back_to_the_previous_one(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    manifest, artifact, _ = packed(tmp_path, "repo-1", created=1_600_000_000.0)
    assert store.put("repo-1", manifest, artifact)
    backend.write("repo-1", "01650000000000000000-00000000deadbeef.json", b'{"url": "https://half-writ')
    current = store.get_manifest("repo-1")
    assert current is not None and current.sha256 == manifest.sha256


def _assert_one_consistent_pair(backend: Backend, key: str, expected: Manifest, tmp_path: Path) -> None:
    current = backend.store.get_manifest(key)
    assert current is not None
    assert replace(current, generation="") == expected
    assert backend.names(key) == [current.generation + ".json", current.generation + ".tar"]
    stored = backend.read(key, current.artifact_name)
    assert hashlib.sha256(stored).hexdigest() == current.sha256
    restore(backend.store, current, tmp_path / "restored")
    repo = pygit2.Repository(str(tmp_path / "restored"))
    readme = repo.revparse_single("HEAD:README")
    assert isinstance(readme, pygit2.Blob)
    assert readme.data == f"writer {expected.created:.0f}".encode()


@pytest.mark.timeout(120)
def test_concurrent_uploads_from_threads_leave_one_consistent_pair(backend: Backend, tmp_path: Path) -> None:
    writers = 8
    uploads = [
        packed(tmp_path, "repo-1", created=1_600_000_000.0 + i, content=f"writer {1_600_000_000 + i}".encode())
        for i in range(writers)
    ]
    barrier = threading.Barrier(writers)
    results: list[bool | BaseException] = [False] * writers

    def upload(index: int) -> None:
        manifest, artifact, _ = uploads[index]
        barrier.wait()
        try:
            results[index] = backend.store.put("repo-1", manifest, artifact)
        except BaseException as exc:  # reported below
            results[index] = exc

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert results[-1] is True  # the newest upload always wins
    _assert_one_consistent_pair(backend, "repo-1", uploads[-1][0], tmp_path)


_WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from repocache.cold import LocalDirStore, Manifest
    spec = json.loads(sys.argv[1])
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.001)
    ok = LocalDirStore(spec["store"]).put(spec["key"], Manifest.from_json(spec["manifest"]), Path(spec["artifact"]))
    print(json.dumps(ok))
    """
)


@pytest.mark.timeout(120)
def test_concurrent_uploads_from_processes_leave_one_consistent_pair(tmp_path: Path) -> None:
    writers = 6
    store = LocalDirStore(tmp_path / "cold")
    uploads = [
        packed(tmp_path, "repo-1", created=1_600_000_000.0 + i, content=f"writer {1_600_000_000 + i}".encode())
        for i in range(writers)
    ]
    go = tmp_path / "go"
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                json.dumps(
                    {
                        "go": str(go),
                        "store": str(store.root),
                        "key": "repo-1",
                        "manifest": manifest.to_json(),
                        "artifact": str(artifact),
                    }
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            cwd=ROOT,
        )
        for manifest, artifact, _ in uploads
    ]
    time.sleep(0.5)  # let the interpreters start, so the uploads really overlap
    go.touch()
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=100)
        assert process.returncode == 0, err.decode()
        outcomes.append(json.loads(out))
    assert outcomes[-1] is True
    _assert_one_consistent_pair(Backend(store), "repo-1", uploads[-1][0], tmp_path)
    assert [p.name for p in (store.root / "repo-1").iterdir() if p.name.startswith(".")] == []


# -- list, delete, prune -----------------------------------------------------------------------------------------------


def test_list_exists_and_delete(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    if isinstance(store, LocalDirStore):  # a directory that does not exist is named, never an empty store
        with pytest.raises(ColdStoreError, match=f"{store.root} does not exist"):
            list(store.list())
        store.root.mkdir()
    assert list(store.list()) == []
    assert not store.exists("repo-1")
    for key in ("repo-1", "repo-2"):
        manifest, artifact, _ = packed(tmp_path, key, created=time.time())
        assert store.put(key, manifest, artifact)
    assert sorted(m.key for m in store.list()) == ["repo-1", "repo-2"]
    assert store.exists("repo-1")
    store.delete("repo-1")
    store.delete("repo-1")  # deleting what is gone is fine
    assert not store.exists("repo-1")
    assert store.get_manifest("repo-1") is None
    assert backend.names("repo-1") == []
    assert [m.key for m in store.list()] == ["repo-2"]


def test_prune_by_age_then_by_size(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    now = time.time()
    ages = {"old": 10 * DAY, "middle": 2 * DAY, "new": 0.0}
    sizes = {}
    for key, age in ages.items():
        manifest, artifact, _ = packed(tmp_path, key, created=now - age)
        assert store.put(key, manifest, artifact)
        sizes[key] = manifest.size_bytes

    assert store.prune() == []
    pruned = store.prune(older_than=5 * DAY)
    assert [m.key for m in pruned] == ["old"]
    assert sorted(m.key for m in store.list()) == ["middle", "new"]

    pruned = store.prune(keep_bytes=sizes["new"])  # only room for one: the oldest goes
    assert [m.key for m in pruned] == ["middle"]
    assert [m.key for m in store.list()] == ["new"]
    assert backend.names("middle") == [] and backend.names("old") == []

    assert store.prune(keep_bytes=0) != []
    assert list(store.list()) == []
    with pytest.raises(ConfigError):
        store.prune(older_than=-1)


class _ReuploadsDuringList(DelegatingStore):
    """A ColdStore wrapper that re-uploads one key right after listing, as another host might."""

    def __init__(self, inner: LocalDirStore, key: str, upload: tuple[Manifest, Path]) -> None:
        super().__init__(inner)
        self.key = key
        self.upload = upload

    def list(self) -> Iterator[Manifest]:
        listed = builtins.list(self.inner.list())
        self.inner.put(self.key, *self.upload)
        return iter(listed)

    def prune(self, *, older_than: float | None = None, keep_bytes: int | None = None) -> builtins.list[Manifest]:
        return prune_store(self, older_than=older_than, keep_bytes=keep_bytes)


def test_prune_keeps_a_key_uploaded_again_after_the_listing(tmp_path: Path) -> None:
    inner = LocalDirStore(tmp_path / "cold")
    old, old_artifact, _ = packed(tmp_path, "repo-1", created=time.time() - 10 * DAY)
    assert inner.put("repo-1", old, old_artifact)
    fresh, fresh_artifact, _ = packed(tmp_path, "repo-1", created=time.time())
    store = _ReuploadsDuringList(inner, "repo-1", (fresh, fresh_artifact))
    assert isinstance(store, ColdStore)
    assert store.prune(older_than=DAY) == []
    current = inner.get_manifest("repo-1")
    assert current is not None and current.sha256 == fresh.sha256


# -- configuration -------------------------------------------------------------------------------------------------


def test_open_cold_store_accepts_the_documented_forms(tmp_path: Path) -> None:
    assert open_cold_store(None) is None
    by_url = open_cold_store(f"file://{tmp_path}/cold%20store")
    assert isinstance(by_url, LocalDirStore) and by_url.root == tmp_path / "cold store"
    by_path = open_cold_store(str(tmp_path / "cold"))
    assert isinstance(by_path, LocalDirStore) and by_path.root == tmp_path / "cold"
    by_pathlike = open_cold_store(tmp_path / "cold")
    assert isinstance(by_pathlike, LocalDirStore) and by_pathlike.root == tmp_path / "cold"
    assert isinstance(open_cold_store("memory://repocache-tests/cold"), FsspecStore)
    custom = LocalDirStore(tmp_path / "custom")
    assert open_cold_store(custom) is custom


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (42, "42"),
        ("", "''"),
        ("   ", "''"),
        ("file://otherhost/dir", "otherhost"),
        ("nosuchprotocol://bucket/x", "nosuchprotocol"),
        ("ftp://x/y", "unsupported scheme 'ftp'; accepted are a directory path, file:///dir, or"),
        ("s3://", "s3://"),
    ],
)
def test_open_cold_store_names_a_bad_value_and_what_is_accepted(spec: Any, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_cold_store(spec)
    assert named in str(caught.value)


def test_open_cold_store_refuses_a_file_as_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        open_cold_store(tmp_path / "file")


def test_s3_url_without_fsspec_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ConfigError, match=r"pip install 'git-repocache\[s3\]'"):
        open_cold_store("s3://bucket/prefix")


def test_s3_url_without_s3fs_names_the_extra_to_install() -> None:
    """In a fresh interpreter, since fsspec remembers a filesystem class once it has imported it."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["s3fs"] = None
        from repocache.cold import open_cold_store
        from repocache.errors import ConfigError
        try:
            open_cold_store("s3://bucket/prefix")
        except ConfigError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'git-repocache[s3]'" in result.stdout


def test_zstd_without_zstandard_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mirror(tmp_path / "mirror.git")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ConfigError, match=r"git-repocache\[zstd\]"):
        pack(tmp_path / "mirror.git", tmp_path / "artifact", "zstd")
    # Unpacking: the artifact is unusable on this host (the cache clones instead), still naming the extra.
    with pytest.raises(ColdStoreError, match=r"git-repocache\[zstd\]"):
        unpack_artifact(io.BytesIO(b""), tmp_path / "dest", expected_sha256="00" * 32, compression="zstd")


def test_unknown_compression_is_a_config_error(tmp_path: Path) -> None:
    make_mirror(tmp_path / "mirror.git")
    with pytest.raises(ConfigError, match="gzip"):
        pack(tmp_path / "mirror.git", tmp_path / "artifact", "gzip")


def test_store_errors_are_cold_store_errors(s3_endpoint: tuple[str, str], tmp_path: Path) -> None:  # noqa: F811
    endpoint, _ = s3_endpoint
    store = FsspecStore("s3://no-such-bucket-here/prefix", endpoint_url=endpoint)
    manifest, artifact, _ = packed(tmp_path, "repo-1", created=time.time())
    with pytest.raises(ColdStoreError, match="no-such-bucket-here"):
        store.put("repo-1", manifest, artifact)


# -- memory --------------------------------------------------------------------------------------------------------

_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    from pathlib import Path
    from repocache.cold import FsspecStore, LocalDirStore, Manifest, pack_mirror, unpack_artifact

    spec = json.loads(sys.argv[1])
    work = Path(spec["work"])
    store = FsspecStore(spec["s3"], endpoint_url=spec["endpoint"]) if spec.get("s3") else LocalDirStore(work / "cold")

    def cycle(mirror, name, compression):
        artifact = work / (name + ".artifact")
        with open(artifact, "wb") as out:
            sha256, size = pack_mirror(mirror, out, compression=compression)
        manifest = Manifest(url="https://x/" + name, key=name, sha256=sha256, size_bytes=size, mirror_bytes=0,
                            ref_count=1, head="refs/heads/main", created=1.0, compression=compression)
        assert store.put(name, manifest, artifact)
        stored = store.get_manifest(name)
        with store.open_artifact(stored) as source:
            unpack_artifact(source, work / (name + ".restored"), expected_sha256=sha256, compression=compression)
        return size

    sizes, traced = {}, 0
    for compression in ("none", "zstd"):
        cycle(Path(spec["warm"]), "warm-" + compression, compression)  # buffers, contexts, connections
        tracemalloc.start()
        sizes[compression] = cycle(Path(spec["mirror"]), "measured-" + compression, compression)
        traced = max(traced, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "traced": traced, "sizes": sizes}))
    """
)


def _measure_memory(tmp_path: Path, extra: dict[str, str]) -> dict[str, Any]:
    """Memory of a pack/put/restore cycle of a 50 MB mirror, each compression, measured in fresh processes.

    Returns ``rss_growth``: peak RSS of the cycle minus that of the same cycle on a tiny mirror, so whatever the
    code needs whatever the size (buffers, zstd contexts, connections) cancels out; ``traced``: the peak of Python
    allocations during the big cycle (tracemalloc); ``sizes``: the artifacts' sizes.
    """
    make_mirror(tmp_path / "warm.git")
    make_mirror(tmp_path / "tiny.git")
    make_mirror(tmp_path / "big.git", blobs=50, blob_size=1 << 20)
    runs = []
    for mirror in ("tiny.git", "big.git"):
        work = tmp_path / f"work-{mirror}"
        work.mkdir()
        spec = {"warm": str(tmp_path / "warm.git"), "mirror": str(tmp_path / mirror), "work": str(work)} | extra
        if "s3" in spec:
            spec["s3"] += "/" + mirror
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout))
    tiny, big = runs
    assert min(big["sizes"].values()) > 50 << 20, big  # random blobs do not compress
    return {"rss_growth": big["peak"] - tiny["peak"], "traced": big["traced"], "sizes": big["sizes"]}


@pytest.mark.timeout(300)
def test_pack_put_restore_of_a_50mb_mirror_keeps_memory_flat(tmp_path: Path) -> None:
    measured = _measure_memory(tmp_path, {})
    assert measured["rss_growth"] < 4 << 20, measured
    assert measured["traced"] < 4 << 20, measured


@pytest.mark.timeout(300)
def test_s3_upload_and_download_of_a_50mb_mirror_stream_in_parts(
    tmp_path: Path,
    s3_endpoint: tuple[str, str],  # noqa: F811
) -> None:
    endpoint, bucket = s3_endpoint
    measured = _measure_memory(tmp_path, {"s3": f"s3://{bucket}/memory-{uuid.uuid4().hex}", "endpoint": endpoint})
    # Uploads in parts of 5 MiB and downloads in windows of 8 MiB, each copied once or twice by s3fs and botocore:
    # bounded by the part and window sizes, not the artifact's (downloads peaked at 72 MB with fsspec's read-ahead).
    # (RSS is not asserted here: the allocator's fragmentation from those copies makes it noisy.)
    assert measured["traced"] < 24 << 20, measured
