"""How artifacts move between a host and an object store: one streamed GET per restore with memory bounded by
the stream's window, and no multipart upload or temporary file left behind by an upload that failed or a host
that was killed (``prune`` cleans up after the latter).

Against a real ``moto_server`` on 127.0.0.1 whose request log is read to count the GETs, and real directories.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from repocache.cold import STALE_UPLOAD_AGE, FsspecStore, LocalDirStore, Manifest
from repocache.cold.fsspec_store import STREAM_MEMORY_BOUND
from repocache.errors import ColdStoreError
from repocache.testing.s3 import Endpoint
from tests._s3 import logged_moto

ROOT = Path(__file__).resolve().parents[1]
_MIB = 1 << 20


class LoggedS3:
    """A moto server whose request log the test reads."""

    def __init__(self, endpoint: Endpoint, log: Path) -> None:
        self.endpoint = endpoint
        self.log = log

    def store(self) -> FsspecStore:
        return FsspecStore(f"s3://{self.endpoint.bucket}/t/{uuid.uuid4().hex}", endpoint_url=self.endpoint.url)

    def mark(self) -> int:
        return len(self.log.read_bytes())

    def gets(self, since: int, path_part: str) -> list[str]:
        """The GET requests logged since ``since`` whose path holds ``path_part``."""
        text = self.log.read_bytes()[since:].decode(errors="replace")
        return [line for line in text.splitlines() if '"GET ' in line and path_part in line]

    def client(self) -> Any:
        boto3: Any = importlib.import_module("boto3")  # untyped
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint.url)

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        reply = self.client().list_multipart_uploads(Bucket=self.endpoint.bucket, Prefix=prefix)
        uploads: list[dict[str, Any]] = reply.get("Uploads", [])
        return uploads

    def objects(self, prefix: str) -> list[str]:
        reply = self.client().list_objects_v2(Bucket=self.endpoint.bucket, Prefix=prefix)
        return [str(item["Key"]) for item in reply.get("Contents", [])]


@pytest.fixture(scope="module")
def logged_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedS3]:
    """A moto server of this module's own, so its log counts this module's requests only."""
    with logged_moto(tmp_path_factory, "moto-transfers") as (endpoint, log):
        yield LoggedS3(endpoint, log)


def _put_random_artifact(store: FsspecStore | LocalDirStore, tmp_path: Path, key: str, size: int) -> Manifest:
    """Upload ``size`` random bytes as the artifact of ``key``; its stored manifest."""
    artifact = tmp_path / f"{key}.tar"
    digest = hashlib.sha256()
    with open(artifact, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 * _MIB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    manifest = Manifest(
        url=f"https://example.invalid/{key}",
        key=key,
        sha256=digest.hexdigest(),
        size_bytes=size,
        mirror_bytes=size,
        ref_count=1,
        head="refs/heads/main",
        created=time.time(),
    )
    assert store.put(key, manifest, artifact)
    artifact.unlink()
    stored = store.get_manifest(key)
    assert stored is not None
    return stored


# -- item 3: restores stream in one GET, memory bounded ---------------------------------------------------------


@pytest.mark.timeout(300)
def test_s3_restore_reads_the_artifact_in_one_get_with_memory_bounded_by_the_stream(
    logged_s3: LoggedS3, tmp_path: Path
) -> None:
    store = logged_s3.store()
    size = 64 * _MIB  # more than six times the bound
    manifest = _put_random_artifact(store, tmp_path, "big", size)
    mark = logged_s3.mark()
    digest = hashlib.sha256()
    read = 0
    tracemalloc.start()
    try:
        with store.open_artifact(manifest) as source:
            while block := source.read(256 * 1024):
                digest.update(block)
                read += len(block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == size and digest.hexdigest() == manifest.sha256
    gets = logged_s3.gets(mark, manifest.artifact_name)
    assert len(gets) == 1, gets  # 8 ranged GETs of 8 MiB before
    assert STREAM_MEMORY_BOUND == 10 * _MIB
    assert peak < STREAM_MEMORY_BOUND + 4 * _MIB, peak  # the bound, plus botocore's buffers and the reads here


@pytest.mark.timeout(120)
def test_closing_a_download_early_stops_its_helper_thread(logged_s3: LoggedS3, tmp_path: Path) -> None:
    store = logged_s3.store()
    manifest = _put_random_artifact(store, tmp_path, "early", 24 * _MIB)
    with store.open_artifact(manifest) as source:
        assert len(source.read(_MIB)) == _MIB
    deadline = time.monotonic() + 10
    while any(t.name == "repocache-download" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "repocache-download"]


@pytest.mark.timeout(120)
def test_a_download_of_an_artifact_deleted_before_it_opens_is_a_cold_store_error(
    logged_s3: LoggedS3, tmp_path: Path
) -> None:
    store = logged_s3.store()
    manifest = _put_random_artifact(store, tmp_path, "gone", _MIB)
    logged_s3.client().delete_object(
        Bucket=logged_s3.endpoint.bucket, Key=store._path("gone", manifest.artifact_name).split("/", 1)[1]
    )
    with pytest.raises(ColdStoreError, match="gone"):
        store.open_artifact(manifest)


# -- item 6: no multipart upload left behind ---------------------------------------------------------------------


def _prefix(store: FsspecStore) -> str:
    return store._root.split("/", 1)[1] + "/"


def _writer(size: int, fail: bool) -> Any:
    def write(out: BinaryIO) -> Manifest:
        block = b"x" * _MIB
        for _ in range(size // _MIB):
            out.write(block)
        if fail:
            raise RuntimeError("packing failed")
        raise AssertionError("not reached")

    return write


@pytest.mark.timeout(120)
def test_an_upload_that_fails_while_writing_aborts_its_multipart_upload(logged_s3: LoggedS3) -> None:
    store = logged_s3.store()
    with pytest.raises(RuntimeError, match="packing failed"):
        store.put_stream("failing", _writer(12 * _MIB, fail=True))  # two 5 MiB parts sent: a multipart upload
    assert logged_s3.multipart_uploads(_prefix(store)) == []
    assert logged_s3.objects(_prefix(store)) == []


@pytest.mark.timeout(120)
def test_an_upload_whose_completion_fails_aborts_its_multipart_upload(
    logged_s3: LoggedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = logged_s3.store()
    call = store._fs.call_s3

    def failing(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "complete_multipart_upload":
            raise OSError("connection reset while completing")
        return call(method, *args, **kwargs)

    monkeypatch.setattr(store._fs, "call_s3", failing)
    artifact = tmp_path / "a.tar"
    artifact.write_bytes(os.urandom(12 * _MIB))
    manifest = Manifest(
        url="https://example.invalid/c",
        key="completing",
        sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        size_bytes=12 * _MIB,
        mirror_bytes=12 * _MIB,
        ref_count=1,
        head="refs/heads/main",
        created=time.time(),
    )
    with pytest.raises(ColdStoreError, match="connection reset"):
        store.put("completing", manifest, artifact)
    monkeypatch.undo()
    assert logged_s3.multipart_uploads(_prefix(store)) == []
    assert store.get_manifest("completing") is None


_KILLED_UPLOAD = textwrap.dedent(
    """
    import sys, time
    from repocache.cold import FsspecStore

    store = FsspecStore(sys.argv[1], endpoint_url=sys.argv[2])

    def write(out):
        for _ in range(12):
            out.write(b"x" * (1 << 20))
        out.flush()
        print("parts sent", flush=True)
        time.sleep(600)  # killed here, mid-upload

    store.put_stream("killed", write)
    """
)


@pytest.mark.timeout(180)
def test_prune_aborts_the_multipart_upload_of_a_host_killed_mid_upload(logged_s3: LoggedS3) -> None:
    store = logged_s3.store()
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_UPLOAD, f"s3://{store._root}", logged_s3.endpoint.url],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"parts sent\n"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    left = logged_s3.multipart_uploads(_prefix(store))
    assert len(left) == 1, left
    assert list(store.list()) == []  # nothing a reader takes for an artifact
    store.prune()  # an hour's threshold: the upload may still be alive, it is left alone
    assert len(logged_s3.multipart_uploads(_prefix(store))) == 1
    store.prune(stale_after=0)
    assert logged_s3.multipart_uploads(_prefix(store)) == []
    assert logged_s3.objects(_prefix(store)) == []
    assert list(store.list()) == []


@pytest.mark.timeout(120)
def test_prune_leaves_a_live_multipart_upload_alone(logged_s3: LoggedS3) -> None:
    store = logged_s3.store()
    bucket, prefix = logged_s3.endpoint.bucket, _prefix(store)
    client = logged_s3.client()
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=f"{prefix}live/{time.time_ns():020d}-0123456789abcdef.tar"
    )
    store.prune(stale_after=STALE_UPLOAD_AGE)
    assert [u["UploadId"] for u in logged_s3.multipart_uploads(prefix)] == [upload["UploadId"]]
    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def test_prune_deletes_a_directory_stores_temporary_files_of_killed_uploads_only(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "cold")
    manifest = _put_random_artifact(store, tmp_path, "kept", 1024)
    key_dir = store.root / "kept"
    leases = store.root / ".leases"
    leases.mkdir()
    dead = [key_dir / ".tmp-0123456789abcdef-x.tar", leases / ".tmp-0123456789abcdef-kept.json"]
    live = key_dir / ".tmp-fedcba9876543210-y.tar"
    old = time.time() - 2 * STALE_UPLOAD_AGE
    for path in dead:
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    live.write_bytes(b"being written")
    store.prune()
    assert not any(path.exists() for path in dead)
    assert live.exists()
    assert store.get_manifest("kept") == manifest


def test_prune_deletes_an_artifact_that_never_got_a_manifest_once_stale(tmp_path: Path) -> None:
    store = FsspecStore((tmp_path / "cold").as_uri())
    manifest = _put_random_artifact(store, tmp_path, "k", 1024)
    now_ns = time.time_ns()
    orphan = tmp_path / "cold" / "k" / f"{now_ns:020d}-0123456789abcdef.tar"
    orphan.write_bytes(b"a killed host's partial artifact")
    fresh = tmp_path / "cold" / "k" / f"{now_ns + 1:020d}-0123456789abcdef.tar"
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - 2 * STALE_UPLOAD_AGE
    os.utime(orphan, (old, old))
    store.prune()
    assert not orphan.exists()
    assert fresh.exists()
    assert store.get_manifest("k") == manifest


def test_prune_refuses_a_negative_stale_after(tmp_path: Path) -> None:
    from repocache.errors import ConfigError

    with pytest.raises(ConfigError, match="stale_after -1"):
        LocalDirStore(tmp_path / "cold").prune(stale_after=-1)
