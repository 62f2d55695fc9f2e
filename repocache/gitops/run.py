"""Running git: finding it, the one environment every git process gets, spawning and killing it, its progress.

Every git the cache starts, for a transfer or for housekeeping, gets its environment from
:func:`git_environment`, so the rules (no prompts, no hooks, no automatic gc, only allowed transports, no
inherited ``GIT_DIR`` and friends) cannot differ between the two. Credentials reach git only through
``GIT_CONFIG_*`` variables of its own process, never the disk.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from repocache import cancel
from repocache.errors import AuthenticationError, GitError
from repocache.keys import RepoURL, scrub
from repocache.models import Progress

logger = logging.getLogger("repocache")
ProgressCallback = Callable[[Progress], None]

_PROGRESS_LINE = re.compile(
    r"(?:remote: )?(?P<phase>[A-Za-z ]+?):\s+(?:\d+% )?\(?(?P<done>\d+)(?:/(?P<total>\d+))?\)?"
    r"(?:,\s+(?P<amount>[\d.]+) (?P<unit>[KMG]?i?B))?"
)
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


_CANCEL_POLL = 0.05  # seconds: how often a cancellable git run looks at its token
PARTIAL_UPSTREAM_MARKERS = ("promisor", "did not receive expected object", "missing blob object", "unable to read ")
PARTIAL_UPSTREAM_HINT = (
    " (the upstream appears to be a partial clone with missing objects; neither git nor libgit2 can mirror it: "
    "run `git fetch --refetch` or clone it fully upstream)"
)


@dataclass(frozen=True)
class GitOptions:
    """How git is run.

    Attributes:
        git: path of the git binary, or None to use libgit2 for everything.
        allow_local: whether local paths and file:// upstreams may be read.
        connect_timeout: seconds to wait for a connection to upstream.
        idle_timeout: seconds without any progress after which a transfer is abandoned.
        progress_interval: minimum seconds between two progress reports.
    """

    git: str | None
    allow_local: bool = True
    connect_timeout: float = 30.0
    idle_timeout: float = 300.0
    progress_interval: float = 0.1

    def allowed_protocols(self) -> str:
        """The value for ``GIT_ALLOW_PROTOCOL``."""
        return "https:http:git:ssh" + (":file" if self.allow_local else "")


def find_git() -> str | None:
    """The git binary on PATH (or ``$REPOCACHE_GIT``; set it to an empty string to force libgit2)."""
    configured = os.environ.get("REPOCACHE_GIT")
    if configured is not None:
        return configured or None
    return shutil.which("git")


# -- progress ---------------------------------------------------------------------------------------------------


class Throttle:
    """Forwards at most one report per interval, plus every phase change, to the user's callback."""

    def __init__(self, callback: ProgressCallback | None, url: str, operation: str, interval: float) -> None:
        self.callback = callback
        self.url = url
        self.operation = operation
        self.interval = interval
        self._last = 0.0
        self._phase = ""

    def report(self, phase: str, objects: int, total: int, received: int, *, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and phase == self._phase and now - self._last < self.interval:
            return
        self._last = now
        self._phase = phase
        try:
            self.callback(Progress(self.url, self.operation, phase, objects, total, received))
        except Exception:
            logger.exception("progress callback raised; ignoring it")

    def done(self) -> None:
        self.report("done", 0, 0, 0, force=True)


# -- running the git CLI -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaintenanceLimits:
    """How much a maintenance git may use.

    Attributes:
        window_memory: bytes of delta window per thread (``pack.windowMemory``); 0 for git's default (none).
        threads: delta search threads (``pack.threads``).
    """

    window_memory: int
    threads: int


# Inherited variables that would point git at another repository, object store or config, or run a command.
_DROPPED_PREFIXES = ("GIT_CONFIG_", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX", "GIT_OBJECT_DIRECTORY")
_DROPPED_NAMES = ("GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PROXY_COMMAND", "GIT_SSH_COMMAND_")


def git_environment(
    options: GitOptions, *, url: RepoURL | None = None, limits: MaintenanceLimits | None = None
) -> dict[str, str]:
    """The environment of every git process the cache starts.

    What every git gets: no prompts, only the allowed transports, the C locale, no automatic gc or maintenance,
    no hooks and no filesystem monitor, and none of the inherited variables that would redirect it. What differs
    is passed in: ``url`` (a transfer) adds its credentials as an ``Authorization`` header; ``limits``
    (housekeeping) bounds the packing and fixes the formats libgit2 must still read.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_DROPPED_PREFIXES) and name not in _DROPPED_NAMES
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GCM_INTERACTIVE="never",
        GIT_ASKPASS="true",
        SSH_ASKPASS="true",
        GIT_ALLOW_PROTOCOL=options.allowed_protocols(),
        GIT_PROTOCOL_FROM_USER="0",
        LC_ALL="C",
        LANGUAGE="C",
    )
    settings = [
        ("http.lowSpeedLimit", "1"),
        ("http.lowSpeedTime", str(max(1, int(options.idle_timeout)))),
        ("core.askPass", "true"),
        ("credential.helper", ""),
        # No automatic gc or maintenance after a fetch: git would run it detached, outside the repository's
        # locks, repacking and deleting packs while readers use the mirror, after its size was measured, and
        # possibly while it is evicted. (libgit2 fetches never run it either.)
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
        # No hooks and no filesystem monitor, whatever a config says: nothing the cache runs git on runs anything.
        ("core.hooksPath", os.devnull),
        ("core.fsmonitor", "false"),
    ]
    if url is not None and url.has_credentials:
        token = base64.b64encode(f"{url.username or ''}:{url.password or ''}".encode()).decode("ascii")
        settings.append(("http.extraHeader", f"Authorization: Basic {token}"))
    if limits is not None:
        settings += [
            ("pack.threads", str(limits.threads)),
            ("repack.writeBitmaps", "false"),  # a fresh `git clone --mirror` has none; libgit2 does not read them
            ("repack.updateServerInfo", "false"),
            # Generation data v2 (git's default) makes libgit2 reject the whole graph; v1 is read by both.
            ("commitGraph.generationVersion", "1"),
            ("fetch.writeCommitGraph", "false"),
        ]
        if limits.window_memory:
            settings.append(("pack.windowMemory", str(limits.window_memory)))
    env["GIT_CONFIG_COUNT"] = str(len(settings))
    for number, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{number}"] = key
        env[f"GIT_CONFIG_VALUE_{number}"] = value
    return env


def _parse_progress(line: str, throttle: Throttle) -> None:
    match = _PROGRESS_LINE.match(line.strip())
    if match is None:
        return
    phase = match["phase"].strip().lower().replace(" objects", "").replace(" deltas", "")
    received = 0
    if match["amount"]:
        received = int(float(match["amount"]) * _UNITS.get(match["unit"], 1))
    throttle.report(phase, int(match["done"]), int(match["total"] or 0), received)


def run_git(
    args: list[str],
    url: RepoURL,
    options: GitOptions,
    throttle: Throttle,
    error: type[GitError],
    *,
    cwd: Path | None = None,
    hide: Path | None = None,
) -> None:
    """Run git, streaming its progress, killing it when it stays silent longer than ``idle_timeout``.

    When the calling thread has a :class:`~repocache.cancel.CancelToken`, git is also killed within
    ``_CANCEL_POLL`` seconds of its cancellation (and :class:`~repocache.cancel.Cancelled` raised).
    On failure raises ``error`` with git's error lines; ``hide`` is a path left out of them (a staging directory).
    """
    assert options.git is not None
    cancel.check()
    poll = 1.0 if cancel.current() is None else _CANCEL_POLL
    process = spawn_git(options.git, args, cwd, git_environment(options, url=url))
    assert process.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=20)
    pending = b""
    last_output = time.monotonic()
    try:
        fd = process.stderr.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], poll)
            cancel.check()
            if not ready:
                if time.monotonic() - last_output > options.idle_timeout:
                    kill_git(process)
                    raise error(
                        url.url, f"no progress for {options.idle_timeout:g}s (idle_timeout); gave up", url.shown
                    )
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            last_output = time.monotonic()
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if line.strip():
                    tail.append(line)
                    _parse_progress(line, throttle)
        code = process.wait()
    except BaseException:
        kill_git(process)
        raise
    finally:
        process.stderr.close()
    if code != 0:
        detail = _error_lines(tail, hide=hide) or f"git exited with status {code}"
        # a partial mirror's own git talks of promisors: the hint is about partial upstreams of full mirrors
        if url.filter is None and any(marker in detail for marker in PARTIAL_UPSTREAM_MARKERS):
            detail += PARTIAL_UPSTREAM_HINT
        if is_authentication_failure(detail):
            raise AuthenticationError.of(error)(url.url, authentication_detail(detail, url), url.shown)
        raise error(url.url, detail, url.shown)


# What git, libgit2, ssh and the common hosts say when credentials are refused or missing (lower case).
AUTHENTICATION_MARKERS = (
    "authentication failed",
    "authentication required",
    "authentication replays",
    "could not read username",
    "could not read password",
    "permission denied (publickey",
    "permission denied, please try again",
    "http basic: access denied",
    "returned error: 401",
    "returned error: 403",
    "unexpected http status code: 401",
    "unexpected http status code: 403",
    "invalid username or password",
)


def is_authentication_failure(detail: str) -> bool:
    """Whether git's error lines say that upstream refused the credentials or wanted some."""
    lowered = detail.lower()
    return any(marker in lowered for marker in AUTHENTICATION_MARKERS)


def authentication_detail(detail: str, url: RepoURL) -> str:
    """The detail of an :class:`~repocache.errors.AuthenticationError`: what happened, then git's own lines."""
    told = (
        "upstream refused the credentials in the URL"
        if url.has_credentials
        else "upstream asked for credentials and the URL has none (put them in the URL, or use ssh keys)"
    )
    return f"authentication failed: {told}; {detail}"


_CAUSE_PREFIXES = ("fatal:", "error:", "ssh:", "ssh_exchange_identification:", "kex_exchange_identification:")
_CAUSE_MARKERS = ("permission denied", "host key verification failed", "could not resolve hostname")
_CAUSE_LINES = 8  # the most cause lines kept (the last ones)
_CAUSE_LINE_CHARS = 300  # the longest line kept whole


def _is_cause(line: str) -> bool:
    text = line.removeprefix("remote: ")
    return text.startswith(_CAUSE_PREFIXES) or any(marker in text.lower() for marker in _CAUSE_MARKERS)


def _error_lines(tail: Iterable[str], *, hide: Path | None) -> str:
    """git's cause lines from the end of its stderr, as sentences on one line, scrubbed.

    The cause lines are every ``fatal:``, ``error:`` and ``ssh:`` line (and ssh's own refusals, such as
    ``Permission denied (publickey)``), each once, the last few, each at most a few hundred characters: ssh's
    ``connect to host ... Connection refused`` comes before git's ``fatal: Could not read from remote
    repository.`` and says why. Progress and "Cloning into ..." lines are dropped; without any cause line, the
    last few other lines are kept. One line, because messages end up in logs and in the command line's one-line
    errors. ``hide`` (a staging directory) is an internal path that means nothing to the caller: it is named as
    what it is.
    """
    lines = [
        line.strip()
        for line in tail
        if line.strip() and not _PROGRESS_LINE.match(line.strip()) and not line.startswith("Cloning into ")
    ]
    causes = [line for line in lines if _is_cause(line)]
    unique = list(dict.fromkeys(causes or lines))[-_CAUSE_LINES if causes else -6 :]
    shortened = [line if len(line) <= _CAUSE_LINE_CHARS else line[: _CAUSE_LINE_CHARS - 3] + "..." for line in unique]
    detail = " ".join(line if line.endswith((".", "!", "?", ":")) else line + "." for line in shortened)
    return scrub(detail if hide is None else hide_staging(detail, hide))


def hide_staging(detail: str, staging: Path) -> str:
    """``detail`` with the internal staging path named as what it is."""
    return detail.replace(f"'{staging}'", str(staging)).replace(str(staging), "the staging directory")


def spawn_git(git: str, args: list[str], cwd: Path | str | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``git args`` in ``cwd``: no stdin or stdout, stderr piped, in a session of its own, and killed with
    this process (see :func:`with_death_signal`)."""
    command, preexec = with_death_signal([git, *args])
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=preexec,
    )


def with_death_signal(command: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command and ``preexec_fn`` that make git die with the thread that starts it (Linux only).

    ``setpriv --pdeathsig KILL`` (util-linux) sets the signal and execs git; it is preferred because any
    ``preexec_fn`` stops Python from using vfork, so every spawn would copy the whole interpreter (measured: 5.6 ms
    until ``Popen()`` returns, against 0.3 ms). Without setpriv the signal is set by a ``preexec_fn``.
    """
    if sys.platform != "linux":
        return command, None
    setpriv = _setpriv()
    if setpriv is None:
        return command, die_with_parent
    return [setpriv, "--pdeathsig", "KILL", "--", *command], None


@functools.cache
def _setpriv() -> str | None:
    """The path of a ``setpriv`` that has ``--pdeathsig`` (util-linux 2.33 and later), looked up once."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return setpriv if probe.returncode == 0 else None


def die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGKILL git when the thread that started it dies, so a killed worker leaves no git behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill_git(process: subprocess.Popen[bytes]) -> None:
    """Kill git and everything it started (its session), and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
