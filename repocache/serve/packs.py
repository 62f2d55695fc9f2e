"""Pack generations: git's ``upload-pack`` run once for every client that asked the same, within a bound.

A :class:`Generation` is one ``upload-pack`` process. Its output is spooled to an unlinked temporary file (never
kept in memory) while every client that asked it reads the file at its own pace (``os.pread`` at its own offset),
so a slow client never stalls the process or the other clients, and memory stays one chunk per client.

:class:`Generations` shares them: a request whose key (the mirror, its ref tips, the ``Git-Protocol`` header and
the request body's hash) matches a generation still running, or one that ended well while a client still reads its
spool, joins it instead of starting another, the way Gitaly's pack-objects cache does. At most ``max_packs``
generations run at once (advertisements, which are small, are not counted); up to ``max_queue`` more wait for a
slot in arrival order; beyond that a request is refused with :class:`Busy` before any byte of its answer is sent.
A generation whose every client left is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO

from repocache.gitops.run import with_death_signal

__all__ = ["CHUNK", "SEND_CHUNK", "Body", "Busy", "Generation", "Generations"]

logger = logging.getLogger("repocache")

CHUNK = 64 * 1024
"""Bytes read from upload-pack's pipes, and from a request body, at a time."""

SEND_CHUNK = 1 << 20
"""Bytes of spooled output read, and handed to a client, at a time: the per-client memory bound of an answer (the
chunk, and at most as much again buffered by the transport). Sends cost a fixed overhead each (the ASGI server's
framing, a watchdog check, a task switch), so they are few and large."""

_STDERR_KEPT = 4096


class Busy(Exception):
    """Every pack slot is taken and the queue is full: answer 503 with ``Retry-After``."""


@dataclass
class Body:
    """A request body, inflated: in memory when small, else in a temporary file (``file``, from its start)."""

    data: bytes = b""
    file: IO[bytes] | None = None
    size: int = 0

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, a chunk at a time."""

        async def generate() -> AsyncIterator[bytes]:
            if self.file is None:
                for start in range(0, len(self.data), CHUNK):
                    yield self.data[start : start + CHUNK]
                return
            offset = 0
            while offset < self.size:
                data = os.pread(self.file.fileno(), CHUNK, offset)
                if not data:
                    break
                offset += len(data)
                yield data

        return generate()

    def close(self) -> None:
        """Drop the temporary file, if any."""
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class Generation:
    """One ``upload-pack`` run and its spooled output, read by every client that joined it.

    Attributes:
        key: what identifies the answer (see :class:`Generations`).
        limited: whether it takes one of the ``max_packs`` slots.
        written: bytes of output spooled so far.
        done: the process has ended (``returncode`` and ``stderr`` are set).
        clients: clients reading it now.
        queued_seconds: how long it waited for a slot.
    """

    key: str
    limited: bool
    spool: IO[bytes]
    written: int = 0
    done: bool = False
    returncode: int | None = None
    stderr: bytes = b""
    clients: int = 0
    queued_seconds: float = 0.0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    async def wait_past(self, offset: int) -> None:
        """Wait until output beyond ``offset`` is spooled or the process has ended."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.written > offset or self.done)

    def read(self, offset: int) -> bytes:
        """Up to :data:`SEND_CHUNK` bytes of spooled output from ``offset`` (a page-cache read)."""
        return os.pread(self.spool.fileno(), min(SEND_CHUNK, self.written - offset), offset)

    def read_whole(self) -> bytes:
        """Every byte spooled so far, at once (for a small answer)."""
        return os.pread(self.spool.fileno(), self.written, 0)

    async def stream(self) -> AsyncIterator[bytes]:
        """The whole output, as it is spooled; ends when the process has ended and everything was read."""
        offset = 0
        while True:
            if offset >= self.written and not self.done:
                await self.wait_past(offset)  # only when caught up: the condition's lock costs a task switch
            if offset < self.written:
                data = self.read(offset)
                offset += len(data)
                yield data
            elif self.done:
                return

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


