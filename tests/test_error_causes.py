"""Errors keep their cause: git's own lines, the URL as the caller wrote it, and authentication failures told apart.

Everything stays on 127.0.0.1: ssh is a script given as ``GIT_SSH_COMMAND`` that fails as a refused connection
does, and credentials are checked by the real smart HTTP server of :mod:`repocache.testing`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import prometheus_client
import pytest

from repocache import AuthenticationError, CloneError, FetchError, RepoCache, metrics
from repocache.counters import Counter
from repocache.testing import SmartHTTPServer, UpstreamFactory
from tests.helpers import PROJECT

pytestmark = pytest.mark.timeout(120)

_REFUSED = "ssh: connect to host 127.0.0.1 port 1: Connection refused"


@pytest.fixture
def refused_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh that fails as a refused connection does: git's line on stderr, exit status 255."""
    script = tmp_path / "ssh"
    script.write_text(f"#!/bin/sh\necho '{_REFUSED}' >&2\nexit 255\n")
    script.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(script))
    monkeypatch.setenv("GIT_SSH_VARIANT", "ssh")  # a command named "ssh" accepts -p, as OpenSSH does


@pytest.mark.parametrize("url", ["ssh://127.0.0.1:1/x.git", "127.0.0.1:x.git", "git@127.0.0.1:team/x.git"])
def test_an_ssh_failure_keeps_git_cause_lines_and_the_url_as_written(
    refused_ssh: None, cache_root: Path, url: str
) -> None:
    with RepoCache(cache_root, on_fetch_error="raise") as cache:
        with pytest.raises(CloneError) as failed:
            cache.ensure(url)
    message = str(failed.value)
    assert _REFUSED in message, message
    assert "Could not read from remote repository" in message, message
    assert f"clone of {url} failed" in message, message
    assert "/~/" not in message, message
    assert message.count(_REFUSED) == 1, message
    assert not isinstance(failed.value, AuthenticationError)


def test_cause_lines_are_deduplicated_and_bounded() -> None:
    from repocache.gitops.run import _error_lines

    tail = ["Cloning into bare repository 'x'...", *(f"error: line {n % 3}" for n in range(40)), "x" * 5000]
    tail += ["fatal: Could not read from remote repository."]
    detail = _error_lines(tail, hide=None)
    assert detail.count("error: line 1.") == 1, detail
    assert "fatal: Could not read from remote repository." in detail
    assert len(detail) < 2000


def test_wrong_credentials_are_an_authentication_error_tried_once(
    cache_root: Path, served: UpstreamFactory, served_dir: Path
) -> None:
    upstream = served.create("private-wrong")
    with SmartHTTPServer(served_dir, auth=("alice", "right-s3cret")) as server:
        good = server.url_for(upstream, credentials=True)
        wrong = good.replace("right-s3cret", "wrong-s3cret")
        shown = wrong.replace("alice:wrong-s3cret@", "***@")
        with RepoCache(cache_root, on_fetch_error="raise", fetch_ttl=0) as cache:
            with pytest.raises(AuthenticationError) as clone_refused:
                cache.ensure(wrong)
            assert isinstance(clone_refused.value, CloneError)
            assert "wrong-s3cret" not in str(clone_refused.value)
            assert shown in str(clone_refused.value), str(clone_refused.value)
            assert "no usable credentials" not in str(clone_refused.value)
            cache.ensure(good)
            before = len(server.requests)
            with pytest.raises(AuthenticationError) as fetch_refused:
                cache.ensure(wrong)
            assert isinstance(fetch_refused.value, FetchError)
            assert "wrong-s3cret" not in str(fetch_refused.value)
            assert shown in str(fetch_refused.value)
            advertisements = [path for _method, path in server.requests[before:] if path.endswith("/info/refs")]
            # libgit2 asks once without and once with the credentials; a retry would ask again
            assert len(advertisements) <= 2, server.requests[before:]
            assert cache.stats().auth_errors == 2
            assert Counter.AUTH_ERRORS.value == "auth_errors"
            registry = prometheus_client.CollectorRegistry()
            metrics.instrument(cache, registry)
            scraped = prometheus_client.generate_latest(registry).decode()
            assert f'repocache_auth_errors_total{{root="{cache_root}"}} 2.0' in scraped, scraped


def test_serve_stale_names_the_authentication_failure(
    cache_root: Path, served: UpstreamFactory, served_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = served.create("private-stale")
    with SmartHTTPServer(served_dir, auth=("alice", "right-s3cret")) as server:
        good = server.url_for(upstream, credentials=True)
        wrong = good.replace("right-s3cret", "wrong-s3cret")
        with RepoCache(cache_root, fetch_ttl=0) as cache:
            cache.ensure(good)
            with pytest.warns(RuntimeWarning, match="authentication failed"):
                with cache.checkout(wrong) as co:
                    assert co.stale
    assert "authentication" in caplog.text and "wrong-s3cret" not in caplog.text


def test_cli_get_with_wrong_credentials_fails_even_with_a_stale_copy(
    tmp_path: Path, served: UpstreamFactory, served_dir: Path
) -> None:
    upstream = served.create("private-cli")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REPOCACHE_", "GIT_"))}
    env.update(REPOCACHE_DIR=str(tmp_path / "cache"), GIT_CONFIG_NOSYSTEM="1")
    env.update(PYTHONPATH=str(PROJECT), HOME=str(tmp_path), GIT_CONFIG_GLOBAL=os.devnull)

    def get(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "repocache", "--fetch-ttl", "0", "get", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with SmartHTTPServer(served_dir, auth=("alice", "right-s3cret")) as server:
        good = server.url_for(upstream, credentials=True)
        first = get(good)
        assert first.returncode == 0, first.stderr
        refused = get(good.replace("right-s3cret", "wrong-s3cret"))
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    assert "authentication" in refused.stderr.lower() and "wrong-s3cret" not in refused.stderr
    assert "Traceback" not in refused.stderr
