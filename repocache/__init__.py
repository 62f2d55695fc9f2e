"""repocache: an on-disk LRU cache of git mirrors that many threads and processes share safely."""

from repocache.cache import RepoCache
from repocache.checkout import Checkout, Worktree
from repocache.errors import (
    BudgetError,
    CloneError,
    ColdStoreError,
    ConfigError,
    FetchError,
    GitError,
    InvalidURLError,
    LockTimeoutError,
    RepoCacheError,
)
from repocache.keys import RepoURL, normalize_url
from repocache.models import Entry, Problem, Progress, Stats

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "Checkout",
    "CloneError",
    "ColdStoreError",
    "ConfigError",
    "Entry",
    "FetchError",
    "GitError",
    "InvalidURLError",
    "LockTimeoutError",
    "Problem",
    "Progress",
    "RepoCache",
    "RepoCacheError",
    "RepoURL",
    "Stats",
    "Worktree",
    "__version__",
    "normalize_url",
]
