"""Which repositories each caller is using (has a checkout or worktree open), for the deadlock rule of the budget wait.

A *use* is bookkeeping in memory, not a lock: the lock a use stands beside is the repository's shared hold
(:class:`repocache.layout.SharedHold`). The two words are kept apart on purpose.

A miss that lacks room because other workers hold repositories waits for them (:mod:`repocache.budget`). A
caller that holds a checkout or worktree itself must not wait: two workers each holding one repository and missing
the other's would wait for each other. So every open hold is recorded for its *caller*, and
:func:`open_in` tells the budget what the current caller holds under a root.

A caller is whatever carries a :mod:`contextvars` context: a thread (each thread starts with its own context), an
asyncio task (each task runs in a copy of its creator's context), and so a process. The value is a tuple of
:class:`Use` records, replaced (never mutated) when a hold is added, so a task or thread started later inherits the
holds open at that moment and no others: a child created while its parent holds a repository counts as holding it
(its parent waits for it while holding), siblings started earlier do not. A record is closed through the object
itself (:meth:`Use.close`), which works from any thread or context: :class:`~repocache.AsyncRepoCache` takes holds
in one pool thread and releases them in another, and a synchronous checkout may be left in another thread than
the one that entered it. :class:`~repocache.AsyncRepoCache` records its holds in the awaiting task's context and
runs each call in a copy of that context, so the worker thread sees what the task holds.
"""

from __future__ import annotations

import contextvars
from pathlib import Path

__all__ = ["Use", "begin", "open_in"]


class Use:
    """One open hold of a caller: the repository ``url`` (key ``key``) under ``root``."""

    __slots__ = ("key", "open", "root", "url")

    def __init__(self, root: Path, key: str, url: str) -> None:
        self.root = root
        self.key = key
        self.url = url
        self.open = True

    def close(self) -> None:
        """The hold was released (from any thread); closing twice is a no-op."""
        self.open = False

    def __repr__(self) -> str:
        return f"Use({self.url!r}, open={self.open})"


_uses: contextvars.ContextVar[tuple[Use, ...]] = contextvars.ContextVar("repocache_uses", default=())


def begin(root: Path, key: str, url: str) -> Use:
    """Record that the current caller now holds ``url`` under ``root``; close the result when it is released."""
    record = Use(root, key, url)
    _uses.set((*(h for h in _uses.get() if h.open), record))  # closed records are dropped on the way
    return record


def open_in(root: Path) -> tuple[Use, ...]:
    """The holds the current caller has open under ``root``."""
    return tuple(h for h in _uses.get() if h.open and h.root == root)
