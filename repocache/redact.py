"""Credentials scrubbed out of text before it is shown or logged (imports nothing of repocache).

:func:`scrub_urls` removes the user-info of every ``scheme://user:password@`` URL (what the library's own messages
need: URLs it was given). :func:`scrub_untrusted` also removes what text from outside may carry: a bare
``user:password@host``, ``token=``/``password=``-like fields (query strings, form fields) and ``Authorization``
values. Every message built from untrusted input (a webhook request) goes through the second.
"""

from __future__ import annotations

import re

__all__ = ["scrub_untrusted", "scrub_urls"]

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^@/\s]*@")
_BARE_USERINFO = re.compile(r"(?<![\w.+-])[^\s@/:'\"<>]+:[^\s@/'\"<>]+@")
_SECRET_FIELD = re.compile(
    r"(?P<name>\b[\w.-]*(?:token|password|passwd|pwd|secret|api[_-]?key|apikey|auth|credential|signature|sig)"
    r"[\w.-]*)(?P<sep>\s*[=:]\s*)(?P<value>(?:(?:bearer|basic|token|digest)\s+)?[^&;,\s'\"]+)",
    re.IGNORECASE,
)
_SCHEME_VALUE = re.compile(r"(?<![\w-])(?P<scheme>bearer|basic|digest)\s+[^\s'\",;]+", re.IGNORECASE)


def scrub_urls(text: str) -> str:
    """Remove the user-info part of every URL in ``text`` (``https://***@host/...``)."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def scrub_untrusted(text: str) -> str:
    """Remove every credential-like part of ``text`` that came from outside, for a message or a log line.

    URL user-info and bare ``user:password@`` become ``***@``; the value of a field whose name says token,
    password, secret, key, auth or signature (``token=abc``, ``password: abc``) becomes ``***``; so does the
    value after ``Bearer``, ``Basic`` or ``Digest``.
    """
    text = scrub_urls(text)
    text = _BARE_USERINFO.sub("***@", text)
    text = _SCHEME_VALUE.sub(r"\g<scheme> ***", text)
    return _SECRET_FIELD.sub(r"\g<name>\g<sep>***", text)
