"""Clients get only what upstream would give them: the git server checks each client's credentials against upstream.

Real git clients clone and fetch through a running server on 127.0.0.1 from a smart HTTP upstream that requires
per-repository Basic credentials (changed at runtime to revoke one), and from ``git daemon``.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.errors import ConfigError
from repocache.events import Event, ServeEvent
from repocache.serve import GitServer, ServeOptions, Upstreams
from repocache.serve.auth import AuthChecker, AuthOptions, parse_credentials
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests._serve import (
    PREFIX,
    ThreadServer,
    auth_checks,
    base_of,
    clone,
    git_env,
    health,
    is_auth_check,
    request,
    serve_process,
)
from tests.helpers import PROJECT, assert_consistent, refs

ALICE = ("alice", "alice-pw-7f3a91")
"""May read ``org/repo`` only."""
BOB = ("bob", "bob-pw-c0ffee42")
"""May read ``org/other`` only."""
CACHE = ("cache", "cache-own-pw-51d2")
"""The cache's own credential: may read both."""
SECRETS = (ALICE[1], BOB[1], CACHE[1], "wrong-pw-9b8e")

_UPLOAD = "application/x-git-upload-pack-request"


@pytest.fixture
def upstream(factory: UpstreamFactory) -> Upstream:
    """``org/repo``, private to alice (and the cache)."""
    repo = factory.create("org/repo")
    repo.commits(4, size=20_000)
    repo.tag("v1", annotated=True)
    return repo


@pytest.fixture
def private_http(factory: UpstreamFactory, upstream: Upstream) -> Iterator[SmartHTTPServer]:
    """Smart HTTP: ``org/repo.git`` for alice and the cache, ``org/other.git`` for bob and the cache, others public."""
    other = factory.create("org/other")
    other.commits(1)
    public = factory.create("org/public")
    public.commits(2)
    access = {"org/repo.git": [ALICE, CACHE], "org/other.git": [BOB, CACHE]}
    with SmartHTTPServer(factory.base_dir, access=access) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The git clients' environment (no prompts, no credential helper)."""
    return git_env(tmp_path / "client-home")


def own_credential(**options: float) -> ServeOptions:
    """Server options with the cache's own credential for the test prefix."""
    auth = AuthOptions(upstream_credentials={PREFIX: CACHE}, **options)  # type: ignore[arg-type]
    return ServeOptions(auth=auth)


def with_credentials(url: str, pair: tuple[str, str] | None) -> str:
    """``url`` with ``user:password@`` when ``pair`` is given."""
    return url if pair is None else url.replace("http://", f"http://{pair[0]}:{pair[1]}@", 1)


def basic(pair: tuple[str, str]) -> str:
    """An ``Authorization`` header value."""
    return "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()


def cache_contacts(server: SmartHTTPServer) -> int:
    """Requests the cache's own clones and fetches made at ``server`` (not the checks of clients)."""
    return sum(1 for recorded in server.received if not is_auth_check(recorded))


def packs_served(events: list[Event]) -> int:
    """Body bytes of ``git-upload-pack`` answers the server sent (refusal texts excluded)."""
    return sum(
        e.bytes_sent
        for e in events
        if isinstance(e, ServeEvent) and e.service == "git-upload-pack" and e.outcome in ("served", "stale")
    )


def advertised(events: list[Event]) -> int:
    """``info/refs`` answers served (ref advertisements)."""
    return sum(
        1 for e in events if isinstance(e, ServeEvent) and e.service == "info/refs" and e.outcome in ("served", "stale")
    )


# -- the auth matrix -------------------------------------------------------------------------------------------


REFUSED = [
    ("no credential", None, "terminal prompts disabled"),
    ("a wrong one", (ALICE[0], "wrong-pw-9b8e"), "Authentication failed"),
    ("one for another repository", BOB, "Authentication failed"),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("case", "pair", "said"), REFUSED, ids=[case for case, _, _ in REFUSED])
