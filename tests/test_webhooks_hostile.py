"""Hostile webhook requests: every body, secret and event that is not a usable push is answered 4xx (never 500).

Each request is signed correctly (so it passes the proof and reaches the parser), then sent both to
:func:`parse_event` and to the real WSGI app served on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from repocache import ConfigError, RepoCache
from repocache.errors import WebhookError
from repocache.webhooks import parse_event, wsgi_app
from tests.helpers import serve_wsgi

SECRET = "hostile-secret"
PASSWORD = "hunter2-Pa55w0rd"
DEEP = 100_000  # far past the interpreter's recursion limit, far under the body cap


@pytest.fixture
def hostile_url(cache: RepoCache) -> Iterator[str]:
    """A real WSGI server on 127.0.0.1 running ``wsgi_app(cache, secret=SECRET)`` (bodies up to 1 MiB)."""
    with serve_wsgi(wsgi_app(cache, secret=SECRET)) as url:
        yield url


def _send(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _signed(body: bytes, *, provider: str = "github", form: bool = False, event: str = "push") -> dict[str, str]:
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if provider == "github":
        return {"Content-Type": content_type, "X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + digest}
    if provider == "gitlab":
        return {"Content-Type": content_type, "X-Gitlab-Event": event, "X-Gitlab-Token": SECRET}
    name = provider.capitalize()
    return {"Content-Type": content_type, f"X-{name}-Event": event, f"X-{name}-Signature": digest}


def _form(*fields: tuple[str, str]) -> bytes:
    return urllib.parse.urlencode(list(fields)).encode()


def _repo(value: object) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "repository": value}).encode()


_NESTED_ARRAYS = b"[" * DEEP + b"]" * DEEP
_NESTED_OBJECTS = b'{"a":' * DEEP + b"1" + b"}" * DEEP
_NESTED_REPOSITORY = b'{"repository": {"clone_url": ' + b"[" * DEEP + b"]" * DEEP + b"}}"

# (name, body, is the body form-encoded)
HOSTILE: list[tuple[str, bytes, bool]] = [
    ("nested arrays", _NESTED_ARRAYS, False),
    ("nested objects", _NESTED_OBJECTS, False),
    ("nested inside the repository", _NESTED_REPOSITORY, False),
    ("nested arrays in a form", _form(("payload", _NESTED_ARRAYS.decode())), True),
    ("nested objects in a form", _form(("payload", _NESTED_OBJECTS.decode())), True),
    ("empty body", b"", False),
    ("empty form", b"", True),
    ("whitespace", b"   \n", False),
    ("null", b"null", False),
    ("a list", b"[1, 2]", False),
    ("a string", b'"push"', False),
    ("a huge number", b"1" + b"0" * 5000, False),
    ("a huge number as the repository", b'{"repository": 1' + b"0" * 5000 + b"}", False),
    ("NaN", b"NaN", False),
    ("Infinity as the repository", b'{"repository": Infinity}', False),
    ("invalid UTF-8", b'{"repository": "\xff\xfe"}', False),
    ("invalid UTF-8 in a form", b"payload=\xff\xfe", True),
    ("a lone surrogate", b'{"repository": {"clone_url": "\\ud800"}}', False),
    ("a BOM then nothing usable", b"\xef\xbb\xbf{}", False),
    ("a BOM in a form", _form(("payload", "\ufeff{}")), True),
    ("duplicate keys, the last one useless", b'{"repository": {"clone_url": "https://h/o/r"}, "repository": 3}', False),
    ("the repository is a list", _repo(["https://h/o/r"]), False),
    ("the repository is a string", _repo("https://h/o/r"), False),
    ("the repository is null", _repo(None), False),
    ("the URL is a number", _repo({"clone_url": 5}), False),
    ("the URL is a list", _repo({"clone_url": ["https://h/o/r"]}), False),
    ("the URL is an object", _repo({"clone_url": {"href": "https://h/o/r"}}), False),
    ("the URL is true", _repo({"clone_url": True}), False),
    ("the URL is empty", _repo({"clone_url": ""}), False),
    ("the URL is a NUL", _repo({"clone_url": "\x00"}), False),
    ("the URL is huge", _repo({"clone_url": "https://h/" + "a" * 500_000}), False),
    ("the URL is ext::", _repo({"clone_url": "ext::sh -c touch% /tmp/pwned"}), False),
    ("the URL is a local path", _repo({"clone_url": "/etc"}), False),
    ("the URL has a bidi override", _repo({"clone_url": "https://h/o/\u202er"}), False),
    ("the URL starts with a dash", _repo({"clone_url": "-uhttps://h/o/r"}), False),
    ("the ref is a list and no URL", b'{"ref": ["a"], "repository": {}}', False),
    ("no payload field", _form(("other", "{}")), True),
    ("two payload fields", _form(("payload", "{}"), ("payload", "{}")), True),
    ("a form field without =", b"payload", True),
    ("a form of nothing but separators", b"&&&", True),
]


def _deliver_directly(name: str, body: bytes, form: bool) -> WebhookError:
    with pytest.raises(WebhookError) as caught:
        parse_event(_signed(body, form=form), body, secret=SECRET)
    return caught.value


def test_every_hostile_body_is_a_webhook_error_with_a_4xx_status() -> None:
    for name, body, form in HOSTILE:
        error = _deliver_directly(name, body, form)
        assert 400 <= error.status < 500, (name, error.status)


def test_every_hostile_body_is_answered_4xx_by_the_wsgi_app_without_a_traceback(
    cache: RepoCache, hostile_url: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="repocache")
    for name, body, form in HOSTILE:
        status, answer = _send(hostile_url, _signed(body, form=form), body)
        assert 400 <= status < 500, (name, status, answer[:200])
        assert "error" in json.loads(answer), name
    assert not [record for record in caplog.records if record.exc_info], "a refusal logged a traceback"
    assert "Traceback" not in capfd.readouterr().err
    assert cache.entries() == []


def test_hostile_bodies_from_every_host_are_refused_4xx() -> None:
    for provider, event in (("gitlab", "Push Hook"), ("gitea", "push"), ("forgejo", "push")):
        for name, body, form in HOSTILE:
            with pytest.raises(WebhookError) as caught:
                parse_event(_signed(body, provider=provider, form=form, event=event), body, secret=SECRET)
            assert 400 <= caught.value.status < 500, (provider, name)


@pytest.mark.parametrize(
    "secret",
    [5, 0, 1, True, False, None, "", b"", 3.5, [SECRET], (SECRET,), {"secret": SECRET}, bytearray(), object()],
    ids=lambda value: "object()" if type(value) is object else repr(value),  # the same id in every xdist worker
)
def test_a_secret_that_is_not_non_empty_text_or_bytes_is_a_config_error(secret: object) -> None:
    headers = _signed(b"{}")
    with pytest.raises(ConfigError, match=r"secret") as caught:
        wsgi_app(None, secret=secret)  # type: ignore[arg-type]
    assert type(secret).__name__ in str(caught.value)
    with pytest.raises(ConfigError, match=r"secret"):
        parse_event(headers, b"{}", secret=secret)  # type: ignore[arg-type]


def test_a_wrong_type_secret_is_named_by_its_type_and_never_echoed() -> None:
    real = ["the-real-secret-value"]
    with pytest.raises(ConfigError) as caught:
        wsgi_app(None, secret=real)  # type: ignore[arg-type]
    assert "list" in str(caught.value) and "the-real-secret-value" not in str(caught.value)


def test_text_and_bytes_secrets_still_verify() -> None:
    body = _repo({"clone_url": "https://h.example/o/r.git"})
    for secret in (SECRET, SECRET.encode()):
        assert parse_event(_signed(body), body, secret=secret).urls


CREDENTIALS: list[tuple[str, bytes, dict[str, str]]] = [
    ("URL userinfo in a bad form field", f"payload={{}}&https://user:{PASSWORD}@h/o/r".encode(), {}),
    ("bare userinfo in a bad form field", f"payload={{}}&user:{PASSWORD}@h".encode(), {}),
    ("a token query in a bad form field", f"payload={{}}&https://h/o/r?token={PASSWORD}".encode(), {}),
    ("an Authorization text in a bad form field", f"payload={{}}&Authorization: Bearer {PASSWORD}".encode(), {}),
    ("a password= text in a bad form field", f"payload={{}}&x;password={PASSWORD}".encode(), {}),
]


def test_a_refusal_never_echoes_a_credential_in_its_answer_or_the_log(
    hostile_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="repocache")
    requests: list[tuple[str, dict[str, str], bytes]] = [
        (name, {**_signed(body, form=True), **extra}, body) for name, body, extra in CREDENTIALS
    ]
    for value in (f"https://u:{PASSWORD}@h/x", f"token={PASSWORD}", f"Bearer {PASSWORD}", f"u:{PASSWORD}@h"):
        # an unknown host's event header and a JSON error quoting the text
        body = f'{{"repository": "{value}"'.encode()
        requests.append(("bad JSON " + value, _signed(body), body))
        requests.append(("no event header " + value, {"X-Other-Event": value}, b"{}"))
    for name, headers, body in requests:
        with pytest.raises(WebhookError) as caught:
            parse_event(headers, body, secret=SECRET)
        assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value.args), name
        status, answer = _send(hostile_url, headers, body)
        assert 400 <= status < 500 and PASSWORD.encode() not in answer, (name, answer)
    assert caplog.records and all(PASSWORD not in record.getMessage() for record in caplog.records)


# (provider, event header value): deliveries of an "all events" hook that are not pushes
NOT_PUSHES = [
    ("github", "issues"),
    ("github", "star"),
    ("github", "pull_request"),
    ("gitlab", "Issue Hook"),
    ("gitlab", "Merge Request Hook"),
    ("gitea", "issues"),
    ("gitea", "create"),
    ("forgejo", "release"),
]


@pytest.mark.parametrize(("provider", "event"), NOT_PUSHES)
def test_events_other_than_push_are_accepted_and_ignored(
    cache: RepoCache, hostile_url: str, provider: str, event: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="repocache")
    body = _repo({"clone_url": "https://h.example/o/r.git"})
    parsed = parse_event(_signed(body, provider=provider, event=event), body, secret=SECRET)
    assert (parsed.provider, parsed.event, parsed.urls, parsed.ignored) == (provider, event, (), True)
    status, answer = _send(hostile_url, _signed(body, provider=provider, event=event), body)
    assert status == 202, answer
    assert json.loads(answer) == {"provider": provider, "event": event, "ignored": True, "urls": [], "marked": []}
    ignored = [record for record in caplog.records if "ignored" in record.getMessage()]
    assert ignored and all(record.levelno == logging.DEBUG for record in ignored)


def test_an_ignored_event_must_still_be_signed(hostile_url: str) -> None:
    body = _repo({})
    headers = {**_signed(body, event="issues"), "X-Hub-Signature-256": "sha256=" + "0" * 64}
    status, _answer = _send(hostile_url, headers, body)
    assert status == 401
    with pytest.raises(WebhookError) as caught:
        parse_event(headers, body, secret=SECRET)
    assert caught.value.status == 401


def test_a_gitlab_tag_push_is_a_push_not_an_ignored_event() -> None:
    body = json.dumps({"object_kind": "tag_push", "project": {"git_http_url": "https://gl.example/g/r.git"}}).encode()
    parsed = parse_event(_signed(body, provider="gitlab", event="Tag Push Hook"), body, secret=SECRET)
    assert parsed.urls and not parsed.ignored