class Generations:
    """The generations running or queued in this server, shared by key, at most ``max_packs`` at once.

    Attributes:
        max_packs: generations (answers to ``git-upload-pack`` requests) run at once.
        max_queue: further generations that may wait for a slot; beyond, :class:`Busy`.
        shared: how many requests joined a generation another request started (pack-sharing hits).
    """

    def __init__(self, *, max_packs: int, max_queue: int, spool_dir: str | None = None) -> None:
        self.max_packs = max_packs
        self.max_queue = max_queue
        self.spool_dir = spool_dir
        self.shared = 0
        self._running: dict[str, Generation] = {}
        self._active = 0
        self._queued = 0
        self._slots: asyncio.Semaphore | None = None

    @property
    def active(self) -> int:
        """Generations holding a slot now."""
        return self._active

    @property
    def queued(self) -> int:
        """Generations waiting for a slot now."""
        return self._queued

    def full(self) -> bool:
        """Whether a new limited generation would be refused now."""
        return self._active + self._queued >= self.max_packs + self.max_queue

    @contextlib.asynccontextmanager
    async def joined(
        self,
        key: str,
        command: Callable[[], tuple[list[str], dict[str, str]]],
        body: Body,
        *,
        limited: bool,
    ) -> AsyncIterator[tuple[Generation, bool]]:
        """The generation for ``key`` (joined, or started with ``command`` and ``body``) for the block.

        ``body`` is handed over: it is closed once fed (or at once when a running generation is joined).

        Yields:
            The generation and whether it was joined (started by another request).

        Raises:
            Busy: it would have to be started, and every slot and queue place is taken.
        """
        generation = self._running.get(key)
        joined = generation is not None
        if generation is None:
            if limited and self.full():
                body.close()
                raise Busy()
            generation = Generation(key, limited, tempfile.TemporaryFile(dir=self.spool_dir))  # noqa: SIM115
            self._running[key] = generation
            generation.task = asyncio.create_task(self._run(generation, command, body), name=f"upload-pack {key[:12]}")
        else:
            self.shared += 1
            body.close()  # the generation joined feeds its starter's identical body
        generation.clients += 1
        try:
            yield generation, joined
        finally:
            generation.clients -= 1
            if generation.clients == 0:
                # Unlisted before stopping: a request arriving while the process is being stopped starts afresh
                # instead of joining an answer that is about to be cut short.
                if self._running.get(generation.key) is generation:
                    del self._running[generation.key]
                await self._stop(generation)

    async def _stop(self, generation: Generation) -> None:
        """The last client left: stop the process if it still runs, wait for it, drop the spool."""
        task = generation.task
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        if self._running.get(generation.key) is generation:
            del self._running[generation.key]
        generation.spool.close()

    async def _slot(self, generation: Generation) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_packs)
        self._queued += 1
        started = time.monotonic()
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        generation.queued_seconds = time.monotonic() - started
        self._active += 1

    async def _run(
        self, generation: Generation, command: Callable[[], tuple[list[str], dict[str, str]]], body: Body
    ) -> None:
        process: asyncio.subprocess.Process | None = None
        slotted = False
        try:
            if generation.limited:
                await self._slot(generation)
                slotted = True
            argv, env = command()
            argv, preexec = with_death_signal(argv)
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=SEND_CHUNK,  # what is buffered from the pipe before reading pauses: big reads, few wake-ups
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
            assert process.stdin is not None and process.stdout is not None and process.stderr is not None
            feeding = asyncio.create_task(_feed(process.stdin, body))
            errors = asyncio.create_task(_tail(process.stderr))
            try:
                while data := await process.stdout.read(SEND_CHUNK):
                    generation.spool.write(data)
                    generation.spool.flush()
                    generation.written += len(data)
                    await generation._notify()
            finally:
                feeding.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await feeding
            generation.returncode = await process.wait()
            generation.stderr = await errors
        except BaseException:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, 9)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(process.wait())
            raise
        finally:
            body.close()
            if slotted:
                self._active -= 1
                assert self._slots is not None
                self._slots.release()
            # A whole answer stays listed while a client still reads its spool: an identical request arriving
            # meanwhile reads it too (its key holds the mirror's ref tips, so it is the answer for that state); the
            # last client to leave unlists it. A failed or cut-short one is unlisted now: the next starts afresh.
            if generation.returncode != 0 and self._running.get(generation.key) is generation:
                del self._running[generation.key]
            generation.done = True
            await generation._notify()
            if generation.returncode not in (None, 0):
                logger.info(
                    "upload-pack exited %s: %s",
                    generation.returncode,
                    generation.stderr.decode(errors="replace").strip(),
                )


async def _feed(stdin: asyncio.StreamWriter, body: Body) -> None:
    """Write the request body to upload-pack, then close its input; it may stop reading early (an error)."""
    try:
        async for data in body.chunks():
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


async def _tail(stderr: asyncio.StreamReader) -> bytes:
    """What upload-pack wrote to stderr, the last few KiB of it."""
    kept = b""
    while data := await stderr.read(CHUNK):
        kept = (kept + data)[-_STDERR_KEPT:]
    return kept
