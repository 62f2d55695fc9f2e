"""Asking an upstream whether it answers: one bounded ``ls-remote``, nothing written anywhere.

The pytest plugin's ``repocache_upstream`` marker uses it to skip a test whose upstream cannot be reached.
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile

import pygit2

from repocache.errors import GitError
from repocache.gitops.run import GitOptions, git_environment
from repocache.gitops.transfer import _configure_libgit2
from repocache.keys import RepoURL, scrub

__all__ = ["probe_upstream"]


def probe_upstream(url: RepoURL, options: GitOptions, *, timeout: float) -> str | None:
    """List the upstream's branches, giving up after ``timeout`` seconds; nothing is cloned or written.

    Uses the same environment as transfers (no prompts, only the allowed transports, the URL's credentials).

    Args:
        url: the parsed upstream URL.
        options: how git is run (``git`` None: libgit2).
        timeout: seconds the whole probe may take (with libgit2: the connect and read timeouts).

    Returns:
        None when the upstream answered, else one line saying why it did not (credentials scrubbed).
    """
    if options.git is None:
        return _probe_libgit2(url, dataclasses.replace(options, connect_timeout=timeout, idle_timeout=timeout))
    try:
        result = subprocess.run(
            [options.git, "ls-remote", "--heads", "--", url.fetch_url],
            env=git_environment(options, url=url),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return scrub(f"cannot run git: {exc}")
    if result.returncode == 0:
        return None
    # Every line: after "fatal: unable to connect" git names the cause (errno=Connection refused) on its own line.
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return scrub(" ".join(lines[-6:])) or f"git ls-remote exited with status {result.returncode}"


def _probe_libgit2(url: RepoURL, options: GitOptions) -> str | None:
    _configure_libgit2(options)
    with tempfile.TemporaryDirectory(prefix="repocache-probe-") as scratch:
        repo = pygit2.init_repository(scratch, bare=True)
        remote = repo.remotes.create_anonymous(url.fetch_url)
        callbacks = pygit2.RemoteCallbacks(
            credentials=pygit2.UserPass(url.username or "", url.password or "") if url.has_credentials else None
        )
        try:
            remote.list_heads(callbacks=callbacks)
        except (pygit2.GitError, GitError, OSError, ValueError) as exc:
            return scrub(" ".join(str(exc).split()) or type(exc).__name__)
    return None
