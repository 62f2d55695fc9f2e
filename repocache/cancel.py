"""Cancellation of blocking work running in a thread, for :class:`repocache.AsyncRepoCache`.

A :class:`CancelToken` is bound to the thread that runs one blocking call (:func:`scope`). The places where that
call can wait a long time check it and raise :class:`Cancelled`: the git CLI's wait loop (which kills git first),
libgit2's transfer callback (raising from it aborts the transfer), the poll loop of a contended lock and the copy
loop of a cold-store restore. :class:`Cancelled` derives from ``BaseException``, like ``asyncio.CancelledError``,
so the ``except`` clauses that turn a failed fetch into a stale hit or a broken artifact into a clone let it through
and only ``finally`` blocks run: staging directories are removed, reservations dropped and locks released exactly
as when a call fails.

Outside a scope nothing is ever cancelled, so the synchronous API is unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["CancelToken", "Cancelled", "check", "current", "scope"]


class Cancelled(BaseException):
    """Raised inside a thread whose :class:`CancelToken` was cancelled; it never reaches users of the library."""


class CancelToken:
    """A flag set from any thread (typically the event loop's) and read by the thread doing the work."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()


_local = threading.local()


def current() -> CancelToken | None:
    """The token bound to the calling thread, if any."""
    token: CancelToken | None = getattr(_local, "token", None)
    return token


def check() -> None:
    """Raise :class:`Cancelled` if the calling thread's token was cancelled; a no-op without a token."""
    token: CancelToken | None = getattr(_local, "token", None)
    if token is not None and token.cancelled:
        raise Cancelled


@contextlib.contextmanager
def scope(token: CancelToken) -> Iterator[CancelToken]:
    """Bind ``token`` to the calling thread for the block (restoring the previous binding after it)."""
    previous = getattr(_local, "token", None)
    _local.token = token
    try:
        yield token
    finally:
        _local.token = previous
