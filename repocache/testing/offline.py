"""A cache that never contacts an upstream: what is cached is served at any age, and anything else is refused.

The pytest plugin's offline mode (``--repocache-offline`` or ``REPOCACHE_OFFLINE=1``) hands it out as
``repo_cache_persistent``, with ``on_miss`` skipping the test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

from repocache.cache import RepoCache
from repocache.errors import RepoCacheError
from repocache.partial import USE_CONFIGURED, FilterArg
from repocache.refresh import USE_TTL, MaxAge

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from repocache import gitops
    from repocache.checkout import Checkout, Worktree
    from repocache.models import Entry
    from repocache.settings import CacheOptions

__all__ = ["NotCachedOffline", "OfflineRepoCache"]

OnMiss = Callable[[str, str], NoReturn]
"""Called with the normalized URL and the reason when a call would need its upstream; must raise."""


class NotCachedOffline(RepoCacheError):
    """An offline cache was asked for something only the upstream has.

    Attributes:
        url: the normalized URL.
        reason: why the upstream would be needed.
    """

    def __init__(self, url: str, reason: str) -> None:
        """Record the URL and the reason."""
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


def _raise(url: str, reason: str) -> NoReturn:
    raise NotCachedOffline(url, reason)


class OfflineRepoCache(RepoCache):
    """A :class:`~repocache.RepoCache` whose ``checkout``, ``worktree`` and ``ensure`` never contact upstream.

    A cached repository is served at any age (``max_age=None`` for every call, whatever is passed); one that is not
    cached, and ``refresh``, call ``on_miss`` instead of cloning or fetching (default: raise
    :class:`NotCachedOffline`). Everything else (``info``, ``entries``, ``evict``, ``stats``, ...) is unchanged.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        on_miss: OnMiss = _raise,
        progress: gitops.ProgressCallback | None = None,
        **options: Unpack[CacheOptions],
    ) -> None:
        """Open the cache at ``root`` with ``RepoCache``'s settings.

        Args:
            root: the cache directory, as for ``RepoCache``.
            on_miss: called with the normalized URL and the reason instead of contacting the upstream; must raise.
            progress: as for ``RepoCache``.
            **options: as for ``RepoCache``.
        """
        super().__init__(root, progress=progress, **options)
        self._on_miss = on_miss

    def _require_cached(self, url: str | os.PathLike[str]) -> None:
        entry = self.info(url)  # also refuses an invalid URL, as RepoCache does
        if entry is None:
            from repocache.keys import normalize_url

            self._on_miss(normalize_url(url).url, f"offline, and it is not in the cache {self.root}")

    @contextlib.contextmanager
    def checkout(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Iterator[Checkout]:
        """As :meth:`RepoCache.checkout`, served at any age; ``on_miss`` when the repository is not cached."""
        self._require_cached(url)
        with super().checkout(url, progress=progress, max_age=None, filter=filter) as checkout:
            yield checkout

    @contextlib.contextmanager
    def worktree(
        self,
        url: str | os.PathLike[str],
        ref: str = "HEAD",
        *,
        path: str | os.PathLike[str] | None = None,
        submodules: bool = False,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Iterator[Worktree]:
        """As :meth:`RepoCache.worktree`, served at any age; ``on_miss`` when the repository is not cached."""
        self._require_cached(url)
        with super().worktree(
            url, ref, path=path, submodules=submodules, progress=progress, max_age=None, filter=filter
        ) as tree:
            yield tree

    def ensure(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        """As :meth:`RepoCache.ensure`, served at any age; ``on_miss`` when the repository is not cached."""
        self._require_cached(url)
        return super().ensure(url, progress=progress, max_age=None, filter=filter)

    def refresh(
        self,
        url: str | os.PathLike[str],
        *,
        progress: gitops.ProgressCallback | None = None,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        """Never fetches: ``on_miss`` (a refresh needs the upstream)."""
        from repocache.keys import normalize_url

        self._on_miss(normalize_url(url).url, "offline, and a refresh needs the upstream")
