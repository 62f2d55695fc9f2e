"""Clients get only what upstream would give them: each client's credentials checked against upstream.

For every git request (``info/refs`` and ``git-upload-pack`` alike), before any lock, clone, fetch, ref
advertisement or pack, the server asks upstream whether the client's own ``Authorization`` header (or its absence)
may read the repository: ``GET <upstream>/info/refs?service=git-upload-pack`` with that header, whose body is
never read. Upstream's ``200`` with a smart-HTTP advertisement allows the request; ``401``, ``403`` and ``404``
(and a ``200`` that is not git's smart HTTP) refuse it, and the client is answered ``401`` with upstream's
``WWW-Authenticate`` (else ``Basic realm="..."``), so git asks its credential helper and retries, as it does against
upstream. Anything else (no answer, ``5xx``, ``429``, a redirect to another host) is an upstream error: ``502``,
never served, never cached.

Answers are kept in memory only, keyed by the sha256 of the credential and the repository's key, for ``ttl`` seconds
(allowed) and ``refused_ttl`` seconds (refused), in a bounded table; identical checks in flight at once share one
upstream request. So a revoked credential stops working within ``ttl``, and a public repository costs one round
trip per credential per ``ttl``. The credential itself is never stored, logged, put in an event, a metric label or
a message: only its hash is kept, and only for the table's lifetime.

``git://`` and ``ssh`` upstreams carry no per-client credential; a prefix that maps to one must be trusted
explicitly (the server refuses to start otherwise). Trusting a prefix serves everyone who reaches the server
whatever the cache can fetch there: an option for servers behind a network boundary, never the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from repocache.errors import ConfigError
from repocache.keys import normalize_url
from repocache.redact import scrub_untrusted
from repocache.serve.mapping import Refused, Route, Upstreams

__all__ = [
    "CHECK_USER_AGENT",
    "AuthChecker",
    "AuthOptions",
    "Decision",
    "Unauthorized",
    "parse_credentials",
    "parse_trust",
    "read_credential",
]

CHECK_USER_AGENT = "git/2 (repocache-auth-check)"
"""The ``User-Agent`` of the server's checks (``git/`` first: some hosts answer smart HTTP only to git)."""

_ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
_REFUSING = (401, 403, 404)
_MAX_REDIRECTS = 5
_MAX_CHALLENGE = 1024

Outcome = Literal["allowed", "refused", "error", "trusted"]


