"""How git's ``upload-pack`` is run to serve a mirror over smart HTTP: its command line and its environment.

The git server (:mod:`repocache.serve`) runs the process itself (asynchronously, streaming); this module only says
what to run, so every git the cache starts is still described by :mod:`repocache.gitops`.
"""

from __future__ import annotations

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
    env = git_environment(options)
    if protocol:
        if not GIT_PROTOCOL_PATTERN.fullmatch(protocol):
            raise ValueError("the Git-Protocol header may hold only letters, digits and '=:._-' (at most 256)")
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
