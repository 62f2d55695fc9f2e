"""Remembered answers: upload-pack's small answers, kept per process under a key that holds all they depend on.

Three answers of ``git upload-pack --stateless-rpc`` are a function of what git is given and nothing else:

- the protocol v2 capability advertisement (``info/refs`` with ``Git-Protocol: version=2``): it lists no refs;
- the protocol v0 ref advertisement (``info/refs``): the refs, their peeled tags (an object never changes) and the
  capabilities;
- a protocol v2 ``ls-refs`` answer: the refs, filtered and decorated as the request's arguments say.

What git is given: its argument vector and environment (the mirror's path, ``GIT_PROTOCOL``, the server's
``GIT_CONFIG_*`` settings), the git binary itself, the config files it reads (the mirror's ``config``, the global
files under ``$HOME`` and ``$XDG_CONFIG_HOME`` or ``$GIT_CONFIG_GLOBAL``, the system file) and, for the two ref
answers, the mirror's refs and the request body. The key of an answer is a digest of all of it: the content of every
config file (never a timestamp; a file is read again when its ``stat`` changed, or on every request while it
changed less than two seconds ago), the mirror's ref tips as :func:`repocache.gitops.ref_tips` reads them (every ref
and ``HEAD``), and the body's sha256. So a push that a fetch brought in, a changed config or another git makes
another key, and the next request is answered by upload-pack again, at once; a state seen before (a force-push
back) finds the answer git gave for exactly that state.

The server makes each answer the first time with git's own upload-pack (it is what git says) and remembers it only
when the key read again after the answer is the key read before (no fetch or config change landed meanwhile), the
answer is at most :data:`MAX_ANSWER_BYTES` and carries no ``session-id`` (a per-process trace id). Nothing is
remembered for a mirror whose config files include others (``[include]``, ``[includeIf]``) or use per-worktree
config, or while the system config file's path is unknown (git names it only once it exists and is not empty).
At most :data:`MAX_REMEMBERED_BYTES` are kept, the least recently used answers dropped first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MAX_ANSWER_BYTES", "MAX_REMEMBERED_BYTES", "Answers"]

MAX_ANSWER_BYTES = 1 << 20
"""The largest answer remembered (a ref listing of about 15,000 refs); larger ones are made by upload-pack each time."""

MAX_REMEMBERED_BYTES = 32 << 20
"""The most bytes of answers one server process keeps."""

_UNCACHEABLE_CONFIG = (b"include", b"worktreeconfig")  # lowercased: the files git would read are not all known
_UNKNOWN = object()
_Given = tuple[str, tuple[str, ...] | None]  # the text of argv's and env's fields; the config files (None: unknown)
_UNCACHEABLE = object()  # a config file naming others: no answer is remembered while it does
_SETTLED_NS = 2_000_000_000
"""A config file changed this recently (ns) is read on every request instead of trusting its unchanged ``stat``:
more than a tick of any filesystem's timestamps (ext4's follow the kernel's tick; FAT's are 2 s apart)."""
_MAX_KEPT = 4096  # per-mirror memos kept (then all forgotten at once)


class Answers:
    """The answers remembered by one server process, least recently used first.

    Attributes:
        hits: requests answered from memory (this process).
        max_answer_bytes: the largest answer kept.
        max_bytes: the most bytes kept in all.
    """

    def __init__(
        self, git: str, *, max_answer_bytes: int = MAX_ANSWER_BYTES, max_bytes: int = MAX_REMEMBERED_BYTES
    ) -> None:
        self.max_answer_bytes = max_answer_bytes
        self.max_bytes = max_bytes
        self.hits = 0
        self._git = shutil.which(git) or git
        self._system: object = _UNKNOWN  # the system config file: a Path, None (none is read) or not yet known
        self._learning: asyncio.Future[Path | None] | None = None
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._given: dict[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...], object], _Given] = {}
        self._files: dict[str, tuple[tuple[int, ...], bytes | object]] = {}

    @property
    def size_bytes(self) -> int:
        """Bytes of answers kept now."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    async def prepare(self, env: Mapping[str, str]) -> None:
        """Learn, once per process, which system config file git reads (one ``git config --system`` run, which
        the requests arriving meanwhile wait for instead of running their own)."""
        if self._system is not _UNKNOWN:
            return
        if self._learning is None:
            self._learning = asyncio.ensure_future(asyncio.to_thread(self._system_file, dict(env)))
        learning = self._learning
        system = await asyncio.shield(learning)
        if self._system is _UNKNOWN:
            self._system = system

    def key(
        self, argv: list[str], env: Mapping[str, str], mirror: Path, *, tips: Mapping[str, str] | None, body: str = ""
    ) -> str | None:
        """The key of upload-pack's answer for ``argv`` and ``env`` on ``mirror`` as it is now.

        Args:
            argv: upload-pack's argument vector.
            env: its environment.
            mirror: the mirror it reads.
            tips: the mirror's ref tips (None for an answer that lists no refs).
            body: the request body's digest.

        Returns:
            The key, or None when the answer must not be remembered (see the module's documentation).
        """
        # What argv and env give (their fields' text, the config files git reads) is the same for every request of
        # a mirror, advertisement and protocol: made once (the file list also depends on the system file learnt).
        memo = (str(mirror), tuple(argv), tuple(env.items()), self._system)
        given = self._given.get(memo)
        if given is None:
            files = self._config_files(mirror, env)
            given = (_text([*argv, *(f"{name}={value}" for name, value in sorted(env.items()))]), files)
            if len(self._given) >= _MAX_KEPT:
                self._given.clear()
            self._given[memo] = given
        fixed, files = given
        if files is None:
            return None
        config = self._config_digest(files)
        if config is None:
            return None
        try:
            binary = os.stat(self._git)
        except OSError:
            return None
        fields = [
            f"{binary.st_dev}:{binary.st_ino}:{binary.st_size}:{binary.st_mtime_ns}",
            config,
            "no refs" if tips is None else "refs",
            *(f"{name} {target}" for name, target in sorted((tips or {}).items())),
            body,
        ]
        return hashlib.sha256((fixed + _text(fields)).encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, key: str) -> bytes | None:
        """The answer remembered under ``key`` (counted as a hit), or None."""
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return data

    def remember(self, key: str, data: bytes) -> bool:
        """Keep ``data`` under ``key`` unless it is too large or carries a session id; whether it was kept."""
        if len(data) > self.max_answer_bytes or b"session-id=" in data:
            return False
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._size -= len(previous)
        self._entries[key] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped)
        return True

    def _config_digest(self, files: tuple[str, ...]) -> str | None:
        digest = hashlib.sha256()
        now = time.time_ns()
        for path in files:
            try:
                data = self._config_file(path, now)
            except FileNotFoundError:
                data = None
            except OSError:
                return None
            if data is _UNCACHEABLE:
                return None
            assert data is None or isinstance(data, bytes)
            digest.update(f"{path}\0{-1 if data is None else len(data)}\0".encode("utf-8", "surrogateescape"))
            digest.update(data or b"")
        return digest.hexdigest()

    def _config_file(self, path: str, now: int) -> bytes | object:
        """A config file's content (or :data:`_UNCACHEABLE`), read again only when its ``stat`` changed: a change
        replaces the inode or sets its ctime, which nothing but the kernel sets. A file changed less than
        :data:`_SETTLED_NS` before ``now`` is read every time, as a second change within one tick of the
        filesystem's clock could leave every field of its ``stat`` as it was (git's "racily clean" entries)."""
        status = os.stat(path)
        signature = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        kept = self._files.get(path)
        if kept is not None and kept[0] == signature:
            return kept[1]
        data: bytes | object = _read(path)
        assert isinstance(data, bytes)
        lowered = data.lower()
        if any(word in lowered for word in _UNCACHEABLE_CONFIG):
            data = _UNCACHEABLE
        if max(status.st_mtime_ns, status.st_ctime_ns) < now - _SETTLED_NS:
            if len(self._files) >= _MAX_KEPT:
                self._files.clear()
            self._files[path] = (signature, data)
        return data

    def _config_files(self, mirror: Path, env: Mapping[str, str]) -> tuple[str, ...] | None:
        """Every config file git reads for ``mirror`` under ``env``, present or not; None if one is not known."""
        files = [os.path.join(mirror, "config")]
        if env.get("GIT_CONFIG_GLOBAL"):
            files.append(env["GIT_CONFIG_GLOBAL"])
        else:
            home = env.get("HOME")
            xdg = env.get("XDG_CONFIG_HOME") or (f"{home}/.config" if home else "")
            if xdg:
                files.append(os.path.join(xdg, "git", "config"))
            if home:
                files.append(os.path.join(home, ".gitconfig"))
        if env.get("GIT_CONFIG_NOSYSTEM", "").lower() in ("1", "true", "yes", "on"):
            return tuple(files)
        if env.get("GIT_CONFIG_SYSTEM"):
            return (*files, env["GIT_CONFIG_SYSTEM"])
        if not isinstance(self._system, Path):
            return None  # unknown: `prepare` not awaited, or git did not name it
        return (*files, str(self._system))

    def _system_file(self, env: dict[str, str]) -> Path | None:
        """The system config file git reads, from git itself: the origin of its first entry, or the path in its
        complaint that the file is missing. None when git names none (an empty file)."""
        try:
            listed = subprocess.run(
                [self._git, "config", "--system", "--show-origin", "--list"],
                capture_output=True,
                env=env,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        first = listed.stdout.split(b"\n", 1)[0]
        if listed.returncode == 0 and first.startswith(b"file:") and b"\t" in first:
            named = first[len("file:") : first.index(b"\t")]
            return None if named.startswith(b'"') else Path(os.fsdecode(named))  # a quoted path: not parsed
        said = listed.stderr
        if listed.returncode != 0 and b"unable to read config file '" in said:
            start = said.index(b"unable to read config file '") + len("unable to read config file '")
            end = said.find(b"'", start)
            if end > start:
                return Path(os.fsdecode(said[start:end]))
        return None


def _text(fields: list[str]) -> str:
    """Fields as one text in which each is written with its length, so no two different lists give the same text."""
    return "".join(f"{len(field)}:{field}" for field in fields)


def _read(path: str) -> bytes:
    """The whole of a small file (a config file: one read, no buffered file object)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
