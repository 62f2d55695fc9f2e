"""What a fleet needs from a shared cold store: streaming uploads and leases, on a real directory and real S3."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from repocache.cold import FleetStore, FsspecStore, LocalDirStore, Manifest, pack_mirror, unpack_artifact
from repocache.cold.generations import FUTURE_BOUND
from repocache.errors import ColdStoreError
from tests._fleet import assert_current_lease_follows
from tests._s3 import s3_endpoint  # noqa: F401
from tests.helpers import POISONS, poison_generation, stored_generations
from tests.test_cold_store import make_mirror

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalDirStore | FsspecStore:
    """A real directory store, or a fresh prefix in a bucket of a real S3 endpoint (moto_server)."""
    if request.param == "local":
        return LocalDirStore(tmp_path / "cold")
    endpoint, bucket = request.getfixturevalue("s3_endpoint")
    return FsspecStore(f"s3://{bucket}/fleet/{uuid.uuid4().hex}", endpoint_url=endpoint)


def _writer(mirror: Path, key: str, created: float) -> Any:
    def write(out: BinaryIO) -> Manifest:
        sha256, size = pack_mirror(mirror, out)
        return Manifest(
            url=f"https://example.invalid/{key}",
            key=key,
            sha256=sha256,
            size_bytes=size,
            mirror_bytes=size,
            ref_count=2,
            head="refs/heads/main",
            created=created,
        )

    return write


def test_built_in_stores_are_fleet_stores(tmp_path: Path) -> None:
    assert isinstance(LocalDirStore(tmp_path / "cold"), FleetStore)


def test_put_stream_commits_an_artifact_that_restores(store: FleetStore, tmp_path: Path) -> None:
    commit = make_mirror(tmp_path / "mirror")
    stored = store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", time.time()))
    assert stored is not None and stored.generation
    current = store.get_manifest("repo-1")
    assert current == stored
    with store.open_artifact(current) as artifact:
        unpack_artifact(artifact, tmp_path / "restored", expected_sha256=current.sha256)
    assert (tmp_path / "restored" / "refs").is_dir() or (tmp_path / "restored" / "packed-refs").exists()
    assert commit


def test_a_writer_that_fails_mid_upload_leaves_nothing_a_reader_takes(store: FleetStore, tmp_path: Path) -> None:
    def write(out: BinaryIO) -> Manifest:
        out.write(b"x" * (6 << 20))  # more than one upload part
        raise OSError("disk read error while packing")

    with pytest.raises(OSError, match="packing"):
        store.put_stream("repo-1", write)
    assert store.get_manifest("repo-1") is None
    assert list(store.list()) == []


def test_a_manifest_that_does_not_match_the_stream_is_refused(store: FleetStore, tmp_path: Path) -> None:
    make_mirror(tmp_path / "mirror")
    honest = _writer(tmp_path / "mirror", "repo-1", time.time())

    def lying(out: BinaryIO) -> Manifest:
        manifest = honest(out)
        return Manifest(**{**manifest.__dict__, "size_bytes": manifest.size_bytes + 1})

    with pytest.raises(ColdStoreError, match="does not match"):
        store.put_stream("repo-1", lying)
    assert store.get_manifest("repo-1") is None


_KILLED_UPLOAD = textwrap.dedent(
    """
    import os, signal, sys
    from repocache.cold import FsspecStore, LocalDirStore
    kind, where = sys.argv[1], sys.argv[2]
    store = LocalDirStore(where) if kind == "local" else FsspecStore(where)
    def write(out):
        out.write(b"y" * (12 << 20))
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    store.put_stream("repo-1", write)
    """
)


def test_a_host_killed_mid_upload_leaves_nothing_a_reader_takes(store: FleetStore, tmp_path: Path) -> None:
    if isinstance(store, LocalDirStore):
        kind, where = "local", str(store.root)
    else:
        assert isinstance(store, FsspecStore)
        kind, where = "s3", store.url
        endpoint = store._fs.client_kwargs.get("endpoint_url") or store._fs.endpoint_url
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if kind == "s3":
        env["AWS_ENDPOINT_URL"] = endpoint
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_UPLOAD, kind, where], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert store.get_manifest("repo-1") is None
    assert list(store.list()) == []
    make_mirror(tmp_path / "mirror")
    assert store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", time.time())) is not None


def test_a_lease_is_held_by_one_holder_until_released(store: FleetStore) -> None:
    assert store.supports_leases
    first = store.try_lease("repo-1", "host-a", 60)
    assert first is not None and first.holder == "host-a"
    assert store.try_lease("repo-1", "host-b", 60) is None
    assert store.try_lease("repo-2", "host-b", 60) is not None  # leases are per key
    store.release_lease(first)
    second = store.try_lease("repo-1", "host-b", 60)
    assert second is not None and second.holder == "host-b"


def test_a_watched_lease_reads_as_taken_unchanged_renewed_and_released(store: LocalDirStore | FsspecStore) -> None:
    assert_current_lease_follows(store, "repo-1")


def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_it(store: FleetStore) -> None:
    dead = store.try_lease("repo-1", "dead-host", 2.0)
    assert dead is not None
    assert store.try_lease("repo-1", "host-b", 60) is None
    time.sleep(max(0.0, dead.expires - time.time()) + 0.2)
    taken = store.try_lease("repo-1", "host-b", 60)
    assert taken is not None
    assert store.renew_lease(dead, 60) is None  # the dead host came back: its lease is gone
    store.release_lease(dead)  # and releasing it does not release the new holder's
    assert store.try_lease("repo-1", "host-c", 60) is None
    renewed = store.renew_lease(taken, 60)
    assert renewed is not None and renewed.expires >= taken.expires


def test_hosts_racing_for_an_expired_lease_have_one_winner(store: FleetStore) -> None:
    assert store.try_lease("repo-1", "dead-host", 0.3) is not None
    time.sleep(0.5)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def race(name: str) -> None:
        barrier.wait()
        if store.try_lease("repo-1", name, 60) is not None:
            winners.append(name)

    threads = [threading.Thread(target=race, args=(f"host-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(winners) == 1, winners


def test_leases_are_not_listed_as_artifacts(store: FleetStore, tmp_path: Path) -> None:
    assert store.try_lease("repo-1", "host-a", 60) is not None
    assert list(store.list()) == []
    assert not store.exists("repo-1")


# -- poisoned generations: a writer of the store cannot stop honest uploads ----------------------------------------


def _packed_bytes(tmp_path: Path, content: bytes) -> bytes:
    mirror = tmp_path / f"mirror-{hashlib.sha256(content).hexdigest()[:8]}"
    make_mirror(mirror, content=content)
    out = io.BytesIO()
    pack_mirror(mirror, out)
    return out.getvalue()


@pytest.mark.parametrize("kind", POISONS)
def test_a_poisoned_generation_is_skipped_and_an_honest_upload_replaces_it(
    store: FleetStore, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    poison = poison_generation(store, "repo-1", "https://example.invalid/repo-1", kind, _packed_bytes(tmp_path, b"x"))
    assert store.get_manifest("repo-1") is None and list(store.list()) == [] and not store.exists("repo-1")
    assert store.get_manifest("repo-1") is None
    warned = [r for r in caplog.records if "ignoring the cold store generation" in r.getMessage()]
    assert len(warned) == 1 and poison in warned[0].getMessage(), warned  # once, however often it is skipped
    make_mirror(tmp_path / "mirror")
    honest = store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", time.time()))
    assert honest is not None, "a poisoned generation stopped an honest upload"
    assert store.get_manifest("repo-1") == honest
    assert stored_generations(store, "repo-1") == {honest.generation}  # the poison was deleted on commit


@pytest.mark.parametrize("kind", POISONS)
def test_prune_deletes_poisoned_generations_and_keeps_the_honest_one(
    store: FleetStore, tmp_path: Path, kind: str
) -> None:
    make_mirror(tmp_path / "mirror")
    honest = store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", time.time()))
    assert honest is not None
    artifact = _packed_bytes(tmp_path, b"hostile")
    poison_generation(store, "repo-1", "https://example.invalid/repo-1", kind, artifact)
    poison_generation(store, "repo-2", "https://example.invalid/repo-2", kind, artifact)  # a key with nothing else
    assert store.get_manifest("repo-1") == honest  # skipped while it is there
    assert store.prune() == []  # no retention policy: only what is unusable goes
    assert stored_generations(store, "repo-1") == {honest.generation}
    assert stored_generations(store, "repo-2") == set()
    assert [m.generation for m in store.list()] == [honest.generation]


def test_a_newer_repocaches_generation_is_skipped_but_never_deleted_as_poison(
    store: FleetStore, tmp_path: Path
) -> None:
    """In a rolling upgrade, older hosts read past what newer ones write and leave it for them."""
    make_mirror(tmp_path / "mirror")
    honest = store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", time.time()))
    assert honest is not None
    newer = poison_generation(store, "repo-1", "https://example.invalid/repo-1", "newer-format", b"artifact")
    assert store.get_manifest("repo-1") == honest
    assert store.prune() == []
    assert stored_generations(store, "repo-1") == {honest.generation, newer}


def test_a_whole_generation_dated_ahead_within_the_bound_ranks_when_the_store_wrote_it(
    store: FleetStore, tmp_path: Path
) -> None:
    """A peer whose clock is ahead (or who lies, within FUTURE_BOUND) is trusted with its content, not its date."""
    make_mirror(tmp_path / "ahead", content=b"ahead")
    ahead = time.time() + FUTURE_BOUND / 2
    skewed = store.put_stream("repo-1", _writer(tmp_path / "ahead", "repo-1", ahead), created=ahead)
    assert skewed is not None and store.get_manifest("repo-1") == skewed
    time.sleep(1.1)  # S3 dates what it stores to the second
    make_mirror(tmp_path / "mirror")
    now = time.time()
    honest = store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", now), created=now)
    assert honest is not None, "a generation dated ahead shadowed an honest upload taken after it was stored"
    assert store.get_manifest("repo-1") == honest
    assert stored_generations(store, "repo-1") == {honest.generation}


def test_an_upload_from_a_host_whose_clock_is_far_ahead_is_not_committed(store: FleetStore, tmp_path: Path) -> None:
    make_mirror(tmp_path / "mirror")
    ahead = time.time() + 2 * FUTURE_BOUND
    far = store.put_stream("repo-1", _writer(tmp_path / "mirror", "repo-1", ahead), created=ahead)
    assert far is None and store.get_manifest("repo-1") is None
    assert stored_generations(store, "repo-1") == set()
