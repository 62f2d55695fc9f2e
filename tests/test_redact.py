"""Credentials scrubbed out of text built from untrusted input (repocache.redact)."""

from __future__ import annotations

import pytest

from repocache.errors import WebhookPayloadError
from repocache.keys import scrub
from repocache.redact import scrub_untrusted, scrub_urls


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("clone https://alice:s3cr3t@git.example/r.git failed", "s3cr3t"),
        ("ssh://bob:hunter2@host/repo", "hunter2"),
        ("payload=x&url=alice:pa55word@git.example/r", "pa55word"),
        ("token=ghp_abcdef123456&x=1", "ghp_abcdef123456"),
        ("access_token: glpat-XYZ987", "glpat-XYZ987"),
        ("password=p%40ss", "p%40ss"),
        ("X-Api-Key=abc123def", "abc123def"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("header Basic dXNlcjpwYXNz seen", "dXNlcjpwYXNz"),
        ("client_secret=zzz-top", "zzz-top"),
        ("signature=deadbeef", "deadbeef"),
    ],
)
def test_every_credential_shape_is_removed(text: str, secret: str) -> None:
    scrubbed = scrub_untrusted(text)
    assert secret not in scrubbed, scrubbed
    assert "***" in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
        "git@github.com:octo/repo.git",  # an scp-like URL has a user but no password: nothing secret
        "https://github.com/octo/repo.git",
        "expected 'push' or 'ping'",
        "at 12:30 the fetch of repo@v1 failed",
    ],
)
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert scrub_untrusted(text) == text


def test_scrub_urls_removes_only_url_userinfo_and_keys_scrub_is_the_same() -> None:
    text = "https://u:p@h/x and token=abc"
    assert scrub_urls(text) == "https://***@h/x and token=abc"
    assert scrub(text) == scrub_urls(text)


def test_a_webhook_refusal_is_scrubbed_wherever_it_is_built() -> None:
    error = WebhookPayloadError("field url='https://alice:s3cr3t@h/r.git' token=abc is bad")
    assert "s3cr3t" not in error.reason and "abc" not in str(error) and error.status == 400
