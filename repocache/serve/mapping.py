"""The allow-list: which request paths the server answers, and the upstream URL each one names.

A request path is ``/<prefix>/<repository path>[.git]/<service>``: the *prefix* is one of the configured ones
(``github.com``, or several segments such as ``gitlab.example.com/team``), and it maps to an upstream base URL
(``https://github.com/``). ``/github.com/org/repo.git/info/refs`` names ``https://github.com/org/repo.git``.

Everything is decided here from the request line alone, before any lock, disk or network work, so a refused
request never reaches upstream. The rules are strict on purpose (a git server for hosted repositories needs no
more): every segment is made of ``A-Z a-z 0-9 . _ ~ + -``, so percent-encoding (``%2e%2e``, ``%2f``),
backslashes, NUL and other control characters, ``:`` (``file:``, ``ext::``) are refused; ``.`` and ``..``
segments, empty segments (``//``) and a segment starting with ``-`` are refused; the path and each segment have a
bounded length; for ``ssh`` and ``git`` bases a segment starting with ``~`` (a home directory there) is refused.
The upstream URL built is checked again after normalization: it must still lie under its base.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from repocache.errors import ConfigError, InvalidURLError
from repocache.keys import normalize_url

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_SEGMENT_LENGTH",
    "SERVICES",
    "Refused",
    "Route",
    "Upstreams",
    "parse_allow",
]

MAX_PATH_LENGTH = 1024
"""The longest request path accepted, in bytes."""

MAX_SEGMENT_LENGTH = 255
"""The longest path segment accepted (a file name's limit on most filesystems and hosts)."""

SERVICES = ("info/refs", "git-upload-pack", "git-receive-pack")
"""The smart HTTP endpoints a repository path can end with."""

_SEGMENT = re.compile(r"[A-Za-z0-9._~+-]+")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+(:[0-9]{1,5})?")


class Refused(Exception):
    """A request the server refuses before doing anything for it.

    Attributes:
        status: the HTTP status to answer (400 malformed, 403 forbidden, 404 not served, 405 method).
        reason: one sentence for the git user, naming what was wrong and what is accepted.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Route:
    """What a request path names.

    Attributes:
        prefix: the configured prefix it matched (``github.com``).
        repository: the repository path under the prefix, as requested (``org/repo.git``).
        upstream: the upstream URL the cache clones and fetches (``https://github.com/org/repo.git``).
        service: ``info/refs``, ``git-upload-pack`` or ``git-receive-pack``.
    """

    prefix: str
    repository: str
    upstream: str
    service: str


_MAX_ROUTES_KEPT = 4096  # then all forgotten at once


class Upstreams:
    """The allow-list: prefixes of request paths, each mapped to an upstream base URL.

    Example:
        ```python
        from repocache.serve.mapping import Upstreams

        Upstreams({"git.example.com": "https://git.example.com/", "gitlab.example.com/team": "https://gitlab.example.com/team/"})
        ```

    A prefix is one or more path segments (a host name, optionally with a port, and optionally further segments);
    the longest configured prefix of a request wins. Upstream bases must be ``https``, ``http``, ``git`` or ``ssh``
    URLs: a server never serves a path of its own machine.
    """

    def __init__(self, allowed: Mapping[str, str]) -> None:
        """Check and keep the mapping.

        Raises:
            ConfigError: it is empty, or a prefix or base URL is malformed (the message names it).
        """
        if not allowed:
            raise ConfigError(
                "no upstream is allowed: give at least one PREFIX=URL (for example github.com=https://github.com/)"
            )
        self._bases: dict[tuple[str, ...], str] = {}
        for prefix, base in allowed.items():
            segments = tuple(segment.lower() for segment in prefix.strip("/").split("/"))
            if not all(_PREFIX_SEGMENT.fullmatch(segment) for segment in segments) or any(
                segment in (".", "..") for segment in segments
            ):
                raise ConfigError(
                    f"allowed prefix {prefix!r} is not accepted; expected a host name, optionally with a port and "
                    "further path segments of letters, digits, '.', '_', '~' and '-' (for example github.com)"
                )
            self._bases[segments] = _check_base(prefix, base)
        self._longest = max(len(segments) for segments in self._bases)
        self._routes: dict[bytes, Route] = {}

    @property
    def allowed(self) -> dict[str, str]:
        """The prefixes and their upstream bases."""
        return {"/".join(segments): base for segments, base in self._bases.items()}

    def route(self, raw_path: bytes) -> Route:
        """The route of a raw (undecoded) request path.

        Raises:
            Refused: the path is malformed (400), names a prefix that is not allowed (404), or is not a smart
                HTTP endpoint of a repository (404).
        """
        # A pure function of the path and the allow-list (fixed at construction): the routes of the paths served
        # are kept, so the requests of a clone, and clients cloning the same repository, route it once.
        route = self._routes.get(raw_path)
        if route is None:
            route = self._route(raw_path)
            if len(self._routes) >= _MAX_ROUTES_KEPT:
                self._routes.clear()
            self._routes[raw_path] = route
        return route

    def _route(self, raw_path: bytes) -> Route:
        if len(raw_path) > MAX_PATH_LENGTH:
            raise Refused(
                400, f"the request path is {len(raw_path)} bytes long; at most {MAX_PATH_LENGTH} are accepted"
            )
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise Refused(400, "the request path must be plain ASCII (no percent-encoding is accepted)") from None
        if not path.startswith("/"):
            raise Refused(400, "the request path must start with '/'")
        segments = path[1:].split("/")
        for number, segment in enumerate(segments):
            # The first segment is a host name and may carry a port (a prefix such as git.example:8080); a port
            # that is not configured is then "not served here", like any other host.
            _check_segment(segment, _PREFIX_SEGMENT if number == 0 else _SEGMENT)
        service = _service(segments)
        lowered = [segment.lower() for segment in segments]
        for length in range(min(self._longest, len(segments) - 1), 0, -1):
            base = self._bases.get(tuple(lowered[:length]))
            if base is not None:
                prefix = "/".join(lowered[:length])
                repository = "/".join(segments[length : -service.count("/") - 1])
                if not repository or repository.lower() in (".git",):
                    raise Refused(404, f"the path names no repository under {prefix}; expected /{prefix}/<path>.git")
                return Route(prefix, repository, _upstream(base, repository), service)
        raise Refused(
            404,
            f"{segments[0]!r} is not served here; allowed prefixes: " + ", ".join(sorted(self.allowed)),
        )


def parse_allow(items: Iterable[str]) -> dict[str, str]:
    """``["github.com=https://github.com/"]`` (the command line's ``--allow``) as a mapping.

    Raises:
        ConfigError: an item has no ``=``; a prefix is given twice.
    """
    allowed: dict[str, str] = {}
    for item in items:
        prefix, sep, base = item.partition("=")
        if not sep or not prefix.strip() or not base.strip():
            raise ConfigError(f"--allow {item!r} is not accepted; expected PREFIX=URL (github.com=https://github.com/)")
        if prefix.strip() in allowed:
            raise ConfigError(f"--allow names {prefix.strip()!r} twice")
        allowed[prefix.strip()] = base.strip()
    return allowed


def _check_base(prefix: str, base: str) -> str:
    try:
        parsed = normalize_url(base.rstrip("/") + "/repository")
    except InvalidURLError as exc:
        raise ConfigError(f"upstream {base!r} for {prefix!r} is not accepted: {exc.reason}") from None
    if parsed.scheme not in ("https", "http", "git", "ssh") or parsed.has_credentials or "://" not in base:
        raise ConfigError(
            f"upstream {base!r} for {prefix!r} is not accepted; expected an https, http, git or ssh URL without "
            "credentials (for example https://github.com/)"
        )
    return base.rstrip("/") + "/"


def _check_segment(segment: str, pattern: re.Pattern[str]) -> None:
    if not segment:
        raise Refused(400, "the request path has an empty segment ('//' or a trailing '/')")
    if len(segment) > MAX_SEGMENT_LENGTH:
        raise Refused(
            400, f"a path segment is {len(segment)} characters long; at most {MAX_SEGMENT_LENGTH} are accepted"
        )
    if segment in (".", ".."):
        raise Refused(400, "path segments '.' and '..' are not accepted")
    if not pattern.fullmatch(segment):
        raise Refused(
            400,
            "the request path may hold only letters, digits and '.', '_', '~', '+', '-' between slashes "
            "(no percent-encoding, no ':' or '\\')",
        )
    if segment.startswith("-"):
        raise Refused(400, "a path segment may not start with '-'")


def _service(segments: list[str]) -> str:
    if len(segments) >= 2 and segments[-2:] == ["info", "refs"]:
        return "info/refs"
    if segments[-1] in ("git-upload-pack", "git-receive-pack"):
        return segments[-1]
    raise Refused(
        404,
        "only git's smart HTTP is served: <repository>/info/refs?service=git-upload-pack and "
        "<repository>/git-upload-pack",
    )


def _upstream(base: str, repository: str) -> str:
    if base.startswith(("ssh://", "git://")) and any(segment.startswith("~") for segment in repository.split("/")):
        # Over ssh a path starting with '~' is a home directory, and git daemon's --user-path maps ~user to a
        # user's home: either would name a repository outside the namespace this prefix serves.
        raise Refused(400, "a path segment starting with '~' names a home directory over ssh and git://; not served")
    upstream = base + repository
    try:
        parsed, root = normalize_url(upstream), normalize_url(base + "repository")
    except InvalidURLError as exc:
        raise Refused(400, f"the repository path is not accepted: {exc.reason}") from None
    parent = root.url.rsplit("/", 1)[0] + "/"
    if not parsed.url.startswith(parent) or parsed.is_local:
        raise Refused(400, "the repository path normalizes outside its upstream")
    return upstream
