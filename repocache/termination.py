"""SIGTERM handled as SIGINT is: the signal ``timeout``, ``docker stop`` and systemd send to stop a process.

:func:`terminate_as_interrupt` makes SIGTERM raise :class:`Terminated` (a :class:`KeyboardInterrupt`) in the main
thread, so everything that unwinds on Ctrl-C unwinds the same way: git is killed, staging directories and
reservations are removed, locks are released, and the caller can say so and exit 143 (128 + SIGTERM). The
command-line tool installs it for every command; a service embedding the library can install it too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["EXIT_TERMINATED", "Terminated", "terminate_as_interrupt"]

EXIT_TERMINATED = 128 + signal.SIGTERM
"""The exit code of a process stopped by SIGTERM (143), as a shell reports it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while :func:`terminate_as_interrupt` was in force; unwinds as Ctrl-C does."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """For the ``with`` block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change).

    The previous handler is put back when the block exits.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
