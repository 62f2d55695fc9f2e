"""A real S3 endpoint for tests: ``moto_server`` on 127.0.0.1, one bucket, fake credentials.

Import the fixture into a test module (``from tests._s3 import s3_endpoint  # noqa: F401``) or a conftest. The
server itself is :func:`repocache.testing.s3.moto_endpoint`; nothing reaches beyond loopback or reads the user's
AWS configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache.testing.s3 import S3_ENV, S3_UNSET, Endpoint, Unavailable, moto_endpoint

__all__ = ["S3_ENV", "logged_moto", "s3_endpoint", "s3_environment"]


def s3_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply :data:`S3_ENV` (and unset profile and endpoint overrides) through ``monkeypatch``."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    for name in (*S3_UNSET, "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A running ``moto_server`` on 127.0.0.1 with one empty bucket; yields ``(endpoint_url, bucket)``.

    For the whole session the environment holds fake credentials (:data:`S3_ENV`), so boto3 and s3fs reach only
    this server; the previous environment is restored and the server killed at teardown.
    """
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.ExitStack() as stack:
        s3_environment(monkeypatch)
        try:
            endpoint = stack.enter_context(moto_endpoint(log))
        except Unavailable as exc:  # a missing package; a server that fails to start fails the tests
            pytest.skip(str(exc))
        yield endpoint.url, endpoint.bucket


@contextlib.contextmanager
def logged_moto(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Endpoint, Path]]:
    """A ``moto_server`` of one test module's own (skipped where moto is missing), so that its request log, the
    ``Path`` yielded with the endpoint, holds that module's requests only; the environment reaches only it."""
    log = tmp_path_factory.mktemp(name) / "moto_server.log"
    with pytest.MonkeyPatch.context() as monkeypatch:
        s3_environment(monkeypatch)
        try:
            with moto_endpoint(log) as endpoint:
                yield endpoint, log
        except Unavailable as exc:
            pytest.skip(str(exc))
