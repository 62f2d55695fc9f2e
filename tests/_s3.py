"""A real S3 endpoint for tests: ``moto_server`` on 127.0.0.1, one bucket, fake credentials.

Import the fixture into a test module (``from tests._s3 import s3_endpoint  # noqa: F401``) or a conftest.
Nothing here reaches beyond loopback or reads the user's AWS configuration.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["S3_ENV", "s3_endpoint", "s3_environment"]

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
"""Environment that makes boto3 and s3fs use fake credentials and never look beyond loopback."""

_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN")
_START_TIMEOUT = 30.0


def s3_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply :data:`S3_ENV` (and unset profile and endpoint overrides) through ``monkeypatch``."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _moto_server_command(port: int) -> list[str]:
    executable = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if executable is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    return [executable, "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_serving(process: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env says
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}: {log.read_text(errors='replace')}")
        try:
            with opener.open(endpoint + "/moto-api/", timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {_START_TIMEOUT:g}s")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A running ``moto_server`` on 127.0.0.1 with one empty bucket; yields ``(endpoint_url, bucket)``.

    For the whole session the environment holds fake credentials (:data:`S3_ENV`), so boto3 and s3fs reach only
    this server; the previous environment is restored and the server killed at teardown.
    """
    boto3: Any = importlib.import_module("boto3")  # heavy and untyped: imported only when an S3 test runs

    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as monkeypatch:
        s3_environment(monkeypatch)
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                _moto_server_command(port), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            _wait_until_serving(process, endpoint, log)
            bucket = "repocache-cold"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
            yield endpoint, bucket
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
