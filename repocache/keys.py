"""URL normalization and the on-disk key of a repository.

One repository, one entry: ``https://Host/a/b.git/``, ``https://user:token@host/a/b`` and ``https://host/a/b``
are the same repository; so are ``git@host:/a/b`` and ``ssh://git@host/a/b``, and ``git@host:a/b``,
``git@host:~/a/b`` and ``ssh://git@host/~/a/b`` (home-relative, as git reads them: not ``/a/b``). The normalized
URL is the identity shown to users and matched by pins; the key is a file name derived from it that cannot name a
path outside the cache root (it contains no separator, never starts with a dot, and ends with a hash of the URL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from repocache.errors import ConfigError, InvalidURLError
from repocache.redact import scrub_urls

__all__ = ["FILTERS", "MAX_URL_LENGTH", "RepoURL", "filter_of_key", "normalize_url", "scrub", "with_filter"]

FILTERS: dict[str, str] = {"blob:none": "blobless", "tree:0": "treeless"}
"""The partial-clone filters a mirror may have, with the word that ends its key (a full mirror has no filter)."""

MAX_URL_LENGTH = 4096
"""The longest URL or path accepted, in characters (Linux's PATH_MAX; git hosts accept far less)."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}
_SCHEME_ALIASES = {"git+ssh": "ssh", "ssh+git": "ssh"}
_REMOTE_SCHEMES = ("http", "https", "git", "ssh")
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:\[\]]+|\[[0-9A-Fa-f:.]+\]):(?P<path>.*)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INVISIBLE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")  # control, format (bidi overrides), separators, surrogates
_KEY_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_HOST_OK = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_ACCEPTED = (
    "accepted forms are https://host/path, http://host/path, git://host/path, ssh://[user@]host/path, "
    "user@host:path, file:///absolute/path and local paths"
)


@dataclass(frozen=True)
class RepoURL:
    """A parsed, normalized repository URL.

    Attributes:
        url: the normalized identity: lower-case host, no default port, no credentials or ssh user, no trailing
            slash, no ``.git`` suffix (kept for local paths, where it names a different directory).
        fetch_url: what git is given: credential-free, with the ssh user kept. Safe to write to disk.
        key: the repository's file name inside the cache root.
        scheme: one of ``http``, ``https``, ``git``, ``ssh``, ``file``.
        username: the HTTP user from the URL, if any (never written to disk).
        password: the HTTP password or token from the URL, if any (never written to disk).
        given: the URL as the caller wrote it, credentials removed (what messages show); not part of the identity.
        filter: the partial-clone filter of the mirror (``"blob:none"``, ``"tree:0"``), None for a full mirror;
            part of the identity: a partial mirror's key ends with ``-blobless`` or ``-treeless``.
    """

    url: str
    fetch_url: str
    key: str
    scheme: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    given: str = field(default="", compare=False)
    filter: str | None = None

    @property
    def shown(self) -> str:
        """The URL to name in messages: as the caller wrote it, without credentials (else the identity)."""
        return self.given or self.url

    @property
    def transfer_url(self) -> str:
        """What git is given to clone or fetch: :attr:`fetch_url`, as a ``file://`` URL for a partial local mirror
        (git ignores ``--filter`` for a plain local path and hard-links every object instead)."""
        if self.filter is not None and self.scheme == "file":
            return "file://" + self.fetch_url
        return self.fetch_url

    @property
    def full(self) -> RepoURL:
        """The same repository as a full mirror (itself when it has no filter)."""
        if self.filter is None:
            return self
        return replace(self, filter=None, key=self.key[: -len(FILTERS[self.filter]) - 1])

    @property
    def is_local(self) -> bool:
        """True when the upstream is a path on this machine."""
        return self.scheme == "file"

    @property
    def has_credentials(self) -> bool:
        """True when the caller's URL carried HTTP credentials."""
        return self.username is not None or self.password is not None


def filter_of_key(key: str) -> str | None:
    """The partial-clone filter a mirror's key names (its last word: ``-blobless``, ``-treeless``), or None."""
    for name, word in FILTERS.items():
        if key.endswith(f"-{word}"):
            return name
    return None


