"""One explicit lifecycle state for the objects that own resources: the cache, the async cache, the background pool.

As httpx's ``ClientState``: an object is open until closed, and closed for good; the one place that refuses a call
after close says what was closed. Closing twice is a no-op, decided under a lock so two threads closing at once
run the teardown once.
"""

from __future__ import annotations

import enum
import threading

from repocache.errors import RepoCacheError

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """Where an object is in its life: ``OPEN`` until :meth:`Lifecycle.close`, then ``CLOSED`` for good."""

    OPEN = "open"
    CLOSED = "closed"


class Lifecycle:
    """The state of one resource-owning object, named for its error messages (``"this RepoCache is closed"``)."""

    __slots__ = ("_lock", "_name", "state")

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self.state = State.OPEN

    @property
    def is_open(self) -> bool:
        """Whether the object may still be used."""
        return self.state is State.OPEN

    def check(self) -> None:
        """Refuse a call on a closed object.

        Raises:
            RepoCacheError: the object is closed.
        """
        if self.state is not State.OPEN:
            raise RepoCacheError(f"this {self._name} is closed")

    def close(self) -> bool:
        """Move to ``CLOSED``; True for the one call that did (it runs the teardown), False if already closed."""
        with self._lock:
            if self.state is State.CLOSED:
                return False
            self.state = State.CLOSED
            return True

    def __repr__(self) -> str:
        return f"<{self._name} {self.state.value}>"
