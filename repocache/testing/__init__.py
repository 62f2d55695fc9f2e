"""Test infrastructure shared by repocache's own tests and its pytest plugin.

Real parts, no mocks of git: :class:`UpstreamFactory` builds upstream repositories with pygit2, and the servers
serve them on 127.0.0.1 the way hosts do: :class:`GitDaemon` (``git://``), :class:`SmartHTTPServer` (smart HTTP
through ``git http-backend``, optionally behind basic auth or a delay), and :class:`HangingServer`, which accepts
connections and never answers. :mod:`repocache.testing.s3` runs an S3-compatible endpoint (``moto_server``) on
127.0.0.1 for cold-storage tests.
"""

from repocache.testing.servers import (
    GitDaemon,
    HangingServer,
    RecordedRequest,
    SmartHTTPServer,
    isolated_git_env,
)
from repocache.testing.upstream import Upstream, UpstreamFactory

__all__ = [
    "GitDaemon",
    "HangingServer",
    "RecordedRequest",
    "SmartHTTPServer",
    "Upstream",
    "UpstreamFactory",
    "isolated_git_env",
]
