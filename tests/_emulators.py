"""GCS and Azure emulators on 127.0.0.1 as session fixtures (see :mod:`repocache.testing.emulators`).

Import the fixtures into a test module (``from tests._emulators import azurite, fake_gcs  # noqa: F401``). A
missing package or program skips only outside CI; under CI (``CI=true``, where ``.ci/run`` installs them) it fails.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repocache.testing.emulators import (
    Emulated,
    Unavailable,
    azurite_endpoint,
    fake_gcs_endpoint,
    gcp_storage_emulator_endpoint,
)

__all__ = ["azurite", "fake_gcs", "gcs_core", "ignoring_gcs"]


@contextlib.contextmanager
def gcs_core() -> Iterator[None]:
    """While it lasts: gcsfs's plain filesystem for ``gs://`` in this process (its experimental one asks every
    bucket's type over gRPC, which no emulator serves, and waits 60 s before falling back)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        patch.setenv("NO_GCE_CHECK", "true")
        try:
            registry: Any = importlib.import_module("fsspec.registry")
            core: Any = importlib.import_module("gcsfs.core")
        except ImportError:
            yield
            return
        for name in ("gs", "gcs"):
            patch.setitem(registry._registry, name, core.GCSFileSystem)
        yield


def _emulated(factory: Callable[[Path], contextlib.AbstractContextManager[Emulated]], log: Path) -> Iterator[Emulated]:
    with contextlib.ExitStack() as stack:
        try:
            emulated = stack.enter_context(factory(log))
        except Unavailable as exc:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(str(exc))
        yield emulated


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    """fake-gcs-server on 127.0.0.1: GCS that enforces generation preconditions."""
    with gcs_core():
        yield from _emulated(fake_gcs_endpoint, tmp_path_factory.mktemp("fake-gcs") / "server.log")


@pytest.fixture(scope="session")
def ignoring_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    """gcp-storage-emulator on 127.0.0.1: GCS that ignores generation preconditions."""
    with gcs_core():
        yield from _emulated(gcp_storage_emulator_endpoint, tmp_path_factory.mktemp("gcs-emulator") / "server.log")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    """Azurite's blob service on 127.0.0.1: Azure Blob Storage that enforces ETag conditions."""
    yield from _emulated(azurite_endpoint, tmp_path_factory.mktemp("azurite") / "server.log")


def store_url(emulated: Emulated, protocol: str, prefix: str) -> str:
    """The cold store URL of ``prefix`` in the emulator's bucket (``gs://`` or ``az://``)."""
    return f"{protocol}://{emulated.bucket}/{prefix}"


def options_of(emulated: Emulated) -> dict[str, Any]:
    """The fsspec storage options that reach the emulator."""
    return dict(emulated.storage_options)
