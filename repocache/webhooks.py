"""Push webhooks: a git host says what changed, and the cache marks those repositories stale (push, not poll).

:func:`parse_event` verifies a webhook request with the shared secret and turns a push event into the URLs to
mark stale; :func:`handle` marks them; :func:`wsgi_app` is a tiny WSGI application doing both, to mount in any
web service. Supported hosts and how each proves the request is theirs:

| host            | event header (push)                 | proof                                                   |
| --------------- | ----------------------------------- | ------------------------------------------------------- |
| GitHub          | ``X-GitHub-Event: push`` (``ping``) | ``X-Hub-Signature-256: sha256=<HMAC-SHA256 hex of body>`` |
| GitLab          | ``X-Gitlab-Event: Push Hook`` / ``Tag Push Hook`` | ``X-Gitlab-Token: <the secret>``          |
| Gitea           | ``X-Gitea-Event: push``             | ``X-Gitea-Signature: <HMAC-SHA256 hex of body>``        |
| Forgejo         | ``X-Forgejo-Event: push``           | ``X-Forgejo-Signature`` (or ``X-Gitea-Signature``)      |

Signatures and tokens are compared in constant time (:func:`hmac.compare_digest`), before the body is parsed.
The URLs marked are every repository URL the payload gives (GitHub and Gitea ``clone_url``, ``ssh_url``,
``git_url``, ``html_url``; GitLab ``git_http_url``, ``git_ssh_url``, ``web_url``), so the repository is marked
whichever of them the cache holds it under. Local paths and ``file://`` URLs in a payload are ignored.

Example:
    A standalone endpoint with the standard library (put it behind your TLS-terminating proxy):

    <!-- example: serves -->
    ```python
    import os
    from wsgiref.simple_server import make_server

    import repocache
    from repocache.webhooks import wsgi_app

    cache = repocache.RepoCache("/var/cache/repos", fetch_ttl=3600)  # pushes make hits fetch; polling is rare
    app = wsgi_app(cache, secret=os.environ["REPOCACHE_WEBHOOK_SECRET"])
    make_server("0.0.0.0", 8080, app).serve_forever()
    ```

    Then point the host's push webhook at ``https://<host>:8080/`` with the same secret (content type JSON;
    GitHub's form encoding is accepted too). In a Flask or Django service, call :func:`handle` with the request's
    headers and raw body and answer ``WebhookError.status`` on error. The cache may be any process's: the mark
    lives in the index, so workers sharing the root see it at their next hit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repocache.errors import (
    ConfigError,
    InvalidURLError,
    WebhookError,
    WebhookEventError,
    WebhookPayloadError,
    WebhookSignatureError,
    WebhookTooLargeError,
)
from repocache.keys import normalize_url
from repocache.redact import scrub_untrusted

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from repocache.cache import RepoCache

__all__ = ["DRAIN_BYTES", "MAX_BODY_BYTES", "PROVIDERS", "PushEvent", "handle", "parse_event", "wsgi_app"]

logger = logging.getLogger("repocache")

MAX_BODY_BYTES = 1 << 20
"""The default largest body accepted (1 MiB: a push of many commits is a few hundred KiB)."""

PROVIDERS = ("forgejo", "gitea", "gitlab", "github")
"""The hosts understood, in the order their event headers are looked for (Gitea and Forgejo send GitHub's too)."""

_EVENT_HEADERS = {
    "forgejo": "x-forgejo-event",
    "gitea": "x-gitea-event",
    "gitlab": "x-gitlab-event",
    "github": "x-github-event",
}
_PUSH_EVENTS = {
    "forgejo": ("push",),
    "gitea": ("push",),
    "gitlab": ("Push Hook", "Tag Push Hook"),
    "github": ("push",),
}
_EVENT_SHOWN = 64  # the most of an ignored event's name echoed back and logged
_PING_EVENTS = {"github": ("ping",), "gitea": (), "forgejo": (), "gitlab": ()}
_URL_FIELDS = {
    "github": ("clone_url", "ssh_url", "git_url", "html_url"),
    "gitea": ("clone_url", "ssh_url", "html_url"),
    "forgejo": ("clone_url", "ssh_url", "html_url"),
    "gitlab": ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "homepage"),
}


