"""How git's ``upload-pack`` is run to serve a mirror over smart HTTP: its command line and its environment.

The git server (:mod:`repocache.serve`) runs the process itself (asynchronously, streaming); this module only says
what to run, so every git the cache starts is still described by :mod:`repocache.gitops`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from repocache.gitops.run import GitOptions, git_environment

__all__ = ["GIT_PROTOCOL_PATTERN", "upload_pack_command"]

GIT_PROTOCOL_PATTERN = re.compile(r"[A-Za-z0-9=:._-]{0,256}")
"""What a client's ``Git-Protocol`` header may hold to reach upload-pack (``version=2``; ``:``-separated)."""

_SERVE_CONFIG = (
    # Partial clones (--filter) are served: a full mirror answers every filter, a partial one only the same or a
    # stricter filter (the server chooses the mirror: repocache.serve.filters), after fetching the wants it lacks.
    ("uploadpack.allowFilter", "true"),
    # A want of a commit that a fetch made unreachable between two requests of one clone is still served; so is a
    # protocol v0 partial clone's lazy fetch, whose wants are blobs and trees (reachable, never advertised).
    ("uploadpack.allowReachableSHA1InWant", "true"),
)


def upload_pack_command(
    options: GitOptions, git: str, mirror: Path, *, advertise: bool, protocol: str | None
) -> tuple[list[str], dict[str, str]]:
    """The argument vector and environment of ``git upload-pack --stateless-rpc`` on ``mirror``.

    Args:
        options: the cache's git options (the environment every git gets).
        git: the git binary.
        mirror: the bare mirror to serve.
        advertise: the ref (v0) or capability (v2) advertisement of ``info/refs``, instead of answering a request.
        protocol: the client's ``Git-Protocol`` header, passed as ``GIT_PROTOCOL`` (None or empty: protocol v0).

    Raises:
        ValueError: ``protocol`` holds characters a ``Git-Protocol`` header never has.
    """
    if protocol and not GIT_PROTOCOL_PATTERN.fullmatch(protocol):
        raise ValueError("the Git-Protocol header may hold only letters, digits and '=:._-' (at most 256)")
    base = _base_environment(options)
    memo = (options, git, str(mirror), advertise, protocol or "")
    made = _commands.get(memo)
    if made is None or made[0] is not base:
        if len(_commands) >= _MAX_REMEMBERED_COMMANDS:
            _commands.clear()
        made = (base, *_command(base, git, mirror, advertise=advertise, protocol=protocol))
        _commands[memo] = made
    # Copies: a caller may change its own (the memo is shared by every request).
    return list(made[1]), dict(made[2])


# A server makes the same few commands for every request (one per mirror, advertisement or not, and protocol), and
# git_environment walks os.environ each time: both are kept, and made again when os.environ changed.
_MAX_REMEMBERED_COMMANDS = 4096
_commands: dict[tuple[GitOptions, str, str, bool, str], tuple[dict[str, str], list[str], dict[str, str]]] = {}
_environments: dict[GitOptions, tuple[object, dict[str, str]]] = {}


def _base_environment(options: GitOptions) -> dict[str, str]:
    """``git_environment(options)``, made again only when ``os.environ`` changed since it was made (the same
    object while it has not; never changed by its callers)."""
    # os.environ's own mapping (bytes on POSIX): comparing it with a copy is one C-level dict comparison, where
    # reading os.environ decodes every name and value. Without it (another Python), the environment is made afresh.
    current = getattr(os.environ, "_data", None)
    kept = _environments.get(options)
    if current is not None and kept is not None and kept[0] == current:
        return kept[1]
    env = git_environment(options)
    if isinstance(current, dict):
        _environments[options] = (dict(current), env)
    return env


def _command(
    env: dict[str, str], git: str, mirror: Path, *, advertise: bool, protocol: str | None
) -> tuple[list[str], dict[str, str]]:
    env = dict(env)
    if protocol:
        env["GIT_PROTOCOL"] = protocol
    count = int(env["GIT_CONFIG_COUNT"])
    for number, (key, value) in enumerate(_SERVE_CONFIG, start=count):
        env[f"GIT_CONFIG_KEY_{number}"] = key
        env[f"GIT_CONFIG_VALUE_{number}"] = value
    env["GIT_CONFIG_COUNT"] = str(count + len(_SERVE_CONFIG))
    argv = [git, "upload-pack", "--stateless-rpc"]
    if advertise:
        argv.append("--advertise-refs")
    argv.append(str(mirror))
    return argv, env