def test_a_refused_client_gets_401_and_no_ref_or_pack_byte_and_causes_no_clone(
    tmp_path: Path,
    upstream: Upstream,
    private_http: SmartHTTPServer,
    env: dict[str, str],
    case: str,
    pair: tuple[str, str] | None,
    said: str,
) -> None:
    seen: list[Event] = []
    with RepoCache(tmp_path / "cache", on_event=seen.append) as cache:
        with ThreadServer(cache, base_of(private_http), own_credential()) as server:
            done = clone(with_credentials(server.url("org/repo.git"), pair), tmp_path / "clone", env=env)
            assert done.returncode != 0, case
            assert said in done.stderr, done.stderr
            headers = {} if pair is None else {"Authorization": basic(pair)}
            path = f"/{PREFIX}/org/repo.git"
            status, answer, body = request(
                server.port, "GET", f"{path}/info/refs?service=git-upload-pack", None, headers
            )
            assert status == 401 and answer["www-authenticate"] == 'Basic realm="repocache-test"', (status, answer)
            assert b"upstream" in body and upstream.resolve("main").encode() not in body
            upload = {**headers, "Content-Type": _UPLOAD}
            status, answer, body = request(server.port, "POST", f"{path}/git-upload-pack", b"0000", upload)
            assert status == 401 and "www-authenticate" in answer and not body.startswith(b"PACK")
            assert cache.entries() == []  # the refused client made the cache clone nothing
            assert_consistent(cache)
    assert packs_served(seen) == 0 and advertised(seen) == 0
    served = [e for e in seen if isinstance(e, ServeEvent)]
    assert {e.outcome for e in served} == {"unauthorized"} and {e.auth for e in served} == {"refused"}
    assert cache_contacts(private_http) == 0
    assert not (tmp_path / "clone" / "objects").exists()


