"""repocache: an on-disk LRU cache of git mirrors that many threads and processes share safely.

The names below are loaded on first use, so ``import repocache.cli`` or the pytest plugin does not pay for pygit2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repocache.aio import AsyncRepoCache
    from repocache.cache import RepoCache
    from repocache.checkout import Checkout, Worktree
    from repocache.errors import (
        AuthenticationError,
        BudgetError,
        CloneAuthenticationError,
        CloneError,
        ColdStoreError,
        ConfigError,
        FetchAuthenticationError,
        FetchError,
        GitError,
        InvalidRefError,
        InvalidURLError,
        LockTimeoutError,
        MissingObjectError,
        ReadOnlyRootError,
        RefNotFoundError,
        RepoCacheError,
        UnsafeFileError,
    )
    from repocache.keys import RepoURL, normalize_url
    from repocache.models import Entry, MaintenanceReport, Problem, Progress, Stats
    from repocache.settings import ColdOptions, Freshness, Maintenance, Settings, Transport

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncRepoCache": "repocache.aio",
    "AuthenticationError": "repocache.errors",
    "BudgetError": "repocache.errors",
    "CloneAuthenticationError": "repocache.errors",
    "Checkout": "repocache.checkout",
    "CloneError": "repocache.errors",
    "ColdOptions": "repocache.settings",
    "ColdStoreError": "repocache.errors",
    "ConfigError": "repocache.errors",
    "Entry": "repocache.models",
    "FetchAuthenticationError": "repocache.errors",
    "FetchError": "repocache.errors",
    "Freshness": "repocache.settings",
    "GitError": "repocache.errors",
    "InvalidRefError": "repocache.errors",
    "InvalidURLError": "repocache.errors",
    "LockTimeoutError": "repocache.errors",
    "Maintenance": "repocache.settings",
    "MaintenanceReport": "repocache.models",
    "MissingObjectError": "repocache.errors",
    "Problem": "repocache.models",
    "Progress": "repocache.models",
    "ReadOnlyRootError": "repocache.errors",
    "RefNotFoundError": "repocache.errors",
    "RepoCache": "repocache.cache",
    "RepoCacheError": "repocache.errors",
    "RepoURL": "repocache.keys",
    "Settings": "repocache.settings",
    "Stats": "repocache.models",
    "Transport": "repocache.settings",
    "UnsafeFileError": "repocache.errors",
    "Worktree": "repocache.checkout",
    "normalize_url": "repocache.keys",
}

__all__ = [
    "AsyncRepoCache",
    "AuthenticationError",
    "BudgetError",
    "Checkout",
    "CloneAuthenticationError",
    "CloneError",
    "ColdOptions",
    "ColdStoreError",
    "ConfigError",
    "Entry",
    "FetchAuthenticationError",
    "FetchError",
    "Freshness",
    "GitError",
    "InvalidRefError",
    "InvalidURLError",
    "LockTimeoutError",
    "Maintenance",
    "MaintenanceReport",
    "MissingObjectError",
    "Problem",
    "Progress",
    "ReadOnlyRootError",
    "RefNotFoundError",
    "RepoCache",
    "RepoCacheError",
    "RepoURL",
    "Settings",
    "Stats",
    "Transport",
    "UnsafeFileError",
    "Worktree",
    "__version__",
    "normalize_url",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'repocache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