@dataclass(frozen=True)
class PushEvent:
    """A verified webhook event.

    Attributes:
        provider: ``"github"``, ``"gitlab"``, ``"gitea"`` or ``"forgejo"``.
        event: the event's name as the host sent it (``"push"``, ``"Push Hook"``, ``"ping"``...).
        urls: the normalized URLs of the pushed repository, one per cache key (empty for a ping).
        ref: the ref that was pushed, when the payload says.
        ignored: the event is verified but is not a push (an "all events" hook sends issues, releases...):
            nothing to mark, and it is answered as accepted so the host does not report a failed delivery.
    """

    provider: str
    event: str
    urls: tuple[str, ...]
    ref: str | None = None
    ignored: bool = False


def _secret_bytes(secret: object) -> bytes:
    """The shared secret as bytes: only non-empty text or bytes are secrets (``5`` or ``True`` would sign as NULs)."""
    expected = "expected the non-empty secret shared with the git host, as str or bytes"
    # bool is an int and bytes(5) is five NUL bytes: anything but str and bytes is refused by its type, never
    # converted; its content is not shown, since a wrongly typed value may still hold the real secret.
    if isinstance(secret, str):
        value = secret.encode("utf-8")
    elif type(secret) is bytes:
        value = secret
    else:
        kind = type(secret).__name__
        shown = f"{secret!r} ({kind})" if secret is None or isinstance(secret, bool) else f"<a value of type {kind}>"
        raise ConfigError(f"secret={shown} is not accepted; {expected}")
    if not value:
        raise ConfigError(f"secret={secret!r} (empty {type(secret).__name__}) is not accepted; {expected}")
    return value


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in items}


