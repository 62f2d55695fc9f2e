"""The exception tree of repocache.

Every error the library raises on purpose is a :class:`RepoCacheError`. Each subclass is also the builtin
exception a caller would naturally catch, so ``except ValueError`` still works for a bad URL:

```text
RepoCacheError (Exception)
├── InvalidURLError (ValueError)      the URL cannot be cached: malformed, unsupported or unsafe
├── ConfigError (ValueError)          a bad setting or pin file
├── InvalidRefError (ValueError)      a ref argument that cannot name anything (empty, starts with '-')
├── RefNotFoundError (LookupError)    the ref does not exist in the repository
├── MissingObjectError (KeyError)     an object a partial mirror left out (filter) was read
├── LockTimeoutError (TimeoutError)   another worker held the repository longer than lock_timeout
├── GitError                          git or libgit2 failed
│   ├── CloneError                    a miss could not be cloned
│   │   └── CloneAuthenticationError  ... because upstream refused the credentials (also AuthenticationError)
│   ├── FetchError                    a hit could not be refreshed
│   │   └── FetchAuthenticationError  ... because upstream refused the credentials (also AuthenticationError)
│   └── AuthenticationError           upstream refused the credentials (or asked for some); never retried
├── BudgetError                       the repository cannot fit in the byte budget
├── ColdStoreError                    the cold storage tier failed
├── ReadOnlyRootError                 the root is read-only: it can be read, not changed
├── UnsafeFileError (OSError)         a file others can write is not a regular file, or is larger than allowed
└── WebhookError (ValueError)         a webhook request was refused (status: the HTTP status to answer)
    ├── WebhookSignatureError         the signature or token is missing or wrong (401)
    ├── WebhookEventError             not a push event, or from no known host (400)
    ├── WebhookPayloadError           the body is malformed or names no repository (400)
    └── WebhookTooLargeError          the body is larger than accepted (413)
```

Errors carry their data as attributes and pickle, so they cross process pools intact. Messages never contain
credentials: a git error names the URL as the caller wrote it with its credentials removed (``shown``), every
other error the normalized, credential-free form.
"""

from __future__ import annotations

from repocache.redact import scrub_untrusted

__all__ = [
    "AuthenticationError",
    "BudgetError",
    "CloneAuthenticationError",
    "CloneError",
    "ColdStoreError",
    "ConfigError",
    "FetchAuthenticationError",
    "FetchError",
    "GitError",
    "InvalidRefError",
    "InvalidURLError",
    "LockTimeoutError",
    "MissingObjectError",
    "ReadOnlyRootError",
    "RefNotFoundError",
    "RepoCacheError",
    "UnsafeFileError",
    "WebhookError",
    "WebhookEventError",
    "WebhookPayloadError",
    "WebhookSignatureError",
    "WebhookTooLargeError",
]


class RepoCacheError(Exception):
    """Base class of every error repocache raises on purpose."""