@dataclass(frozen=True)
class AuthOptions:
    """How the server checks its clients against upstream.

    Attributes:
        trust: prefixes whose clients are not checked (everyone who reaches the server is served what the cache
            can fetch there), or ``True`` for every prefix. Required for ``git://`` and ``ssh`` upstreams.
        ttl: seconds an allowed answer is reused for the same credential and repository (0: every request asks
            upstream); a revoked credential stops working within it.
        refused_ttl: seconds a refusal is reused (0: never); at most ``ttl`` is sensible.
        max_entries: answers kept at most (the oldest are dropped first).
        timeout: seconds a check may take before it is an upstream error (502).
        upstream_credentials: per ``http``/``https`` prefix, the ``(user, password)`` the cache's own clones and
            fetches use (never a client's); they are given to git in its environment only, never written to the
            mirror, the index or a log, and never shown by ``repr``.
    """

    trust: bool | frozenset[str] = False
    ttl: float = 60.0
    refused_ttl: float = 5.0
    max_entries: int = 10_000
    timeout: float = 10.0
    upstream_credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.trust, (bool, frozenset)):
            raise ConfigError(f"trust={self.trust!r} is not accepted; expected True, False or a frozenset of prefixes")
        for name in ("ttl", "refused_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"{name}={value!r} is not accepted; expected finite seconds >= 0")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not 0 < self.timeout < 3600:
            raise ConfigError(f"timeout={self.timeout!r} is not accepted; expected seconds > 0 and < 3600")
        if isinstance(self.max_entries, bool) or not isinstance(self.max_entries, int) or self.max_entries < 1:
            raise ConfigError(f"max_entries={self.max_entries!r} is not accepted; expected an int of at least 1")
        for prefix, pair in self.upstream_credentials.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
                raise ConfigError(
                    f"the upstream credential of {prefix!r} is not accepted; expected a (user, password) pair of str"
                )
            if not pair[0] or ":" in pair[0] or any(ord(char) < 32 for char in pair[0] + pair[1]):
                raise ConfigError(
                    f"the upstream credential of {prefix!r} is not accepted; expected a non-empty user without ':' "
                    "and no control characters"
                )


@dataclass(frozen=True)
class Decision:
    """What a check came to.

    Attributes:
        outcome: ``allowed``, ``refused``, ``error`` (upstream gave no usable answer) or ``trusted`` (not checked).
        cached: the answer was reused from an earlier check (no upstream contact).
        status: what upstream answered (0: no answer, or not asked).
        challenge: upstream's ``WWW-Authenticate`` of a refusal ("" if none).
        reason: for an error, one line saying why (credential-free).
    """

    outcome: Outcome
    cached: bool = False
    status: int = 0
    challenge: str = ""
    reason: str = ""


class Unauthorized(Refused):
    """A client whose credentials upstream refused: 401 with ``WWW-Authenticate``.

    Attributes:
        challenge: the ``WWW-Authenticate`` value answered.
    """

    def __init__(self, reason: str, challenge: str) -> None:
        super().__init__(401, reason)
        self.challenge = challenge


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by :meth:`AuthChecker._ask`, which never sends a credential to another origin."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AuthChecker:
    """Checks clients' credentials against upstream, with a short-lived in-memory table of answers.

    Attributes:
        options: the settings.
        counts: checks by ``outcome`` and, for reused answers, ``cached`` (this process).
        upstream_checks: checks that contacted upstream (this process).
    """

    def __init__(self, upstreams: Upstreams, options: AuthOptions | None = None) -> None:
        """Check that every prefix can be served under ``options``.

        Raises:
            ConfigError: a trusted prefix is not in the allow-list, or a ``git://`` or ``ssh`` prefix is not
                trusted (it carries no per-client credential).
        """
        self.options = options or AuthOptions()
        allowed = upstreams.allowed
        trust = self.options.trust
        if isinstance(trust, frozenset):
            unknown = sorted(trust - set(allowed))
            if unknown:
                raise ConfigError(
                    f"trusted prefix {unknown[0]!r} is not in the allow-list; allowed prefixes: "
                    + ", ".join(sorted(allowed))
                )
        for prefix in sorted(self.options.upstream_credentials):
            if prefix not in allowed:
                raise ConfigError(
                    f"the upstream credential names prefix {prefix!r}, which is not in the allow-list; allowed "
                    "prefixes: " + ", ".join(sorted(allowed))
                )
            if not allowed[prefix].startswith(("http://", "https://")):
                raise ConfigError(
                    f"an upstream credential for {prefix!r} is used over http and https only; {allowed[prefix]!r} "
                    "uses the server user's own setup (ssh keys)"
                )
        for prefix, base in sorted(allowed.items()):
            if not base.startswith(("http://", "https://")) and not self.trusts(prefix):
                raise ConfigError(
                    f"upstream {base!r} for {prefix!r} cannot check clients' credentials (git:// and ssh carry none "
                    f"per client); trust its clients explicitly (--trust {prefix}, or --trust-clients) if everyone "
                    "who reaches the server may read what the cache can fetch there"
                )
        self.counts: Counter[str] = Counter()
        self.upstream_checks = 0
        self._answers: OrderedDict[str, tuple[float, Decision]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Decision]] = {}
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="repocache-auth")
        self._opener = urllib.request.build_opener(_NoRedirect())

    def trusts(self, prefix: str) -> bool:
        """Whether the clients of ``prefix`` are served without a check."""
        trust = self.options.trust
        return trust if isinstance(trust, bool) else prefix in trust

    def fetch_url(self, route: Route) -> str:
        """The URL the cache clones and fetches ``route``'s repository from: with the prefix's own credential
        when one is configured (the cache keeps it out of every file and message), else ``route.upstream``."""
        pair = self.options.upstream_credentials.get(route.prefix)
        if pair is None:
            return route.upstream
        scheme, _, rest = route.upstream.partition("://")
        user, password = (urllib.parse.quote(part, safe="") for part in pair)
        return f"{scheme}://{user}:{password}@{rest}"

    def close(self) -> None:
        """Drop every answer and stop the check threads (checks in flight finish)."""
        self._answers.clear()
        self._executor.shutdown(wait=False)

    async def authorize(self, route: Route, authorization: str) -> Decision:
        """Whether the client's ``authorization`` (``""``: none) may read ``route``'s repository.

        Raises:
            Unauthorized: upstream refused it (401, with the challenge git's credential helper answers).
            Refused: upstream gave no usable answer (502).
        """
        decision = await self.decide(route, authorization)
        refusal = self.refusal(route, decision, given=bool(authorization))
        if refusal is not None:
            raise refusal
        return decision

    def refusal(self, route: Route, decision: Decision, *, given: bool) -> Refused | None:
        """What to answer a client ``decision`` does not allow (None: it is allowed); ``given``: it sent
        credentials. The reason names the upstream, never the credential."""
        if decision.outcome == "refused":
            challenge = decision.challenge or f'Basic realm="repocache {route.prefix}"'
            if given:
                return Unauthorized(f"upstream refused these credentials for {route.upstream}", challenge)
            return Unauthorized(f"upstream asks for credentials for {route.upstream}", challenge)
        if decision.outcome == "error":
            return Refused(
                502, f"the cache cannot check credentials with upstream for {route.upstream}: {decision.reason}"
            )
        return None

    async def decide(self, route: Route, authorization: str) -> Decision:
        """The decision for ``authorization`` on ``route`` (reused from the table when it is recent enough)."""
        if self.trusts(route.prefix):
            return Decision("trusted")
        key = _answer_key(authorization, normalize_url(route.upstream).key)
        now = time.monotonic()
        kept = self._answers.get(key)
        if kept is not None:
            if kept[0] > now:
                self.counts[kept[1].outcome] += 1
                self.counts["cached"] += 1
                return Decision(kept[1].outcome, cached=True, status=kept[1].status, challenge=kept[1].challenge)
            del self._answers[key]
        pending = self._pending.get(key)
        if pending is not None:
            decision = await asyncio.shield(pending)
            self.counts[decision.outcome] += 1
            self.counts["cached"] += 1
            return Decision(decision.outcome, cached=True, status=decision.status, challenge=decision.challenge)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            self.upstream_checks += 1
            decision = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._ask, route.upstream, authorization
            )
            future.set_result(decision)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, an unwaited future stays quiet
            raise
        finally:
            del self._pending[key]
        self.counts[decision.outcome] += 1
        self._keep(key, decision)
        return decision

    def _keep(self, key: str, decision: Decision) -> None:
        ttl = {"allowed": self.options.ttl, "refused": self.options.refused_ttl}.get(decision.outcome, 0.0)
        if ttl <= 0:
            return
        self._answers[key] = (time.monotonic() + ttl, decision)
        self._answers.move_to_end(key)
        while len(self._answers) > self.options.max_entries:
            self._answers.popitem(last=False)

    def _ask(self, upstream: str, authorization: str) -> Decision:
        """One check: upstream's answer to ``GET info/refs`` with the client's header (body unread)."""
        url = upstream.rstrip("/") + "/info/refs?service=git-upload-pack"
        origin = _origin(url)
        for _ in range(_MAX_REDIRECTS + 1):
            headers = {"User-Agent": CHECK_USER_AGENT, "Accept": "*/*", "Pragma": "no-cache"}
            if authorization:
                headers["Authorization"] = authorization
            request = urllib.request.Request(url, headers=headers, method="GET")
            try:
                response = self._opener.open(request, timeout=self.options.timeout)
            except urllib.error.HTTPError as answer:
                with contextlib.closing(answer):
                    status = answer.code
                    if status in (301, 302, 303, 307, 308):
                        location = answer.headers.get("Location", "")
                        url = urllib.parse.urljoin(url, location)
                        if not location or _origin(url) != origin:
                            return Decision("error", status=status, reason="upstream redirected to another origin")
                        continue
                    if status in _REFUSING:
                        challenge = answer.headers.get("WWW-Authenticate", "") if status == 401 else ""
                        return Decision("refused", status=status, challenge=_clean_challenge(challenge))
                    return Decision("error", status=status, reason=f"upstream answered {status}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                return Decision("error", reason=_why(exc))
            with contextlib.closing(response):
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if response.status == 200 and content_type == _ADVERTISEMENT:
                    return Decision("allowed", status=200)
                # A 200 that is not git's smart HTTP (a login page, a dumb server): nothing to serve from.
                return Decision("refused", status=response.status)
        return Decision("error", reason=f"upstream redirected more than {_MAX_REDIRECTS} times")


def read_credential(prefix: str, path: str) -> tuple[str, str]:
    """The ``USER:PASSWORD`` (or ``USER:TOKEN``) on the first line of the file at ``path``.

    Raises:
        ConfigError: the file cannot be read or holds no ``USER:PASSWORD`` (the message names the file, never
            what it holds).
    """
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"the upstream credential file {path!r} of {prefix!r} cannot be read: {getattr(exc, 'strerror', '')}"
        ) from None
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"the upstream credential file {path!r} of {prefix!r} must hold USER:PASSWORD on one line")
    return user, password