def parse_event(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    secret: str | bytes,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> PushEvent:
    """Verify a webhook request and read the repository URLs of its push event.

    Args:
        headers: the request headers (names in any case).
        body: the raw request body, exactly as received (signatures are computed over it).
        secret: the secret configured on the git host's webhook.
        max_body_bytes: larger bodies are refused.

    Returns:
        The event, with the URLs to mark stale.

    Raises:
        ConfigError: ``secret`` is not non-empty ``str`` or ``bytes``.
        WebhookTooLargeError: the body is larger than ``max_body_bytes``.
        WebhookEventError: no known host's event header, or an empty event name. A signed event that is not a
            push (or a GitHub ping) is not an error: it is returned with ``ignored=True`` and no URLs.
        WebhookSignatureError: the signature or token is missing or wrong.
        WebhookPayloadError: the body is not a JSON object naming a repository with a usable URL.
    """
    key = _secret_bytes(secret)
    if len(body) > max_body_bytes:
        raise WebhookTooLargeError(f"the body is {len(body)} bytes; at most {max_body_bytes} bytes are accepted")
    lowered = _lower(headers)
    provider = next((name for name in PROVIDERS if _EVENT_HEADERS[name] in lowered), None)
    if provider is None:
        expected = ", ".join(f"{_EVENT_HEADERS[name]!r}" for name in PROVIDERS)
        raise WebhookEventError(f"no event header of a known git host; expected one of {expected}")
    event = lowered[_EVENT_HEADERS[provider]].strip()
    if not event:
        accepted = " or ".join(repr(name) for name in _PUSH_EVENTS[provider] + _PING_EVENTS[provider])
        raise WebhookEventError(f"the {provider} event header is empty; expected an event name such as {accepted}")
    _verify(provider, lowered, body, key)
    if event not in _PUSH_EVENTS[provider] + _PING_EVENTS[provider]:
        # Verified first: an unsigned request learns nothing, not even that its event would be ignored.
        # The event header is not signed (only the body is): what of it is echoed is scrubbed and bounded.
        shown = scrub_untrusted(event if len(event) <= _EVENT_SHOWN else event[:_EVENT_SHOWN] + "...")
        return PushEvent(provider=provider, event=shown, urls=(), ignored=True)
    try:
        payload = _payload(lowered, body)
        if event in _PING_EVENTS[provider]:
            return PushEvent(provider=provider, event=event, urls=())
        urls = tuple(_repository_urls(provider, payload))
        ref = payload.get("ref")
    except WebhookError:
        raise
    except RecursionError:
        raise WebhookPayloadError("the body nests too deeply to be a webhook payload") from None
    except (ValueError, TypeError, LookupError, OverflowError) as exc:
        # The last line of defence: whatever shape a signed body takes, it is a refusal, never a crash.
        raise WebhookPayloadError(f"the body cannot be read as a {provider} event ({type(exc).__name__})") from None
    if not urls:
        fields = ", ".join(_URL_FIELDS[provider])
        raise WebhookPayloadError(f"the {provider} payload names no repository with a usable URL ({fields})")
    return PushEvent(provider=provider, event=event, urls=urls, ref=ref if isinstance(ref, str) else None)


def _verify(provider: str, headers: Mapping[str, str], body: bytes, key: bytes) -> None:
    if provider == "gitlab":
        token = headers.get("x-gitlab-token")
        if token is None:
            raise WebhookSignatureError("the X-Gitlab-Token header is missing; set the webhook's secret token")
        if not hmac.compare_digest(token.encode("utf-8"), key):
            raise WebhookSignatureError("the X-Gitlab-Token header does not match the shared secret")
        return
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    names: tuple[str, ...]
    if provider == "github":
        names = ("x-hub-signature-256",)
        prefix = "sha256="
    else:
        names = ("x-forgejo-signature", "x-gitea-signature") if provider == "forgejo" else ("x-gitea-signature",)
        prefix = ""
    given = next((headers[name] for name in names if name in headers), None)
    if given is None:
        raise WebhookSignatureError(f"the {_title(names[0])} header is missing; set the webhook's secret")
    given = given.strip()
    if prefix and not given.startswith(prefix):
        raise WebhookSignatureError(f"the {_title(names[0])} header is not of the form {prefix}<hex>")
    if not hmac.compare_digest(given[len(prefix) :].lower().encode("ascii", "replace"), expected.encode("ascii")):
        raise WebhookSignatureError(f"the {_title(names[0])} signature does not match the body and shared secret")


def _title(header: str) -> str:
    return _HEADER_NAMES.get(header, header)


_HEADER_NAMES = {
    "x-hub-signature-256": "X-Hub-Signature-256",
    "x-gitea-signature": "X-Gitea-Signature",
    "x-forgejo-signature": "X-Forgejo-Signature",
}


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    text: str | bytes = body
    if content_type == "application/x-www-form-urlencoded":
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise WebhookPayloadError(f"the form-encoded body cannot be read: {exc}") from None
        if len(form.get("payload", [])) != 1:
            raise WebhookPayloadError("the form-encoded body has no single 'payload' field")
        text = form["payload"][0]
    try:
        payload = json.loads(text)
    except RecursionError:
        raise WebhookPayloadError("the body nests too deeply to be a webhook payload") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookPayloadError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise WebhookPayloadError(f"the body is JSON {type(payload).__name__}; expected an object")
    return payload


def _repository_urls(provider: str, payload: Mapping[str, Any]) -> Iterator[str]:
    """Each usable URL of the pushed repository, normalized, one per cache key."""
    sections = ("project", "repository") if provider == "gitlab" else ("repository",)
    seen: set[str] = set()
    for section in sections:
        found = payload.get(section)
        if not isinstance(found, dict):
            continue
        for field in _URL_FIELDS[provider]:
            value = found.get(field)
            if not isinstance(value, str) or not value.strip():
                continue
            try:
                parsed = normalize_url(value.strip())
            except (InvalidURLError, ValueError, UnicodeError):
                continue  # not a URL the cache could hold under this name
            if parsed.is_local or parsed.key in seen:
                continue  # a host never names a path on this machine
            seen.add(parsed.key)
            yield parsed.url


def handle(
    cache: RepoCache,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    secret: str | bytes,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> tuple[PushEvent, list[str]]:
    """Verify a webhook request and mark the pushed repository stale in ``cache``.

    Returns:
        The event and the URLs that were marked (those the cache holds; the others need no mark).

    Raises:
        WebhookError: as :func:`parse_event` (its ``status`` is the HTTP status to answer).
    """
    event = parse_event(headers, body, secret=secret, max_body_bytes=max_body_bytes)
    if event.ignored:
        logger.debug("%s %s event ignored: not a push", event.provider, event.event)
        return event, []
    marked = [url for url in event.urls if cache.mark_stale(url)]
    logger.info("%s %s event: marked %s stale", event.provider, event.event, ", ".join(marked) or "nothing")
    return event, marked


def wsgi_app(cache: RepoCache, *, secret: str | bytes, max_body_bytes: int = MAX_BODY_BYTES) -> WSGIApplication:
    """A WSGI application that receives push webhooks for ``cache`` (any path; POST only).

    It answers 200 with ``{"provider", "event", "urls", "marked"}`` for a verified push or ping, 202 with
    ``{"provider", "event", "ignored": true, "urls": [], "marked": []}`` for a verified event of another kind
    (an "all events" hook's issues or releases: accepted, so the host shows no failed delivery), 405 for another
    method, 411 without a Content-Length, and the :class:`WebhookError`'s status with ``{"error": reason}``
    otherwise (401 bad signature, 400 no known host's event header or a malformed body, 413 too large: the body
    is then not read).

    Raises:
        ConfigError: ``secret`` is not non-empty ``str`` or ``bytes`` (checked here, before any request).
    """
    _secret_bytes(secret)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        def answer(status: int, value: Mapping[str, object], extra: list[tuple[str, str]] | None = None) -> list[bytes]:
            data = json.dumps(value).encode("utf-8")
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(extra or [])]
            start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
            return [data]

        if environ.get("REQUEST_METHOD") != "POST":
            return answer(405, {"error": "only POST is accepted"}, [("Allow", "POST")])
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return answer(411, {"error": "a Content-Length header is required"})
        try:
            if length < 0:
                raise WebhookPayloadError(f"Content-Length {length} is negative")
            if length > max_body_bytes:
                _drain(environ["wsgi.input"], length)
                raise WebhookTooLargeError(f"the body is {length} bytes; at most {max_body_bytes} bytes are accepted")
            body = environ["wsgi.input"].read(length)
            if len(body) != length:
                raise WebhookPayloadError(f"the body ended after {len(body)} of {length} bytes")
            headers = [
                (name[5:].replace("_", "-"), str(value)) for name, value in environ.items() if name.startswith("HTTP_")
            ]
            headers.append(("Content-Type", str(environ.get("CONTENT_TYPE") or "application/json")))
            event, marked = handle(cache, headers, body, secret=secret, max_body_bytes=max_body_bytes)
        except WebhookError as exc:
            logger.warning("webhook refused (%d): %s", exc.status, exc.reason)
            return answer(exc.status, {"error": exc.reason})
        if event.ignored:
            return answer(
                202, {"provider": event.provider, "event": event.event, "ignored": True, "urls": [], "marked": []}
            )
        return answer(
            200, {"provider": event.provider, "event": event.event, "urls": list(event.urls), "marked": marked}
        )

    return app


DRAIN_BYTES = 16 << 20
"""How much of a too-large body :func:`wsgi_app` reads and discards before answering 413 (16 MiB).

A server that answers before the client has sent its body and then closes leaves the client writing into a
closed socket: it sees a broken pipe instead of the 413. Up to this many bytes are read (in 64 KiB pieces, never
kept), so a client that sent a little too much learns why; beyond it the answer is sent at once."""


def _drain(stream: Any, length: int) -> None:
    left = length if length <= DRAIN_BYTES else 0
    while left > 0:
        piece = stream.read(min(left, 1 << 16))
        if not piece:
            return
        left -= len(piece)


_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
}
