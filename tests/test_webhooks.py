"""Push webhooks from GitHub, GitLab, Gitea and Forgejo, sent signed to a real WSGI server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache import ConfigError, RepoCache, normalize_url
from repocache.errors import (
    WebhookError,
    WebhookEventError,
    WebhookPayloadError,
    WebhookSignatureError,
    WebhookTooLargeError,
)
from repocache.testing import SmartHTTPServer, UpstreamFactory
from repocache.webhooks import parse_event, wsgi_app
from tests.helpers import assert_consistent, mirror_refs, serve_wsgi

SECRET = "It's a Secret to Everybody"


@pytest.fixture
def cache(cache_root: Path) -> Iterator[RepoCache]:
    """A cache whose TTL is long: only a stale mark makes a hit fetch."""
    with RepoCache(cache_root, fetch_ttl=3600) as repo_cache:
        yield repo_cache
        assert_consistent(repo_cache)


@pytest.fixture
def hook_url(cache: RepoCache) -> Iterator[str]:
    """The URL of a real WSGI server on 127.0.0.1 running ``wsgi_app(cache, secret=SECRET)`` (bodies up to 64 KiB)."""
    with serve_wsgi(wsgi_app(cache, secret=SECRET, max_body_bytes=65536)) as url:
        yield url


def _send(url: str, headers: dict[str, str], body: bytes, *, method: str = "POST") -> tuple[int, dict[str, object]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env says
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _hex(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github(repo_url: str, *, secret: str = SECRET, event: str = "push") -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "repository": {
                "full_name": "octo/repo",
                "clone_url": repo_url,
                "html_url": repo_url.removesuffix(".git"),
                "ssh_url": "git@github.com:octo/repo.git",
            },
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + _hex(body, secret),
    }
    return headers, body


def gitlab(repo_url: str, *, token: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "object_kind": "push",
            "ref": "refs/heads/main",
            "project": {"path_with_namespace": "group/repo", "git_http_url": repo_url, "git_ssh_url": "git@gl:g/r"},
            "repository": {"git_http_url": repo_url},
        }
    ).encode()
    return {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token}, body


def gitea(repo_url: str, *, forgejo: bool = False) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {"ref": "refs/heads/main", "repository": {"full_name": "o/r", "clone_url": repo_url, "ssh_url": "git@h:o/r"}}
    ).encode()
    name = "Forgejo" if forgejo else "Gitea"
    return {
        "Content-Type": "application/json",
        f"X-{name}-Event": "push",
        f"X-{name}-Signature": _hex(body),
        "X-GitHub-Event": "push",  # Gitea and Forgejo send GitHub's header too; theirs must win
    }, body


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea", "forgejo"])
def test_a_signed_push_marks_the_repository_stale_and_the_next_checkout_fetches(
    cache: RepoCache, hook_url: str, served: UpstreamFactory, http: SmartHTTPServer, provider: str
) -> None:
    upstream = served.create(f"hooked-{provider}")
    repo_url = http.url_for(upstream)
    cache.ensure(repo_url)
    upstream.commit({"pushed": "1"})
    with cache.checkout(repo_url) as co:
        assert not co.fetched  # within the TTL
    headers, body = {
        "github": lambda: github(repo_url),
        "gitlab": lambda: gitlab(repo_url),
        "gitea": lambda: gitea(repo_url),
        "forgejo": lambda: gitea(repo_url, forgejo=True),
    }[provider]()
    status, answer = _send(hook_url, headers, body)
    assert status == 200, answer
    assert answer["provider"] == provider
    assert answer["marked"] == [cache.info(repo_url).url]  # type: ignore[union-attr]
    with cache.checkout(repo_url) as co:
        assert co.fetched and mirror_refs(co.path) == upstream.refs()


def test_github_form_encoded_payloads_are_accepted(
    cache: RepoCache, hook_url: str, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = served.create("hooked-form")
    repo_url = http.url_for(upstream)
    cache.ensure(repo_url)
    _headers, payload = github(repo_url)
    body = urllib.parse.urlencode({"payload": payload.decode()}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": "sha256=" + _hex(body),
    }
    status, answer = _send(hook_url, headers, body)
    assert status == 200 and answer["marked"] == [cache.info(repo_url).url]  # type: ignore[union-attr]


def test_bad_requests_are_refused_and_mark_nothing(
    cache: RepoCache, hook_url: str, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = served.create("hooked-refused")
    repo_url = http.url_for(upstream)
    cache.ensure(repo_url)
    upstream.commit({"pushed": "1"})
    headers, body = github(repo_url)
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({**headers, "X-Hub-Signature-256": "sha256=" + _hex(body, "wrong")}, body, 401, "signature"),
        ({k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}, body, 401, "X-Hub-Signature-256"),
        (headers, body + b" ", 401, "signature"),  # the body was changed after signing
        (gitlab(repo_url, token="wrong")[0], gitlab(repo_url)[1], 401, "X-Gitlab-Token"),
        ({**headers, "X-GitHub-Event": " "}, body, 400, "empty"),
        ({k: v for k, v in headers.items() if k != "X-GitHub-Event"}, body, 400, "event header"),
        ({**headers, "X-Hub-Signature-256": "sha256=" + _hex(b"{nope")}, b"{nope", 400, "JSON"),
        ({**headers, "X-Hub-Signature-256": "sha256=" + _hex(b"{}")}, b"{}", 400, "repository"),
        ({**headers, "X-Hub-Signature-256": "sha256=" + _hex(b"x" * 70000)}, b"x" * 70000, 413, "bytes"),
    ]
    for sent_headers, sent_body, status, words in cases:
        got, answer = _send(hook_url, sent_headers, sent_body)
        assert (got, words in str(answer["error"])) == (status, True), (sent_headers, answer)
    got, answer = _send(hook_url, {}, b"", method="GET")
    assert got == 405
    with cache.checkout(repo_url) as co:
        assert not co.fetched  # nothing was marked


def test_a_github_ping_is_answered_without_marking(cache: RepoCache, hook_url: str) -> None:
    headers, body = github("https://example.invalid/o/r.git", event="ping")
    status, answer = _send(hook_url, headers, body)
    assert status == 200 and answer["marked"] == [] and answer["event"] == "ping"


def test_parse_event_reads_every_repository_url_and_refuses_with_typed_errors() -> None:
    headers, body = github("https://github.com/octo/repo.git")
    event = parse_event(headers, body, secret=SECRET)
    assert event.provider == "github" and event.event == "push"
    expected = tuple(
        normalize_url(url).url for url in ("https://github.com/octo/repo.git", "git@github.com:octo/repo.git")
    )
    assert event.urls == expected and len(set(expected)) == 2
    lower = {name.lower(): value for name, value in headers.items()}  # header names are case-insensitive
    assert parse_event(lower, body, secret=SECRET.encode()).urls == event.urls
    with pytest.raises(WebhookSignatureError) as caught:
        parse_event(headers, body, secret="other")
    assert caught.value.status == 401 and isinstance(caught.value, (WebhookError, ValueError))
    with pytest.raises(WebhookEventError, match="empty"):
        parse_event({**headers, "X-GitHub-Event": ""}, body, secret=SECRET)
    release = parse_event({**headers, "X-GitHub-Event": "release"}, body, secret=SECRET)
    assert (release.ignored, release.urls) == (True, ())  # verified, not a push: nothing to mark
    local = json.dumps({"object_kind": "push", "project": {"git_http_url": "/srv/git/repo", "web_url": "ftp://x/y"}})
    with pytest.raises(WebhookPayloadError, match="no repository"):  # a host never names a local path
        parse_event(gitlab("")[0], local.encode(), secret=SECRET)
    with pytest.raises(WebhookTooLargeError):
        parse_event(headers, body, secret=SECRET, max_body_bytes=10)
    with pytest.raises(ConfigError, match="secret"):
        parse_event(headers, body, secret="")
    with pytest.raises(ConfigError, match="secret"):
        wsgi_app(None, secret="")  # type: ignore[arg-type]