@pytest.mark.timeout(180)
def test_a_valid_credential_clones_and_fetches_and_is_checked_once_per_ttl(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    seen: list[Event] = []
    with RepoCache(tmp_path / "cache", on_event=seen.append) as cache:
        with ThreadServer(cache, base_of(private_http), own_credential()) as server:
            url = with_credentials(server.url("org/repo.git"), ALICE)
            done = clone(url, tmp_path / "clone", "--mirror", env=env)
            assert done.returncode == 0, done.stderr
            assert refs(tmp_path / "clone") == upstream.refs()
            second = clone(url, tmp_path / "again", env=env)
            assert second.returncode == 0, second.stderr
            # git asks without credentials first, and sends them after the 401: one check for each of the two
            # (none, alice), whose answers serve every further request of both clones.
            assert auth_checks(private_http) == 2
            assert server.app.auth.counts["allowed"] >= 4 and server.app.auth.counts["cached"] >= 4
            assert_consistent(cache)
    served = [e for e in seen if isinstance(e, ServeEvent)]
    assert [e.auth for e in served if not e.auth_cached] == ["refused", "allowed"]
    assert {e.outcome for e in served if e.auth == "allowed"} == {"served"}
    assert packs_served(seen) > 50_000


@pytest.mark.timeout(180)
def test_a_credential_helper_answers_the_401_as_it_does_against_upstream(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """git sends no credential first; the 401's challenge makes it ask its helper and retry."""
    helper = f'!f() {{ test "$1" = get && echo username={ALICE[0]} && echo password={ALICE[1]}; }}; f'
    with RepoCache(tmp_path / "cache") as cache:
        with ThreadServer(cache, base_of(private_http), own_credential()) as server:
            done = subprocess.run(
                ["git", "-c", f"credential.helper={helper}", "clone", server.url("org/repo.git"), str(tmp_path / "c")],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
    assert (tmp_path / "c" / "README.md").exists()


@pytest.mark.timeout(180)
def test_a_revoked_credential_stops_working_within_the_ttl(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    ttl = 2.0
    seen: list[Event] = []
    with RepoCache(tmp_path / "cache", fetch_ttl=3600, on_event=seen.append) as cache:
        with ThreadServer(cache, base_of(private_http), own_credential(ttl=ttl)) as server:
            url = with_credentials(server.url("org/repo.git"), ALICE)
            assert clone(url, tmp_path / "clone", env=env).returncode == 0
            private_http.revoke("org/repo.git", *ALICE)
            revoked = time.monotonic()
            time.sleep(ttl + 0.3)
            fetched = subprocess.run(
                ["git", "fetch", "origin"], cwd=tmp_path / "clone", capture_output=True, text=True, env=env, timeout=60
            )
            assert time.monotonic() - revoked < ttl + 30
            assert fetched.returncode != 0 and "Authentication failed" in fetched.stderr, fetched.stderr
            before = packs_served(seen)
            headers = {"Authorization": basic(ALICE), "Content-Type": _UPLOAD}
            status, _, body = request(server.port, "POST", f"/{PREFIX}/org/repo.git/git-upload-pack", b"0000", headers)
            assert status == 401 and not body.startswith(b"PACK")
            assert packs_served(seen) == before
            # The cache's own credential still reads it: the mirror is there, only alice is refused.
            assert len(cache.entries()) == 1


@pytest.mark.timeout(120)
def test_a_public_repository_is_served_anonymously_after_one_check(
    tmp_path: Path, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    with RepoCache(tmp_path / "cache") as cache:
        with ThreadServer(cache, base_of(private_http)) as server:
            for name in ("a", "b"):
                done = clone(server.url("org/public.git"), tmp_path / name, env=env)
                assert done.returncode == 0, done.stderr
            assert auth_checks(private_http) == 1
            assert health(server.port)["auth_checks"]["allowed"] >= 4


@pytest.mark.timeout(120)
def test_refusals_are_cached_briefly_and_upstream_errors_not_at_all(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer
) -> None:
    path = f"/{PREFIX}/org/repo.git/info/refs?service=git-upload-pack"
    with RepoCache(tmp_path / "cache") as cache:
        options = ServeOptions(auth=AuthOptions(refused_ttl=1.0, upstream_credentials={PREFIX: CACHE}))
        with ThreadServer(cache, base_of(private_http), options) as server:
            assert request(server.port, "GET", path)[0] == 401
            assert request(server.port, "GET", path)[0] == 401
            assert auth_checks(private_http) == 1
            time.sleep(1.2)
            assert request(server.port, "GET", path)[0] == 401
            assert auth_checks(private_http) == 2
    port = private_http.port
    private_http.stop()  # nothing listens there now: every check is an upstream error, answered 502
    with RepoCache(tmp_path / "cache2") as cache:
        with ThreadServer(cache, f"http://127.0.0.1:{port}/") as server:
            for _ in range(2):
                status, _, body = request(server.port, "GET", path)
                assert status == 502 and b"cannot check credentials" in body, body
            assert server.app.auth.upstream_checks == 2 and server.app.auth.counts["error"] == 2
            assert cache.entries() == []


# -- credentials never leak ------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_credentials_reach_no_file_log_event_metric_or_message(
    tmp_path: Path,
    upstream: Upstream,
    private_http: SmartHTTPServer,
    env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from repocache.metrics import instrument

    caplog.set_level(logging.DEBUG, logger="repocache")
    registry = CollectorRegistry()
    seen: list[Event] = []
    said: list[str] = []
    with RepoCache(tmp_path / "cache", fetch_ttl=0, on_event=seen.append) as cache:
        instrument(cache, registry)
        with ThreadServer(cache, base_of(private_http), own_credential(ttl=0, refused_ttl=0)) as server:
            for pair in (ALICE, (ALICE[0], "wrong-pw-9b8e"), BOB, None):
                done = clone(with_credentials(server.url("org/repo.git"), pair), tmp_path / f"c{len(said)}", env=env)
                said.append(done.stdout + done.stderr)
            for pair in (ALICE, BOB):
                headers = {"Authorization": basic(pair)}
                said.append(
                    repr(
                        request(
                            server.port,
                            "GET",
                            f"/{PREFIX}/org/repo.git/info/refs?service=git-upload-pack",
                            None,
                            headers,
                        )
                    )
                )
            said.append(repr(health(server.port)))
            metrics = generate_latest(registry).decode()
        said.append(metrics)
    assert (tmp_path / "c0" / "README.md").exists()
    said.append(caplog.text)
    said.extend(repr(event) for event in seen)
    said.append(repr(own_credential()))
    for file in (tmp_path / "cache").rglob("*"):
        if file.is_file():
            said.append(file.read_bytes().decode("latin-1"))
    text = "\n".join(said)
    for secret in SECRETS:
        assert secret not in text, secret
    for pair in (ALICE, BOB, CACHE):
        assert basic(pair).split()[1] not in text
    assert 'repocache_serve_auth_checks_total{cached="false",outcome="allowed"}' in metrics, metrics
    assert 'repocache_serve_auth_checks_total{cached="false",outcome="refused"}' in metrics


# -- modes -----------------------------------------------------------------------------------------------------


def test_git_and_ssh_upstreams_must_be_trusted_explicitly() -> None:
    allowed = {"a.example": "https://a.example/", "d.example": "git://d.example/", "s.example": "ssh://git@s.example/"}
    with pytest.raises(ConfigError, match=re.escape("'d.example' cannot check clients' credentials")):
        AuthChecker(Upstreams(allowed))
    with pytest.raises(ConfigError, match=re.escape("'s.example' cannot check")):
        AuthChecker(Upstreams(allowed), AuthOptions(trust=frozenset({"d.example"})))
    checker = AuthChecker(Upstreams(allowed), AuthOptions(trust=frozenset({"d.example", "s.example"})))
    assert not checker.trusts("a.example") and checker.trusts("d.example")
    assert AuthChecker(Upstreams(allowed), AuthOptions(trust=True)).trusts("a.example")
    with pytest.raises(ConfigError, match=re.escape("'nope.example' is not in the allow-list")):
        AuthChecker(Upstreams(allowed), AuthOptions(trust=frozenset({"nope.example", "d.example", "s.example"})))
    with pytest.raises(ConfigError, match="over http and https only"):
        AuthChecker(Upstreams(allowed), AuthOptions(trust=True, upstream_credentials={"s.example": ("u", "p")}))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"ttl": -1}, "ttl=-1"),
        ({"refused_ttl": float("inf")}, "refused_ttl=inf"),
        ({"timeout": 0}, "timeout=0"),
        ({"max_entries": 0}, "max_entries=0"),
        ({"trust": "yes"}, "trust='yes'"),
        ({"upstream_credentials": {"p": ("", "x")}}, "non-empty user"),
        ({"upstream_credentials": {"p": "u:p"}}, "(user, password) pair"),
    ],
)
def test_bad_auth_options_are_refused_naming_the_value(options: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        AuthOptions(**options)  # type: ignore[arg-type]


def test_a_credential_file_is_read_and_its_content_never_shown(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("cache:tok-en-123\n")
    assert parse_credentials([f"up.test={good}"]) == {"up.test": ("cache", "tok-en-123")}
    bad = tmp_path / "bad"
    bad.write_text("just-a-secret-token\n")
    with pytest.raises(ConfigError, match="must hold USER:PASSWORD") as caught:
        parse_credentials([f"up.test={bad}"])
    assert "just-a-secret-token" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_credentials([f"up.test={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="expected PREFIX=FILE"):
        parse_credentials(["up.test"])


@pytest.mark.timeout(120)
def test_a_git_daemon_upstream_is_served_only_when_trusted(
    tmp_path: Path, upstream: Upstream, factory: UpstreamFactory, env: dict[str, str]
) -> None:
    with GitDaemon(factory.base_dir) as daemon:
        base = daemon.url_for(upstream).rsplit("/org/", 1)[0] + "/"
        with RepoCache(tmp_path / "cache") as cache:
            with pytest.raises(ConfigError, match="trust its clients explicitly"):
                GitServer(cache, {PREFIX: base})
            options = ServeOptions(auth=AuthOptions(trust=frozenset({PREFIX})))
            seen: list[Event] = []
            cache.subscribe(seen.append)
            with ThreadServer(cache, base, options) as server:
                done = clone(server.url("org/repo.git"), tmp_path / "clone", env=env)
                assert done.returncode == 0, done.stderr
    assert {e.auth for e in seen if isinstance(e, ServeEvent)} == {"trusted"}


@pytest.mark.timeout(120)
def test_trusted_clients_of_an_http_upstream_are_not_checked(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    with RepoCache(tmp_path / "cache") as cache:
        options = ServeOptions(auth=AuthOptions(trust=True, upstream_credentials={PREFIX: CACHE}))
        with ThreadServer(cache, base_of(private_http), options) as server:
            done = clone(server.url("org/repo.git"), tmp_path / "clone", env=env)
            assert done.returncode == 0, done.stderr
    assert auth_checks(private_http) == 0


# -- the command line ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_repocache_serve_refuses_to_start_for_an_untrusted_git_daemon_prefix(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "repocache",
            "--root",
            str(tmp_path / "cache"),
            "serve",
            "--allow",
            "d.example=git://d/",
        ],
        cwd=PROJECT,
        env=dict(os.environ, PYTHONPATH=str(PROJECT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "'d.example' cannot check clients' credentials" in done.stderr and "--trust d.example" in done.stderr
    assert "serving" not in done.stderr  # refused before it listened


@pytest.mark.timeout(180)
def test_repocache_serve_with_its_own_credential_file_serves_a_private_repository_to_its_reader(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    secret = tmp_path / "own-credential"
    secret.write_text(f"{CACHE[0]}:{CACHE[1]}\n")
    args = ("--upstream-credential-file", f"{PREFIX}={secret}", "--auth-ttl", "30")
    with serve_process(tmp_path / "cache", base_of(private_http), *args) as server:
        done = clone(with_credentials(server.url("org/repo.git"), ALICE), tmp_path / "clone", "--mirror", env=env)
        assert done.returncode == 0, done.stderr + server.log
        refused = clone(with_credentials(server.url("org/repo.git"), BOB), tmp_path / "bob", env=env)
        assert refused.returncode != 0 and "Authentication failed" in refused.stderr
        checks = server.health()["auth_checks"]
        assert checks["allowed"] >= 2 and checks["refused"] >= 1
        log = server.log
    assert refs(tmp_path / "clone") == upstream.refs()
    assert "auth allowed" in log and "unauthorized 401" in log
    for value in SECRETS:
        assert value not in log


@pytest.mark.timeout(180)
def test_a_lazy_fetch_from_a_private_partial_mirror_uses_the_caches_own_credential(
    tmp_path: Path, upstream: Upstream, private_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """The objects a client's lazy fetch wants are fetched into the blob-less mirror with the cache's credential,
    as its clones and fetches are (never anonymously, never with the client's)."""
    subprocess.run(["git", "config", "uploadpack.allowFilter", "true"], cwd=upstream.path, check=True)
    secret = tmp_path / "own-credential"
    secret.write_text(f"{CACHE[0]}:{CACHE[1]}\n")
    args = ("--upstream-credential-file", f"{PREFIX}={secret}", "--mirror-filter", "blob:none")
    dest = tmp_path / "clone"
    with serve_process(tmp_path / "cache", base_of(private_http), *args) as server:
        url = with_credentials(server.url("org/repo.git"), ALICE)
        done = clone(url, dest, "--filter=blob:none", "--no-checkout", env=env)
        assert done.returncode == 0, done.stderr + server.log
        checkout = subprocess.run(
            ["git", "checkout", "-q", "main"], cwd=dest, env=env, capture_output=True, text=True, check=False
        )
        assert checkout.returncode == 0, checkout.stderr + server.log
        log = server.log
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, env=env, capture_output=True, text=True, check=True)
    assert head.stdout.strip() == upstream.resolve("main")
    assert subprocess.run(["git", "fsck", "--connectivity-only"], cwd=dest, env=env, check=False).returncode == 0
    for value in SECRETS:
        assert value not in log