def with_filter(parsed: RepoURL, filter: str | None) -> RepoURL:
    """``parsed`` as the mirror with the partial-clone ``filter`` (None: the full mirror), with its own key.

    A full mirror keeps the key it always had; a partial one adds ``-blobless`` or ``-treeless``, which no full
    key can end with (full keys end with a hex digest), so a full and a partial mirror of one URL never mix.

    Raises:
        ConfigError: ``filter`` is not None, ``"blob:none"`` or ``"tree:0"``.
    """
    if filter is None:
        return parsed.full
    if not isinstance(filter, str) or filter not in FILTERS:
        raise ConfigError(f"filter={filter!r} is not accepted; expected None (a full mirror), 'blob:none' or 'tree:0'")
    full = parsed.full
    return replace(full, filter=filter, key=f"{full.key}-{FILTERS[filter]}")


def scrub(text: str) -> str:
    """Remove the user-info part of every URL in ``text`` (for messages and logs)."""
    return scrub_urls(text)


def _reject(url: str, reason: str) -> InvalidURLError:
    return InvalidURLError(scrub(url), reason)


def _make_key(url: str, hint: str) -> str:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    readable = _KEY_UNSAFE.sub("-", hint.lower()).strip("-.")[:60].strip("-.")
    return f"{readable}-{digest}" if readable else digest


def _clean_path(raw: str, url: str) -> tuple[str, str]:
    """Return (identity path, fetch path): both without empty segments; the identity drops ``.git``."""
    segments = [s for s in raw.split("/") if s]
    for segment in segments:
        if unquote(segment) in (".", ".."):
            raise _reject(url, "path segments '.' and '..' are not allowed")
    fetch_path = "/" + "/".join(segments)
    path = fetch_path
    while path.endswith(".git") and path != "/.git":
        path = path[: -len(".git")].rstrip("/") or "/"
    if path in ("", "/"):
        raise _reject(url, "the URL names no repository path; " + _ACCEPTED)
    return path, fetch_path


def _normalize_host(host: str, url: str) -> str:
    host = host.rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        return host.lower()
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise _reject(url, f"host {host!r} is not a valid host name") from exc
    if not _HOST_OK.match(ascii_host):
        raise _reject(url, f"host {host!r} is not a valid host name")
    return ascii_host