class InvalidURLError(RepoCacheError, ValueError):
    """The URL cannot be cached: it is malformed, uses an unsupported transport, or is unsafe.

    Attributes:
        url: the offending URL with any credentials removed.
        reason: what is wrong and what would be accepted.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid repository URL {self.url!r}: {self.reason}"


class ConfigError(RepoCacheError, ValueError):
    """A setting or a pin file is invalid; the message names the value and what would be accepted."""


class InvalidRefError(RepoCacheError, ValueError):
    """A ref argument that cannot name anything: not a string, empty, starting with ``-`` or with control chars.

    Attributes:
        ref: the offending value (as repr).
        reason: what would be accepted.
    """

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(ref, reason)
        self.ref = ref
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid ref {self.ref}: {self.reason}"


class RefNotFoundError(RepoCacheError, LookupError):
    """The ref (branch, tag or commit) does not exist in the repository, even after a fetch.

    Attributes:
        url: the repository's normalized URL.
        ref: the ref asked for.
    """

    def __init__(self, url: str, ref: str) -> None:
        super().__init__(url, ref)
        self.url = url
        self.ref = ref

    def __str__(self) -> str:
        return f"{self.ref!r} is not a branch, tag or commit of {self.url}"


class MissingObjectError(RepoCacheError, KeyError):
    """An object is absent from a partial mirror: its filter left it out (a blob of a blob-less mirror, a tree or
    blob of a tree-less one), and it was not fetched since.

    ``RepoCache.fetch_missing(url, oids=..., commit=..., paths=...)`` fetches it (charged to the budget); it is a
    ``KeyError``, as pygit2's own error for an absent object is.

    Attributes:
        url: the repository's normalized URL.
        oid: the hex id of the absent object.
        filter: the mirror's filter (``"blob:none"`` or ``"tree:0"``); None when a full mirror lacks it (corrupt).
    """

    def __init__(self, url: str, oid: str, filter: str | None) -> None:
        super().__init__(url, oid, filter)
        self.url = url
        self.oid = oid
        self.filter = filter

    def __str__(self) -> str:
        if self.filter is None:
            return f"object {self.oid} is missing from the full mirror of {self.url} (run verify)"
        return (
            f"object {self.oid} is not in the partial mirror of {self.url} (filter {self.filter!r}); "
            "fetch it with cache.fetch_missing(url, oids=[...]) or ask for a full mirror (filter=None)"
        )


class LockTimeoutError(RepoCacheError, TimeoutError):
    """Another worker held a repository's lock for longer than ``lock_timeout`` seconds.

    Attributes:
        url: the repository's normalized URL.
        timeout: the number of seconds waited.
        purpose: what the lock was wanted for ("checkout", "clone", "fetch", "evict").
    """

    def __init__(self, url: str, timeout: float, purpose: str) -> None:
        super().__init__(url, timeout, purpose)
        self.url = url
        self.timeout = timeout
        self.purpose = purpose

    def __str__(self) -> str:
        return (
            f"timed out after {self.timeout:g}s waiting for the {self.purpose} lock of {self.url}; "
            "another worker holds it (raise lock_timeout to wait longer)"
        )


class GitError(RepoCacheError):
    """git or libgit2 failed.

    Attributes:
        url: the repository's normalized, credential-free URL (its identity).
        detail: git's own cause lines (every ``fatal:``, ``error:`` and ``ssh:`` line, deduplicated), scrubbed.
        shown: the URL as the caller wrote it, credentials removed; the message names this one.
    """

    def __init__(self, url: str, detail: str, shown: str | None = None) -> None:
        super().__init__(url, detail, shown)
        self.url = url
        self.detail = detail
        self.shown = shown or url

    def __str__(self) -> str:
        return f"{self._action} {self.shown} failed: {self.detail}"

    _action = "git operation on"


class CloneError(GitError):
    """A missing repository could not be cloned; nothing was left in the cache."""

    _action = "clone of"


class FetchError(GitError):
    """A cached repository could not be refreshed from upstream; the cached copy is unchanged."""

    _action = "fetch of"


class AuthenticationError(GitError):
    """Upstream refused the credentials (or wanted some and the URL had none usable); nothing was changed.

    It is never retried: the same credentials would be refused again. Raised as :class:`CloneAuthenticationError`
    or :class:`FetchAuthenticationError`, so ``except CloneError`` and ``except FetchError`` still catch it. With
    ``on_fetch_error="warn"`` a hit whose fetch is refused still serves its cached copy, with a warning naming the
    authentication failure; the ``repocache`` command treats it as an error (exit code 3) instead.
    """

    _action = "authentication for"

    @staticmethod
    def of(error: type[GitError]) -> type[GitError]:
        """The authentication error raised where ``error`` (``CloneError`` or ``FetchError``) would be."""
        if issubclass(error, CloneError):
            return CloneAuthenticationError
        if issubclass(error, FetchError):
            return FetchAuthenticationError
        return AuthenticationError


class CloneAuthenticationError(AuthenticationError, CloneError):
    """A clone refused by upstream for its credentials: both an :class:`AuthenticationError` and a
    :class:`CloneError`."""

    _action = "clone of"


class FetchAuthenticationError(AuthenticationError, FetchError):
    """A fetch refused by upstream for its credentials: both an :class:`AuthenticationError` and a
    :class:`FetchError`; the cached copy is unchanged."""

    _action = "fetch of"


class BudgetError(RepoCacheError):
    """The repository cannot fit in the byte budget.

    Raised at once when it cannot fit even with nothing held (before anything is downloaded when its size is known
    in advance), or when the caller itself holds repositories of the cache; a miss that only lacks room held by
    other workers waits for them instead, and is refused only after ``lock_timeout``.

    Attributes:
        url: the repository's normalized URL.
        needed: bytes the repository needs.
        available: bytes that could be made available.
        max_bytes: the whole budget when the repository alone is larger than it (nothing else is to blame),
            else None.
        reason: why: ``"larger"`` (larger than ``max_bytes``), ``"pinned"`` (it does not fit beside the pinned
            repositories, or the free-space floor cannot be kept, even with nothing held), ``"holding"`` (the
            room is held and the caller holds repositories itself, so it may not wait), ``"timeout"`` (the room
            stayed held for ``lock_timeout`` seconds), or ``""`` (no finer reason is known).
        held: the holds that stood in the way, as ``(url, bytes)`` pairs: the caller's own for ``"holding"``,
            those of other workers for ``"timeout"``; empty otherwise.
        waited: seconds waited for room before giving up (0.0 when it did not wait).
    """

    def __init__(
        self,
        url: str,
        needed: int,
        available: int,
        max_bytes: int | None = None,
        reason: str = "",
        held: tuple[tuple[str, int], ...] = (),
        waited: float = 0.0,
    ) -> None:
        held = tuple((str(name), int(size)) for name, size in held)
        super().__init__(url, needed, available, max_bytes, reason, held, waited)
        self.url = url
        self.needed = needed
        self.available = available
        self.max_bytes = max_bytes
        self.reason = "larger" if max_bytes is not None and not reason else reason
        self.held = held
        self.waited = waited

    def _held_text(self) -> str:
        return ", ".join(f"{name} ({size} bytes)" for name, size in self.held) or "nothing"

    def __str__(self) -> str:
        if self.max_bytes is not None:
            return (
                f"{self.url} needs {self.needed} bytes, which is larger than max_bytes={self.max_bytes} (the whole "
                "budget); raise max_bytes to cache it"
            )
        if self.reason == "pinned":
            return (
                f"{self.url} needs {self.needed} bytes but at most {self.available} bytes can ever be made "
                "available: it cannot fit beside the pinned repositories (or above min_free_bytes) even with "
                "nothing held; raise max_bytes or unpin repositories"
            )
        if self.reason == "holding":
            return (
                f"{self.url} needs {self.needed} bytes but only {self.available} bytes can be freed now, and this "
                f"caller holds {self._held_text()} itself; a caller that holds repositories does not wait for "
                "room (two workers could wait for each other forever): release them before checking out another "
                "repository, or raise max_bytes"
            )
        if self.reason == "timeout":
            waited_for = (
                f"other workers to release {self._held_text()}" if self.held else "the clones in flight to finish"
            )
            return (
                f"{self.url} needs {self.needed} bytes but only {self.available} bytes could be freed after waiting "
                f"{self.waited:.3g}s for {waited_for}; raise lock_timeout to wait longer, or max_bytes"
            )
        return (
            f"{self.url} needs {self.needed} bytes but at most {self.available} bytes can be freed "
            "(the rest is pinned or in use); raise max_bytes or unpin repositories"
        )


class ColdStoreError(RepoCacheError):
    """The cold storage tier failed: unreachable, corrupt artifact, or misconfigured."""


class ReadOnlyRootError(RepoCacheError):
    """The cache root cannot be written (a read-only mount or permissions): what only reads it (``entries``,
    ``stats``, ``verify`` without repair) works; what would change it raises this.

    Attributes:
        root: the cache root.
        action: what could not be done.
    """

    def __init__(self, root: str, action: str) -> None:
        super().__init__(root, action)
        self.root = root
        self.action = action

    def __str__(self) -> str:
        return (
            f"the cache root {self.root} is read-only: cannot {self.action} (reading works: ls, stats, verify; "
            "use a writable root to change it)"
        )


class UnsafeFileError(RepoCacheError, OSError):
    """A file repocache reads from a place others can write is refused unread.

    Raised for a lock file, the index, the pin file or a cold store object that is not a regular file (a FIFO, a
    device, a directory, a socket, or a symbolic link where none is accepted) or is larger than the bound its
    reader sets; such a file could otherwise block a read forever or be read until memory runs out.

    Attributes:
        path: the refused file.
        reason: what it is and what would be accepted (e.g. "a FIFO, not a regular file").
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason
        # OSError took the two arguments for (errno, strerror): keep its attributes meaningful instead.
        self.errno = None
        self.strerror = reason
        self.filename = path

    def __reduce__(self) -> tuple[type[UnsafeFileError], tuple[str, str]]:
        return (type(self), (self.path, self.reason))

    def __str__(self) -> str:
        return f"refused {self.path}: {self.reason}"


