"""Fixtures of the git server's tests: upstreams served by each test's own smart HTTP server, and the git clients'
environment. A module that needs other upstreams (or an upstream server that asks for credentials) defines its own
fixture of the same name, which takes precedence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache.testing import SmartHTTPServer, UpstreamFactory
from tests._serve import git_env


@pytest.fixture
def factory(tmp_path: Path) -> UpstreamFactory:
    """Upstreams served by this test's own servers."""
    return UpstreamFactory(tmp_path / "served")


@pytest.fixture
def upstream_http(factory: UpstreamFactory) -> Iterator[SmartHTTPServer]:
    """Smart HTTP serving this test's upstreams."""
    factory.base_dir.mkdir(parents=True, exist_ok=True)
    with SmartHTTPServer(factory.base_dir) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The git clients' environment."""
    return git_env(tmp_path / "client-home")