def _check_length(url: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        shown = scrub(url[:80]).encode("unicode_escape").decode("ascii")
        raise InvalidURLError(
            f"{shown}... ({len(url)} characters)", f"URLs and paths are limited to {MAX_URL_LENGTH} characters"
        )


def _local(path: str, original: str) -> RepoURL:
    if not path:
        raise _reject(original, "empty path")
    absolute = os.path.abspath(os.path.expanduser(path))
    if len(absolute) > 1:
        absolute = absolute.rstrip("/")
    url = "file://" + absolute
    return RepoURL(
        url=url, fetch_url=absolute, key=_make_key(url, "local-" + os.path.basename(absolute)), scheme="file"
    )


def _scp_like(text: str, user: str | None, host: str, path: str) -> RepoURL:
    """``[user@]host:path`` with git's meaning: ``path`` is absolute if it starts with ``/``, ``~`` (``~user``)
    names a home directory, and anything else is relative to the ssh user's home directory.

    The identity of a home-relative path is its ``ssh://host/~/path`` spelling, which names the same repository
    (and is never an absolute one's); git is given the scp-like form as written, so ssh receives the same path.
    """
    login = f"{user}@" if user else ""
    if path.startswith("/"):
        return normalize_url(f"ssh://{login}{host}{path}")
    if path.startswith("~"):
        return normalize_url(f"ssh://{login}{host}/{path}")
    if not path.strip("/"):
        raise _reject(text, "the URL names no repository path; " + _ACCEPTED)
    parsed = normalize_url(f"ssh://{login}{host}/~/{path}")
    relative = parsed.fetch_url.split("/~/", 1)[1]
    netloc = parsed.fetch_url[len("ssh://") :].split("/", 1)[0]
    return RepoURL(url=parsed.url, fetch_url=f"{netloc}:{relative}", key=parsed.key, scheme="ssh")


def normalize_url(url: str | os.PathLike[str]) -> RepoURL:
    """Parse and normalize a repository URL or local path.

    Args:
        url: an http(s), git, ssh or file URL, an scp-like ``user@host:path``, or a local path.

    Returns:
        The normalized form with its key.

    Raises:
        InvalidURLError: the URL is empty, longer than :data:`MAX_URL_LENGTH`, malformed, uses a transport helper
            (``ext::``, ``fd::``), starts with ``-`` (option injection), contains control characters or ``..``
            segments, or has an unsupported scheme.
    """
    if type(url) is str:
        known = _MEMO.get(url)
        if known is not None:
            return known
        parsed = dataclasses.replace(_normalize_text(url), given=scrub(url.strip()))
        # A local path's meaning follows the filesystem (symbolic links), and a URL with a password is not kept
        # in memory longer than its caller keeps it: neither is memoized.
        if not parsed.is_local and not parsed.has_credentials:
            if len(_MEMO) >= _MEMO_SIZE:
                _MEMO.clear()
            _MEMO[url] = parsed
        return parsed
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
        if not isinstance(url, str):
            raise InvalidURLError(repr(url), "expected a text path, got bytes")
        _check_length(url)
        return dataclasses.replace(_local(url, url), given=url)
    return _normalize_text(url)


_MEMO: dict[str, RepoURL] = {}
_MEMO_SIZE = 4096  # URLs remembered (a service's working set); the memo is emptied when it fills


def _normalize_text(url: object) -> RepoURL:
    """:func:`normalize_url` of anything but an ``os.PathLike`` (a ``str``, or a wrong type to refuse)."""
    if not isinstance(url, str):
        raise InvalidURLError(repr(url), f"expected a str or os.PathLike, got {type(url).__name__}")
    _check_length(url)
    text = url.strip()
    if not text:
        raise InvalidURLError(url, "the URL is empty; " + _ACCEPTED)
    if _CONTROL.search(text) or any(unicodedata.category(c) in _INVISIBLE for c in text):
        raise _reject(
            text.encode("unicode_escape").decode("ascii"), "control characters and invisible formatting are not allowed"
        )
    if text.startswith("-"):
        raise _reject(text, "a URL may not start with '-' (it would be read as a git option)")
    if _TRANSPORT_HELPER.match(text):
        raise _reject(text, "git transport helpers such as ext:: and fd:: are not allowed; " + _ACCEPTED)

    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        scp = _SCP_LIKE.match(text)
        if scp and not os.path.exists(text) and not text.startswith(("/", ".", "~")) and len(scp["host"]) > 1:
            return _scp_like(text, scp["user"], scp["host"], scp["path"])
        return _local(text, text)

    scheme = _SCHEME_ALIASES.get(scheme_match.group(1).lower(), scheme_match.group(1).lower())
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise _reject(text, "file:// URLs must name a local absolute path (file:///path)")
        return _local(unquote(parts.path), text)
    if scheme not in _REMOTE_SCHEMES:
        raise _reject(text, f"unsupported scheme {scheme!r}; " + _ACCEPTED)

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _reject(text, f"malformed URL ({exc})") from exc
    if parts.query or parts.fragment:
        raise _reject(text, "query strings and fragments are not part of a repository URL")
    if not parts.hostname:
        raise _reject(text, "the URL has no host; " + _ACCEPTED)
    raw_host = parts.netloc.rpartition("@")[2]
    raw_host = raw_host.rsplit(":", 1)[0] if not raw_host.endswith("]") and ":" in raw_host else raw_host
    host = _normalize_host(raw_host if raw_host.startswith("[") else parts.hostname, text)
    path, fetch_path = _clean_path(parts.path, text)
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    normalized = f"{scheme}://{netloc}{path}"

    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    fetch_url = f"{scheme}://{netloc}{fetch_path}"
    if scheme == "ssh":
        if username:
            fetch_url = f"ssh://{parts.username}@{netloc}{fetch_path}"
        username = password = None  # ssh authenticates with keys; a password in the URL is dropped
    elif scheme == "git":
        username = password = None
    return RepoURL(
        url=normalized,
        fetch_url=fetch_url,
        key=_make_key(normalized, f"{host}{path}"),
        scheme=scheme,
        username=username,
        password=password,
    )