class WebhookError(RepoCacheError, ValueError):
    """A webhook request was refused (see :mod:`repocache.webhooks`).

    Attributes:
        reason: what is wrong and what would be accepted, scrubbed of credentials (URL user-info, ``token=``
            and ``password=`` fields, ``Authorization`` values), since it quotes the request.
        status: the HTTP status to answer with.
    """

    default_status = 400

    def __init__(self, reason: str, status: int | None = None) -> None:
        # The one boundary every refusal's message passes: it is built from the request, so whatever of it is
        # quoted is scrubbed of credentials before it is answered or logged.
        reason = scrub_untrusted(reason)
        super().__init__(reason, status)
        self.reason = reason
        self.status = self.default_status if status is None else status

    def __str__(self) -> str:
        return self.reason


class WebhookSignatureError(WebhookError):
    """The request's signature (or GitLab token) is missing or does not match the shared secret."""

    default_status = 401


class WebhookEventError(WebhookError):
    """The request is not a push event (or a ping), or carries no known host's event header."""


class WebhookPayloadError(WebhookError):
    """The body is not a well-formed event: bad JSON, missing fields, or no repository URL in it."""


class WebhookTooLargeError(WebhookError):
    """The body is larger than the accepted maximum (it is not read)."""

    default_status = 413