def parse_credentials(items: Collection[str]) -> dict[str, tuple[str, str]]:
    """``["github.com=/run/secrets/github"]`` (the command line's ``--upstream-credential-file``) as a mapping.

    Raises:
        ConfigError: an item is not ``PREFIX=FILE``, names a prefix twice, or its file holds no credential.
    """
    credentials: dict[str, tuple[str, str]] = {}
    for item in items:
        prefix, sep, path = item.partition("=")
        prefix = prefix.strip().strip("/").lower()
        if not sep or not prefix or not path.strip():
            raise ConfigError(f"--upstream-credential-file {item!r} is not accepted; expected PREFIX=FILE")
        if prefix in credentials:
            raise ConfigError(f"--upstream-credential-file names {prefix!r} twice")
        credentials[prefix] = read_credential(prefix, path.strip())
    return credentials


def parse_trust(trust_all: bool, prefixes: Collection[str]) -> bool | frozenset[str]:
    """The ``trust`` option from the command line's ``--trust-clients`` and ``--trust PREFIX``."""
    return True if trust_all else frozenset(prefix.strip().strip("/").lower() for prefix in prefixes)


def _answer_key(authorization: str, repository_key: str) -> str:
    # The credential and the key are joined by a byte neither may contain, so no two pairs share a hash input.
    return hashlib.sha256(authorization.encode("latin-1", "replace") + b"\n" + repository_key.encode()).hexdigest()


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _clean_challenge(challenge: str) -> str:
    """Upstream's challenge as a header value: printable ASCII, bounded; "" when it is not."""
    if len(challenge) > _MAX_CHALLENGE or not all(32 <= ord(char) < 127 for char in challenge):
        return ""
    return challenge


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason) or type(exc).__name__
    return scrub_untrusted(text.splitlines()[0][:200]) if text else type(exc).__name__
