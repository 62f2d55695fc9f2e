"""A real S3 endpoint for tests: ``moto_server`` on 127.0.0.1, one bucket, fake credentials.

Import the fixture into a test module (``from tests._s3 import s3_endpoint  # noqa: F401``) or a conftest. The
server itself is :func:`repocache.testing.s3.moto_endpoint`; nothing reaches beyond loopback or reads the user's
AWS configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from repocache.testing.s3 import S3_ENV, S3_UNSET, Unavailable, moto_endpoint

__all__ = ["S3_ENV", "s3_endpoint", "s3_environment"]


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
