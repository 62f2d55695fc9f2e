"""An S3-compatible endpoint on loopback for tests and benchmarks: ``moto_server`` on 127.0.0.1, one bucket, fake
credentials (needs ``pip install 'moto[server]' s3fs``).

The calling process never takes the fake credentials: they are in :meth:`Endpoint.environment` (or :data:`S3_ENV`),
for the processes or the test session that use the store. The endpoint reaches repocache the way a user's would,
through ``AWS_ENDPOINT_URL`` (read by botocore, under s3fs), with ``cold_store="s3://bucket/prefix"``, or through
an explicit ``endpoint_url``. Nothing here reaches beyond loopback or reads the user's AWS configuration.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["S3_ENV", "S3_UNSET", "Endpoint", "Unavailable", "moto_endpoint"]

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
"""Fake credentials and settings that keep boto3 and s3fs on loopback, away from any real account."""

S3_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
"""Variables that would send botocore elsewhere than the endpoint, or to a real account: remove them."""
_START_TIMEOUT = 30.0


class Unavailable(Exception):
    """The endpoint cannot be had here: s3fs, boto3 or moto is not installed; the message says which."""


@dataclass(frozen=True)
class Endpoint:
    """A running server: its URL and the bucket created in it."""

    url: str
    bucket: str

    def environment(self) -> dict[str, str]:
        """This process's environment with fake credentials and ``AWS_ENDPOINT_URL`` pointing at the server."""
        env = {name: value for name, value in os.environ.items() if name not in S3_UNSET}
        env.update(S3_ENV)
        env["AWS_ENDPOINT_URL"] = self.url
        return env


def _missing() -> str | None:
    """Why the S3 store cannot be measured with this interpreter, or None."""
    for module, package in (("s3fs", "s3fs"), ("boto3", "boto3"), ("moto", "moto[server]")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '{package}')"
    return None


def _moto_server() -> str:
    executable = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if executable is None:
        raise Unavailable("moto_server is not installed (pip install 'moto[server]')")
    return executable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env says
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto_server exited with {process.returncode}: {log.read_text(errors='replace')[-500:]}"
            )
        try:
            with opener.open(url + "/moto-api/", timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {_START_TIMEOUT:g}s")


def _create_bucket(endpoint: Endpoint, env: dict[str, str]) -> None:
    """Create the bucket with boto3, under ``env`` for the duration (a profile named in ours must not be read)."""
    boto3: Any = importlib.import_module("boto3")  # untyped: imported only when the S3 store is measured
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        boto3.session.Session().client("s3", endpoint_url=endpoint.url).create_bucket(Bucket=endpoint.bucket)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def moto_endpoint(log: Path, bucket: str = "repocache-cold") -> Iterator[Endpoint]:
    """Run ``moto_server`` on 127.0.0.1 (output to ``log``) with ``bucket`` created; killed when the block exits.

    Raises:
        Unavailable: s3fs, boto3 or moto is not installed.
        RuntimeError: the server did not start.
    """
    why_not = _missing()
    if why_not is not None:
        raise Unavailable(why_not)
    command = [_moto_server(), "-H", "127.0.0.1", "-p", str(_free_port())]
    url = f"http://127.0.0.1:{command[-1]}"
    endpoint = Endpoint(url, bucket)
    env = endpoint.environment()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        _wait_until_serving(process, url, log)
        _create_bucket(endpoint, env)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
